//! Dynamic batching: concurrent requests for the same model are collected into one forward pass.
//!
//! A worker thread per model takes the first waiting request, drains whatever else is already
//! queued, then waits at most `window` for more (up to `max_texts`), runs one forward pass over
//! all of them and hands each request its rows back. With batching off (`window` zero and one
//! request per pass) it serializes requests, which is what peers without batching do.

use super::EmbeddingModel;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How a model batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Longest wait for more requests after the first one.
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
}

/// The batching front of one resident model.
pub struct Batcher {
    sender: Sender<Job>,
    stats: Arc<BatchStats>,
}

impl Batcher {
    /// Starts the worker thread for `model`.
    pub fn start(name: &str, model: Arc<EmbeddingModel>, options: BatchOptions) -> Batcher {
        let (sender, receiver) = mpsc::channel();
        let stats = Arc::new(BatchStats::default());
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name(format!("flint-model-{name}"))
            .spawn(move || run(model, receiver, options, worker_stats))
            .expect("spawning a model worker");
        Batcher { sender, stats }
    }

    /// Queues token sequences; `reply` gets their embeddings (in order) from the worker thread.
    pub fn submit(&self, sequences: Vec<Vec<u32>>, reply: Reply) {
        // The worker only stops when every sender is gone, so this cannot fail while `self` lives.
        let _ = self.sender.send(Job { sequences, reply });
    }

    /// The counters.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

fn run(
    model: Arc<EmbeddingModel>,
    receiver: Receiver<Job>,
    options: BatchOptions,
    stats: Arc<BatchStats>,
) {
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        if options.enabled {
            let mut texts = jobs[0].sequences.len();
            let deadline = Instant::now() + options.window;
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
        let mut vectors = model.embed_ids(&sequences).into_iter();
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
