//! `fnctl serve`: runs a node until SIGTERM or ctrl-c, then drains and exits 0.

use crate::engine::EngineOptions;
use crate::node::{DEFAULT_MAX_COMPONENT_BYTES, Node, NodeOptions};
use crate::server::{self, ServeOptions};
use crate::units::{format_size, parse_duration, parse_size};
use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `fnctl serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the public listener (functions at /fn/NAME/).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (JSON API under /v1/).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub admin: SocketAddr,
    /// Data directory: registry, admin token, node.json.
    #[arg(long, env = "FLINT_DATA", default_value = super::DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// Largest component a deploy may upload.
    #[arg(long, default_value_t = format_size(DEFAULT_MAX_COMPONENT_BYTES), value_parser = parse_size_arg)]
    pub max_component_size: String,
    /// Component instances alive at once, node-wide.
    #[arg(long, default_value_t = 1000)]
    pub max_instances: u32,
    /// Memory the CPU backend may give to tensors (used where there is no CUDA device).
    #[arg(long, default_value = "4GiB", value_parser = parse_size_arg)]
    pub cpu_tensor_memory: String,
    /// Use the CPU backend even if a CUDA device is present.
    #[arg(long)]
    pub cpu_backend: bool,
    /// How long a model waits for more concurrent requests to batch into one forward pass
    /// (only while requests overlap: a lone request runs at once).
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    pub batch_window: Duration,
    /// Run one request per forward pass (no dynamic batching).
    #[arg(long)]
    pub no_batching: bool,
    /// Park a function after this long without requests: give back its code pages but keep it
    /// linked, so its next request starts without reloading; `0` never parks. `fnctl deploy
    /// --keep-warm` exempts a function.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub idle_park: Duration,
    /// Unload a function's code after this long without requests (its next request is a cold
    /// start); `0` never unloads. `fnctl deploy --keep-warm` exempts a function.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_unload: Duration,
    /// At most this many functions keep their component in memory (loaded or parked, `--keep-warm`
    /// ones included); beyond it the least recently used idle ones unload, down to 90 %. Bounds
    /// the node's memory when traffic reaches more functions than this within `--idle-unload`;
    /// `0`: no limit.
    #[arg(long, default_value_t = 1000)]
    pub max_loaded: usize,
    /// Size at which the usage log (DATA/usage/usage.jsonl) rotates.
    #[arg(long, default_value = "64MiB", value_parser = parse_size_arg)]
    pub usage_log_size: String,
    /// GPU invocations (of functions that import `flint:gpu`) running at once on this node;
    /// more wait in their function's queue, then get 503.
    #[arg(long, default_value_t = crate::node::DEFAULT_MAX_GPU_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_gpu_concurrency: u32,
    /// Fresh instances of each recently invoked function built ahead of its requests, so a
    /// request need not wait for instantiation (each still serves exactly one request); 0
    /// turns this off.
    #[arg(long, default_value_t = 2)]
    pub spare_sandboxes: usize,
    /// Build spare instances only for functions whose instantiation takes at least this long
    /// (handing one over costs more than instantiating a small component in place).
    #[arg(long, default_value = "250us", value_parser = parse_duration)]
    pub spare_after: Duration,
    /// How long in-flight requests may finish after SIGTERM/ctrl-c.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

fn parse_size_arg(text: &str) -> Result<String, String> {
    parse_size(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// Runs the node.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flint")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let options = NodeOptions {
            data_dir: args.data.clone(),
            max_component_bytes: parse_size(&args.max_component_size)?,
            engine: EngineOptions {
                max_instances: args.max_instances,
            },
            gpu: flint_gpu::PoolOptions {
                cpu_memory_bytes: parse_size(&args.cpu_tensor_memory)?,
                force_cpu: args.cpu_backend,
            },
            usage_log_rotate_bytes: parse_size(&args.usage_log_size)?,
            idle: crate::idle::IdlePolicy {
                park_after: (!args.idle_park.is_zero()).then_some(args.idle_park),
                unload_after: (!args.idle_unload.is_zero()).then_some(args.idle_unload),
                max_loaded: (args.max_loaded > 0).then_some(args.max_loaded),
            },
            max_gpu_concurrency: args.max_gpu_concurrency,
            spares: crate::sandbox::SparePolicy {
                per_function: args.spare_sandboxes,
                after: args.spare_after,
            },
            batching: flint_gpu::model::batcher::BatchOptions {
                window: args.batch_window,
                enabled: !args.no_batching,
                ..Default::default()
            },
        };
        let node = Node::new(options)?;
        let token = crate::token::load_or_create(&args.data)?;
        let serve_options = ServeOptions {
            listen: args.listen,
            admin: args.admin,
            drain_timeout: args.drain_timeout,
        };
        server::serve(node, token, serve_options, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("ctrl-c received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}
