//! Admission control for one function: at most `max_concurrency` invocations run at once, at
//! most `queue_depth` wait for a slot, and anything beyond is refused at once (503 with
//! `Retry-After`), so a burst never turns into an unbounded queue.
//!
//! A GPU function (its component imports `flint:gpu`) also needs a slot of its own GPU limit
//! (`--max-gpu-concurrency`) and one of the node-wide GPU limit; waiting for any of them counts
//! against the same bounded queue. Slots are always taken in the same order (function, its GPU
//! limit, the node's), so waiters never deadlock.
//!
//! The scheduler also keeps the function's idle clock ([`Scheduler::idle_time`]), which the
//! idle sweep reads to park and unload functions nobody calls ([`crate::idle`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A limit on invocations running at once: the slots and how many there are.
#[derive(Debug, Clone)]
pub struct Limit {
    slots: Arc<Semaphore>,
    size: usize,
}

impl Limit {
    /// A limit of `size` (at least 1) invocations at once.
    pub fn new(size: u32) -> Self {
        let size = size.max(1) as usize;
        Limit {
            slots: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// How many may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many hold a slot now.
    pub fn taken(&self) -> usize {
        self.size - self.slots.available_permits()
    }
}

/// The slots and the waiting line of one function.
#[derive(Debug)]
pub struct Scheduler {
    slots: Limit,
    /// The function's own GPU limit (GPU functions with `max_gpu_concurrency` only).
    gpu_slots: Option<Limit>,
    /// The node-wide GPU limit (GPU functions only).
    node_gpu_slots: Option<Limit>,
    queue_depth: usize,
    queued: AtomicUsize,
    activity: Arc<Activity>,
}

/// What runs now, and when the last invocation finished: shared with every [`Admission`].
#[derive(Debug)]
struct Activity {
    running: AtomicUsize,
    /// The idle clock's origin: when the scheduler was made.
    origin: Instant,
    /// When the last invocation finished, as nanoseconds since `origin` (0: none yet).
    last_finished_ns: AtomicU64,
}

/// Which limit a request is waiting for or was refused by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The function's `max_concurrency`.
    Function,
    /// The function's `max_gpu_concurrency`.
    FunctionGpu,
    /// The node's `--max-gpu-concurrency`.
    NodeGpu,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The limit named is reached and the queue is full.
    QueueFull(Gate),
    /// The function is being removed or the node is shutting down.
    Closed,
}

/// A running slot; the slots free when this drops, and the idle clock restarts.
#[derive(Debug)]
pub struct Admission {
    _permits: Vec<OwnedSemaphorePermit>,
    activity: Arc<Activity>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        // The finish time is stored before the count drops, so that whoever sees nothing
        // running also sees when it finished.
        let finished = self.activity.origin.elapsed().as_nanos() as u64;
        self.activity
            .last_finished_ns
            .fetch_max(finished, Ordering::Release);
        self.activity.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Scheduler {
    /// A scheduler with `max_concurrency` slots and room for `queue_depth` waiters.
    pub fn new(max_concurrency: u32, queue_depth: u32) -> Self {
        Scheduler {
            slots: Limit::new(max_concurrency),
            gpu_slots: None,
            node_gpu_slots: None,
            queue_depth: queue_depth as usize,
            queued: AtomicUsize::new(0),
            activity: Arc::new(Activity {
                running: AtomicUsize::new(0),
                origin: Instant::now(),
                last_finished_ns: AtomicU64::new(0),
            }),
        }
    }

    /// Makes admission also take a slot of the function's own GPU limit (if it has one) and of
    /// the node's GPU limit: for functions that use the GPU.
    pub fn with_gpu_limits(mut self, function: Option<u32>, node: Limit) -> Self {
        self.gpu_slots = function.map(Limit::new);
        self.node_gpu_slots = Some(node);
        self
    }

    /// The limits admission goes through, in the order their slots are taken.
    fn gates(&self) -> impl Iterator<Item = (&Limit, Gate)> {
        std::iter::once((&self.slots, Gate::Function))
            .chain(self.gpu_slots.iter().map(|l| (l, Gate::FunctionGpu)))
            .chain(self.node_gpu_slots.iter().map(|l| (l, Gate::NodeGpu)))
    }

    /// The size of the limit `gate`, if this function goes through it.
    pub fn limit(&self, gate: Gate) -> Option<usize> {
        self.gates()
            .find(|(_, g)| *g == gate)
            .map(|(l, _)| l.size())
    }

    /// Takes a slot of every limit, waiting in the queue if there is room in it.
    pub async fn admit(&self) -> Result<Admission, Rejected> {
        let mut permits = Vec::with_capacity(3);
        let mut blocked = None;
        for (index, (limit, gate)) in self.gates().enumerate() {
            match limit.slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(Rejected::Closed),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    blocked = Some((index, gate));
                    break;
                }
            }
        }
        if let Some((index, gate)) = blocked {
            let reserved =
                self.queued
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                        (queued < self.queue_depth).then_some(queued + 1)
                    });
            if reserved.is_err() {
                return Err(Rejected::QueueFull(gate));
            }
            let _leave_queue = LeaveQueue(&self.queued);
            for (limit, _) in self.gates().skip(index) {
                match limit.slots.clone().acquire_owned().await {
                    Ok(permit) => permits.push(permit),
                    Err(_) => return Err(Rejected::Closed),
                }
            }
        }
        self.activity.running.fetch_add(1, Ordering::AcqRel);
        Ok(Admission {
            _permits: permits,
            activity: self.activity.clone(),
        })
    }

    /// Invocations running now.
    pub fn running(&self) -> usize {
        self.activity.running.load(Ordering::Acquire)
    }

    /// Whether anything runs or waits here now.
    pub fn busy(&self) -> bool {
        self.running() > 0 || self.queued() > 0
    }

    /// How long nothing has run or waited here: zero while something does, else the time
    /// since the last invocation finished (since the scheduler was made, if none has). A long
    /// request's idle time starts when it ends, not when it began.
    pub fn idle_time(&self) -> Duration {
        if self.busy() {
            return Duration::ZERO;
        }
        let finished = Duration::from_nanos(self.activity.last_finished_ns.load(Ordering::Acquire));
        self.activity.origin.elapsed().saturating_sub(finished)
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Waits until nothing runs or waits any more, then refuses every later request.
    pub async fn close_when_idle(&self) {
        if let Ok(all) = self.slots.slots.acquire_many(self.slots.size as u32).await {
            all.forget();
        }
        self.slots.slots.close();
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

    #[tokio::test]
    async fn the_idle_clock_restarts_when_an_invocation_finishes() {
        let scheduler = Scheduler::new(2, 2);
        std::thread::sleep(Duration::from_millis(20));
        assert!(scheduler.idle_time() >= Duration::from_millis(20));
        let admission = scheduler.admit().await.unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(scheduler.idle_time(), Duration::ZERO, "busy while it runs");
        let finished = Instant::now();
        drop(admission);
        let idle = scheduler.idle_time();
        assert!(
            idle <= finished.elapsed(),
            "idle {idle:?}: counted from the end of the invocation, not its start"
        );
    }

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
        assert_eq!(
            scheduler.admit().await.unwrap_err(),
            Rejected::QueueFull(Gate::Function)
        );

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
        assert_eq!(
            scheduler.admit().await.unwrap_err(),
            Rejected::QueueFull(Gate::Function)
        );
    }

    #[tokio::test]
    async fn gpu_limits_hold_for_every_function_sharing_the_node_limit() {
        let node = Limit::new(3);
        let a = Scheduler::new(10, 10).with_gpu_limits(Some(2), node.clone());
        let b = Scheduler::new(10, 0).with_gpu_limits(None, node.clone());
        let a1 = a.admit().await.unwrap();
        let _a2 = a.admit().await.unwrap();
        // `a` is at its own GPU limit: the next one waits in a's queue.
        let a3 = tokio::spawn(async move {
            let admission = a.admit().await;
            (a, admission.map(|_| ()))
        });
        while node.taken() < 2 {
            tokio::task::yield_now().await;
        }
        let _b1 = b.admit().await.unwrap();
        assert_eq!(node.taken(), 3);
        // The node is full and `b` has no queue: refused, naming the node's limit.
        assert_eq!(
            b.admit().await.unwrap_err(),
            Rejected::QueueFull(Gate::NodeGpu)
        );
        assert_eq!(b.limit(Gate::NodeGpu), Some(3));
        assert_eq!(b.limit(Gate::FunctionGpu), None);
        drop(a1);
        let (a, admitted) = a3.await.unwrap();
        admitted.unwrap();
        assert_eq!(a.running(), 1, "a2 still runs; a3 ran and finished");
        assert_eq!(a.queued(), 0);
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
