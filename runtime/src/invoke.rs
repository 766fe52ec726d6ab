//! One invocation: admission, body limit, a fresh `Store` with its limits, the guest's
//! `wasi:http/incoming-handler.handle`, and the mapping of every failure to a clear JSON error
//! (trap 500, timeout 504, queue full 503 + `Retry-After`, body too large 413).

use crate::error::{ApiError, ErrorKind};
use crate::function::LoadedFunction;
use crate::gpu_budget::{GpuBudget, GpuSpend};
use crate::host::InvocationInfo;
use crate::metering::{Meter, Outcome};
use crate::node::Node;
use crate::sandbox::{self, Sandbox};
use crate::scheduler::{Gate, Rejected};
use crate::units::{format_duration, format_size};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use wasmtime::Trap;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// The response header that carries the invocation id.
pub const INVOCATION_ID_HEADER: &str = "x-flint-invocation-id";

/// Errors inside response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the node sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The JSON error response for `error` (with `Retry-After` when it has one).
pub fn error_response(error: &ApiError) -> Response<ResponseBody> {
    let mut response = json_response(error.kind.status(), &error.to_json());
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A fresh invocation id: 16 hex digits.
pub fn new_invocation_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Runs one request through `function` and always answers: the guest's response, or a JSON
/// error. Every answer carries `x-flint-invocation-id`.
pub async fn invoke<B>(
    node: &Node,
    function: Arc<LoadedFunction>,
    request: Request<B>,
) -> Response<ResponseBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // A spare sandbox was built for an invocation id of its own (its guest sees it).
    let spare = function.spares.take();
    let invocation_id = match &spare {
        Some(spare) => spare.invocation_id.to_string(),
        None => new_invocation_id(),
    };
    let meter = Meter::start(
        node.metering().clone(),
        &function.name,
        function.manifest.version,
        &invocation_id,
    );
    let span = tracing::info_span!(
        "invocation",
        function = %function.name,
        version = function.manifest.version,
        invocation = %invocation_id,
    );
    let started = Instant::now();
    node.count_invocation();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let (mut response, outcome) = match run(node, &function, request, &invocation_id, &meter, spare)
        .instrument(span.clone())
        .await
    {
        Ok(response) => (response, Outcome::Ok),
        Err(error) => {
            span.in_scope(
                || tracing::warn!(kind = ?error.kind, "invocation failed: {}", error.message),
            );
            (error_response(&error), Outcome::of_error(error.kind))
        }
    };
    let status = response.status().as_u16();
    meter.update(|record| {
        record.outcome = outcome;
        record.status = status;
    });
    if let Ok(value) = HeaderValue::from_str(&invocation_id) {
        response.headers_mut().insert(INVOCATION_ID_HEADER, value);
    }
    // An access log line at debug level: the usage log records every invocation already, and
    // at info this line cost `hello` 4 % of its throughput at one connection.
    span.in_scope(|| {
        tracing::debug!(
            %method,
            path,
            status = response.status().as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "answered"
        )
    });
    // The record is written when both the guest and the response body are done.
    response.map(|body| MeteredBody { body, meter }.boxed_unsync())
}

/// A response body that counts its bytes into the invocation's meter.
struct MeteredBody {
    body: ResponseBody,
    meter: Arc<Meter>,
}

impl hyper::body::Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            self.meter.update(|record| record.bytes_out += n);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn run<B>(
    node: &Node,
    function: &Arc<LoadedFunction>,
    request: Request<B>,
    invocation_id: &str,
    meter: &Arc<Meter>,
    spare: Option<Sandbox>,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let settings = &function.manifest.settings;
    if function.uses_gpu {
        node.utilization().gpu_work_started();
    }
    let budget = match settings.gpu_budget {
        Some(budget) => {
            let spend = node.gpu_spend(&function.name);
            check_gpu_budget(function, &budget, &spend)?;
            Some((budget, spend))
        }
        None => None,
    };
    let admission = function
        .scheduler
        .admit()
        .await
        .map_err(|rejected| admission_error(function, rejected))?;

    let request = read_body(request, settings.max_body_bytes).await?;
    let bytes_in = hyper::body::Body::size_hint(request.body())
        .exact()
        .unwrap_or(0);
    meter.update(|record| record.bytes_in = bytes_in);

    let timeout = settings.timeout();
    let deadline = Instant::now() + timeout;
    let (pre, cold_start) = function
        .code(node.linker())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    meter.update(|record| record.cold_start = cold_start);
    let info = invocation_info(node, function, Arc::from(invocation_id));
    let (mut store, proxy) = match spare {
        Some(spare) => {
            let mut store = spare.store;
            sandbox::set_deadline(&mut store, deadline);
            (store, Some(spare.proxy))
        }
        None => (sandbox::new_store(node.engine(), &info, deadline), None),
    };
    // Spares for the next requests. A request that took one has its replacement built at once,
    // beside its guest. One that instantiates its own sandbox (the first after a reload, say)
    // has them built once it has answered: building them beside it would take the other core
    // and the address space's lock from its instantiation and its guest (a componentize-py
    // function's first request after a reload: 8.2 ms that way, 6.3 ms this way).
    let policy = node.options().spares;
    let instantiates = proxy.is_none();
    if !instantiates {
        let (budget, activity) = (node.spare_budget(), node.guest_activity());
        function
            .spares
            .refill(policy, budget, activity, &pre, &info, timeout);
    }

    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (guest_request, outparam) = {
        let mut http = store.data_mut().http();
        let guest_request = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| ApiError::invalid(format!("unusable request: {e}")))?;
        let outparam = http
            .new_response_outparam(sender)
            .map_err(|e| ApiError::internal(&anyhow::anyhow!(e)))?;
        (guest_request, outparam)
    };

    let task_meter = meter.clone();
    let spares = function.spares.clone();
    let activity = node.guest_activity().clone();
    let spare_budget = node.spare_budget().clone();
    let task = tokio::spawn(
        async move {
            // The slot stays taken until the guest is done, response body included, and its
            // store is gone.
            let admission = admission;
            let running = activity.enter();
            let outcome = tokio::time::timeout(timeout, async {
                let proxy = match proxy {
                    Some(proxy) => proxy,
                    None => {
                        let started = Instant::now();
                        let proxy = pre.instantiate_async(&mut store).await?;
                        spares.record_instantiation(started.elapsed());
                        proxy
                    }
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, guest_request, outparam)
                    .await
            })
            .await;
            drop(running);
            let memory_denied = store.data().limiter.denied_bytes;
            let memory_peak = store.data().limiter.peak_bytes as u64;
            // On a GPU, the usage (CUDA-event time) and the end of the session wait for the
            // invocation's stream: do that on the blocking pool, not on an async thread.
            let gpu = if store.data().gpu_may_wait() {
                tokio::task::spawn_blocking(move || {
                    let gpu = store.data().gpu_usage();
                    drop(store);
                    gpu
                })
                .await
                .unwrap_or_default()
            } else {
                let gpu = store.data().gpu_usage();
                drop(store);
                gpu
            };
            if let Some((budget, spend)) = budget {
                let gpu_us = gpu.busy.as_micros() as u64;
                spend.charge(&budget, crate::gpu_budget::now_ms(), gpu_us);
            }
            // Out of flight before it is counted: whoever sees the usage record or the metrics
            // move sees the slot free and the budget charged.
            drop(admission);
            task_meter.update(|record| {
                record.memory_peak_bytes = memory_peak;
                record.gpu_us = gpu.busy.as_micros() as u64;
                record.gpu_peak_bytes = gpu.peak_bytes;
                record.gpu_byte_seconds = gpu.byte_seconds;
            });
            drop(task_meter);
            // Accounted first, refilled after: a client that sends its next request as soon as
            // it has read this answer finds the budget already charged.
            if instantiates && spares.wanted(policy) {
                // The connection's task, ready on this thread, writes the response first.
                tokio::task::yield_now().await;
                spares.refill(policy, &spare_budget, &activity, &pre, &info, timeout);
            }
            (outcome, memory_denied)
        }
        .in_current_span(),
    );

    match receiver.await {
        Ok(Ok(response)) => {
            Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
        }
        Ok(Err(code)) => Err(ApiError::new(
            ErrorKind::BadGuestResponse,
            format!(
                "function `{}` answered with an error: {code:?}",
                function.name
            ),
        )),
        Err(_) => {
            let (outcome, memory_denied) = task
                .await
                .map_err(|e| ApiError::internal(&anyhow::anyhow!("invocation task failed: {e}")))?;
            Err(classify_failure(function, outcome, memory_denied, timeout))
        }
    }
}

/// What a new invocation of `function` is made of, for invocation `id`.
fn invocation_info(node: &Node, function: &LoadedFunction, id: Arc<str>) -> InvocationInfo {
    let settings = &function.manifest.settings;
    InvocationInfo {
        function: function.name.clone(),
        invocation_id: id,
        memory_bytes: settings.memory_bytes,
        env: function.env.clone(),
        allow_outbound: settings.allow_outbound,
        pool: node.gpu_pool().clone(),
        models: node.models().clone(),
        log: node.guest_logs().function(&function.name),
        gpu_limits: flint_gpu::SessionLimits {
            invocation_bytes: settings.gpu_memory_bytes,
            function: function.gpu_budget.clone(),
            allow_kernels: settings.allow_kernels,
            holder: Some(function.holdings.clone()),
        },
    }
}

/// 429 once the function has spent its GPU budget for the current period.
fn check_gpu_budget(
    function: &LoadedFunction,
    budget: &GpuBudget,
    spend: &GpuSpend,
) -> Result<(), ApiError> {
    let now = crate::gpu_budget::now_ms();
    let Err(exhausted) = spend.check(budget, now) else {
        return Ok(());
    };
    let resets_in = std::time::Duration::from_millis(exhausted.resets_at_ms.saturating_sub(now));
    let resets_at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(exhausted.resets_at_ms);
    Err(ApiError::new(
        ErrorKind::BudgetExhausted,
        format!(
            "function `{}` has spent its GPU budget of {} ({:.3}s used this period); it resets at {} (in {})",
            function.name,
            budget.render(),
            exhausted.used_us as f64 / 1e6,
            humantime::format_rfc3339_seconds(resets_at),
            format_duration(std::time::Duration::from_secs(resets_in.as_secs_f64().ceil() as u64)),
        ),
    )
    .retry_after(resets_in.as_secs_f64().ceil().max(1.0) as u32))
}

/// The 503 for a request that found a limit reached and the queue full, naming the limit.
fn admission_error(function: &LoadedFunction, rejected: Rejected) -> ApiError {
    let settings = &function.manifest.settings;
    let name = &function.name;
    let scheduler = &function.scheduler;
    let message = match rejected {
        Rejected::Closed => {
            return ApiError::new(
                ErrorKind::Unavailable,
                format!("function `{name}` is shutting down"),
            )
            .retry_after(1);
        }
        Rejected::QueueFull(Gate::Function) => format!(
            "function `{name}` is at its concurrency limit ({} running, {} queued); retry later",
            settings.max_concurrency, settings.queue_depth
        ),
        Rejected::QueueFull(Gate::FunctionGpu) => format!(
            "function `{name}` is at its GPU concurrency limit ({} running, {} queued); retry later",
            scheduler.limit(Gate::FunctionGpu).unwrap_or_default(),
            settings.queue_depth
        ),
        Rejected::QueueFull(Gate::NodeGpu) => format!(
            "the node is at its limit of {} GPU invocations at once and function `{name}`'s queue \
             ({} requests) is full; retry later",
            scheduler.limit(Gate::NodeGpu).unwrap_or_default(),
            settings.queue_depth
        ),
    };
    ApiError::new(ErrorKind::Overloaded, message).retry_after(1)
}

/// Reads a whole body of at most `limit` bytes: 413 if `Content-Length` says more (before
/// reading anything) or if more arrives. `what` and `whose` name the body and the limit in the
/// message ("the component", "this node's").
pub async fn read_limited<B>(
    request: Request<B>,
    limit: u64,
    what: &str,
    whose: &str,
) -> Result<(http::request::Parts, Bytes), ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the {what} is larger than {whose} limit of {}",
                format_size(limit)
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::invalid(format!(
            "failed to read the {what}: {error}"
        ))),
    }
}

/// Reads the request body up to `max_bytes` (413 beyond) and makes sure the request has a
/// `Host`, which wasi:http requires.
async fn read_body<B>(request: Request<B>, max_bytes: u64) -> Result<Request<Full<Bytes>>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (mut parts, bytes) =
        read_limited(request, max_bytes, "request body", "this function's").await?;
    if !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    Ok(Request::from_parts(parts, Full::new(bytes)))
}

fn classify_failure(
    function: &LoadedFunction,
    outcome: Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    memory_denied: Option<usize>,
    timeout: std::time::Duration,
) -> ApiError {
    let name = &function.name;
    let timed_out = || {
        ApiError::new(
            ErrorKind::Timeout,
            format!(
                "function `{name}` ran past its timeout of {}",
                format_duration(timeout)
            ),
        )
    };
    let error = match outcome {
        Err(_elapsed) => return timed_out(),
        Ok(Ok(())) => {
            return ApiError::new(
                ErrorKind::BadGuestResponse,
                format!("function `{name}` returned without sending a response"),
            );
        }
        Ok(Err(error)) => error,
    };
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return ApiError::new(
            ErrorKind::Overloaded,
            "the node is running as many instances as it is configured for; retry later",
        )
        .retry_after(1);
    }
    let trap = error.downcast_ref::<Trap>().copied();
    tracing::warn!("guest failed: {error:#}");
    if trap == Some(Trap::Interrupt) {
        return timed_out();
    }
    if let Some(asked) = memory_denied {
        return ApiError::new(
            ErrorKind::GuestTrap,
            format!(
                "function `{name}` exceeded its memory limit of {} (it asked for {} bytes) and trapped",
                format_size(function.manifest.settings.memory_bytes),
                asked
            ),
        );
    }
    let what = match trap {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    ApiError::new(
        ErrorKind::GuestTrap,
        format!("function `{name}` trapped: {what} (its stderr in the node log may say why)"),
    )
}
