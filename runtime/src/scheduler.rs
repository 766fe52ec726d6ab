//! Admission control for one function: at most `max_concurrency` invocations run at once, at
//! most `queue_depth` wait for a slot, and anything beyond is refused at once (503 with
//! `Retry-After`), so a burst never turns into an unbounded queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots and the waiting line of one function.
#[derive(Debug)]
pub struct Scheduler {
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    queue_depth: usize,
    queued: AtomicUsize,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Every slot is busy and the queue is full.
    QueueFull,
    /// The function is being removed or the node is shutting down.
    Closed,
}

/// A running slot; the slot frees when this drops.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl Scheduler {
    /// A scheduler with `max_concurrency` slots and room for `queue_depth` waiters.
    pub fn new(max_concurrency: u32, queue_depth: u32) -> Self {
        let max_concurrency = max_concurrency.max(1) as usize;
        Scheduler {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            queue_depth: queue_depth as usize,
            queued: AtomicUsize::new(0),
        }
    }

    /// Takes a slot, waiting in the queue if there is room in it.
    pub async fn admit(&self) -> Result<Admission, Rejected> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(Admission { _permit: permit }),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Rejected::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.queue_depth).then_some(queued + 1)
            });
        if reserved.is_err() {
            return Err(Rejected::QueueFull);
        }
        let _leave_queue = LeaveQueue(&self.queued);
        match self.slots.clone().acquire_owned().await {
            Ok(permit) => Ok(Admission { _permit: permit }),
            Err(_) => Err(Rejected::Closed),
        }
    }

    /// Invocations running now.
    pub fn running(&self) -> usize {
        self.max_concurrency - self.slots.available_permits()
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Waits until nothing runs or waits any more, then refuses every later request.
    pub async fn close_when_idle(&self) {
        if let Ok(all) = self.slots.acquire_many(self.max_concurrency as u32).await {
            all.forget();
        }
        self.slots.close();
    }
}

struct LeaveQueue<'a>(&'a AtomicUsize);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn full_queue_rejects_instead_of_waiting() {
        let scheduler = Arc::new(Scheduler::new(1, 1));
        let running = scheduler.admit().await.unwrap();
        assert_eq!(scheduler.running(), 1);

        let waiter = tokio::spawn({
            let scheduler = scheduler.clone();
            async move { scheduler.admit().await.map(|_| ()) }
        });
        while scheduler.queued() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(scheduler.admit().await.unwrap_err(), Rejected::QueueFull);

        drop(running);
        waiter.await.unwrap().unwrap();
        assert_eq!(scheduler.queued(), 0);
        assert_eq!(scheduler.running(), 0);
    }

    #[tokio::test]
    async fn zero_queue_depth_means_no_waiting() {
        let scheduler = Scheduler::new(2, 0);
        let _a = scheduler.admit().await.unwrap();
        let _b = scheduler.admit().await.unwrap();
        assert_eq!(scheduler.admit().await.unwrap_err(), Rejected::QueueFull);
    }

    #[tokio::test]
    async fn closing_waits_for_running_work_then_refuses() {
        let scheduler = Arc::new(Scheduler::new(2, 4));
        let running = scheduler.admit().await.unwrap();
        let closer = tokio::spawn({
            let scheduler = scheduler.clone();
            async move { scheduler.close_when_idle().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !closer.is_finished(),
            "close must wait for the running invocation"
        );
        drop(running);
        closer.await.unwrap();
        assert_eq!(scheduler.admit().await.unwrap_err(), Rejected::Closed);
    }
}
