//! The `flint:gpu` host: the WIT interfaces implemented on top of the `flint-gpu` pool.
//!
//! Each invocation gets a [`GpuCtx`] in its store: the pool, its limits, and a session opened
//! lazily on the first GPU call (functions that never touch the GPU lease nothing). Tensors and
//! kernels live in the store's resource table, so every byte an invocation allocated is
//! released when its store drops — after success, trap or timeout alike.
//!
//! Calls that may wait a while (CPU-backend math on large tensors, a kernel still running after
//! a short poll, a copy queued behind the invocation's GPU work) run on tokio's blocking pool,
//! so neither CPU-backend math nor GPU waits hold up the async runtime's threads; short ones run
//! inline, as handing them to another thread costs more than they do (measured on an H200:
//! +24 µs a call). Uploads read the guest's memory in place (`upload.rs`).

mod convert;
mod host;
mod models;
mod upload;
pub mod utilization;

use flint_gpu::{Pool, Session, SessionLimits};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, ResourceTable};

/// Generated bindings of the `flint:gpu/gpu` world.
pub mod bindings {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "flint:gpu/gpu",
        imports: { default: async | trappable },
        require_store_data_send: true,
        with: {
            "flint:gpu/types.tensor": super::HostTensor,
            "flint:gpu/kernels.kernel": super::HostKernel,
            "flint:gpu/models.model": super::HostModel,
        },
    });
}

/// A tensor in a store's resource table.
pub struct HostTensor(pub Arc<flint_gpu::Tensor>);

/// A compiled kernel in a store's resource table.
pub struct HostKernel(pub Arc<flint_gpu::Kernel>);

/// An opened model in a store's resource table; while it exists the model cannot be removed.
pub struct HostModel {
    /// The model.
    pub model: Arc<crate::models::ResidentModel>,
    _in_use: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// One invocation's GPU state.
pub struct GpuCtx {
    pool: Arc<Pool>,
    models: Arc<crate::models::ModelRegistry>,
    limits: SessionLimits,
    session: Option<Arc<Session>>,
    /// GPU time counted by the runtime: CPU-backend compute and host-side model calls. CUDA
    /// work is measured by the session with CUDA events and added in [`GpuCtx::usage`].
    busy: std::time::Duration,
}

/// What one invocation used of the GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuUsage {
    /// Time spent in GPU work: CUDA-event time of the invocation's stream on a GPU, compute
    /// time of its calls on the CPU backend (and of host-side model calls).
    pub busy: std::time::Duration,
    /// The most bytes held at once.
    pub peak_bytes: u64,
    /// Bytes held, integrated over time.
    pub byte_seconds: f64,
}

impl GpuCtx {
    /// GPU state for an invocation with `limits` on `pool`, with the node's `models`.
    pub fn new(
        pool: Arc<Pool>,
        limits: SessionLimits,
        models: Arc<crate::models::ModelRegistry>,
    ) -> Self {
        GpuCtx {
            pool,
            models,
            limits,
            session: None,
            busy: std::time::Duration::ZERO,
        }
    }

    /// The session, opened on first use.
    pub(crate) fn session(&mut self) -> flint_gpu::GpuResult<Arc<Session>> {
        if let Some(session) = &self.session {
            return Ok(session.clone());
        }
        let session = Arc::new(self.pool.session(self.limits.clone())?);
        self.session = Some(session.clone());
        Ok(session)
    }

    /// Counts the host's time since `started` as GPU work of the invocation, unless its
    /// session measures device time itself with CUDA events (the host's wall time includes
    /// waiting, which is not GPU work).
    pub(crate) fn record_host_time(&mut self, started: std::time::Instant) {
        match self.session.as_ref() {
            Some(session) if session.measures_device_time() => {}
            session => {
                let device = session.map(|s| s.device_index());
                self.record_busy(started.elapsed(), device);
            }
        }
    }

    /// Counts `elapsed` of GPU work: the invocation's and that of device `device` (if the
    /// work ran on one of the pool's devices).
    pub(crate) fn record_busy(&mut self, elapsed: std::time::Duration, device: Option<usize>) {
        self.busy += elapsed;
        if let Some(device) = device {
            self.pool.record_busy(device, elapsed);
        }
    }

    /// The device `model`'s calls run on: the CUDA device it was loaded onto, else the host's
    /// CPU, which is the pool's one device on the CPU backend and none of a CUDA pool's devices.
    pub(crate) fn model_device(&self, model: &flint_gpu::model::EmbeddingModel) -> Option<usize> {
        model
            .device_index()
            .or((self.pool.backend() == "cpu").then_some(0))
    }

    /// Whether the invocation holds a stream of a CUDA device (its usage and its end wait for
    /// the stream).
    pub fn on_device(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.measures_device_time())
    }

    /// What this invocation used so far (zero if it never touched the GPU). On CUDA this
    /// waits for the invocation's enqueued GPU work, so its device time is complete.
    pub fn usage(&self) -> GpuUsage {
        let device_time = self
            .session
            .as_ref()
            .map_or(std::time::Duration::ZERO, |s| s.device_time());
        GpuUsage {
            busy: self.busy + device_time,
            peak_bytes: self.session.as_ref().map_or(0, |s| s.peak_bytes()),
            byte_seconds: self.session.as_ref().map_or(0.0, |s| s.byte_seconds()),
        }
    }
}

/// What the `flint:gpu` host traits are implemented for: the invocation's GPU state and the
/// store's resource table.
pub struct GpuView<'a> {
    /// The invocation's GPU state.
    pub ctx: &'a mut GpuCtx,
    /// The store's resource table.
    pub table: &'a mut ResourceTable,
}

/// [`HasData`] for the `flint:gpu` bindings.
pub struct Gpu;

impl HasData for Gpu {
    type Data<'a> = GpuView<'a>;
}

/// Adds the `flint:gpu` interfaces to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> GpuView<'_>,
) -> wasmtime::Result<()> {
    bindings::flint::gpu::types::add_to_linker::<T, Gpu>(linker, get)?;
    upload::add_to_linker(linker, get)?;
    bindings::flint::gpu::ops::add_to_linker::<T, Gpu>(linker, get)?;
    bindings::flint::gpu::kernels::add_to_linker::<T, Gpu>(linker, get)?;
    bindings::flint::gpu::models::add_to_linker::<T, Gpu>(linker, get)?;
    Ok(())
}
