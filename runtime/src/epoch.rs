//! The engine's epoch ticker: the clock that makes running guests yield and time out.
//!
//! Guests run with an epoch deadline one tick ahead (see `sandbox::set_deadline`): at every
//! tick a running guest yields to the async runtime, so one busy guest never starves others,
//! and past its deadline it is interrupted. Only running guests need the clock, so the ticker
//! ticks only while one may be running ([`GuestActivity::enter`]) and otherwise sleeps without
//! waking (it used to wake the node 200 times a second, idle or not).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;
use wasmtime::Engine;

/// How often the engine's epoch advances while a guest runs.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// What the ticker thread and the guards of running guests share.
#[derive(Debug, Default)]
struct Shared {
    /// Guests that may be running now.
    running: AtomicUsize,
    /// Epoch increments so far.
    ticks: AtomicU64,
    stop: AtomicBool,
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] while any guest may run,
/// until dropped.
#[derive(Debug)]
pub struct EpochTicker {
    activity: GuestActivity,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker of `engine`'s epoch, asleep until a guest runs.
    pub fn start(engine: Engine) -> Self {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("flint-epoch".into())
            .spawn({
                let shared = shared.clone();
                move || tick_while_guests_run(&engine, &shared)
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            activity: GuestActivity {
                shared,
                ticker: thread.thread().clone(),
            },
            thread: Some(thread),
        }
    }

    /// The handle that marks guests as running.
    pub fn activity(&self) -> &GuestActivity {
        &self.activity
    }

    /// How many times the epoch has advanced.
    pub fn ticks(&self) -> u64 {
        self.activity.shared.ticks.load(Ordering::Relaxed)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.activity.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn tick_while_guests_run(engine: &Engine, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.running.load(Ordering::SeqCst) == 0 {
            // Woken by the first guest to run (or spuriously: the loop checks again).
            std::thread::park();
            continue;
        }
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        shared.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks guests as running, so that the epoch advances while they do. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GuestActivity {
    shared: Arc<Shared>,
    ticker: Thread,
}

impl GuestActivity {
    /// Keeps the epoch advancing until the returned guard drops. Hold it for as long as guest
    /// code may run: instantiation (start functions) and every call into the guest.
    pub fn enter(&self) -> RunningGuest {
        if self.shared.running.fetch_add(1, Ordering::SeqCst) == 0 {
            // A system call only if the ticker is parked, i.e. after a quiet tick.
            self.ticker.unpark();
        }
        RunningGuest {
            shared: self.shared.clone(),
        }
    }
}

/// A guest that may be running; see [`GuestActivity::enter`].
#[derive(Debug)]
pub struct RunningGuest {
    shared: Arc<Shared>,
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        self.shared.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits until `ticker` has ticked `n` more times than `from`, or panics after 10 s.
    fn wait_for_ticks(ticker: &EpochTicker, from: u64, n: u64) {
        let started = Instant::now();
        while ticker.ticks() < from + n {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the epoch did not advance while a guest ran ({} ticks)",
                ticker.ticks() - from
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn ticks_only_while_a_guest_runs() {
        let ticker = EpochTicker::start(Engine::default());
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(ticker.ticks(), 0, "ticked with no guest running");

        let guest = ticker.activity().enter();
        wait_for_ticks(&ticker, 0, 3);
        drop(guest);
        // The tick under way when the guest left may still land; after that, none.
        std::thread::sleep(EPOCH_TICK * 3);
        let after = ticker.ticks();
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(ticker.ticks(), after, "kept ticking after the guest left");

        // Woken again by the next guest, and kept going while any of two runs.
        let first = ticker.activity().enter();
        let second = ticker.activity().clone().enter();
        wait_for_ticks(&ticker, after, 2);
        drop(first);
        let now = ticker.ticks();
        wait_for_ticks(&ticker, now, 2);
        drop(second);
    }

    #[test]
    fn drop_stops_a_parked_and_a_ticking_ticker() {
        drop(EpochTicker::start(Engine::default()));
        let ticker = EpochTicker::start(Engine::default());
        let _guest = ticker.activity().enter();
        wait_for_ticks(&ticker, 0, 1);
        drop(ticker);
    }
}
