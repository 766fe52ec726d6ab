//! One CUDA context of a device and everything made in it, and how a device gets a new one
//! after a fault poisoned the old.
//!
//! A kernel that faults (an illegal address, say) leaves its context "sticky": every later call
//! in it fails. The device then tries to build a fresh context on a background thread, checks
//! it with a small self-test (the built-in ops compile, a kernel runs, its result comes back
//! right) and only then sends new work there. CUDA's documentation promises no such recovery:
//! on an H200 with driver 580 every `cuCtxCreate` after an illegal address failed with the same
//! error, so after a few attempts the device is reported out of service until the process
//! restarts (the pool runs GPU work on the CPU backend meanwhile; see `Pool::session`).
//! Whatever still holds the poisoned context (sessions that were in flight, a model's encoder)
//! fails with a retryable `device-fault` and lets go of it; the old context is destroyed when
//! the last of them does.
//!
//! The first context is the device's primary context (what other CUDA libraries in the
//! process share). Rebuilt ones are independent contexts (`cuCtxCreate`): the primary context
//! stays poisoned for as long as anything holds it, so retaining it again would not help.

use super::builtins::Builtins;
use super::{BLOCK, CompiledKernel, CudaDevice, StreamSlot};
use crate::error::{GpuError, GpuResult};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaStream, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// First wait between failed rebuilds; it doubles up to [`MAX_REBUILD_DELAY`].
const FIRST_REBUILD_DELAY: Duration = Duration::from_millis(250);
/// Longest wait between failed rebuilds.
const MAX_REBUILD_DELAY: Duration = Duration::from_secs(60);
/// Failed rebuilds (about 8 s of them) after which the device is given up on until the
/// process restarts: later attempts go on quietly, once a minute.
const LOUD_REBUILD_ATTEMPTS: u32 = 5;

/// A CUDA context of one device with its idle streams, built-in ops and compiled kernels.
pub(crate) struct DeviceContext {
    /// 0 for the device's first context, one more for each rebuild.
    pub(crate) generation: u64,
    pub(crate) ctx: Arc<CudaContext>,
    pub(super) idle: Mutex<Vec<StreamSlot>>,
    builtins: OnceLock<Result<Builtins, GpuError>>,
    pub(super) kernels: Mutex<HashMap<(String, String), Arc<CompiledKernel>>>,
    /// Set once a sticky error showed this context is unusable (shared with its cuBLAS
    /// handles, which must not be destroyed then).
    poisoned: Arc<AtomicBool>,
}

/// A cuBLAS handle of one context. Once the context is poisoned, the handle is leaked instead
/// of destroyed: `cublasDestroy` may fail then, and cudarc's `CudaBlas` panics in `Drop` when
/// it does. (A few KiB of host memory per fault; the device side goes with the context.)
pub(crate) struct ContextBlas {
    blas: ManuallyDrop<CudaBlas>,
    poisoned: Arc<AtomicBool>,
}

impl Deref for ContextBlas {
    type Target = CudaBlas;

    fn deref(&self) -> &CudaBlas {
        &self.blas
    }
}

impl Drop for ContextBlas {
    fn drop(&mut self) {
        if !self.poisoned.load(Ordering::Acquire) {
            // SAFETY: `blas` is dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.blas) };
        }
    }
}

impl DeviceContext {
    /// Wraps a context just made for the device.
    pub(crate) fn new(ctx: Arc<CudaContext>, generation: u64) -> DeviceContext {
        DeviceContext {
            generation,
            ctx,
            idle: Mutex::new(Vec::new()),
            builtins: OnceLock::new(),
            kernels: Mutex::new(HashMap::new()),
            poisoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A cuBLAS handle that enqueues on `stream` (a stream of this context).
    pub(crate) fn new_blas(&self, stream: Arc<CudaStream>) -> GpuResult<ContextBlas> {
        let blas = CudaBlas::new(stream)
            .map_err(|e| GpuError::device("creating a cuBLAS handle", format!("{e:?}")))?;
        Ok(ContextBlas {
            blas: ManuallyDrop::new(blas),
            poisoned: self.poisoned.clone(),
        })
    }

    /// Whether a sticky error poisoned this context.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Marks the context poisoned; true if this call did (the first to see the fault).
    pub(super) fn poison(&self) -> bool {
        !self.poisoned.swap(true, Ordering::AcqRel)
    }

    /// The built-in ops, compiled into this context on first use.
    pub(super) fn builtins(&self, arch: &str) -> GpuResult<&Builtins> {
        self.builtins
            .get_or_init(|| Builtins::compile(&self.ctx, arch))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Checks a fresh context works: the built-in ops compile and load, and a kernel doubles
    /// a few numbers correctly on a new stream.
    fn self_test(&self, arch: &str) -> Result<(), String> {
        let builtins = self.builtins(arch).map_err(|e| e.message)?;
        let stream = self
            .ctx
            .new_stream()
            .map_err(|e| format!("creating a stream: {e:?}"))?;
        let input: Vec<f32> = (1..=BLOCK).map(|i| i as f32).collect();
        let a = stream
            .clone_htod(&input)
            .map_err(|e| format!("uploading: {e:?}"))?;
        let mut out = stream
            .alloc_zeros::<f32>(input.len())
            .map_err(|e| format!("allocating: {e:?}"))?;
        let (n, op, factor) = (input.len() as i64, 2i32, 2.0f32);
        let mut launch = stream.launch_builder(&builtins.unary);
        launch.arg(&a).arg(&mut out).arg(&n).arg(&op).arg(&factor);
        // SAFETY: `flint_unary(const float*, float*, long long, int, float)`; both buffers hold
        // `n` floats.
        unsafe { launch.launch(LaunchConfig::for_num_elems(input.len() as u32)) }
            .map_err(|e| format!("launching: {e:?}"))?;
        let doubled = stream
            .clone_dtoh(&out)
            .map_err(|e| format!("downloading: {e:?}"))?;
        if doubled.iter().zip(&input).all(|(y, x)| *y == 2.0 * x) {
            Ok(())
        } else {
            Err("a kernel ran but returned wrong results".into())
        }
    }
}

/// Builds, tests and installs a new context for `device` after `poisoned_generation` was
/// poisoned, retrying with a growing delay until it works or the device is dropped. Runs on
/// its own thread: creating a context and compiling the built-in ops takes a while.
pub(super) fn spawn_rebuild(device: Weak<CudaDevice>, poisoned_generation: u64) {
    let spawned = std::thread::Builder::new()
        .name("flint-gpu-rebuild".into())
        .spawn(move || rebuild(device, poisoned_generation));
    if let Err(error) = spawned {
        tracing::error!("starting the thread that rebuilds a GPU context: {error}");
    }
}

fn rebuild(device: Weak<CudaDevice>, poisoned_generation: u64) {
    let mut delay = FIRST_REBUILD_DELAY;
    let mut attempt = 1u32;
    loop {
        let Some(device) = device.upgrade() else {
            return;
        };
        let generation = poisoned_generation + 1;
        let built = CudaContext::new_non_primary(device.ordinal(), 0)
            .map_err(|e| format!("creating a context: {e:?}"))
            .map(|ctx| DeviceContext::new(ctx, generation))
            .and_then(|context| context.self_test(device.arch()).map(|()| context));
        match built {
            Ok(context) => {
                device.install(context);
                tracing::warn!(
                    gpu = device.ordinal(),
                    generation,
                    "GPU {}'s context was rebuilt after a fault and passed its self-test; the device is back in service",
                    device.ordinal()
                );
                return;
            }
            Err(error) if attempt < LOUD_REBUILD_ATTEMPTS => tracing::warn!(
                gpu = device.ordinal(),
                attempt,
                "rebuilding GPU {}'s context failed: {error}; retrying in {delay:?}",
                device.ordinal()
            ),
            Err(error) if attempt == LOUD_REBUILD_ATTEMPTS => {
                let reason = format!(
                    "the CUDA driver refuses new contexts in this process after the fault \
                     ({error}); GPU work runs on the CPU backend until the node restarts"
                );
                tracing::error!(
                    gpu = device.ordinal(),
                    "GPU {} is out of service: {reason}",
                    device.ordinal()
                );
                device.set_fault_reason(Some(reason));
            }
            Err(error) => tracing::debug!(
                gpu = device.ordinal(),
                attempt,
                "rebuilding GPU {}'s context failed again: {error}",
                device.ordinal()
            ),
        }
        drop(device);
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_REBUILD_DELAY);
        attempt += 1;
    }
}
