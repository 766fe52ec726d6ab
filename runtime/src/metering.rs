//! Metering: one usage record per invocation (wall time, GPU time, GPU memory-seconds and peak,
//! guest memory peak, bytes in and out, outcome, cold start), written to an append-only JSON
//! lines log under `DATA/usage/` (rotated by size) for billing export, summed by `fnctl usage`,
//! kept as per-function statistics for `fnctl stats` and exported as Prometheus metrics.
//!
//! A [`Meter`] is shared by the invocation's guest task and its response body; whichever
//! finishes last drops it, and the drop writes the record — so a streamed response's bytes are
//! counted in full.

use dashmap::DashMap;
use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The guest answered (whatever status it chose).
    Ok,
    /// The guest trapped.
    Trap,
    /// It ran past its timeout.
    Timeout,
    /// Refused before running: queue full, body too large, shutting down.
    Rejected,
    /// The guest sent no or a broken response, or the node failed.
    Error,
}

impl Outcome {
    /// All outcomes.
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Trap,
        Outcome::Timeout,
        Outcome::Rejected,
        Outcome::Error,
    ];

    /// The outcome an error answer stands for.
    pub fn of_error(kind: crate::error::ErrorKind) -> Outcome {
        use crate::error::ErrorKind::*;
        match kind {
            GuestTrap => Outcome::Trap,
            Timeout => Outcome::Timeout,
            Overloaded | Unavailable | PayloadTooLarge | BudgetExhausted => Outcome::Rejected,
            _ => Outcome::Error,
        }
    }

    /// The name used in records and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
        }
    }
}

/// One line of the usage log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageRecord {
    /// When the invocation started, RFC 3339 with milliseconds.
    pub started_at: String,
    /// The invocation id (also the `x-flint-invocation-id` header).
    pub invocation_id: String,
    /// The function.
    pub function: String,
    /// Its version.
    pub version: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status answered.
    pub status: u16,
    /// Whether the function's code had to be loaded from disk for it (after an idle unload;
    /// not when a function deployed from the same component held it, see
    /// [`crate::shared_code`]).
    pub cold_start: bool,
    /// Wall time from arrival to the end of the response, microseconds.
    pub wall_us: u64,
    /// Time in GPU calls (device work and waits; compute on the CPU backend), microseconds.
    pub gpu_us: u64,
    /// GPU memory held, integrated over time, byte-seconds.
    pub gpu_byte_seconds: f64,
    /// Most GPU memory held at once, bytes.
    pub gpu_peak_bytes: u64,
    /// Largest linear memory of the guest, bytes.
    pub memory_peak_bytes: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
}

/// Collects one invocation's figures; writes its record when dropped.
pub struct Meter {
    metering: Arc<Metering>,
    started: Instant,
    record: Mutex<UsageRecord>,
}

impl Meter {
    /// Starts metering an invocation.
    pub fn start(
        metering: Arc<Metering>,
        function: &str,
        version: u64,
        invocation_id: &str,
    ) -> Arc<Meter> {
        Arc::new(Meter {
            metering,
            started: Instant::now(),
            record: Mutex::new(UsageRecord {
                started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string(),
                invocation_id: invocation_id.to_string(),
                function: function.to_string(),
                version,
                outcome: Outcome::Ok,
                status: 0,
                cold_start: false,
                wall_us: 0,
                gpu_us: 0,
                gpu_byte_seconds: 0.0,
                gpu_peak_bytes: 0,
                memory_peak_bytes: 0,
                bytes_in: 0,
                bytes_out: 0,
            }),
        })
    }

    /// Changes the record.
    pub fn update(&self, change: impl FnOnce(&mut UsageRecord)) {
        change(&mut self.record.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let mut record = self
            .record
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        record.wall_us = self.started.elapsed().as_micros() as u64;
        self.metering.record(record);
    }
}

/// How many recent latencies each function keeps for percentiles.
const LATENCY_WINDOW: usize = 4096;

/// Per-function statistics since the node started.
#[derive(Debug, Default)]
pub struct FunctionStats {
    outcomes: [AtomicU64; 5],
    cold_starts: AtomicU64,
    gpu_us: AtomicU64,
    gpu_peak_bytes: AtomicU64,
    latencies_us: Mutex<VecDeque<u64>>,
}

impl FunctionStats {
    fn add(&self, record: &UsageRecord) {
        let index = Outcome::ALL
            .iter()
            .position(|o| *o == record.outcome)
            .unwrap_or(4);
        self.outcomes[index].fetch_add(1, Ordering::Relaxed);
        if record.cold_start {
            self.cold_starts.fetch_add(1, Ordering::Relaxed);
        }
        self.gpu_us.fetch_add(record.gpu_us, Ordering::Relaxed);
        self.gpu_peak_bytes
            .fetch_max(record.gpu_peak_bytes, Ordering::Relaxed);
        let mut latencies = self.latencies_us.lock().unwrap_or_else(|e| e.into_inner());
        if latencies.len() == LATENCY_WINDOW {
            latencies.pop_front();
        }
        latencies.push_back(record.wall_us);
    }

    /// The statistics as JSON: invocations by outcome, latency percentiles (ms) over the last
    /// invocations, cold starts, GPU time and peak.
    pub fn to_json(&self) -> serde_json::Value {
        let mut sorted: Vec<u64> = self
            .latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        sorted.sort_unstable();
        let percentile = |p: f64| -> Option<f64> {
            if sorted.is_empty() {
                return None;
            }
            let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize - 1;
            Some(sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0)
        };
        let outcomes: serde_json::Map<String, serde_json::Value> = Outcome::ALL
            .iter()
            .zip(&self.outcomes)
            .map(|(o, n)| (o.name().to_string(), n.load(Ordering::Relaxed).into()))
            .collect();
        let total: u64 = self
            .outcomes
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum();
        serde_json::json!({
            "invocations": total,
            "outcomes": outcomes,
            "latency_ms": { "p50": percentile(50.0), "p95": percentile(95.0), "p99": percentile(99.0), "window": sorted.len() },
            "cold_starts": self.cold_starts.load(Ordering::Relaxed),
            "gpu_ms": self.gpu_us.load(Ordering::Relaxed) as f64 / 1000.0,
            "gpu_peak_bytes": self.gpu_peak_bytes.load(Ordering::Relaxed),
        })
    }
}

/// The Prometheus metrics of a node.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    invocations: IntCounterVec,
    duration: HistogramVec,
    cold_starts: IntCounterVec,
    gpu_seconds: CounterVec,
    bytes: IntCounterVec,
    /// Invocations running, per function (set at scrape time).
    pub in_flight: IntGaugeVec,
    /// Requests waiting, per function (set at scrape time).
    pub queued: IntGaugeVec,
    /// GPU memory in use per device (set at scrape time).
    pub gpu_memory: IntGaugeVec,
    /// Models resident (set at scrape time).
    pub models: IntGauge,
    /// Time spent in GPU work per device since the node started (set at scrape time).
    pub gpu_busy: GaugeVec,
    /// GPU invocations running node-wide (set at scrape time).
    pub gpu_invocations: IntGauge,
    /// Deployed functions by where their code is: loaded, parked, unloaded (set at scrape
    /// time).
    pub functions: IntGaugeVec,
    /// Components whose code is in memory, each shared by the functions deployed from it
    /// (set at scrape time; see [`crate::shared_code`]).
    pub components: IntGauge,
    /// Functions unloaded, by reason: `idle` (`--idle-unload`) or `max_loaded`.
    pub unloads: IntCounterVec,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let invocations = IntCounterVec::new(
            Opts::new(
                "flint_invocations_total",
                "Invocations by function, outcome and HTTP status",
            ),
            &["function", "outcome", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "flint_invocation_duration_seconds",
                "Wall time of invocations",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.5, 16)?),
            &["function"],
        )?;
        let cold_starts = IntCounterVec::new(
            Opts::new("flint_cold_starts_total", "Cold starts"),
            &["function"],
        )?;
        let gpu_seconds = CounterVec::new(
            Opts::new(
                "flint_gpu_seconds_total",
                "Time invocations spent in GPU calls",
            ),
            &["function"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("flint_http_bytes_total", "Request and response body bytes"),
            &["function", "direction"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("flint_invocations_in_flight", "Invocations running"),
            &["function"],
        )?;
        let queued = IntGaugeVec::new(
            Opts::new("flint_invocations_queued", "Requests waiting for a slot"),
            &["function"],
        )?;
        let gpu_memory = IntGaugeVec::new(
            Opts::new("flint_gpu_memory_used_bytes", "GPU memory held by tensors"),
            &["device", "name"],
        )?;
        let models = IntGauge::new("flint_models_resident", "Models resident in the pool")?;
        let gpu_busy = GaugeVec::new(
            Opts::new(
                "flint_gpu_device_busy_seconds",
                "Time spent in GPU work on each device since the node started, summed over invocations",
            ),
            &["device", "name"],
        )?;
        let gpu_invocations = IntGauge::new(
            "flint_gpu_invocations_running",
            "GPU invocations holding a slot of the node-wide GPU limit",
        )?;
        let functions = IntGaugeVec::new(
            Opts::new(
                "flint_functions",
                "Deployed functions by where their code is (loaded, parked, unloaded)",
            ),
            &["residency"],
        )?;
        let components = IntGauge::new(
            "flint_components_in_memory",
            "Components whose code is in memory (functions deployed from one component share it)",
        )?;
        let unloads = IntCounterVec::new(
            Opts::new(
                "flint_unloads_total",
                "Functions unloaded: idle (--idle-unload) or to stay within --max-loaded",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(functions.clone()))?;
        registry.register(Box::new(components.clone()))?;
        registry.register(Box::new(unloads.clone()))?;
        registry.register(Box::new(gpu_busy.clone()))?;
        registry.register(Box::new(gpu_invocations.clone()))?;
        registry.register(Box::new(invocations.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(cold_starts.clone()))?;
        registry.register(Box::new(gpu_seconds.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(gpu_memory.clone()))?;
        registry.register(Box::new(models.clone()))?;
        Ok(Metrics {
            registry,
            invocations,
            duration,
            cold_starts,
            gpu_seconds,
            bytes,
            in_flight,
            queued,
            gpu_memory,
            models,
            gpu_busy,
            gpu_invocations,
            functions,
            components,
            unloads,
        })
    }

    fn add(&self, record: &UsageRecord) {
        let f = record.function.as_str();
        self.invocations
            .with_label_values(&[f, record.outcome.name(), &record.status.to_string()])
            .inc();
        self.duration
            .with_label_values(&[f])
            .observe(record.wall_us as f64 / 1e6);
        if record.cold_start {
            self.cold_starts.with_label_values(&[f]).inc();
        }
        self.gpu_seconds
            .with_label_values(&[f])
            .inc_by(record.gpu_us as f64 / 1e6);
        self.bytes
            .with_label_values(&[f, "in"])
            .inc_by(record.bytes_in);
        self.bytes
            .with_label_values(&[f, "out"])
            .inc_by(record.bytes_out);
    }
}

/// Size at which the usage log rotates.
pub const USAGE_LOG_ROTATE_BYTES: u64 = 64 << 20;
/// Rotated usage logs kept (`usage.jsonl.1` ... `.N`).
pub const USAGE_LOG_KEEP: usize = 8;

/// The node's metering: the usage log, per-function stats, metrics.
pub struct Metering {
    dir: PathBuf,
    log: Arc<PendingRecords>,
    writer: Option<std::thread::JoinHandle<()>>,
    stats: DashMap<String, Arc<FunctionStats>>,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

impl Metering {
    /// Opens `data_dir/usage` and starts the log writer thread.
    pub fn open(data_dir: &Path, rotate_bytes: u64) -> anyhow::Result<Arc<Self>> {
        let dir = data_dir.join("usage");
        std::fs::create_dir_all(&dir)?;
        let log = Arc::new(PendingRecords::default());
        let writer = std::thread::Builder::new()
            .name("flint-usage-log".into())
            .spawn({
                let dir = dir.clone();
                let log = log.clone();
                move || write_log(&dir, &log, rotate_bytes)
            })?;
        Ok(Arc::new(Metering {
            dir,
            log,
            writer: Some(writer),
            stats: DashMap::new(),
            metrics: Metrics::new().map_err(|e| anyhow::anyhow!("creating metrics: {e}"))?,
        }))
    }

    fn record(&self, record: UsageRecord) {
        self.stats
            .entry(record.function.clone())
            .or_default()
            .add(&record);
        self.metrics.add(&record);
        tracing::debug!(target: "flint::usage", invocation = %record.invocation_id, outcome = record.outcome.name(), wall_us = record.wall_us, "metered");
        // No wake-up per record: the writer thread collects them every FLUSH_INTERVAL while
        // records come in, and only the first record after a quiet interval wakes it.
        self.log
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        if self.log.idle.swap(false, Ordering::SeqCst)
            && let Some(writer) = &self.writer
        {
            writer.thread().unpark();
        }
    }

    /// Statistics of every function that has been invoked, or of `function`.
    pub fn stats(&self, function: Option<&str>) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for entry in self.stats.iter() {
            if function.is_none_or(|f| f == entry.key()) {
                out.insert(entry.key().clone(), entry.value().to_json());
            }
        }
        serde_json::Value::Object(out)
    }

    /// Every record in the usage log (oldest first), optionally only those of `function` that
    /// started at or after `since`.
    pub fn read_usage(
        &self,
        function: Option<&str>,
        since: Option<std::time::SystemTime>,
    ) -> anyhow::Result<Vec<UsageRecord>> {
        let mut files: Vec<PathBuf> = (1..=USAGE_LOG_KEEP)
            .rev()
            .map(|n| self.dir.join(format!("usage.jsonl.{n}")))
            .collect();
        files.push(self.dir.join("usage.jsonl"));
        let mut records = Vec::new();
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let record: UsageRecord = match serde_json::from_str(line) {
                    Ok(record) => record,
                    Err(_) => continue, // a line cut short by a crash
                };
                if function.is_some_and(|f| f != record.function) {
                    continue;
                }
                if let Some(since) = since
                    && humantime::parse_rfc3339(&record.started_at).is_ok_and(|t| t < since)
                {
                    continue;
                }
                records.push(record);
            }
        }
        Ok(records)
    }
}

/// Records waiting for the writer thread.
#[derive(Default)]
struct PendingRecords {
    records: Mutex<Vec<UsageRecord>>,
    closed: std::sync::atomic::AtomicBool,
    /// The writer found nothing to write and sleeps until the next record wakes it.
    idle: std::sync::atomic::AtomicBool,
}

/// How often the writer thread appends what was recorded while records come in (at most this
/// much is lost in a crash; a clean shutdown writes everything). After an interval with none
/// it sleeps without waking until the next one.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

impl Drop for Metering {
    fn drop(&mut self) {
        self.log.closed.store(true, Ordering::Release);
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

fn write_log(dir: &Path, pending: &PendingRecords, rotate_bytes: u64) {
    let path = dir.join("usage.jsonl");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
    };
    let mut file = match open() {
        Ok(file) => file,
        Err(error) => {
            tracing::error!("cannot open the usage log {}: {error}", path.display());
            return;
        }
    };
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buffer = Vec::new();
    loop {
        let closed = pending.closed.load(Ordering::Acquire);
        let records =
            std::mem::take(&mut *pending.records.lock().unwrap_or_else(|e| e.into_inner()));
        for record in &records {
            if serde_json::to_writer(&mut buffer, record).is_ok() {
                buffer.push(b'\n');
            }
        }
        if !buffer.is_empty() {
            if let Err(error) = file.write_all(&buffer) {
                tracing::error!("writing the usage log: {error}");
            }
            size += buffer.len() as u64;
            buffer.clear();
        }
        if size >= rotate_bytes {
            for n in (1..USAGE_LOG_KEEP).rev() {
                let _ = std::fs::rename(
                    dir.join(format!("usage.jsonl.{n}")),
                    dir.join(format!("usage.jsonl.{}", n + 1)),
                );
            }
            let _ = std::fs::rename(&path, dir.join("usage.jsonl.1"));
            match open() {
                Ok(new) => {
                    file = new;
                    size = 0;
                }
                Err(error) => {
                    tracing::error!("reopening the usage log: {error}");
                    return;
                }
            }
        }
        if closed {
            return;
        }
        if records.is_empty() {
            sleep_until_recorded(pending);
        } else {
            std::thread::park_timeout(FLUSH_INTERVAL);
        }
    }
}

/// Parks the writer thread until a record arrives or the log closes.
fn sleep_until_recorded(pending: &PendingRecords) {
    pending.idle.store(true, Ordering::SeqCst);
    // A record pushed before `idle` was set would not wake us: look once more.
    let empty = pending
        .records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty();
    if !empty {
        pending.idle.store(false, Ordering::SeqCst);
        return;
    }
    while pending.idle.load(Ordering::SeqCst) && !pending.closed.load(Ordering::Acquire) {
        std::thread::park();
    }
}
