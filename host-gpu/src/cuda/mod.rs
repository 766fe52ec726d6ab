//! The CUDA backend: one context per device, a pool of streams (each with its cuBLAS handle),
//! built-in ops as NVRTC-compiled kernels (compiled once per device), custom kernels compiled
//! once per source and device and cached, and detection of faults that poison a context.
//!
//! cudarc loads `libcuda`, NVRTC and cuBLAS at run time; [`probe`] checks they exist before
//! touching them, so a machine without CUDA gets an explanation, not a panic.

mod builtins;
mod context;
pub mod nvrtc;
mod timing;

pub(crate) use builtins::compile_module;
pub use builtins::{
    BLOCK, Broadcast, MAX_BLOCKS, SOURCE as BUILTINS_SOURCE, grid_stride_launch, softmax_launch,
};
pub(crate) use context::{ContextBlas, DeviceContext};

use crate::error::{ErrorKind, GpuError, GpuResult};
use crate::memory::MemoryBudget;
use crate::pool::KernelArg;
use crate::tensor::Storage;
use cudarc::cublas::{Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg, sys::cudaError_enum,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use timing::StreamTimer;

/// Fraction of a device's memory that tensors may use (the rest is for contexts, cuBLAS
/// workspaces and resident models).
const USABLE_FRACTION: f64 = 0.9;

/// One CUDA device: its memory budget and the context new work goes to (with its streams and
/// caches), which is replaced when a fault poisons it.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    arch: String,
    budget: Arc<MemoryBudget>,
    active: AtomicUsize,
    current: RwLock<Arc<DeviceContext>>,
    /// Contexts built to replace poisoned ones.
    rebuilds: AtomicU64,
    /// GPU time of all sessions' work, in nanoseconds, as measured by CUDA events.
    busy_ns: AtomicU64,
    /// Why the device is out of service, while it is.
    fault_reason: Mutex<Option<String>>,
}

struct StreamSlot {
    stream: Arc<CudaStream>,
    blas: ContextBlas,
    timer: StreamTimer,
}

/// A stream of one device leased to one session; returned to the device's pool on drop. The
/// lease keeps the context it was made in for its whole life, even if the device moves on to
/// a rebuilt one (the lease's work then fails with `device-fault`).
pub struct StreamLease {
    device: Arc<CudaDevice>,
    context: Arc<DeviceContext>,
    slot: Option<StreamSlot>,
}

/// Device memory of one tensor.
pub struct DeviceBuffer {
    slice: CudaSlice<u8>,
    len: usize,
}

/// A compiled custom kernel entry point.
pub struct CompiledKernel {
    function: CudaFunction,
    _module: Arc<CudaModule>,
    ordinal: usize,
    generation: u64,
}

/// Binary element-wise ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `a + b`.
    Add,
    /// `a * b`.
    Mul,
}

/// Unary element-wise ops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elementwise {
    /// `max(x, 0)`.
    Relu,
    /// Exact GELU.
    Gelu,
    /// `x * factor`.
    Scale(f32),
}

/// Finds every CUDA device, or says why there is none usable.
pub fn probe() -> Result<Vec<Arc<CudaDevice>>, String> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda) was not found".into());
    }
    cudarc::driver::result::init().map_err(|e| format!("cuInit failed: {e:?}"))?;
    let count =
        CudaContext::device_count().map_err(|e| format!("counting CUDA devices failed: {e:?}"))?;
    if count <= 0 {
        return Ok(Vec::new());
    }
    if let Err(reason) = nvrtc::available() {
        return Err(format!(
            "a CUDA device is present but {reason}{}",
            toolkit_hint("libnvrtc.so")
        ));
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(format!(
            "a CUDA device is present but cuBLAS (libcublas) was not found{}",
            toolkit_hint("libcublas.so")
        ));
    }
    let nvrtc_version = nvrtc::version().map_or("unknown".into(), |(major, minor)| {
        format!("{major}.{minor}")
    });
    let compiles_for = nvrtc::supported_architectures();
    let mut devices = Vec::new();
    for ordinal in 0..count as usize {
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| format!("creating a context on GPU {ordinal}: {e:?}"))?;
        let name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("reading GPU {ordinal}'s compute capability: {e:?}"))?;
        // Kernels are compiled for the device's own architecture (see `nvrtc`).
        if !compiles_for.contains(&(major * 10 + minor)) {
            return Err(format!(
                "GPU {ordinal} ({name}) is sm_{major}{minor}, which NVRTC {nvrtc_version} does \
                 not compile for (it does {compiles_for:?}); use the NVRTC of a CUDA toolkit \
                 that knows this GPU"
            ));
        }
        let total = ctx
            .total_mem()
            .map_err(|e| format!("reading GPU {ordinal}'s memory: {e:?}"))?;
        devices.push(Arc::new(CudaDevice {
            ordinal,
            name,
            arch: format!("sm_{major}{minor}"),
            budget: MemoryBudget::new(
                format!("memory of GPU {ordinal}"),
                (total as f64 * USABLE_FRACTION) as u64,
            ),
            active: AtomicUsize::new(0),
            current: RwLock::new(Arc::new(DeviceContext::new(ctx, 0))),
            rebuilds: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            fault_reason: Mutex::new(None),
        }));
    }
    tracing::info!(
        "CUDA driver {}, NVRTC {nvrtc_version}: kernels compile to machine code for each GPU",
        driver_version().unwrap_or_else(|| "unknown".into())
    );
    Ok(devices)
}

/// Where a CUDA toolkit holds the library `name` (`libnvrtc.so`) but the loader does not
/// look, how to fix that; empty if no toolkit is found in the usual places.
fn toolkit_hint(name: &str) -> String {
    let home = std::env::var("CUDA_HOME").unwrap_or_else(|_| "/usr/local/cuda".into());
    hint_for(
        name,
        &[format!("{home}/lib64"), "/usr/local/cuda/lib64".into()],
    )
}

/// [`toolkit_hint`] over the directories `dirs`.
fn hint_for(name: &str, dirs: &[String]) -> String {
    dirs.iter()
        .find(|dir| {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(name))
            })
        })
        .map(|dir| format!(" on the loader's path; {dir} has it: add it to LD_LIBRARY_PATH"))
        .unwrap_or_default()
}

/// The CUDA version the driver supports, e.g. `13.0`.
fn driver_version() -> Option<String> {
    let mut version = 0;
    // SAFETY: libcuda is loaded and initialized; the pointer is valid for a write.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
        .result()
        .ok()?;
    Some(format!("{}.{}", version / 1000, version % 1000 / 10))
}

/// Whether a driver error leaves the context unusable (a "sticky" error).
fn is_sticky(error: &DriverError) -> bool {
    matches!(
        error.0,
        cudaError_enum::CUDA_ERROR_ILLEGAL_ADDRESS
            | cudaError_enum::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | cudaError_enum::CUDA_ERROR_MISALIGNED_ADDRESS
            | cudaError_enum::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | cudaError_enum::CUDA_ERROR_INVALID_PC
            | cudaError_enum::CUDA_ERROR_LAUNCH_FAILED
            | cudaError_enum::CUDA_ERROR_HARDWARE_STACK_ERROR
            | cudaError_enum::CUDA_ERROR_ASSERT
    )
}

impl CudaDevice {
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its architecture, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The budget tensors on it are charged to.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Sessions holding one of its streams now.
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the device is out of service: a fault poisoned its context and the replacement
    /// is not ready yet.
    pub fn is_faulted(&self) -> bool {
        self.current_context().is_poisoned()
    }

    /// How many times a poisoned context was replaced by a working one.
    pub fn context_rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Which context new work goes to: 0 for the first, one more after each rebuild.
    pub fn current_generation(&self) -> u64 {
        self.current_context().generation
    }

    /// The context new work goes to (possibly poisoned: check before use).
    pub(crate) fn current_context(&self) -> Arc<DeviceContext> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The context new work goes to, or a retryable `device-fault` while it is out of service.
    pub(crate) fn usable_context(&self) -> GpuResult<Arc<DeviceContext>> {
        let context = self.current_context();
        if context.is_poisoned() {
            return Err(GpuError::new(
                ErrorKind::DeviceFault,
                format!(
                    "GPU {} is out of service after a fault ({}); retry",
                    self.ordinal,
                    self.fault_reason().unwrap_or_default()
                ),
            ));
        }
        Ok(context)
    }

    /// Makes a rebuilt, tested context the one new work goes to.
    fn install(&self, context: DeviceContext) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(context);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        self.set_fault_reason(None);
    }

    /// Why the device is out of service (the fault, then whether its context can be rebuilt);
    /// `None` while it serves.
    pub fn fault_reason(&self) -> Option<String> {
        if !self.is_faulted() {
            return None;
        }
        self.fault_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_fault_reason(&self, reason: Option<String>) {
        *self
            .fault_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// Leases a stream (reusing an idle one) in the device's current context.
    pub fn lease_stream(self: &Arc<Self>) -> GpuResult<StreamLease> {
        let context = self.usable_context()?;
        let idle = context
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let slot = match idle {
            Some(slot) => slot,
            None => {
                let stream = context
                    .ctx
                    .new_stream()
                    .map_err(|e| self.fault(&context, "creating a stream", e))?;
                let blas = context.new_blas(stream.clone())?;
                StreamSlot {
                    stream,
                    blas,
                    timer: StreamTimer::default(),
                }
            }
        };
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(StreamLease {
            device: self.clone(),
            context,
            slot: Some(slot),
        })
    }

    /// GPU time of all work run on the device so far (CUDA events), up to the last time each
    /// session's timings were collected.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }

    fn add_busy(&self, time: Duration) {
        self.busy_ns
            .fetch_add(time.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Maps a driver error from work in `context`. A sticky error poisons that context: the
    /// first to see it takes the device out of service and starts building a new context
    /// (unless the device already moved on). The error is a retryable `device-fault`.
    pub(crate) fn fault(
        self: &Arc<Self>,
        context: &DeviceContext,
        doing: &str,
        error: DriverError,
    ) -> GpuError {
        if !is_sticky(&error) {
            return GpuError::device(doing, format!("{error:?}"));
        }
        if context.poison() {
            self.set_fault_reason(Some(format!("{doing}: {error:?}")));
            tracing::error!(
                gpu = self.ordinal,
                generation = context.generation,
                "{doing}: {error:?}; the context is poisoned, rebuilding it"
            );
            context::spawn_rebuild(Arc::downgrade(self), context.generation);
        }
        GpuError::new(
            ErrorKind::DeviceFault,
            format!("{doing}: {error:?} (the device faulted; the work was lost, retry)"),
        )
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Wait for this session's work before the stream serves someone else. A fault
            // that only shows now (in work nobody waited for) still poisons the context.
            let finished = match slot.stream.synchronize() {
                Ok(()) => true,
                Err(error) => {
                    let error =
                        self.device
                            .fault(&self.context, "finishing a session's work", error);
                    tracing::debug!("{error}");
                    false
                }
            };
            if finished {
                self.device.add_busy(slot.timer.collect(true));
            }
            slot.timer.take_total();
            if finished && !self.context.is_poisoned() {
                self.context
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(slot);
            }
        }
        self.device.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamLease {
    fn stream(&self) -> &Arc<CudaStream> {
        &self.slot.as_ref().expect("leased").stream
    }

    fn timer(&self) -> &StreamTimer {
        &self.slot.as_ref().expect("leased").timer
    }

    /// Runs `work`, which enqueues on this lease's stream, between two timing events.
    fn timed<R>(&self, work: impl FnOnce() -> GpuResult<R>) -> GpuResult<R> {
        self.timer().time(&self.context.ctx, self.stream(), work)
    }

    /// GPU time of this lease's work so far, measured with CUDA events on its stream. Waits
    /// for the work enqueued so far to finish, so every op is counted.
    pub fn device_time(&self) -> Duration {
        if self.stream().synchronize().is_ok() {
            self.device.add_busy(self.timer().collect(true));
        } else {
            self.device.add_busy(self.timer().collect(false));
        }
        self.timer().total()
    }

    fn check(&self, context: &str, result: Result<(), DriverError>) -> GpuResult<()> {
        result.map_err(|e| self.device.fault(&self.context, context, e))
    }

    fn alloc(&self, len: usize) -> GpuResult<DeviceBuffer> {
        let slice = self.stream().alloc_zeros::<u8>(len.max(1)).map_err(|e| {
            self.device
                .fault(&self.context, "allocating device memory", e)
        })?;
        Ok(DeviceBuffer { slice, len })
    }

    /// Copies bytes to a new device buffer.
    pub fn upload(&self, data: &[u8]) -> GpuResult<DeviceBuffer> {
        self.timed(|| {
            if data.is_empty() {
                return self.alloc(0);
            }
            let slice = self
                .stream()
                .clone_htod(data)
                .map_err(|e| self.device.fault(&self.context, "copying to the device", e))?;
            Ok(DeviceBuffer {
                slice,
                len: data.len(),
            })
        })
    }

    /// A zeroed device buffer.
    pub fn zeros(&self, len: usize) -> GpuResult<DeviceBuffer> {
        self.timed(|| self.alloc(len))
    }

    /// Copies a buffer back (waits for the stream).
    pub fn download(&self, buffer: &DeviceBuffer) -> GpuResult<Vec<u8>> {
        self.timed(|| {
            let mut bytes = self.stream().clone_dtoh(&buffer.slice).map_err(|e| {
                self.device
                    .fault(&self.context, "copying from the device", e)
            })?;
            bytes.truncate(buffer.len);
            Ok(bytes)
        })
    }

    /// Row-major `[m, k] x [k, n]` with cuBLAS.
    pub fn matmul(
        &self,
        a: &DeviceBuffer,
        b: &DeviceBuffer,
        m: usize,
        k: usize,
        n: usize,
    ) -> GpuResult<DeviceBuffer> {
        self.timed(|| {
            let mut out = self.alloc(m * n * 4)?;
            if m == 0 || n == 0 || k == 0 {
                return Ok(out);
            }
            let blas = &self.slot.as_ref().expect("leased").blas;
            // Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
            let config = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_N,
                transb: cublasOperation_t::CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha: 1.0f32,
                lda: n as i32,
                ldb: k as i32,
                beta: 0.0f32,
                ldc: n as i32,
            };
            // SAFETY: the buffers hold m*k, k*n and m*n f32 values (checked by the caller's shapes).
            unsafe {
                let a_view = a.slice.transmute::<f32>(m * k).expect("a holds m*k f32");
                let b_view = b.slice.transmute::<f32>(k * n).expect("b holds k*n f32");
                let mut c_view = out
                    .slice
                    .transmute_mut::<f32>(m * n)
                    .expect("c holds m*n f32");
                blas.gemm(config, &b_view, &a_view, &mut c_view)
                    .map_err(|e| GpuError::device("cuBLAS sgemm", format!("{e:?}")))?;
            }
            Ok(out)
        })
    }

    /// Binary op with broadcasting.
    pub fn binary(
        &self,
        op: Binary,
        a: &DeviceBuffer,
        a_shape: &[usize],
        b: &DeviceBuffer,
        b_shape: &[usize],
        out_shape: &[usize],
    ) -> GpuResult<DeviceBuffer> {
        self.timed(|| {
            let n = crate::shape::elements(out_shape);
            let out = self.alloc(n * 4)?;
            if n == 0 {
                return Ok(out);
            }
            let geometry = Broadcast::new(a_shape, b_shape, out_shape);
            let builtins = self.context.builtins(&self.device.arch)?;
            let count = n as i64;
            let code: i32 = match op {
                Binary::Add => 0,
                Binary::Mul => 1,
            };
            let mut launch = self.stream().launch_builder(&builtins.binary);
            launch
                .arg(&a.slice)
                .arg(&b.slice)
                .arg(&out.slice)
                .arg(&count)
                .arg(&code)
                .arg(&geometry);
            // SAFETY: the kernel's signature matches these arguments; sizes were checked.
            self.check(
                "launching `binary`",
                unsafe { launch.launch(grid_stride_launch(n)) }.map(|_| ()),
            )?;
            Ok(out)
        })
    }

    /// Unary element-wise op.
    pub fn elementwise(
        &self,
        op: Elementwise,
        a: &DeviceBuffer,
        n: usize,
    ) -> GpuResult<DeviceBuffer> {
        self.timed(|| {
            let out = self.alloc(n * 4)?;
            if n == 0 {
                return Ok(out);
            }
            let builtins = self.context.builtins(&self.device.arch)?;
            let (code, factor): (i32, f32) = match op {
                Elementwise::Relu => (0, 0.0),
                Elementwise::Gelu => (1, 0.0),
                Elementwise::Scale(factor) => (2, factor),
            };
            let count = n as i64;
            let mut launch = self.stream().launch_builder(&builtins.unary);
            launch
                .arg(&a.slice)
                .arg(&out.slice)
                .arg(&count)
                .arg(&code)
                .arg(&factor);
            // SAFETY: matches the kernel's signature.
            self.check(
                "launching `unary`",
                unsafe { launch.launch(grid_stride_launch(n)) }.map(|_| ()),
            )?;
            Ok(out)
        })
    }

    /// Softmax over rows.
    pub fn softmax(&self, a: &DeviceBuffer, rows: usize, cols: usize) -> GpuResult<DeviceBuffer> {
        self.timed(|| {
            let out = self.alloc(rows * cols * 4)?;
            if rows == 0 || cols == 0 {
                return Ok(out);
            }
            let builtins = self.context.builtins(&self.device.arch)?;
            let (r, c) = (rows as i64, cols as i64);
            let mut launch = self.stream().launch_builder(&builtins.softmax);
            launch.arg(&a.slice).arg(&out.slice).arg(&r).arg(&c);
            // SAFETY: matches the kernel's signature; blocks stride over the rows.
            self.check(
                "launching `softmax`",
                unsafe { launch.launch(softmax_launch(rows)) }.map(|_| ()),
            )?;
            Ok(out)
        })
    }

    /// Sum (divided by `divisor`) over the middle axis of `(outer, n, inner)`.
    pub fn reduce(
        &self,
        a: &DeviceBuffer,
        outer: usize,
        n: usize,
        inner: usize,
        divisor: f32,
    ) -> GpuResult<DeviceBuffer> {
        self.timed(|| {
            let count = outer * inner;
            let out = self.alloc(count * 4)?;
            if count == 0 {
                return Ok(out);
            }
            let builtins = self.context.builtins(&self.device.arch)?;
            let (o, l, i) = (outer as i64, n as i64, inner as i64);
            let mut launch = self.stream().launch_builder(&builtins.reduce);
            launch
                .arg(&a.slice)
                .arg(&out.slice)
                .arg(&o)
                .arg(&l)
                .arg(&i)
                .arg(&divisor);
            // SAFETY: matches the kernel's signature.
            self.check(
                "launching `reduce`",
                unsafe { launch.launch(grid_stride_launch(count)) }.map(|_| ()),
            )?;
            Ok(out)
        })
    }

    /// Transpose of a `[rows, cols]` matrix of `size`-byte elements.
    pub fn transpose(
        &self,
        a: &DeviceBuffer,
        rows: usize,
        cols: usize,
        size: usize,
    ) -> GpuResult<DeviceBuffer> {
        self.timed(|| {
            let n = rows * cols;
            let out = self.alloc(n * size)?;
            if n == 0 {
                return Ok(out);
            }
            let builtins = self.context.builtins(&self.device.arch)?;
            let (r, c, s) = (rows as i64, cols as i64, size as i32);
            let mut launch = self.stream().launch_builder(&builtins.transpose);
            launch.arg(&a.slice).arg(&out.slice).arg(&r).arg(&c).arg(&s);
            // SAFETY: matches the kernel's signature.
            self.check(
                "launching `transpose`",
                unsafe { launch.launch(grid_stride_launch(n)) }.map(|_| ()),
            )?;
            Ok(out)
        })
    }

    /// Compiles (or finds in the device's cache) a custom kernel.
    pub fn compile(&self, source: &str, entry: &str) -> GpuResult<Arc<CompiledKernel>> {
        if source.contains('\0') || entry.contains('\0') {
            return Err(GpuError::invalid(
                "kernel source and entry must not contain NUL bytes",
            ));
        }
        let key = (source.to_string(), entry.to_string());
        if let Some(kernel) = self
            .context
            .kernels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(kernel.clone());
        }
        let module = builtins::compile_module(&self.context.ctx, &self.device.arch, source)?;
        let function = module.load_function(entry).map_err(|e| {
            GpuError::new(
                ErrorKind::NotFound,
                format!("no kernel entry point `{entry}` in the source (declare it `extern \"C\" __global__`): {e:?}"),
            )
        })?;
        let kernel = Arc::new(CompiledKernel {
            function,
            _module: module,
            ordinal: self.device.ordinal,
            generation: self.context.generation,
        });
        self.context
            .kernels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, kernel.clone());
        Ok(kernel)
    }

    /// Waits for the work enqueued on this lease's stream; a fault in it is a `device-fault`.
    pub fn synchronize(&self) -> GpuResult<()> {
        self.check("running the kernel", self.stream().synchronize())
    }

    /// Whether the work enqueued on this lease's stream has finished (`Ok(false)`: still
    /// running; an error: it faulted). A driver query, about a microsecond.
    pub fn poll_idle(&self) -> GpuResult<bool> {
        self.check("binding the context", self.context.ctx.bind_to_thread())?;
        // SAFETY: the stream belongs to this lease's context, which the lease keeps alive.
        match unsafe { cudarc::driver::sys::cuStreamQuery(self.stream().cu_stream()) } {
            cudarc::driver::sys::CUresult::CUDA_SUCCESS => Ok(true),
            cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            error => {
                Err(self
                    .device
                    .fault(&self.context, "running the kernel", DriverError(error)))
            }
        }
    }

    /// Waits up to `spin`, polling, for the stream's work to finish: `Some` with the outcome
    /// if it did, `None` if it is still running (then wait with [`StreamLease::synchronize`]
    /// off the async threads). Short kernels finish in a few microseconds, less than handing
    /// the wait to another thread costs.
    pub fn wait_briefly(&self, spin: Duration) -> Option<GpuResult<()>> {
        let started = std::time::Instant::now();
        loop {
            match self.poll_idle() {
                Ok(true) => return Some(Ok(())),
                Err(error) => return Some(Err(error)),
                Ok(false) if started.elapsed() >= spin => return None,
                Ok(false) => std::hint::spin_loop(),
            }
        }
    }

    /// Enqueues a custom kernel on this lease's stream without waiting for it.
    pub fn enqueue_launch(
        &self,
        kernel: &CompiledKernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_mem_bytes: u32,
        args: &[KernelArg<'_>],
    ) -> GpuResult<()> {
        self.timed(|| {
        if kernel.ordinal != self.device.ordinal {
            return Err(GpuError::invalid(
                "the kernel was compiled for another device",
            ));
        }
        if kernel.generation != self.context.generation {
            return Err(GpuError::new(
                ErrorKind::DeviceFault,
                "the kernel was compiled before the device's context was rebuilt after a fault; compile it again",
            ));
        }
        let threads = block.0 as u64 * block.1 as u64 * block.2 as u64;
        if [grid.0, grid.1, grid.2, block.0, block.1, block.2].contains(&0) || threads > 1024 {
            return Err(GpuError::invalid(format!(
                "invalid launch dimensions: grid {grid:?}, block {block:?} (blocks hold 1..=1024 threads)"
            )));
        }
        let mut launch = self.stream().launch_builder(&kernel.function);
        for arg in args {
            match arg {
                KernelArg::Tensor(tensor) => match &tensor.storage {
                    Storage::Cuda(buffer) => {
                        launch.arg(&buffer.slice);
                    }
                    Storage::Cpu(_) => {
                        return Err(GpuError::invalid("a kernel argument is not on this device"));
                    }
                },
                KernelArg::F32(v) => {
                    launch.arg(v);
                }
                KernelArg::F64(v) => {
                    launch.arg(v);
                }
                KernelArg::I32(v) => {
                    launch.arg(v);
                }
                KernelArg::U32(v) => {
                    launch.arg(v);
                }
                KernelArg::I64(v) => {
                    launch.arg(v);
                }
                KernelArg::U64(v) => {
                    launch.arg(v);
                }
            }
        }
        let config = LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes,
        };
        // SAFETY: a custom kernel is trusted native code (the `--allow-kernels` capability);
        // argument types are the guest's responsibility.
        self.check(
            "launching the kernel",
            unsafe { launch.launch(config) }.map(|_| ()),
        )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::hint_for;

    #[test]
    fn a_toolkit_off_the_loader_path_is_named_in_the_hint() {
        let empty = tempfile::tempdir().unwrap();
        let toolkit = tempfile::tempdir().unwrap();
        std::fs::write(toolkit.path().join("libnvrtc.so.13"), b"").unwrap();
        let dirs = [
            empty.path().display().to_string(),
            "/no/such/dir".to_string(),
            toolkit.path().display().to_string(),
        ];
        let hint = hint_for("libnvrtc.so", &dirs);
        assert!(hint.contains(&dirs[2]), "{hint}");
        assert!(hint.contains("LD_LIBRARY_PATH"), "{hint}");
        assert_eq!(hint_for("libcublas.so", &dirs), "", "no cuBLAS anywhere");
    }
}
