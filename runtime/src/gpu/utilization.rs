//! GPU utilization as operators read it from `nvidia-smi`: the share of recent wall time each
//! device spent in GPU work. Busy time comes from the pool (summed over invocations, so
//! overlapping work can add up past the wall time; the share is capped at 100 %); a sample of
//! it is taken every second and the share is computed over the last [`WINDOW`].

use flint_gpu::Pool;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back utilization looks.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Busy-time samples of every device.
#[derive(Debug)]
pub struct Sampler {
    samples: Mutex<VecDeque<(Instant, Vec<Duration>)>>,
    devices: usize,
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
        }
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
}
