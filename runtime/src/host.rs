//! The data of one invocation's `Store`: its WASI context, HTTP context, resource table, memory
//! limiter and outbound-network policy — the "view" that wasmtime-wasi and wasmtime-wasi-http
//! borrow from.

use crate::gpu::{GpuCtx, GpuView};
use crate::guest_log::{GuestLog, GuestStream};
use std::sync::Arc;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Who is being invoked and under which limits: what a new [`InvocationState`] is built from.
#[derive(Debug, Clone)]
pub struct InvocationInfo {
    /// The function's name.
    pub function: Arc<str>,
    /// This invocation's id (also the `x-flint-invocation-id` header).
    pub invocation_id: Arc<str>,
    /// Linear-memory cap in bytes.
    pub memory_bytes: u64,
    /// Environment variables the guest sees.
    pub env: Arc<[(String, String)]>,
    /// Whether outbound HTTP and sockets are allowed.
    pub allow_outbound: bool,
    /// The GPU pool.
    pub pool: Arc<flint_gpu::Pool>,
    /// The invocation's GPU limits.
    pub gpu_limits: flint_gpu::SessionLimits,
    /// The node's registered models.
    pub models: Arc<crate::models::ModelRegistry>,
    /// Where the function's stdout and stderr are captured.
    pub log: Arc<crate::guest_log::FunctionLog>,
}

/// Store data of one invocation.
pub struct InvocationState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    gpu: GpuCtx,
    /// Enforces the memory cap and remembers whether the guest hit it.
    pub limiter: MemoryLimiter,
}

impl InvocationState {
    /// Fresh state for one invocation: no preopened directories, stdio into the node's log,
    /// the function's env vars, and network access only if the deploy granted it.
    pub fn new(info: &InvocationInfo) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.stdout(GuestLog::new(
            info.function.clone(),
            info.invocation_id.clone(),
            GuestStream::Stdout,
            info.log.clone(),
        ))
        .stderr(GuestLog::new(
            info.function.clone(),
            info.invocation_id.clone(),
            GuestStream::Stderr,
            info.log.clone(),
        ))
        .envs(&info.env)
        .env("FLINT_FUNCTION", &*info.function)
        .env("FLINT_INVOCATION_ID", &*info.invocation_id);
        if info.allow_outbound {
            wasi.inherit_network().allow_ip_name_lookup(true);
        }
        InvocationState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundPolicy {
                allow: info.allow_outbound,
            },
            gpu: GpuCtx::new(
                info.pool.clone(),
                info.gpu_limits.clone(),
                info.models.clone(),
            ),
            limiter: MemoryLimiter::new(info.memory_bytes),
        }
    }

    /// The `flint:gpu` view of this state.
    pub fn gpu_view(&mut self) -> GpuView<'_> {
        GpuView {
            ctx: &mut self.gpu,
            table: &mut self.table,
        }
    }

    /// What this invocation used of the GPU so far. May wait for its GPU work to finish
    /// (see [`InvocationState::gpu_may_wait`]).
    pub fn gpu_usage(&self) -> crate::gpu::GpuUsage {
        self.gpu.usage()
    }

    /// Whether reading the GPU usage or dropping this state may wait for a GPU stream, so it
    /// belongs off the async runtime's threads.
    pub fn gpu_may_wait(&self) -> bool {
        self.gpu.on_device()
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound `wasi:http` requests: denied unless the deploy granted outbound access.
pub struct OutboundPolicy {
    allow: bool,
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        if !self.allow {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        drop(fut);
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Caps an invocation's linear memory and records whether the guest ran into the cap, so a
/// trap that follows can be explained as "memory limit exceeded".
pub struct MemoryLimiter {
    max_bytes: usize,
    /// The largest size the guest asked for beyond the cap, if it did.
    pub denied_bytes: Option<usize>,
    /// The largest linear memory the guest grew to.
    pub peak_bytes: usize,
}

impl MemoryLimiter {
    /// A limiter for `max_bytes` of linear memory.
    pub fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            denied_bytes: None,
            peak_bytes: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.denied_bytes = Some(desired);
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
