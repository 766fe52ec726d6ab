//! GPU utilization as operators read it from `nvidia-smi`: the share of recent wall time each
//! device spent in GPU work. Busy time comes from the pool (summed over invocations, so
//! overlapping work can add up past the wall time; the share is capped at 100 %); a sample of
//! it is taken every [`SAMPLE_PERIOD`] and the share is computed over the last [`WINDOW`].
//!
//! After a whole window without GPU work the sampling stops, so that an idle node does not wake
//! up for it; the next invocation of a GPU function ([`Sampler::gpu_work_started`]) resumes it.
//! Busy time is recorded as each GPU op completes, so a single op longer than the window shows
//! none until it ends: sampling never stops while a GPU invocation is running.

use flint_gpu::Pool;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
// tokio's Instant is std's, except under paused time in tests.
use tokio::time::Instant;

/// How far back utilization looks.
pub const WINDOW: Duration = Duration::from_secs(10);

/// How often busy time is sampled while there is GPU work.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Busy-time samples of every device.
#[derive(Debug)]
pub struct Sampler {
    samples: Mutex<VecDeque<(Instant, Vec<Duration>)>>,
    devices: usize,
    work_started: tokio::sync::Notify,
}

impl Sampler {
    /// A sampler for `devices` devices, with one sample (all idle) taken now.
    pub fn new(devices: usize) -> Self {
        Sampler {
            samples: Mutex::new(VecDeque::from([(
                Instant::now(),
                vec![Duration::ZERO; devices],
            )])),
            devices,
            work_started: tokio::sync::Notify::new(),
        }
    }

    /// Samples every [`SAMPLE_PERIOD`] while there is GPU work, and waits for the next
    /// [`Sampler::gpu_work_started`] after a whole [`WINDOW`] without any while `running`
    /// says no GPU invocation runs; returns when `pool` returns `None` (its owner is gone).
    pub async fn run(&self, pool: impl Fn() -> Option<Arc<Pool>>, running: impl Fn() -> bool) {
        let mut tick = tokio::time::interval(SAMPLE_PERIOD);
        loop {
            tick.tick().await;
            let Some(current) = pool() else { return };
            self.sample(&current);
            if self.quiet_for(WINDOW) && !running() {
                drop(current);
                self.work_started.notified().await;
                let Some(current) = pool() else { return };
                self.restart(&current);
                tick.reset();
            }
        }
    }

    /// Says that an invocation that may use the GPU started: resumes sampling if it stopped.
    pub fn gpu_work_started(&self) {
        self.work_started.notify_one();
    }

    /// Whether the samples span at least `window` and no device did any work in it.
    fn quiet_for(&self, window: Duration) -> bool {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match (samples.front(), samples.back()) {
            (Some((first_at, first)), Some((last_at, last))) => {
                last_at.duration_since(*first_at) >= window && first == last
            }
            _ => false,
        }
    }

    /// Forgets every sample and takes one now: after a pause, the window starts again.
    fn restart(&self, pool: &Pool) {
        let busy = (0..self.devices).map(|d| pool.busy(d)).collect();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.clear();
        samples.push_back((Instant::now(), busy));
    }

    /// Records every device's busy time now, forgetting samples older than the window.
    pub fn sample(&self, pool: &Pool) {
        let busy = (0..self.devices).map(|d| pool.busy(d)).collect();
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, busy));
        while samples.len() > 2 && now.duration_since(samples[1].0) >= WINDOW {
            samples.pop_front();
        }
    }

    /// Each device's utilization in percent over the window (or since the oldest sample).
    pub fn percent(&self, pool: &Pool) -> Vec<f64> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some((then, busy_then)) = samples.front() else {
            return vec![0.0; self.devices];
        };
        let wall = then.elapsed().as_secs_f64();
        (0..self.devices)
            .map(|d| {
                let busy = pool.busy(d).saturating_sub(busy_then[d]).as_secs_f64();
                if wall <= 0.0 {
                    0.0
                } else {
                    (busy / wall * 100.0).min(100.0)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_busy_time_over_wall_time() {
        let pool = Pool::cpu_only(1 << 20);
        let sampler = Sampler::new(1);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(sampler.percent(&pool), vec![0.0]);
        pool.record_busy(0, Duration::from_millis(50));
        let percent = sampler.percent(&pool)[0];
        // 50 ms busy in a little over 100 ms of wall time.
        assert!((20.0..=50.0).contains(&percent), "{percent}");
        pool.record_busy(0, Duration::from_secs(10));
        assert_eq!(sampler.percent(&pool), vec![100.0]);
    }

    #[test]
    fn quiet_only_after_a_whole_window_without_work() {
        let pool = Pool::cpu_only(1 << 20);
        let sampler = Sampler::new(1);
        let window = Duration::from_millis(50);
        assert!(!sampler.quiet_for(window), "one sample spans no window");
        std::thread::sleep(window);
        sampler.sample(&pool);
        assert!(sampler.quiet_for(window));
        pool.record_busy(0, Duration::from_millis(1));
        sampler.sample(&pool);
        assert!(!sampler.quiet_for(window), "work in the window");
        // After a restart the window starts again from now.
        sampler.restart(&pool);
        assert!(!sampler.quiet_for(window));
        std::thread::sleep(window);
        sampler.sample(&pool);
        assert!(sampler.quiet_for(window));
    }

    #[tokio::test(start_paused = true)]
    async fn sampling_stops_when_quiet_and_resumes_with_gpu_work() {
        let pool = Pool::cpu_only(1 << 20);
        let sampler = Arc::new(Sampler::new(1));
        let last_sample = |s: &Sampler| s.samples.lock().unwrap().back().unwrap().0;
        let task = tokio::spawn({
            let (pool, sampler) = (pool.clone(), sampler.clone());
            async move { sampler.run(|| Some(pool.clone()), || false).await }
        });
        // Quiet from the start: after a window and a bit, sampling has stopped.
        tokio::time::sleep(WINDOW + SAMPLE_PERIOD * 3).await;
        let stopped = last_sample(&sampler);
        tokio::time::sleep(WINDOW * 3).await;
        assert_eq!(last_sample(&sampler), stopped, "kept sampling while quiet");

        // GPU work resumes it, from a fresh window that sees the work.
        sampler.gpu_work_started();
        tokio::time::sleep(SAMPLE_PERIOD / 2).await;
        pool.record_busy(0, Duration::from_secs(1));
        tokio::time::sleep(SAMPLE_PERIOD * 2).await;
        assert!(
            last_sample(&sampler) > stopped + WINDOW * 3,
            "did not resume"
        );
        let percent = sampler.percent(&pool)[0];
        assert!(percent > 30.0, "the pause diluted the window: {percent} %");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn sampling_goes_on_through_one_long_gpu_op() {
        let pool = Pool::cpu_only(1 << 20);
        let sampler = Arc::new(Sampler::new(1));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let last_sample = |s: &Sampler| s.samples.lock().unwrap().back().unwrap().0;
        let task = tokio::spawn({
            let (pool, sampler, running) = (pool.clone(), sampler.clone(), running.clone());
            async move {
                sampler
                    .run(
                        || Some(pool.clone()),
                        || running.load(std::sync::atomic::Ordering::Relaxed),
                    )
                    .await
            }
        });
        // An invocation runs one op of three windows: no busy time is recorded until it ends.
        tokio::time::sleep(WINDOW * 3).await;
        let before_end = last_sample(&sampler);
        assert!(
            before_end >= Instant::now() - SAMPLE_PERIOD * 2,
            "stopped sampling while a GPU invocation ran"
        );
        pool.record_busy(0, WINDOW * 3);
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(SAMPLE_PERIOD * 2).await;
        assert_eq!(
            sampler.percent(&pool),
            vec![100.0],
            "the op fills the window"
        );
        // Then quiet: it stops after a window.
        tokio::time::sleep(WINDOW * 2).await;
        let stopped = last_sample(&sampler);
        tokio::time::sleep(WINDOW).await;
        assert_eq!(last_sample(&sampler), stopped, "kept sampling while quiet");
        task.abort();
    }
}
