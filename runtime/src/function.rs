//! A deployed function loaded into memory: its manifest, its pre-instantiated component
//! (built once per version, never per request) and its scheduler.
//!
//! Also the deploy-time checks that turn a byte blob into a servable component, each failure a
//! clear message: not wasm, a core module instead of a component, imports the node cannot
//! satisfy (named), no `wasi:http/incoming-handler` export.

use crate::host::InvocationState;
use crate::idle::{IdlePolicy, IdleStep, Residency};
use crate::registry::{Manifest, VersionPaths};
use crate::scheduler::{Limit, Scheduler};
use crate::shared_code::{CodeCache, ResidentHold, SharedCode};
use anyhow::{Result, anyhow, bail};
use std::sync::Arc;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// One version of a function, ready to serve.
pub struct LoadedFunction {
    /// What was deployed and how it runs.
    pub manifest: Manifest,
    /// The function's name, shared with every invocation's log records.
    pub name: Arc<str>,
    /// Environment variables, shared by every invocation.
    pub env: Arc<[(String, String)]>,
    /// Its pre-instantiated component, shared with the functions deployed from the same one
    /// ([`crate::shared_code`]), and whether it is parked.
    code: std::sync::Mutex<Holding>,
    /// Where functions of one component find its code.
    code_cache: Arc<CodeCache>,
    /// Told when its code becomes resident again, so that the idle sweep schedules it.
    wake_sweep: Arc<tokio::sync::Notify>,
    /// One reload at a time.
    reload: tokio::sync::Mutex<()>,
    /// The precompiled artifact it reloads from.
    artifact: std::path::PathBuf,
    /// Whether the artifact is small enough to reload on the request's own worker thread
    /// (see [`INLINE_RELOAD_MAX_BYTES`]).
    reload_inline: bool,
    /// Admission control.
    pub scheduler: Scheduler,
    /// The GPU memory quota all running invocations of this version share, if set.
    pub gpu_budget: Option<Arc<flint_gpu::MemoryBudget>>,
    /// Whether its component imports `flint:gpu` (GPU limits and budgets apply to it).
    pub uses_gpu: bool,
    /// What its invocations hold on each device, for `fnctl gpu` (shared by its versions).
    pub holdings: Arc<flint_gpu::Holdings>,
    /// Fresh instances built ahead of its next requests.
    pub spares: Arc<crate::sandbox::Spares>,
}

/// What a function shares with the node and its other versions.
#[derive(Debug, Clone)]
pub struct NodeShare {
    /// The node-wide limit on GPU invocations running at once.
    pub gpu_slots: Limit,
    /// What the function holds on each device.
    pub holdings: Arc<flint_gpu::Holdings>,
    /// The idle sweep's wake-up: told when a function's code becomes resident.
    pub wake_sweep: Arc<tokio::sync::Notify>,
    /// The node's components in memory, shared by the functions deployed from each.
    pub code_cache: Arc<CodeCache>,
}

/// What a function holds of its code.
#[derive(Debug)]
enum Holding {
    /// Nothing: its next request loads the code.
    Unloaded,
    /// The code, resident.
    Resident(ResidentHold),
    /// The code, its pages given back unless a sibling holds it resident.
    Parked(Arc<SharedCode>),
}

/// Artifacts up to this size are reloaded on the worker thread of the request that needs them:
/// deserializing one takes about 0.1–0.2 ms (mostly wasmtime decoding the component's
/// metadata), less than handing the work to the blocking pool and back costs on a machine
/// that sat idle. Larger ones (a 35 MB artifact takes about 2.5 ms) go to the blocking pool,
/// so that they do not hold up the worker's other connections.
pub const INLINE_RELOAD_MAX_BYTES: u64 = 1 << 20;

impl std::fmt::Debug for LoadedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedFunction")
            .field("name", &self.name)
            .field("version", &self.manifest.version)
            .finish_non_exhaustive()
    }
}

impl LoadedFunction {
    /// Wraps a component's code with the manifest of a version deployed from it and the
    /// artifact that version reloads from.
    pub fn new(
        manifest: Manifest,
        code: Arc<SharedCode>,
        artifact: std::path::PathBuf,
        share: NodeShare,
    ) -> Self {
        let settings = &manifest.settings;
        let uses_gpu = imports_gpu(code.pre());
        let mut scheduler = Scheduler::new(settings.max_concurrency, settings.queue_depth);
        if uses_gpu {
            scheduler = scheduler.with_gpu_limits(settings.max_gpu_concurrency, share.gpu_slots);
        }
        let reload_inline = std::fs::metadata(&artifact)
            .is_ok_and(|metadata| metadata.len() <= INLINE_RELOAD_MAX_BYTES);
        LoadedFunction {
            name: Arc::from(manifest.name.as_str()),
            env: Arc::from(settings.env.clone()),
            scheduler,
            uses_gpu,
            holdings: share.holdings,
            gpu_budget: settings
                .gpu_function_memory_bytes
                .map(|bytes| flint_gpu::MemoryBudget::new("function's GPU memory quota", bytes)),
            code: std::sync::Mutex::new(Holding::Resident(code.hold_resident())),
            code_cache: share.code_cache,
            wake_sweep: share.wake_sweep,
            reload: tokio::sync::Mutex::new(()),
            artifact,
            reload_inline,
            spares: Arc::default(),
            manifest,
        }
    }

    /// Where its code is now.
    pub fn residency(&self) -> Residency {
        match &*self.holding() {
            Holding::Unloaded => Residency::Unloaded,
            Holding::Resident(_) => Residency::Loaded,
            Holding::Parked(_) => Residency::Parked,
        }
    }

    fn holding(&self) -> std::sync::MutexGuard<'_, Holding> {
        self.code.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pre-instantiated component if it holds it, marked resident again if it was parked
    /// (its pages fault back in as it runs).
    fn held_code(&self) -> Option<ProxyPre<InvocationState>> {
        let mut holding = self.holding();
        let code = match &*holding {
            Holding::Unloaded => return None,
            Holding::Resident(hold) => return Some(hold.code().pre().clone()),
            Holding::Parked(code) => code.clone(),
        };
        *holding = Holding::Resident(code.hold_resident());
        drop(holding);
        self.wake_sweep.notify_one();
        Some(code.pre().clone())
    }

    /// The pre-instantiated component, loaded again if it was unloaded: taken from a function
    /// of the same component that holds it ([`crate::shared_code`]), else reloaded from the
    /// precompiled artifact. The flag says whether this call read it from disk (a cold start).
    /// A parked function is simply marked loaded again.
    pub async fn code(
        &self,
        linker: &Arc<Linker<InvocationState>>,
    ) -> Result<(ProxyPre<InvocationState>, bool)> {
        if let Some(pre) = self.held_code() {
            return Ok((pre, false));
        }
        let _one_at_a_time = self.reload.lock().await;
        if let Some(pre) = self.held_code() {
            return Ok((pre, false));
        }
        if let Some(code) = self.code_cache.get(&self.manifest.sha256) {
            tracing::debug!(
                function = %self.name,
                version = self.manifest.version,
                "took the code of a function deployed from the same component"
            );
            return Ok((self.hold(code), false));
        }
        let linker = linker.clone();
        let artifact = self.artifact.clone();
        let started = std::time::Instant::now();
        let reload = move || {
            // Timed here, so that a wait for the blocking pool does not count as deserializing.
            let begun = std::time::Instant::now();
            let component = deserialize_artifact(linker.engine(), &artifact)?;
            let deserialized = begun.elapsed();
            pre_instantiate(&linker, &component).map(|pre| (pre, deserialized))
        };
        let (pre, deserialized) = if self.reload_inline {
            reload()?
        } else {
            tokio::task::spawn_blocking(reload)
                .await
                .map_err(|e| anyhow!("reload task failed: {e}"))??
        };
        let pre = self.hold(self.code_cache.share(&self.manifest.sha256, pre));
        tracing::info!(
            function = %self.name,
            version = self.manifest.version,
            on = if self.reload_inline { "worker" } else { "blocking pool" },
            reload_us = started.elapsed().as_micros() as u64,
            deserialize_us = deserialized.as_micros() as u64,
            "reloaded after being idle"
        );
        Ok((pre, true))
    }

    /// Holds `code` resident from now on (it was unloaded) and tells the idle sweep.
    fn hold(&self, code: Arc<SharedCode>) -> ProxyPre<InvocationState> {
        let pre = code.pre().clone();
        *self.holding() = Holding::Resident(code.hold_resident());
        self.wake_sweep.notify_one();
        pre
    }

    /// The precompiled artifact it loads from.
    pub fn artifact(&self) -> &std::path::Path {
        &self.artifact
    }

    /// Drops the loaded code unless the function is `--keep-warm` (at start, before it serves).
    pub fn unload_unless_warm(&self) {
        if !self.manifest.settings.keep_warm {
            self.unload();
        }
    }

    /// How long it has been idle, if it may be unloaded to keep the node within
    /// `--max-loaded` ([`crate::idle::beyond_cap`]); `None` while it is kept warm or busy.
    pub fn idle_time_if_unloadable(&self) -> Option<std::time::Duration> {
        self.idle_time().filter(|_| !self.scheduler.busy())
    }

    /// Drops its spare sandboxes and its hold on the component's code (freed with the last
    /// function holding it): the next request loads it again.
    pub fn unload(&self) {
        self.spares.clear();
        let held = std::mem::replace(&mut *self.holding(), Holding::Unloaded);
        // Dropped outside the lock: freeing the last hold takes the code cache's lock.
        drop(held);
    }

    /// How long nothing has run or waited here ([`Scheduler::idle_time`]); `None` for a
    /// `--keep-warm` function, which never parks or unloads.
    fn idle_time(&self) -> Option<std::time::Duration> {
        (!self.manifest.settings.keep_warm).then(|| self.scheduler.idle_time())
    }

    /// How long until `policy` has a step due for this function; `None`: never, unless it is
    /// called meanwhile.
    pub fn next_idle_step_in(&self, policy: &IdlePolicy) -> Option<std::time::Duration> {
        policy.next_due_in(self.residency(), self.idle_time()?)
    }

    /// Parks or unloads it if `policy` says that is due, and returns the step taken. Parking
    /// reads `/proc/self/pagemap`: call it from a blocking thread.
    pub fn take_idle_step(&self, policy: &IdlePolicy) -> Option<IdleStep> {
        let step = policy.due(self.residency(), self.idle_time()?)?;
        match step {
            IdleStep::Unload => self.unload(),
            IdleStep::Park => {
                let code = {
                    let mut holding = self.holding();
                    let Holding::Resident(hold) = &*holding else {
                        return None;
                    };
                    let code = hold.code().clone();
                    // Dropping the hold counts this function out of the code's resident holders.
                    *holding = Holding::Parked(code.clone());
                    code
                };
                if code.resident_holders() > 0 {
                    tracing::info!(
                        function = %self.name,
                        "kept its code pages: a function of the same component is resident"
                    );
                    return Some(step);
                }
                // A request that arrives meanwhile faults back what it needs.
                match code.release_code_pages() {
                    Ok(bytes) => {
                        tracing::debug!(function = %self.name, bytes, "released code pages")
                    }
                    Err(error) => tracing::warn!(
                        function = %self.name,
                        "could not release its code pages: {error}"
                    ),
                }
            }
        }
        Some(step)
    }

    /// Loads a version from disk: deserializes the precompiled artifact, or — if it was made by
    /// another engine build or is damaged — has `rebuild` replace it (recompiled, or shared
    /// with a version of the same component; see [`crate::node`]) and load the stored file, so
    /// that its code is file-backed like every other function's and parking can hand it back.
    pub fn load(
        engine: &Engine,
        linker: &Linker<InvocationState>,
        manifest: Manifest,
        paths: &VersionPaths,
        share: NodeShare,
        rebuild: impl FnOnce() -> Result<Component>,
    ) -> Result<Self> {
        let component = match deserialize_artifact(engine, &paths.artifact) {
            Ok(component) => component,
            Err(error) => {
                tracing::warn!(
                    function = %manifest.name,
                    version = manifest.version,
                    "precompiled artifact unusable ({error})"
                );
                rebuild()?
            }
        };
        let pre = pre_instantiate(linker, &component)?;
        // A function of the same component may hold its code already: then that is shared
        // and this copy, which checked the version's own artifact, is dropped.
        let code = share.code_cache.share(&manifest.sha256, pre);
        Ok(LoadedFunction::new(
            manifest,
            code,
            paths.artifact.clone(),
            share,
        ))
    }
}

/// Maps a precompiled artifact that this node's registry stored. Its code pages are then the
/// file's, which the kernel may reclaim and parking hands back ([`crate::code_pages`]).
pub fn deserialize_artifact(engine: &Engine, artifact: &std::path::Path) -> Result<Component> {
    // SAFETY: the registry only stores artifacts this node serialized from components it
    // compiled itself; wasmtime checks it matches this engine's version and settings.
    unsafe { Component::deserialize_file(engine, artifact) }
        .map_err(|e| anyhow!("loading {}: {e}", artifact.display()))
}

/// [`compile`]s a component and serializes it: the precompiled artifact the registry stores.
pub fn precompile(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>> {
    serialize(&compile(engine, bytes)?)
}

/// The precompiled artifact of a compiled component.
pub fn serialize(component: &Component) -> Result<Vec<u8>> {
    component
        .serialize()
        .map_err(|e| anyhow!("serializing the compiled component: {e}"))
}

/// Compiles uploaded bytes into a component, with an author-friendly error for the usual
/// mistakes (not wasm at all, a core module).
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly binary (it does not start with `\\0asm`)");
    }
    if wasmtime::wasmparser::Parser::is_core_wasm(bytes) {
        bail!(
            "this is a core WebAssembly module, not a component; build it for the \
             `wasm32-wasip2` target (e.g. `cargo build --target wasm32-wasip2`) so it is a \
             wasi:http component"
        );
    }
    if !wasmtime::wasmparser::Parser::is_component(bytes) {
        bail!("not a WebAssembly component (unknown binary version/layer)");
    }
    Component::new(engine, bytes).map_err(|e| anyhow!("the component does not compile: {e:#}"))
}

/// Whether the component imports any `flint:gpu` interface.
fn imports_gpu(pre: &ProxyPre<InvocationState>) -> bool {
    let instance_pre = pre.instance_pre();
    instance_pre
        .component()
        .component_type()
        .imports(instance_pre.engine())
        .any(|(name, _)| name.starts_with("flint:gpu/"))
}

/// Links a component against the node's linker and checks it is a `wasi:http` proxy.
pub fn pre_instantiate(
    linker: &Linker<InvocationState>,
    component: &Component,
) -> Result<ProxyPre<InvocationState>> {
    let instance_pre = linker.instantiate_pre(component).map_err(|error| {
        // Flint provides WASI 0.2 only: any other package is certainly missing, so name them
        // all; for a missing WASI interface wasmtime's own message names it.
        let foreign: Vec<String> = component
            .component_type()
            .imports(linker.engine())
            .map(|(name, _)| name.to_string())
            .filter(|name| !name.starts_with("wasi:") && !name.starts_with("flint:gpu/"))
            .collect();
        if foreign.is_empty() {
            anyhow!("the component imports what Flint does not provide: {error:#}")
        } else {
            anyhow!(
                "the component imports what Flint does not provide: {} (Flint provides WASI 0.2: \
                 wasi:http, wasi:cli, wasi:io, wasi:clocks, wasi:random, wasi:filesystem, wasi:sockets; \
                 and flint:gpu)",
                foreign.join(", ")
            )
        }
    })?;
    ProxyPre::new(instance_pre).map_err(|error| {
        anyhow!(
            "the component does not export `wasi:http/incoming-handler` (0.2.x); a Flint function \
             must be a wasi:http proxy component ({error:#})"
        )
    })
}
