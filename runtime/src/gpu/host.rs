//! The host traits of `flint:gpu/types`, `ops` and `kernels`.

use super::bindings::flint::gpu::kernels::{self, Dim3, KernelArg};
use super::bindings::flint::gpu::ops;
use super::bindings::flint::gpu::types::{self, BackendInfo, Dtype, Error};
use super::{GpuView, HostKernel, HostTensor};
use flint_gpu::{Session, Tensor, UnaryOp};
use std::sync::Arc;
use wasmtime::component::Resource;

/// Work on fewer elements than this runs inline; more goes to the blocking pool.
const INLINE_ELEMENTS: usize = 1 << 16;

type Answer<T> = wasmtime::Result<Result<T, Error>>;

/// Copies to or from a device of at most this many bytes run inline when the invocation's
/// stream is idle: they take microseconds (about 75 µs for 1 MiB on an H200), less than or
/// about what handing them to the blocking pool costs (measured there: +25-30 µs a call).
const INLINE_COPY_BYTES: usize = 1 << 20;

/// How long a kernel launch polls for its kernel to finish before it hands the wait to the
/// blocking pool: an empty kernel finishes in about 10 µs.
const KERNEL_SPIN: std::time::Duration = std::time::Duration::from_micros(25);

/// The cost of a copy of `bytes` on `session`'s backend. On CUDA a copy waits for the stream's
/// queued work, so it runs inline only when it is small and nothing is queued.
fn copy_cost(session: &Session, bytes: usize) -> usize {
    if session.backend() != "cuda" {
        bytes / 4
    } else if bytes <= INLINE_COPY_BYTES && session.is_idle() {
        0
    } else {
        usize::MAX
    }
}

/// The cost of an op on `elements`: CPU work scales with size; a CUDA launch only enqueues.
fn op_cost(session: &Session, elements: usize) -> usize {
    if session.backend() == "cuda" {
        0
    } else {
        elements
    }
}

/// Runs `work` inline if it is small, else on tokio's blocking pool.
pub(super) async fn run<R: Send + 'static>(
    cost: usize,
    work: impl FnOnce() -> R + Send + 'static,
) -> wasmtime::Result<R> {
    if cost < INLINE_ELEMENTS {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| wasmtime::format_err!("GPU worker task failed: {e}"))
}

impl GpuView<'_> {
    /// [`run`], counting the time as GPU time of the invocation on the CPU backend. On CUDA
    /// the session measures its device time itself with CUDA events, so the host's wall time
    /// (which includes waiting) is not counted.
    pub(super) async fn timed<R: Send + 'static>(
        &mut self,
        cost: usize,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> wasmtime::Result<R> {
        let started = std::time::Instant::now();
        let result = run(cost, work).await;
        self.ctx.record_host_time(started);
        result
    }

    fn session(&mut self) -> Result<Arc<Session>, Error> {
        self.ctx.session().map_err(Error::from)
    }

    pub(super) fn tensor(&self, handle: &Resource<HostTensor>) -> wasmtime::Result<Arc<Tensor>> {
        Ok(self.table.get(handle)?.0.clone())
    }

    fn push(&mut self, result: flint_gpu::GpuResult<Tensor>) -> Answer<Resource<HostTensor>> {
        match result {
            Ok(tensor) => Ok(Ok(self.table.push(HostTensor(Arc::new(tensor)))?)),
            Err(error) => Ok(Err(error.into())),
        }
    }

    async fn unary_op(
        &mut self,
        a: Resource<HostTensor>,
        op: impl FnOnce(&Session, &Tensor) -> flint_gpu::GpuResult<Tensor> + Send + 'static,
    ) -> Answer<Resource<HostTensor>> {
        let session = match self.session() {
            Ok(session) => session,
            Err(error) => return Ok(Err(error)),
        };
        let a = self.tensor(&a)?;
        let cost = op_cost(&session, a.len());
        let result = self.timed(cost, move || op(&session, &a)).await?;
        self.push(result)
    }

    async fn binary_op(
        &mut self,
        a: Resource<HostTensor>,
        b: Resource<HostTensor>,
        op: impl FnOnce(&Session, &Tensor, &Tensor) -> flint_gpu::GpuResult<Tensor> + Send + 'static,
    ) -> Answer<Resource<HostTensor>> {
        let session = match self.session() {
            Ok(session) => session,
            Err(error) => return Ok(Err(error)),
        };
        let a = self.tensor(&a)?;
        let b = self.tensor(&b)?;
        let cost = op_cost(&session, a.len().max(b.len()));
        let result = self.timed(cost, move || op(&session, &a, &b)).await?;
        self.push(result)
    }
}

impl types::Host for GpuView<'_> {
    async fn backend(&mut self) -> wasmtime::Result<BackendInfo> {
        Ok(match self.ctx.session() {
            Ok(session) => BackendInfo {
                backend: session.backend().to_string(),
                device: session.device_name().to_string(),
                quota_bytes_left: session.quota_left(),
            },
            Err(error) => BackendInfo {
                backend: "unavailable".to_string(),
                device: error.message,
                quota_bytes_left: 0,
            },
        })
    }
}

impl types::HostTensor for GpuView<'_> {
    /// The generated binding's upload (the guest's bytes already copied into `data`). The
    /// linker serves `tensor.upload` with `gpu/upload.rs` instead, which reads them in
    /// place; this stays as the trait requires it and as the reference behaviour.
    async fn upload(
        &mut self,
        dtype: Dtype,
        shape: Vec<u32>,
        data: Vec<u8>,
    ) -> Answer<Resource<HostTensor>> {
        let session = match self.session() {
            Ok(session) => session,
            Err(error) => return Ok(Err(error)),
        };
        let cost = copy_cost(&session, data.len());
        let result = self
            .timed(cost, move || session.upload(dtype.into(), &shape, &data))
            .await?;
        self.push(result)
    }

    async fn zeros(&mut self, dtype: Dtype, shape: Vec<u32>) -> Answer<Resource<HostTensor>> {
        let session = match self.session() {
            Ok(session) => session,
            Err(error) => return Ok(Err(error)),
        };
        let result = session.zeros(dtype.into(), &shape);
        self.push(result)
    }

    async fn shape(&mut self, this: Resource<HostTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.tensor(&this)?.dims())
    }

    async fn dtype(&mut self, this: Resource<HostTensor>) -> wasmtime::Result<Dtype> {
        Ok(self.tensor(&this)?.dtype().into())
    }

    async fn byte_size(&mut self, this: Resource<HostTensor>) -> wasmtime::Result<u64> {
        Ok(self.tensor(&this)?.byte_size())
    }

    async fn download(&mut self, this: Resource<HostTensor>) -> Answer<Vec<u8>> {
        let session = match self.session() {
            Ok(session) => session,
            Err(error) => return Ok(Err(error)),
        };
        let tensor = self.tensor(&this)?;
        let cost = copy_cost(&session, tensor.byte_size() as usize);
        let result = self.timed(cost, move || session.download(&tensor)).await?;
        Ok(result.map_err(Error::from))
    }

    async fn drop(&mut self, this: Resource<HostTensor>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl ops::Host for GpuView<'_> {
    async fn matmul(
        &mut self,
        a: Resource<HostTensor>,
        b: Resource<HostTensor>,
    ) -> Answer<Resource<HostTensor>> {
        self.binary_op(a, b, |s, a, b| s.matmul(a, b)).await
    }

    async fn add(
        &mut self,
        a: Resource<HostTensor>,
        b: Resource<HostTensor>,
    ) -> Answer<Resource<HostTensor>> {
        self.binary_op(a, b, |s, a, b| s.add(a, b)).await
    }

    async fn mul(
        &mut self,
        a: Resource<HostTensor>,
        b: Resource<HostTensor>,
    ) -> Answer<Resource<HostTensor>> {
        self.binary_op(a, b, |s, a, b| s.mul(a, b)).await
    }

    async fn scale(
        &mut self,
        a: Resource<HostTensor>,
        factor: f32,
    ) -> Answer<Resource<HostTensor>> {
        self.unary_op(a, move |s, a| s.scale(a, factor)).await
    }

    async fn relu(&mut self, a: Resource<HostTensor>) -> Answer<Resource<HostTensor>> {
        self.unary_op(a, |s, a| s.unary(UnaryOp::Relu, a)).await
    }

    async fn gelu(&mut self, a: Resource<HostTensor>) -> Answer<Resource<HostTensor>> {
        self.unary_op(a, |s, a| s.unary(UnaryOp::Gelu, a)).await
    }

    async fn softmax(&mut self, a: Resource<HostTensor>) -> Answer<Resource<HostTensor>> {
        self.unary_op(a, |s, a| s.softmax(a)).await
    }

    async fn sum(
        &mut self,
        a: Resource<HostTensor>,
        axis: Option<u32>,
    ) -> Answer<Resource<HostTensor>> {
        self.unary_op(a, move |s, a| s.sum(a, axis)).await
    }

    async fn mean(
        &mut self,
        a: Resource<HostTensor>,
        axis: Option<u32>,
    ) -> Answer<Resource<HostTensor>> {
        self.unary_op(a, move |s, a| s.mean(a, axis)).await
    }

    async fn transpose(&mut self, a: Resource<HostTensor>) -> Answer<Resource<HostTensor>> {
        self.unary_op(a, |s, a| s.transpose(a)).await
    }
}

impl kernels::Host for GpuView<'_> {}

/// A kernel argument with its tensor resolved, owned so it can cross to the blocking pool.
enum OwnedArg {
    Tensor(Arc<Tensor>),
    F32(f32),
    F64(f64),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
}

impl kernels::HostKernel for GpuView<'_> {
    async fn compile(&mut self, source: String, entry: String) -> Answer<Resource<HostKernel>> {
        let session = match self.session() {
            Ok(session) => session,
            Err(error) => return Ok(Err(error)),
        };
        // NVRTC compiles take milliseconds to seconds: always off the async threads.
        let result = self
            .timed(usize::MAX, move || session.compile_kernel(&source, &entry))
            .await?;
        match result {
            Ok(kernel) => Ok(Ok(self.table.push(HostKernel(Arc::new(kernel)))?)),
            Err(error) => Ok(Err(error.into())),
        }
    }

    async fn launch(
        &mut self,
        this: Resource<HostKernel>,
        grid: Dim3,
        block: Dim3,
        shared_mem_bytes: u32,
        args: Vec<KernelArg>,
    ) -> Answer<()> {
        let session = match self.session() {
            Ok(session) => session,
            Err(error) => return Ok(Err(error)),
        };
        let kernel = self.table.get(&this)?.0.clone();
        let mut owned = Vec::with_capacity(args.len());
        for arg in args {
            owned.push(match arg {
                KernelArg::Tensor(handle) => OwnedArg::Tensor(self.tensor(&handle)?),
                KernelArg::F32(v) => OwnedArg::F32(v),
                KernelArg::F64(v) => OwnedArg::F64(v),
                KernelArg::I32(v) => OwnedArg::I32(v),
                KernelArg::U32(v) => OwnedArg::U32(v),
                KernelArg::I64(v) => OwnedArg::I64(v),
                KernelArg::U64(v) => OwnedArg::U64(v),
            });
        }
        let args: Vec<flint_gpu::KernelArg<'_>> = owned
            .iter()
            .map(|arg| match arg {
                OwnedArg::Tensor(t) => flint_gpu::KernelArg::Tensor(t),
                OwnedArg::F32(v) => flint_gpu::KernelArg::F32(*v),
                OwnedArg::F64(v) => flint_gpu::KernelArg::F64(*v),
                OwnedArg::I32(v) => flint_gpu::KernelArg::I32(*v),
                OwnedArg::U32(v) => flint_gpu::KernelArg::U32(*v),
                OwnedArg::I64(v) => flint_gpu::KernelArg::I64(*v),
                OwnedArg::U64(v) => flint_gpu::KernelArg::U64(*v),
            })
            .collect();
        // Enqueuing takes microseconds: inline. Then a short kernel is waited for here; a
        // longer one on the blocking pool, so that it holds no async thread.
        let enqueued = session.enqueue_launch(
            &kernel,
            (grid.x, grid.y, grid.z),
            (block.x, block.y, block.z),
            shared_mem_bytes,
            &args,
        );
        drop(args);
        if let Err(error) = enqueued {
            return Ok(Err(error.into()));
        }
        let finished = match session.wait_briefly(KERNEL_SPIN) {
            Some(finished) => finished,
            None => {
                run(usize::MAX, move || {
                    let finished = session.synchronize();
                    drop(owned);
                    finished
                })
                .await?
            }
        };
        Ok(finished.map_err(Error::from))
    }

    async fn drop(&mut self, this: Resource<HostKernel>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
