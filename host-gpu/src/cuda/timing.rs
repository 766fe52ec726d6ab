//! GPU time of the work on one stream, measured with CUDA events.
//!
//! Every op a session enqueues is bracketed by two timing events recorded on its stream. The
//! time between them is known once the end event has completed, so pairs are resolved lazily:
//! when someone asks ([`StreamTimer::collect`] without waiting) or when the session ends (with
//! waiting). This measures what the device spent on the invocation's work, not host time spent
//! waiting for it. Events are recycled, so a steady state creates none.
//!
//! Timing is best effort: if the driver refuses an event, that op goes unmeasured (and is
//! logged); the op itself still runs and reports its own errors.

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, sys::CUevent_flags};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Spare events kept per stream for reuse.
const SPARE_EVENTS: usize = 64;

/// Event-measured GPU time of one stream's work.
#[derive(Default)]
pub(super) struct StreamTimer {
    state: Mutex<TimerState>,
}

#[derive(Default)]
struct TimerState {
    /// (start, end) events of ops whose time is not known yet.
    pending: Vec<(CudaEvent, CudaEvent)>,
    /// Events ready to be recorded again.
    spare: Vec<CudaEvent>,
    /// Time of resolved ops since the last [`StreamTimer::take_total`].
    total: Duration,
}

impl TimerState {
    /// Keeps `event` for reuse (up to [`SPARE_EVENTS`]).
    fn recycle(&mut self, event: CudaEvent) {
        if self.spare.len() < SPARE_EVENTS {
            self.spare.push(event);
        }
    }
}

impl StreamTimer {
    fn state(&self) -> std::sync::MutexGuard<'_, TimerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, ctx: &Arc<CudaContext>, stream: &CudaStream) -> Option<CudaEvent> {
        let spare = self.state().spare.pop();
        let event = match spare {
            Some(event) => event,
            None => match ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)) {
                Ok(event) => event,
                Err(error) => {
                    tracing::debug!("creating a timing event: {error:?}; op not timed");
                    return None;
                }
            },
        };
        match event.record(stream) {
            Ok(()) => Some(event),
            Err(error) => {
                tracing::debug!("recording a timing event: {error:?}; op not timed");
                None
            }
        }
    }

    /// Runs `work` (which enqueues on `stream`) between two timing events.
    pub(super) fn time<R>(
        &self,
        ctx: &Arc<CudaContext>,
        stream: &CudaStream,
        work: impl FnOnce() -> R,
    ) -> R {
        let start = self.record(ctx, stream);
        let result = work();
        if let Some(start) = start {
            match self.record(ctx, stream) {
                Some(end) => self.state().pending.push((start, end)),
                None => self.state().recycle(start),
            }
        }
        result
    }

    /// Adds the ops that have finished to the total (with `wait`, all of them: the caller
    /// has synchronized the stream) and returns the time newly measured.
    pub(super) fn collect(&self, wait: bool) -> Duration {
        let mut state = self.state();
        let mut measured = Duration::ZERO;
        let mut still_pending = Vec::new();
        for (start, end) in std::mem::take(&mut state.pending) {
            if !wait && !end.is_complete() {
                still_pending.push((start, end));
                continue;
            }
            match start.elapsed_ms(&end) {
                Ok(ms) if ms.is_finite() && ms > 0.0 => {
                    measured += Duration::from_secs_f64(ms as f64 / 1e3);
                }
                Ok(_) => {}
                Err(error) => tracing::debug!("reading a timing event: {error:?}"),
            }
            state.recycle(start);
            state.recycle(end);
        }
        state.pending = still_pending;
        state.total += measured;
        measured
    }

    /// The time measured so far (resolved ops only).
    pub(super) fn total(&self) -> Duration {
        self.state().total
    }

    /// The time measured so far, resetting it for the stream's next lease.
    pub(super) fn take_total(&self) -> Duration {
        std::mem::take(&mut self.state().total)
    }
}
