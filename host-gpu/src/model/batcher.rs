//! Dynamic batching: concurrent requests for the same model are collected into one forward pass.
//!
//! A worker thread per model takes the first waiting request, drains whatever else is already
//! queued, then waits at most `window` for more (up to `max_texts`), runs one forward pass over
//! all of them and hands each request its rows back. With batching off (`window` zero and one
//! request per pass) it serializes requests, which is what peers without batching do.
//!
//! The wait only happens when there is company to expect. A request sent while the worker was
//! idle, right after a pass that served a single request, is alone (so is every request of a
//! lone client): it runs at once, with whatever else is already queued, instead of paying the
//! window. A request sent while a pass was running, or after a pass of several requests, means
//! requests overlap, and the window gathers them.

use super::EmbeddingModel;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How a model batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Longest wait for more requests after the first one, while requests overlap.
    pub window: Duration,
    /// Most texts in one forward pass.
    pub max_texts: usize,
    /// Whether to batch at all (off: one request per forward pass).
    pub enabled: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            window: Duration::from_millis(2),
            max_texts: 256,
            enabled: true,
        }
    }
}

/// Counters of a batcher.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Requests served.
    pub requests: AtomicU64,
    /// Forward passes run.
    pub batches: AtomicU64,
    /// Texts embedded.
    pub texts: AtomicU64,
    /// Tokens processed.
    pub tokens: AtomicU64,
}

/// The answer to one request: one vector per sequence.
pub type Reply = Box<dyn FnOnce(Vec<Vec<f32>>) + Send>;

struct Job {
    sequences: Vec<Vec<u32>>,
    reply: Reply,
    /// When it was submitted.
    sent: Instant,
}

/// The batching front of one resident model. Dropping it stops its worker thread and waits
/// for it, so the model (and its device memory) is freed before the batcher is gone: a node
/// that exits right after must not have a thread still freeing CUDA memory while the process's
/// CUDA libraries tear themselves down (seen on an H200 as a node that exited non-zero).
pub struct Batcher {
    sender: Option<Sender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
    stats: Arc<BatchStats>,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Without a sender the worker's `recv` fails once the queue is empty: it finishes what
        // was queued, drops the model and returns.
        drop(self.sender.take());
        if let Some(worker) = self.worker.take()
            && worker.thread().id() != std::thread::current().id()
            && worker.join().is_err()
        {
            tracing::error!("a model worker thread panicked");
        }
    }
}

impl Batcher {
    /// Starts the worker thread for `model`.
    pub fn start(name: &str, model: Arc<EmbeddingModel>, options: BatchOptions) -> Batcher {
        Batcher::start_with(name, move |sequences| model.embed_ids(sequences), options)
    }

    /// Starts the worker thread around any forward pass (`embed` maps sequences to one vector
    /// each, in order).
    fn start_with(
        name: &str,
        embed: impl Fn(&[Vec<u32>]) -> Vec<Vec<f32>> + Send + 'static,
        options: BatchOptions,
    ) -> Batcher {
        let (sender, receiver) = mpsc::channel();
        let stats = Arc::new(BatchStats::default());
        let worker_stats = stats.clone();
        let started = Instant::now();
        let worker = std::thread::Builder::new()
            .name(format!("flint-model-{name}"))
            .spawn(move || run(embed, receiver, options, worker_stats, started))
            .expect("spawning a model worker");
        Batcher {
            sender: Some(sender),
            worker: Some(worker),
            stats,
        }
    }

    /// Queues token sequences; `reply` gets their embeddings (in order) from the worker thread.
    pub fn submit(&self, sequences: Vec<Vec<u32>>, reply: Reply) {
        // The worker only stops when the sender is gone, so this cannot fail while `self` lives.
        let Some(sender) = &self.sender else { return };
        let _ = sender.send(Job {
            sequences,
            reply,
            sent: Instant::now(),
        });
    }

    /// The counters.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

/// The worker's loop: gathers a batch, runs it, answers each request. `idle_since` is when
/// the worker last became free (its start, then the end of each pass).
fn run(
    embed: impl Fn(&[Vec<u32>]) -> Vec<Vec<f32>>,
    receiver: Receiver<Job>,
    options: BatchOptions,
    stats: Arc<BatchStats>,
    mut idle_since: Instant,
) {
    let mut last_batch_requests = 0;
    while let Ok(first) = receiver.recv() {
        let alone = first.sent >= idle_since && last_batch_requests <= 1;
        let mut jobs = vec![first];
        if options.enabled {
            let mut texts = jobs[0].sequences.len();
            let window = if alone {
                Duration::ZERO
            } else {
                options.window
            };
            let deadline = Instant::now() + window;
            while texts < options.max_texts {
                let next = match receiver.try_recv() {
                    Ok(job) => Ok(job),
                    Err(_) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        receiver.recv_timeout(left)
                    }
                };
                match next {
                    Ok(job) => {
                        texts += job.sequences.len();
                        jobs.push(job);
                    }
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        let sequences: Vec<Vec<u32>> = jobs
            .iter()
            .flat_map(|j| j.sequences.iter().cloned())
            .collect();
        let tokens: usize = sequences.iter().map(Vec::len).sum();
        let mut vectors = embed(&sequences).into_iter();
        // Before any answer goes out, so that a client's next request counts as sent to an
        // idle worker.
        idle_since = Instant::now();
        last_batch_requests = jobs.len();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        stats
            .texts
            .fetch_add(sequences.len() as u64, Ordering::Relaxed);
        stats.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        for job in jobs {
            let rows: Vec<Vec<f32>> = vectors.by_ref().take(job.sequences.len()).collect();
            (job.reply)(rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A forward pass that answers each sequence with its length and records the batch sizes
    /// it saw. Its first pass says on `entered` that it started, then waits for `release`.
    fn counting_pass(
        batches: Arc<Mutex<Vec<usize>>>,
        entered: Sender<()>,
        release: Receiver<()>,
    ) -> impl Fn(&[Vec<u32>]) -> Vec<Vec<f32>> + Send + 'static {
        let release = Mutex::new(Some(release));
        move |sequences| {
            if let Some(release) = release.lock().unwrap().take() {
                let _ = entered.send(());
                release.recv().unwrap();
            }
            batches.lock().unwrap().push(sequences.len());
            sequences.iter().map(|s| vec![s.len() as f32]).collect()
        }
    }

    /// Submits one text of `len` tokens; the receiver gets its vector.
    fn submit(batcher: &Batcher, len: usize) -> Receiver<Vec<Vec<f32>>> {
        let (tx, rx) = mpsc::channel();
        batcher.submit(
            vec![vec![0; len]],
            Box::new(move |rows| {
                let _ = tx.send(rows);
            }),
        );
        rx
    }

    const LONG_WINDOW: Duration = Duration::from_secs(30);
    const PATIENCE: Duration = Duration::from_secs(10);

    #[test]
    fn a_lone_request_runs_at_once_instead_of_waiting_for_the_window() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (release, held) = mpsc::channel();
        release.send(()).unwrap();
        let options = BatchOptions {
            window: LONG_WINDOW,
            ..Default::default()
        };
        let pass = counting_pass(batches.clone(), mpsc::channel().0, held);
        let batcher = Batcher::start_with("test", pass, options);
        // One client, one request after another: none waits the 30 s window.
        for len in 1..=3 {
            let rows = submit(&batcher, len)
                .recv_timeout(PATIENCE)
                .expect("a lone request waited for company");
            assert_eq!(rows, vec![vec![len as f32]]);
        }
        assert_eq!(*batches.lock().unwrap(), [1, 1, 1]);
    }

    #[test]
    fn overlapping_requests_wait_for_company_and_share_a_pass() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (release, held) = mpsc::channel();
        let (entered, started) = mpsc::channel();
        let options = BatchOptions {
            window: LONG_WINDOW,
            max_texts: 2,
            enabled: true,
        };
        let pass = counting_pass(batches.clone(), entered, held);
        let batcher = Batcher::start_with("test", pass, options);
        // The first request finds the worker idle and runs alone; its pass is held.
        let first = submit(&batcher, 1);
        started.recv_timeout(PATIENCE).unwrap();
        // A second is sent during that pass, so the worker then waits for more, and a third
        // that comes later still joins its pass.
        let second = submit(&batcher, 2);
        release.send(()).unwrap();
        assert_eq!(first.recv_timeout(PATIENCE).unwrap(), vec![vec![1.0]]);
        std::thread::sleep(Duration::from_millis(50));
        let third = submit(&batcher, 3);
        assert_eq!(second.recv_timeout(PATIENCE).unwrap(), vec![vec![2.0]]);
        assert_eq!(third.recv_timeout(PATIENCE).unwrap(), vec![vec![3.0]]);
        assert_eq!(*batches.lock().unwrap(), [1, 2]);
        assert_eq!(batcher.stats().requests.load(Ordering::Relaxed), 3);
        assert_eq!(batcher.stats().batches.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn dropping_the_batcher_answers_what_was_queued_and_frees_the_model_first() {
        // The model stands for one holding device memory: it must be gone when `drop` returns.
        let model = Arc::new(());
        let held = model.clone();
        let (release, hold) = mpsc::channel::<()>();
        let (entered, started) = mpsc::channel();
        let pass = counting_pass(Arc::default(), entered, hold);
        let batcher = Batcher::start_with(
            "test",
            move |sequences| {
                let _model = &held;
                pass(sequences)
            },
            BatchOptions::default(),
        );
        let first = submit(&batcher, 1);
        started.recv_timeout(PATIENCE).unwrap();
        let queued = submit(&batcher, 2);
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            release.send(()).unwrap();
        });
        drop(batcher);
        assert_eq!(
            Arc::strong_count(&model),
            1,
            "the worker still holds the model"
        );
        assert_eq!(first.try_recv().unwrap(), vec![vec![1.0]]);
        assert_eq!(queued.try_recv().unwrap(), vec![vec![2.0]]);
        releaser.join().unwrap();
    }
}
