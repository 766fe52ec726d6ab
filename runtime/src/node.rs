//! The node's state: the shared engine and linker, the registry on disk, and the functions it
//! serves. Deploy, rollback and removal go through here, one at a time; serving reads a
//! consistent snapshot (function map + route table) under a short read lock.

use crate::engine::{self, EngineOptions};
use crate::epoch::{EpochTicker, GuestActivity};
use crate::error::{ApiError, ErrorKind};
use crate::function::{self, LoadedFunction, NodeShare};
use crate::gpu_budget::GpuSpend;
use crate::host::InvocationState;
use crate::idle::Residency;
use crate::names;
use crate::registry::{Manifest, NewArtifact, Registry, VersionPaths};
use crate::router::{RouteMatch, RouteTable};
use crate::scheduler::Limit;
use crate::settings::FunctionSettings;
use crate::shared_code::CodeCache;
use crate::units::{format_duration, format_size};
use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, TryLockError, Weak};
use std::time::Instant;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

mod sweep;

/// Uploads from this size on are followed by handing freed heap back to the OS
/// ([`crate::heap::release_freed`]).
const LARGE_UPLOAD_BYTES: usize = 1 << 20;

/// Default largest component upload.
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where the registry and the admin token live.
    pub data_dir: PathBuf,
    /// Largest component a deploy may upload (413 beyond).
    pub max_component_bytes: u64,
    /// Pooling allocator sizing.
    pub engine: EngineOptions,
    /// The GPU pool's setup.
    pub gpu: flint_gpu::PoolOptions,
    /// How models batch concurrent requests.
    pub batching: flint_gpu::model::batcher::BatchOptions,
    /// Size at which the usage log rotates.
    pub usage_log_rotate_bytes: u64,
    /// When functions without invocations are parked and unloaded.
    pub idle: crate::idle::IdlePolicy,
    /// GPU invocations (of functions importing `flint:gpu`) running at once, node-wide.
    pub max_gpu_concurrency: u32,
    /// Which functions get fresh instances built ahead of their requests, and how many; see
    /// [`crate::sandbox`].
    pub spares: crate::sandbox::SparePolicy,
}

/// Default node-wide limit on GPU invocations running at once.
pub const DEFAULT_MAX_GPU_CONCURRENCY: u32 = 64;

/// What is served right now: functions by name and the route table built from them.
#[derive(Default)]
struct Served {
    functions: HashMap<String, Arc<LoadedFunction>>,
    routes: RouteTable,
}

impl Served {
    fn with(&self, change: impl FnOnce(&mut HashMap<String, Arc<LoadedFunction>>)) -> Served {
        let mut functions = self.functions.clone();
        change(&mut functions);
        let routes = RouteTable::new(
            functions
                .iter()
                .map(|(name, f)| (name.as_str(), f.manifest.settings.routes.as_slice())),
        );
        Served { functions, routes }
    }
}

/// A running Flint node (without its listeners; see [`crate::server`]).
pub struct Node {
    engine: Engine,
    linker: Arc<Linker<InvocationState>>,
    registry: Registry,
    options: NodeOptions,
    served: RwLock<Arc<Served>>,
    changes: tokio::sync::Mutex<()>,
    loaded: AtomicBool,
    load_failures: Mutex<Vec<(String, String)>>,
    public_addr: OnceLock<SocketAddr>,
    invocations: AtomicU64,
    pool: Arc<flint_gpu::Pool>,
    models: Arc<crate::models::ModelRegistry>,
    metering: Arc<crate::metering::Metering>,
    guest_logs: crate::guest_log::GuestLogs,
    gpu_slots: Limit,
    /// What each function holds on the GPU devices, by function name.
    holdings: dashmap::DashMap<String, Arc<flint_gpu::Holdings>>,
    /// What each function with a GPU budget spent of it, by function name.
    gpu_spend: dashmap::DashMap<String, Arc<GpuSpend>>,
    utilization: Arc<crate::gpu::utilization::Sampler>,
    /// The node-wide cap on spare sandboxes.
    spare_budget: Arc<crate::sandbox::SpareBudget>,
    epoch: EpochTicker,
    /// Wakes the idle sweep when a function is deployed or loaded, or called after being
    /// parked or unloaded: one more to schedule.
    wake_sweep: Arc<tokio::sync::Notify>,
    /// The components in memory, each shared by the functions deployed from it.
    code_cache: Arc<CodeCache>,
    /// Deploys of one component (by SHA-256) go one at a time, so that the second of two
    /// deploys of new bytes reuses the first's code instead of compiling it again.
    deploys_by_component: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// One compile at a time: wasmtime compiles a component on every core already, and each
    /// compile holds hundreds of MiB for a large component while it runs.
    compiling: Mutex<()>,
}

/// A function as the admin API describes it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionInfo {
    /// The function's name.
    pub name: String,
    /// The version serving now.
    pub version: u64,
    /// Every version on disk.
    pub versions: Vec<u64>,
    /// Every path prefix it serves (`/fn/NAME` first).
    pub routes: Vec<String>,
    /// Where to reach it on the public listener.
    pub url: String,
    /// Memory cap per invocation, e.g. `128MiB`.
    pub memory: String,
    /// Timeout per invocation, e.g. `30s`.
    pub timeout: String,
    /// Invocations at once.
    pub max_concurrency: u32,
    /// Waiting requests allowed.
    pub queue_depth: u32,
    /// Largest request body, e.g. `10MiB`.
    pub max_body: String,
    /// Whether outbound network access is granted.
    pub allow_outbound: bool,
    /// GPU memory quota per invocation, e.g. `512MiB`.
    pub gpu_memory: String,
    /// GPU memory quota of all its running invocations together, if set.
    pub gpu_function_memory: Option<String>,
    /// Whether custom CUDA kernels are allowed.
    pub allow_kernels: bool,
    /// Whether it is exempt from idle unloading.
    pub keep_warm: bool,
    /// Whether its component imports `flint:gpu` (GPU limits and budgets apply).
    pub uses_gpu: bool,
    /// Its GPU invocations at once, if limited.
    pub max_gpu_concurrency: Option<u32>,
    /// Its GPU budget, e.g. `30s/1h`, if it has one.
    pub gpu_budget: Option<String>,
    /// Whether its component is in memory now (false after an idle unload).
    pub loaded: bool,
    /// Where its code is: `loaded`, `parked` (code pages given back) or `unloaded`.
    pub residency: crate::idle::Residency,
    /// Names of the environment variables set (values are not shown).
    pub env: Vec<String>,
    /// SHA-256 of the component.
    pub sha256: String,
    /// Size of the component in bytes.
    pub component_bytes: u64,
    /// When this version was deployed.
    pub deployed_at: String,
    /// Invocations running now.
    pub running: usize,
    /// Requests waiting now.
    pub queued: usize,
    /// Fresh instances built ahead of its next requests, ready now.
    pub spare_sandboxes: usize,
    /// Requests of this version that started on a spare sandbox.
    pub spare_sandboxes_used: u64,
}

/// What a deploy reports.
#[derive(Debug, Clone, Serialize)]
pub struct DeployOutcome {
    /// The function as it now serves.
    #[serde(flatten)]
    pub function: FunctionInfo,
    /// Milliseconds spent compiling and linking (or, for reused code, checking that it links).
    pub compile_ms: u64,
    /// The version whose compiled code this one shares, having the same component; `None`:
    /// compiled for this deploy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused_code_of: Option<VersionRef>,
}

/// One version of one function.
#[derive(Debug, Clone, Serialize)]
pub struct VersionRef {
    /// The function's name.
    pub function: String,
    /// Its version number.
    pub version: u64,
}

/// Artifacts known to load with this engine, by the SHA-256 of their component.
type LoadedArtifacts = Mutex<HashMap<String, VersionPaths>>;

/// A deployed component, hashed, with its code ready to store (see [`Node::deploy`]).
struct PreparedCode {
    component: Vec<u8>,
    sha256: String,
    code: Code,
}

/// Where a new version's code comes from.
enum Code {
    /// Compiled for this deploy: the serialized artifact.
    Compiled(Vec<u8>),
    /// The code of a served version with the same component: that version, and its
    /// artifact loaded and linked (the check that it still loads).
    Reused(Arc<LoadedFunction>, ProxyPre<InvocationState>),
}

impl PreparedCode {
    fn reused_code_of(&self) -> Option<VersionRef> {
        match &self.code {
            Code::Compiled(_) => None,
            Code::Reused(from, _) => Some(VersionRef {
                function: from.name.to_string(),
                version: from.manifest.version,
            }),
        }
    }
}

impl Node {
    /// Opens the registry under `options.data_dir` and builds the engine. Functions are not
    /// loaded yet: call [`Node::load_all`].
    pub fn new(options: NodeOptions) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("creating the data dir {}", options.data_dir.display()))?;
        let engine = engine::build_engine(options.engine)?;
        let linker = Arc::new(engine::build_linker(&engine)?);
        let registry = Registry::open(&options.data_dir)?;
        let pool = flint_gpu::Pool::probe(options.gpu.clone());
        let models = Arc::new(crate::models::ModelRegistry::open(
            &options.data_dir,
            options.batching,
            pool.clone(),
        )?);
        let metering =
            crate::metering::Metering::open(&options.data_dir, options.usage_log_rotate_bytes)?;
        let guest_logs = crate::guest_log::GuestLogs::open(&options.data_dir)?;
        Ok(Arc::new(Node {
            gpu_slots: Limit::new(options.max_gpu_concurrency),
            holdings: Default::default(),
            gpu_spend: Default::default(),
            utilization: Arc::new(crate::gpu::utilization::Sampler::new(pool.devices().len())),
            spare_budget: crate::sandbox::SpareBudget::for_instances(options.engine.max_instances),
            pool,
            models,
            metering,
            guest_logs,
            epoch: EpochTicker::start(engine.clone()),
            engine,
            linker,
            registry,
            options,
            served: RwLock::new(Arc::new(Served::default())),
            changes: tokio::sync::Mutex::new(()),
            loaded: AtomicBool::new(false),
            load_failures: Mutex::new(Vec::new()),
            public_addr: OnceLock::new(),
            invocations: AtomicU64::new(0),
            wake_sweep: Arc::default(),
            code_cache: Arc::default(),
            deploys_by_component: Mutex::default(),
            compiling: Mutex::default(),
        }))
    }

    /// The node's options.
    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Marks guests as running, which keeps the engine's epoch (their clock) advancing.
    pub fn guest_activity(&self) -> &GuestActivity {
        self.epoch.activity()
    }

    /// The node-wide cap on spare sandboxes.
    pub fn spare_budget(&self) -> &Arc<crate::sandbox::SpareBudget> {
        &self.spare_budget
    }

    /// The linker every function is instantiated against.
    pub fn linker(&self) -> &Arc<Linker<InvocationState>> {
        &self.linker
    }

    /// The GPU pool.
    pub fn gpu_pool(&self) -> &Arc<flint_gpu::Pool> {
        &self.pool
    }

    /// The registered models.
    pub fn models(&self) -> &Arc<crate::models::ModelRegistry> {
        &self.models
    }

    /// Captured guest output.
    pub fn guest_logs(&self) -> &crate::guest_log::GuestLogs {
        &self.guest_logs
    }

    /// Usage records, statistics and metrics.
    pub fn metering(&self) -> &Arc<crate::metering::Metering> {
        &self.metering
    }

    /// The node-wide GPU concurrency limit.
    pub fn gpu_slots(&self) -> &Limit {
        &self.gpu_slots
    }

    /// What `name` shares with the node and its other versions.
    fn share(&self, name: &str) -> NodeShare {
        NodeShare {
            gpu_slots: self.gpu_slots.clone(),
            holdings: self
                .holdings
                .entry(name.to_string())
                .or_insert_with(|| flint_gpu::Holdings::new(format!("function `{name}`")))
                .clone(),
            wake_sweep: self.wake_sweep.clone(),
            code_cache: self.code_cache.clone(),
        }
    }

    /// What `name` spent of its GPU budget (a fresh account the first time).
    pub fn gpu_spend(&self, name: &str) -> Arc<GpuSpend> {
        self.gpu_spend
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(GpuSpend::new()))
            .clone()
    }

    /// Recent GPU utilization per device.
    pub fn utilization(&self) -> &crate::gpu::utilization::Sampler {
        &self.utilization
    }

    /// Samples GPU busy time (for utilization) while there is GPU work, until the node is
    /// dropped (see [`crate::gpu::utilization::Sampler::run`]).
    pub async fn sample_gpu_utilization(self: Arc<Self>) {
        let node = Arc::downgrade(&self);
        let sampler = self.utilization.clone();
        drop(self);
        let running = node.clone();
        sampler
            .run(
                || node.upgrade().map(|node| node.pool.clone()),
                move || {
                    running
                        .upgrade()
                        .is_some_and(|node| node.gpu_slots.taken() > 0)
                },
            )
            .await;
    }

    /// Every served function, by name.
    pub fn functions(&self) -> Vec<Arc<LoadedFunction>> {
        let served = self.snapshot();
        let mut functions: Vec<_> = served.functions.values().cloned().collect();
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        functions
    }

    /// How many components have their code in memory (functions deployed from one share it).
    pub fn components_in_memory(&self) -> usize {
        self.code_cache.len()
    }

    /// How many served functions are loaded, parked and unloaded.
    pub fn count_by_residency(&self) -> [(Residency, usize); 3] {
        let mut counts = [
            (Residency::Loaded, 0),
            (Residency::Parked, 0),
            (Residency::Unloaded, 0),
        ];
        for function in self.snapshot().functions.values() {
            counts[function.residency() as usize].1 += 1;
        }
        counts
    }

    /// The Prometheus text of the node's metrics (gauges refreshed now).
    pub fn render_metrics(&self) -> String {
        let metrics = &self.metering.metrics;
        let served = self.snapshot();
        metrics.in_flight.reset();
        metrics.queued.reset();
        for (name, function) in &served.functions {
            metrics
                .in_flight
                .with_label_values(&[name])
                .set(function.scheduler.running() as i64);
            metrics
                .queued
                .with_label_values(&[name])
                .set(function.scheduler.queued() as i64);
        }
        for device in self.pool.devices() {
            let labels = [device.index.to_string(), device.name.clone()];
            metrics
                .gpu_memory
                .with_label_values(&labels)
                .set(device.used_bytes as i64);
            metrics
                .gpu_busy
                .with_label_values(&labels)
                .set(device.busy.as_secs_f64());
        }
        metrics.gpu_invocations.set(self.gpu_slots.taken() as i64);
        metrics.models.set(self.models.list().len() as i64);
        for (residency, count) in self.count_by_residency() {
            metrics
                .functions
                .with_label_values(&[residency.name()])
                .set(count as i64);
        }
        metrics.components.set(self.components_in_memory() as i64);
        let mut text = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(error) = encoder.encode_utf8(&metrics.registry.gather(), &mut text) {
            tracing::error!("encoding metrics: {error}");
        }
        text
    }

    /// Records where the public listener is bound (used for the URLs the admin API reports).
    pub fn set_public_addr(&self, addr: SocketAddr) {
        let _ = self.public_addr.set(addr);
    }

    /// Counts one more invocation.
    pub fn count_invocation(&self) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Invocations started since the node started.
    pub fn invocation_count(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, served: Served) {
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(served);
        // A newly deployed or loaded function is one more for the idle sweep to schedule.
        self.wake_sweep.notify_one();
    }

    /// Loads every deployed function from its precompiled artifact (recompiling only if the
    /// artifact belongs to another engine build). A function that fails to load is logged and
    /// reported by `/readyz`; the others serve.
    pub async fn load_all(self: &Arc<Self>) -> Result<()> {
        let names = self.registry.function_names()?;
        let started = Instant::now();
        let models = self.models.clone();
        let model_failures = tokio::task::spawn_blocking(move || models.load_all())
            .await
            .map_err(|e| anyhow!("model loader failed: {e}"))?;
        self.load_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(
                model_failures
                    .into_iter()
                    .map(|(name, error)| (format!("model {name}"), error)),
            );
        let mut loaded = Vec::new();
        let artifacts = Arc::new(LoadedArtifacts::default());
        for name in names {
            let node = self.clone();
            let result = tokio::task::spawn_blocking({
                let name = name.clone();
                let artifacts = artifacts.clone();
                move || node.load_current(&name, &artifacts)
            })
            .await
            .map_err(|e| anyhow!("loader task failed: {e}"))
            .and_then(|r| r);
            match result {
                Ok(function) => {
                    let manifest = &function.manifest;
                    let paths = self.registry.paths(&manifest.name, manifest.version);
                    artifacts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(manifest.sha256.clone())
                        .or_insert(paths);
                    // Scale to zero across restarts: with idle unloading on, a function starts
                    // unloaded (it was loaded once to check its artifact) and its first request
                    // loads it, so thousands of idle functions cost little memory.
                    if self.options.idle.unloads() {
                        function.unload_unless_warm();
                    }
                    loaded.push(function)
                }
                Err(error) => {
                    tracing::error!(function = %name, "failed to load: {error:#}");
                    self.load_failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name, format!("{error:#}")));
                }
            }
        }
        if self.options.idle.unloads() {
            let _ = tokio::task::spawn_blocking(crate::heap::release_freed).await;
        }
        self.restore_gpu_spend(&loaded);
        let _guard = self.changes.lock().await;
        let count = loaded.len();
        let served = self.snapshot().with(|functions| {
            for function in loaded {
                functions.insert(function.manifest.name.clone(), Arc::new(function));
            }
        });
        self.publish(served);
        self.loaded.store(true, Ordering::Release);
        tracing::info!(
            functions = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded deployed functions"
        );
        Ok(())
    }

    /// Rebuilds what functions with a GPU budget spent in the current window from the usage
    /// log, so a restart does not hand out a fresh budget.
    fn restore_gpu_spend(&self, functions: &[LoadedFunction]) {
        let now = crate::gpu_budget::now_ms();
        for function in functions {
            let Some(budget) = function.manifest.settings.gpu_budget else {
                continue;
            };
            let since =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(budget.window_start(now));
            match self.metering.read_usage(Some(&function.name), Some(since)) {
                Ok(records) => {
                    let spent: u64 = records.iter().map(|r| r.gpu_us).sum();
                    self.gpu_spend(&function.name).charge(&budget, now, spent);
                }
                Err(error) => tracing::warn!(
                    function = %function.name,
                    "cannot restore the GPU budget from the usage log: {error:#}"
                ),
            }
        }
    }

    fn load_current(&self, name: &str, loaded: &LoadedArtifacts) -> Result<LoadedFunction> {
        let version = self
            .registry
            .current(name)?
            .with_context(|| format!("function `{name}` has no current version"))?;
        self.load_version(name, version, loaded)
    }

    /// Loads one version of a function; `loaded`: artifacts known to load, which one of the
    /// same component can share should its own be unusable.
    fn load_version(
        &self,
        name: &str,
        version: u64,
        loaded: &LoadedArtifacts,
    ) -> Result<LoadedFunction> {
        let manifest = self.registry.manifest(name, version)?;
        let paths = self.registry.paths(name, version);
        let sha256 = manifest.sha256.clone();
        LoadedFunction::load(
            &self.engine,
            &self.linker,
            manifest,
            &paths,
            self.share(name),
            || self.rebuild_artifact(name, version, &sha256, loaded),
        )
        .with_context(|| format!("loading `{name}` version {version}"))
    }

    /// Replaces the unusable artifact of `name` version `version` and loads it: a link to the
    /// artifact of a version with the same component that loads with this engine (one in
    /// `loaded`, or a served one), so that after an engine upgrade functions deployed from one
    /// component are compiled once and share their code again; else it is recompiled. Blocking.
    fn rebuild_artifact(
        &self,
        name: &str,
        version: u64,
        sha256: &str,
        loaded: &LoadedArtifacts,
    ) -> Result<Component> {
        let paths = self.registry.paths(name, version);
        let known = loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
            .cloned();
        let same = known.or_else(|| {
            self.served_with_sha256(name, sha256)
                .map(|f| self.registry.paths(&f.manifest.name, f.manifest.version))
        });
        if let Some(from) = same {
            match self
                .registry
                .replace_artifact(name, version, NewArtifact::SameAs(&from))
                .and_then(|()| function::deserialize_artifact(&self.engine, &paths.artifact))
            {
                Ok(component) => {
                    tracing::info!(
                        function = name,
                        version,
                        "reusing the artifact of {}, compiled from the same component",
                        from.dir.display()
                    );
                    return Ok(component);
                }
                Err(error) => tracing::warn!(
                    function = name,
                    version,
                    "could not reuse the artifact of {} ({error:#})",
                    from.dir.display()
                ),
            }
        }
        tracing::warn!(function = name, version, "recompiling");
        let bytes = std::fs::read(&paths.component)
            .with_context(|| format!("reading {}", paths.component.display()))?;
        let artifact =
            self.compile_one_at_a_time(name, || function::precompile(&self.engine, &bytes))?;
        self.registry
            .replace_artifact(name, version, NewArtifact::Compiled(&artifact))?;
        function::deserialize_artifact(&self.engine, &paths.artifact)
            .context("loading the artifact just recompiled")
    }

    /// Whether every deployed function has been loaded (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Functions that failed to load at start, with the reason.
    pub fn load_failures(&self) -> Vec<(String, String)> {
        self.load_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The function serving `path`, and the prefix that matched.
    pub fn resolve(&self, path: &str) -> Option<(Arc<LoadedFunction>, RouteMatch)> {
        let served = self.snapshot();
        let found = served
            .routes
            .resolve(path, |name| served.functions.contains_key(name))?;
        let function = served.functions.get(&found.function)?.clone();
        Some((function, found))
    }

    /// The function called `name`, if deployed.
    pub fn function(&self, name: &str) -> Option<Arc<LoadedFunction>> {
        self.snapshot().functions.get(name).cloned()
    }

    /// Names of the functions being served.
    pub fn function_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.snapshot().functions.keys().cloned().collect();
        names.sort();
        names
    }

    /// Describes a served function.
    pub fn describe(&self, function: &LoadedFunction) -> Result<FunctionInfo> {
        let manifest = &function.manifest;
        let settings = &manifest.settings;
        let mut routes = vec![format!("/fn/{}", manifest.name)];
        routes.extend(settings.routes.iter().cloned());
        let residency = function.residency();
        let url = match self.public_addr.get() {
            Some(addr) => format!("http://{addr}/fn/{}/", manifest.name),
            None => format!("/fn/{}/", manifest.name),
        };
        Ok(FunctionInfo {
            name: manifest.name.clone(),
            version: manifest.version,
            versions: self.registry.versions(&manifest.name)?,
            routes,
            url,
            memory: format_size(settings.memory_bytes),
            timeout: format_duration(settings.timeout()),
            max_concurrency: settings.max_concurrency,
            queue_depth: settings.queue_depth,
            max_body: format_size(settings.max_body_bytes),
            allow_outbound: settings.allow_outbound,
            gpu_memory: format_size(settings.gpu_memory_bytes),
            gpu_function_memory: settings.gpu_function_memory_bytes.map(format_size),
            allow_kernels: settings.allow_kernels,
            keep_warm: settings.keep_warm,
            uses_gpu: function.uses_gpu,
            max_gpu_concurrency: settings.max_gpu_concurrency,
            gpu_budget: settings.gpu_budget.map(|b| b.render()),
            loaded: residency != crate::idle::Residency::Unloaded,
            residency,
            env: settings.env.iter().map(|(k, _)| k.clone()).collect(),
            sha256: manifest.sha256.clone(),
            component_bytes: manifest.component_bytes,
            deployed_at: manifest.deployed_at.clone(),
            running: function.scheduler.running(),
            queued: function.scheduler.queued(),
            spare_sandboxes: function.spares.ready_count(),
            spare_sandboxes_used: function.spares.used(),
        })
    }

    /// The version of `name` serving now; 404 if there is no such function.
    fn current_version(&self, name: &str) -> Result<u64, ApiError> {
        names::validate_name(name).map_err(ApiError::invalid)?;
        self.registry
            .current(name)
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(|| ApiError::not_found(format!("no function named `{name}`")))
    }

    /// Every version of a function with its manifest.
    pub fn versions(&self, name: &str) -> Result<Vec<Manifest>, ApiError> {
        self.current_version(name)?;
        let versions = self
            .registry
            .versions(name)
            .map_err(|e| ApiError::internal(&e))?;
        versions
            .into_iter()
            .map(|v| {
                self.registry
                    .manifest(name, v)
                    .map_err(|e| ApiError::internal(&e))
            })
            .collect()
    }

    fn route_conflict(&self, name: &str, settings: &FunctionSettings) -> Option<ApiError> {
        let served = self.snapshot();
        for route in &settings.routes {
            if let Some(owner) = served.routes.owner(route)
                && owner != name
            {
                return Some(ApiError::new(
                    ErrorKind::Conflict,
                    format!("route `{route}` is already served by function `{owner}`"),
                ));
            }
        }
        None
    }

    /// Deploys `component` as a new version of `name` and makes it current. Requests in flight
    /// finish on the version they started on; new ones get the new version. Nothing is left on
    /// disk if any step fails.
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        settings: FunctionSettings,
        component: Vec<u8>,
    ) -> Result<DeployOutcome, ApiError> {
        let large = component.len() >= LARGE_UPLOAD_BYTES;
        let outcome = self.deploy_version(name, settings, component).await;
        if large {
            // The upload and what was read to check it are freed by now, but glibc keeps some
            // of them in its arenas. Thirty redeploys of the componentize-py hello world
            // (18.6 MB) left the node 118 MiB larger without this, 100 MiB with it; the rest
            // stays because glibc now serves such sizes from its arenas. (Fixing glibc's mmap
            // threshold at 1 MiB kept the growth to 1 MiB, but made MiniLM on the CPU 2–10 %
            // slower: its forward pass allocates large buffers on every call.)
            let _ = tokio::task::spawn_blocking(crate::heap::release_freed).await;
        }
        outcome
    }

    /// [`Node::deploy`], less handing freed memory back.
    async fn deploy_version(
        self: &Arc<Self>,
        name: &str,
        settings: FunctionSettings,
        component: Vec<u8>,
    ) -> Result<DeployOutcome, ApiError> {
        names::validate_name(name)
            .map_err(|e| ApiError::invalid(format!("invalid function name: {e}")))?;
        settings.validate().map_err(ApiError::invalid)?;
        if component.len() as u64 > self.options.max_component_bytes {
            return Err(ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the component is {} bytes; this node accepts at most {}",
                    component.len(),
                    format_size(self.options.max_component_bytes)
                ),
            ));
        }
        if let Some(conflict) = self.route_conflict(name, &settings) {
            return Err(conflict);
        }

        let started = Instant::now();
        let (component, sha256) = tokio::task::spawn_blocking(move || {
            let sha256 = hex::encode(Sha256::digest(&component));
            (component, sha256)
        })
        .await
        .map_err(|e| ApiError::internal(&anyhow!("hashing task failed: {e}")))?;
        // Held until the new version serves, so that a deploy of the same bytes waiting here
        // finds it served and reuses its code.
        let _same_component = self.deploy_lock(&sha256).lock_owned().await;
        let node = self.clone();
        let deploying = name.to_string();
        let prepared =
            tokio::task::spawn_blocking(move || node.prepare_code(&deploying, component, sha256))
                .await
                .map_err(|e| ApiError::internal(&anyhow!("compile task failed: {e}")))?
                .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        let compile_ms = started.elapsed().as_millis() as u64;

        let _guard = self.changes.lock().await;
        if let Some(conflict) = self.route_conflict(name, &settings) {
            return Err(conflict);
        }
        let reused_code_of = prepared.reused_code_of();
        let mut manifest = Manifest {
            name: name.to_string(),
            version: 0,
            settings,
            sha256: prepared.sha256.clone(),
            component_bytes: prepared.component.len() as u64,
            deployed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
        };
        let node = self.clone();
        let (manifest, pre) = tokio::task::spawn_blocking(move || {
            node.store_version(&mut manifest, prepared)
                .map(|pre| (manifest, pre))
        })
        .await
        .map_err(|e| ApiError::internal(&anyhow!("registry task failed: {e}")))?
        .map_err(|e| ApiError::internal(&e))?;

        let artifact = self.registry.paths(name, manifest.version).artifact;
        // Functions deployed from this component already may hold its code: then the new
        // version shares it (see `crate::shared_code`).
        let code = self.code_cache.share(&manifest.sha256, pre);
        let function = Arc::new(LoadedFunction::new(
            manifest,
            code,
            artifact,
            self.share(name),
        ));
        let served = self.snapshot().with(|functions| {
            functions.insert(name.to_string(), function.clone());
        });
        self.publish(served);
        tracing::info!(
            function = name,
            version = function.manifest.version,
            compile_ms,
            reused_code_of = reused_code_of
                .as_ref()
                .map(|of| format!("{} v{}", of.function, of.version)),
            "deployed"
        );
        Ok(DeployOutcome {
            function: self
                .describe(&function)
                .map_err(|e| ApiError::internal(&e))?,
            compile_ms,
            reused_code_of,
        })
    }

    /// Hashes an uploaded component and gets its code ready to store: the code of a served
    /// version with the same bytes if its artifact loads and links (so deploying the same component
    /// again, under another name or with other settings, compiles nothing), else compiled now.
    /// Fails, with a message for the deployer, only on a component that does not compile or
    /// link. Blocking.
    fn prepare_code(&self, name: &str, component: Vec<u8>, sha256: String) -> Result<PreparedCode> {
        if let Some(from) = self.served_with_sha256(name, &sha256) {
            // The file the new version will serve is checked to load and link.
            let usable = function::deserialize_artifact(&self.engine, from.artifact())
                .and_then(|code| function::pre_instantiate(&self.linker, &code));
            match usable {
                Ok(pre) => {
                    return Ok(PreparedCode {
                        component,
                        sha256,
                        code: Code::Reused(from, pre),
                    });
                }
                Err(error) => tracing::warn!(
                    function = name,
                    "could not reuse the code of {} v{}, which has the same component \
                     ({error:#}); compiling it",
                    from.name,
                    from.manifest.version
                ),
            }
        }
        let compiled =
            self.compile_one_at_a_time(name, || function::compile(&self.engine, &component))?;
        // Linking checks the imports and the export before anything is stored.
        function::pre_instantiate(&self.linker, &compiled)?;
        let artifact = function::serialize(&compiled)?;
        Ok(PreparedCode {
            component,
            sha256,
            code: Code::Compiled(artifact),
        })
    }

    /// The lock that deploys of the component with hash `sha256` take in turn.
    fn deploy_lock(&self, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .deploys_by_component
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = locks.get(sha256).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::default();
        locks.insert(sha256.to_string(), Arc::downgrade(&lock));
        lock
    }

    /// Runs `compile` for `name` once no other compile runs, then gives back to the OS what
    /// the compiler freed: glibc keeps it in its arenas (about 240 MiB after the
    /// componentize-py hello world) until the process exits. Blocking.
    fn compile_one_at_a_time<T>(
        &self,
        name: &str,
        compile: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _one_at_a_time = match self.compiling.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                tracing::info!(function = name, "waiting for another compile to finish");
                self.compiling.lock().unwrap_or_else(|e| e.into_inner())
            }
        };
        let started = Instant::now();
        tracing::info!(function = name, "compiling");
        let compiled = compile();
        crate::heap::release_freed();
        tracing::info!(
            function = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = compiled.is_ok(),
            "compiled"
        );
        compiled
    }

    /// A served function whose current version was deployed from the component with hash
    /// `sha256`, `name`'s own first.
    fn served_with_sha256(&self, name: &str, sha256: &str) -> Option<Arc<LoadedFunction>> {
        let served = self.snapshot();
        let same = |function: &&Arc<LoadedFunction>| function.manifest.sha256 == sha256;
        served
            .functions
            .get(name)
            .filter(same)
            .or_else(|| served.functions.values().find(same))
            .cloned()
    }

    /// Writes a prepared version to the registry and makes it current; returns the code it
    /// serves. That is a stored artifact, mapped from disk as after a restart, rather than
    /// the compiled copy: its code pages are then file-backed (reclaimable, and handed back
    /// when parked) instead of anonymous memory. Reused code was loaded from the file the new
    /// version's artifact links to, when it was checked. Nothing is left on disk if a step
    /// fails. Blocking.
    fn store_version(
        &self,
        manifest: &mut Manifest,
        prepared: PreparedCode,
    ) -> Result<ProxyPre<InvocationState>> {
        let registry = &self.registry;
        let component = &prepared.component;
        let mut checked = None;
        let paths = match prepared.code {
            Code::Compiled(artifact) => {
                registry.add_version(manifest, component, NewArtifact::Compiled(&artifact))?
            }
            Code::Reused(from, pre) => {
                let from = registry.paths(&from.manifest.name, from.manifest.version);
                match registry.add_version(manifest, component, NewArtifact::SameAs(&from)) {
                    Ok(paths) => {
                        checked = Some(pre);
                        paths
                    }
                    // Its files went away meanwhile (the function was removed): compile after all.
                    Err(_) => {
                        let artifact = function::precompile(&self.engine, component)?;
                        let compiled = NewArtifact::Compiled(&artifact);
                        registry.add_version(manifest, component, compiled)?
                    }
                }
            }
        };
        let loaded = match checked {
            Some(pre) => Ok(pre),
            None => function::deserialize_artifact(&self.engine, &paths.artifact)
                .and_then(|component| function::pre_instantiate(&self.linker, &component)),
        };
        let served = loaded.and_then(|pre| {
            registry.set_current(&manifest.name, manifest.version)?;
            Ok(pre)
        });
        if served.is_err() {
            let _ = registry.discard_version(&manifest.name, manifest.version);
        }
        served
    }

    /// Switches `name` back to `to`, or to the version before the current one.
    pub async fn rollback(
        self: &Arc<Self>,
        name: &str,
        to: Option<u64>,
    ) -> Result<FunctionInfo, ApiError> {
        let _guard = self.changes.lock().await;
        let current = self.current_version(name)?;
        let versions = self
            .registry
            .versions(name)
            .map_err(|e| ApiError::internal(&e))?;
        let target = match to {
            Some(version) if versions.contains(&version) => version,
            Some(version) => {
                return Err(ApiError::not_found(format!(
                    "function `{name}` has no version {version} (versions: {versions:?})"
                )));
            }
            None => versions
                .iter()
                .rev()
                .copied()
                .find(|v| *v < current)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::Conflict,
                        format!("function `{name}` is at version {current}, its oldest; there is nothing to roll back to"),
                    )
                })?,
        };
        let node = self.clone();
        let owned_name = name.to_string();
        let function = tokio::task::spawn_blocking(move || {
            let function = node.load_version(&owned_name, target, &LoadedArtifacts::default())?;
            node.registry.set_current(&owned_name, target)?;
            anyhow::Ok(function)
        })
        .await
        .map_err(|e| ApiError::internal(&anyhow!("rollback task failed: {e}")))?
        .map_err(|e| ApiError::internal(&e))?;
        if let Some(conflict) = self.route_conflict(name, &function.manifest.settings) {
            // Version `target` claims a route another function has taken since; keep the
            // registry as it was.
            let _ = self.registry.set_current(name, current);
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "cannot roll `{name}` back to version {target}: {}",
                    conflict.message
                ),
            ));
        }
        let function = Arc::new(function);
        let served = self.snapshot().with(|functions| {
            functions.insert(name.to_string(), function.clone());
        });
        self.publish(served);
        tracing::info!(function = name, from = current, to = target, "rolled back");
        self.describe(&function).map_err(|e| ApiError::internal(&e))
    }

    /// Stops serving `name` and deletes it from disk. Requests already running finish.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let _guard = self.changes.lock().await;
        self.current_version(name)?;
        let served = self.snapshot().with(|functions| {
            functions.remove(name);
        });
        self.publish(served);
        let registry = self.registry.clone();
        let owned = name.to_string();
        tokio::task::spawn_blocking(move || registry.remove(&owned))
            .await
            .map_err(|e| ApiError::internal(&anyhow!("remove task failed: {e}")))?
            .map_err(|e| ApiError::internal(&e))?;
        self.gpu_spend.remove(name);
        self.holdings.remove(name);
        tracing::info!(function = name, "removed");
        Ok(())
    }
}
