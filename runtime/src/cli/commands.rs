//! The admin client commands: deploy, ls, show, versions, rm, rollback, invoke.

use super::ClientArgs;
use super::client::{AdminClient, bytes_body, progress_body, server_error};
use crate::settings::FunctionSettings;
use crate::units::{format_size, parse_duration, parse_size};
use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use http::{HeaderValue, Method, header};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Options of `fnctl deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The component (.wasm, built for wasm32-wasip2).
    pub file: PathBuf,
    /// The function's name ([a-z0-9-], starting with a letter).
    #[arg(long)]
    pub name: String,
    /// An extra route prefix besides /fn/NAME (repeatable; longest prefix wins).
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// Linear-memory cap per invocation.
    #[arg(long, default_value = "128MiB")]
    pub memory: String,
    /// Wall-clock timeout per invocation.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// Invocations running at once.
    #[arg(long, default_value_t = crate::settings::DEFAULT_MAX_CONCURRENCY)]
    pub max_concurrency: u32,
    /// Requests waiting for a slot before the node answers 503.
    #[arg(long, default_value_t = crate::settings::DEFAULT_QUEUE_DEPTH)]
    pub queue_depth: u32,
    /// Largest request body.
    #[arg(long, default_value = "10MiB")]
    pub max_body: String,
    /// An environment variable KEY=VALUE (repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Grant outbound HTTP requests and sockets.
    #[arg(long)]
    pub allow_outbound: bool,
    /// GPU memory quota per invocation.
    #[arg(long, default_value = "512MiB")]
    pub gpu_memory: String,
    /// GPU memory quota of all running invocations of the function together.
    #[arg(long)]
    pub gpu_function_memory: Option<String>,
    /// Grant custom CUDA kernels. A kernel runs native code in a device context shared with
    /// other tenants and can read their device memory: grant it to trusted functions only.
    #[arg(long)]
    pub allow_kernels: bool,
    /// Never unload it when idle (no cold starts, at the cost of memory).
    #[arg(long)]
    pub keep_warm: bool,
    /// GPU invocations of this function running at once (it applies when the component
    /// imports flint:gpu; the node's --max-gpu-concurrency applies as well).
    #[arg(long)]
    pub max_gpu_concurrency: Option<u32>,
    /// GPU time per period, GPU_SECONDS/PERIOD (e.g. `30/1h`, `500ms/1m`): once spent,
    /// requests get 429 until the period resets.
    #[arg(long)]
    pub gpu_budget: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// Options of `fnctl ls`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// Options of commands that take just a function name.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The function's name.
    pub name: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// Options of `fnctl rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The function's name.
    pub name: String,
    /// The version to switch to [default: the one before the current].
    #[arg(long)]
    pub to: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// Options of `fnctl invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The function's name.
    pub name: String,
    /// The request body.
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Read the request body from a file (`-` for stdin).
    #[arg(long)]
    pub data_file: Option<PathBuf>,
    /// HTTP method the function sees [default: POST with a body, GET without].
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// Path below /fn/NAME the function sees, e.g. /greet?name=ada.
    #[arg(long, default_value = "")]
    pub path: String,
    /// A request header `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Print the status line and headers before the body.
    #[arg(long, short = 'i')]
    pub include: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: super::InvokeClientArgs,
}

fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

fn print_json(value: &Value) -> Result<ExitCode> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

/// `fnctl deploy FILE --name NAME ...`
pub fn deploy(args: DeployArgs) -> Result<ExitCode> {
    let mut settings = FunctionSettings {
        routes: Vec::new(),
        memory_bytes: parse_size(&args.memory).context("--memory")?,
        timeout_ms: parse_duration(&args.timeout)
            .context("--timeout")?
            .as_millis()
            .try_into()
            .context("--timeout is too long")?,
        max_concurrency: args.max_concurrency,
        queue_depth: args.queue_depth,
        max_body_bytes: parse_size(&args.max_body).context("--max-body")?,
        env: Vec::new(),
        allow_outbound: args.allow_outbound,
        gpu_memory_bytes: parse_size(&args.gpu_memory).context("--gpu-memory")?,
        gpu_function_memory_bytes: args
            .gpu_function_memory
            .as_deref()
            .map(parse_size)
            .transpose()
            .context("--gpu-function-memory")?,
        allow_kernels: args.allow_kernels,
        keep_warm: args.keep_warm,
        max_gpu_concurrency: args.max_gpu_concurrency,
        gpu_budget: args
            .gpu_budget
            .as_deref()
            .map(crate::gpu_budget::GpuBudget::parse)
            .transpose()
            .context("--gpu-budget")?,
    };
    for route in &args.routes {
        settings
            .routes
            .push(crate::names::normalize_route(route).context("--route")?);
    }
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--env `{pair}` is not KEY=VALUE"))?;
        settings.env.push((key.to_string(), value.to_string()));
    }
    settings.validate()?;
    crate::names::validate_name(&args.name).context("--name")?;

    let component =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let client = AdminClient::connect(&args.client)?;
    let size = component.len() as u64;
    let quiet = args.client.json;
    if !quiet {
        eprintln!(
            "Uploading {} ({}) to {} ...",
            args.file.display(),
            human_bytes(size),
            client.base()
        );
    }
    let started = Instant::now();
    let body = progress_body(Bytes::from(component), move || {
        if !quiet {
            eprintln!("Uploaded; the node is validating and compiling the component ...");
        }
    });
    let path = format!(
        "/v1/functions/{}/versions?{}",
        encode(&args.name),
        settings.to_query()
    );
    let answer = client.send(
        Method::POST,
        &path,
        &[(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/wasm"),
        )],
        body,
    )?;
    let value = answer.json()?;
    if args.client.json {
        return print_json(&value);
    }
    let code = match value.get("reused_code_of") {
        Some(of) => format!(
            "same component as {} version {}: its compiled code is reused",
            of["function"].as_str().unwrap_or_default(),
            of["version"]
        ),
        None => format!("compiled in {} ms", value["compile_ms"]),
    };
    outln!(
        "Deployed {} version {} in {:.1}s ({code})",
        value["name"].as_str().unwrap_or_default(),
        value["version"],
        started.elapsed().as_secs_f64(),
    );
    outln!("  url:    {}", value["url"].as_str().unwrap_or_default());
    outln!("  routes: {}", join(&value["routes"]));
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn join(values: &Value) -> String {
    values
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Prints rows as a table with aligned columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        outln!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// `fnctl ls`
pub fn list(args: ListArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let value = client.json(Method::GET, "/v1/functions", None)?;
    if args.client.json {
        return print_json(&value);
    }
    let functions = value["functions"].as_array().cloned().unwrap_or_default();
    if functions.is_empty() {
        outln!("No functions deployed. Deploy one with `fnctl deploy FILE.wasm --name NAME`.");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = functions
        .iter()
        .map(|f| {
            vec![
                f["name"].as_str().unwrap_or_default().to_string(),
                f["version"].to_string(),
                join(&f["routes"]),
                f["memory"].as_str().unwrap_or_default().to_string(),
                f["timeout"].as_str().unwrap_or_default().to_string(),
                f["max_concurrency"].to_string(),
                format!("{}/{}", f["running"], f["queued"]),
                f["residency"].as_str().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "VERSION",
            "ROUTES",
            "MEMORY",
            "TIMEOUT",
            "CONCURRENCY",
            "RUNNING/QUEUED",
            "CODE",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `fnctl show NAME`
pub fn show(args: NameArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let value = client.json(
        Method::GET,
        &format!("/v1/functions/{}", encode(&args.name)),
        None,
    )?;
    if args.client.json {
        return print_json(&value);
    }
    for key in [
        "name",
        "version",
        "versions",
        "url",
        "routes",
        "memory",
        "timeout",
        "max_concurrency",
        "queue_depth",
        "max_body",
        "allow_outbound",
        "gpu_memory",
        "gpu_function_memory",
        "allow_kernels",
        "keep_warm",
        "uses_gpu",
        "max_gpu_concurrency",
        "gpu_budget",
        "loaded",
        "residency",
        "env",
        "sha256",
        "component_bytes",
        "deployed_at",
    ] {
        let shown = match &value[key] {
            Value::String(s) => s.clone(),
            Value::Array(_) => join(&value[key]),
            other => other.to_string(),
        };
        outln!("{key:<16}{shown}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `fnctl versions NAME`
pub fn versions(args: NameArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let value = client.json(
        Method::GET,
        &format!("/v1/functions/{}/versions", encode(&args.name)),
        None,
    )?;
    if args.client.json {
        return print_json(&value);
    }
    let rows: Vec<Vec<String>> = value["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            vec![
                v["version"].to_string(),
                if v["current"].as_bool() == Some(true) {
                    "*".into()
                } else {
                    String::new()
                },
                v["deployed_at"].as_str().unwrap_or_default().to_string(),
                format_size(v["component_bytes"].as_u64().unwrap_or_default()),
                v["sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(12)
                    .collect(),
            ]
        })
        .collect();
    print_table(&["VERSION", "CURRENT", "DEPLOYED", "SIZE", "SHA256"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// Options of `fnctl logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The function's name.
    pub name: String,
    /// How many of the latest lines to show.
    #[arg(long, default_value_t = 100)]
    pub tail: usize,
    /// Keep printing new lines as they come (ctrl-c stops).
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

/// `fnctl logs NAME [--tail N] [-f]`
pub fn logs(args: LogsArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let mut after = 0u64;
    let mut tail = args.tail;
    let mut first = true;
    loop {
        // The first call prints the tail; later ones (with -f) wait for new lines.
        let wait = if args.follow && !first { 25 } else { 0 };
        let value = client.json(
            Method::GET,
            &format!(
                "/v1/functions/{}/logs?tail={tail}&after={after}&wait={wait}",
                encode(&args.name)
            ),
            None,
        )?;
        for line in value["lines"].as_array().cloned().unwrap_or_default() {
            if args.client.json {
                outln!("{line}");
            } else {
                outln!(
                    "{} {} {} {}",
                    line["time"].as_str().unwrap_or_default(),
                    line["invocation_id"].as_str().unwrap_or_default(),
                    line["stream"].as_str().unwrap_or_default(),
                    line["line"].as_str().unwrap_or_default()
                );
            }
        }
        after = value["last"].as_u64().unwrap_or(after).max(after);
        tail = usize::MAX;
        first = false;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Options of `fnctl usage` and `fnctl stats`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this function.
    pub name: Option<String>,
    /// Only invocations since then: RFC 3339 or a duration back from now (`1h`); `usage` only.
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
}

fn usage_query(args: &UsageArgs) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(name) = &args.name {
        query.append_pair("function", name);
    }
    if let Some(since) = &args.since {
        query.append_pair("since", since);
    }
    query.finish()
}

/// `fnctl usage [NAME] [--since ...]`
pub fn usage(args: UsageArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let value = client.json(
        Method::GET,
        &format!("/v1/usage?{}", usage_query(&args)),
        None,
    )?;
    if args.client.json {
        return print_json(&value);
    }
    let functions = value["functions"].as_object().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = functions
        .iter()
        .map(|(name, u)| {
            vec![
                name.clone(),
                u["invocations"].to_string(),
                format!("{:.1}", u["wall_ms"].as_f64().unwrap_or(0.0) / 1000.0),
                format!("{:.1}", u["gpu_ms"].as_f64().unwrap_or(0.0)),
                format!(
                    "{:.2}",
                    u["gpu_byte_seconds"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64
                ),
                u["bytes_in"].to_string(),
                u["bytes_out"].to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "FUNCTION",
            "INVOCATIONS",
            "WALL-S",
            "GPU-MS",
            "GPU-MIB-S",
            "BYTES-IN",
            "BYTES-OUT",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `fnctl stats [NAME]`
pub fn stats(args: UsageArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let value = client.json(
        Method::GET,
        &format!("/v1/stats?{}", usage_query(&args)),
        None,
    )?;
    if args.client.json {
        return print_json(&value);
    }
    let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    let functions = value["functions"].as_object().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = functions
        .iter()
        .map(|(name, s)| {
            let o = &s["outcomes"];
            vec![
                name.clone(),
                s["invocations"].to_string(),
                format!(
                    "{}/{}/{}/{}/{}",
                    o["ok"], o["trap"], o["timeout"], o["rejected"], o["error"]
                ),
                ms(&s["latency_ms"]["p50"]),
                ms(&s["latency_ms"]["p95"]),
                ms(&s["latency_ms"]["p99"]),
                s["cold_starts"].to_string(),
                format!("{:.1}", s["gpu_ms"].as_f64().unwrap_or(0.0)),
                format!("{} MiB", s["gpu_peak_bytes"].as_u64().unwrap_or(0) >> 20),
                budget_left(&s["gpu_budget"]),
            ]
        })
        .collect();
    print_table(
        &[
            "FUNCTION",
            "INVOCATIONS",
            "OK/TRAP/TIMEOUT/REJECTED/ERROR",
            "P50-MS",
            "P95-MS",
            "P99-MS",
            "COLD",
            "GPU-MS",
            "GPU-PEAK",
            "GPU-BUDGET-LEFT",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// What is left of a GPU budget, as `fnctl stats` shows it: `12.5s of 30s/1h (resets ...)`.
fn budget_left(status: &Value) -> String {
    match status["budget"].as_str() {
        None => "-".to_string(),
        Some(budget) => format!(
            "{:.3}s of {budget} (resets {})",
            status["left_seconds"].as_f64().unwrap_or(0.0),
            status["resets_at"].as_str().unwrap_or("?")
        ),
    }
}

/// `fnctl model ...`
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Register the model in DIR (safetensors + config.json + tokenizer.json) as NAME.
    Add {
        /// The model's name.
        name: String,
        /// The model directory (read by the node: same machine or shared volume).
        dir: PathBuf,
        #[command(flatten)]
        #[allow(missing_docs)]
        client: ClientArgs,
    },
    /// List registered models.
    Ls(ListArgs),
    /// Remove a model (waits for the invocations using it).
    Rm(NameArgs),
}

/// Runs a `fnctl model` subcommand.
pub fn model(command: ModelCommand) -> Result<ExitCode> {
    match command {
        ModelCommand::Add { name, dir, client } => {
            let dir = std::fs::canonicalize(&dir)
                .with_context(|| format!("model directory {}", dir.display()))?;
            let admin = AdminClient::connect(&client)?;
            if !client.json {
                eprintln!(
                    "Registering {} as `{name}`; the node validates and loads it ...",
                    dir.display()
                );
            }
            let value = admin.json(
                Method::POST,
                &format!("/v1/models/{}", encode(&name)),
                Some(serde_json::json!({ "path": dir })),
            )?;
            if client.json {
                return print_json(&value);
            }
            outln!(
                "Registered model {} ({}, {} dimensions, {} layers, up to {} tokens) on {}",
                value["name"].as_str().unwrap_or_default(),
                value["kind"].as_str().unwrap_or_default(),
                value["dimension"],
                value["layers"],
                value["max_tokens"],
                model_placement(&value)
            );
            if let Some(reason) = value["cpu_reason"].as_str() {
                eprintln!("warning: the model runs on the CPU: {reason}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Ls(args) => {
            let admin = AdminClient::connect(&args.client)?;
            let value = admin.json(Method::GET, "/v1/models", None)?;
            if args.client.json {
                return print_json(&value);
            }
            let rows: Vec<Vec<String>> = value["models"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    vec![
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["kind"].as_str().unwrap_or_default().to_string(),
                        m["dimension"].to_string(),
                        model_placement(m),
                        format!(
                            "{} MiB",
                            m["weight_bytes"].as_u64().unwrap_or_default() >> 20
                        ),
                        format!("{}/{}", m["requests"], m["batches"]),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "KIND",
                    "DIMENSION",
                    "RUNS ON",
                    "WEIGHTS",
                    "REQUESTS/BATCHES",
                ],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Rm(args) => {
            let admin = AdminClient::connect(&args.client)?;
            let value = admin.json(
                Method::DELETE,
                &format!("/v1/models/{}", encode(&args.name)),
                None,
            )?;
            if args.client.json {
                return print_json(&value);
            }
            outln!("Removed model {}", args.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}
/// A device's STATE column: `ok`, or `faulted` while a fault keeps it out of service (GPU work
/// runs on the CPU backend meanwhile), with the number of rebuilds so far when there were any.
fn device_state(device: &Value) -> String {
    let state = if device["faulted"].as_bool().unwrap_or(false) {
        "faulted"
    } else {
        "ok"
    };
    match device["context_rebuilds"].as_u64().unwrap_or(0) {
        0 => state.to_string(),
        n => format!("{state} ({n} rebuilt)"),
    }
}

/// `fnctl gpu`: what `nvidia-smi` shows, per node: each device's memory, utilization and who
/// holds it; GPU functions and resident models.
pub fn gpu(args: ListArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let value = client.json(Method::GET, "/v1/gpu", None)?;
    if args.client.json {
        return print_json(&value);
    }
    if let Some(reason) = value["cpu_reason"].as_str() {
        outln!("backend: cpu ({reason})");
    } else {
        outln!("backend: {}", value["backend"].as_str().unwrap_or_default());
    }
    outln!(
        "GPU invocations: {} running, node limit {}",
        value["gpu_invocations"]["running"],
        value["gpu_invocations"]["limit"]
    );
    let mib = |v: &Value| format!("{} MiB", v.as_u64().unwrap_or_default() >> 20);
    let devices = value["devices"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d["index"].to_string(),
                d["name"].as_str().unwrap_or_default().to_string(),
                mib(&d["used_bytes"]),
                mib(&d["free_bytes"]),
                mib(&d["capacity_bytes"]),
                mib(&d["peak_bytes"]),
                format!("{:.0}%", d["utilization_percent"].as_f64().unwrap_or(0.0)),
                device_state(d),
            ]
        })
        .collect();
    print_table(
        &[
            "DEVICE", "NAME", "USED", "FREE", "CAPACITY", "PEAK", "UTIL", "STATE",
        ],
        &rows,
    );
    let holders: Vec<Vec<String>> = devices
        .iter()
        .flat_map(|d| {
            let index = d["index"].to_string();
            d["holders"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |h| {
                    vec![
                        index.clone(),
                        h["function"].as_str().unwrap_or_default().to_string(),
                        mib(&h["bytes"]),
                    ]
                })
        })
        .collect();
    for device in &devices {
        if let Some(fault) = device["fault"].as_str() {
            outln!("GPU {} is out of service: {fault}", device["index"]);
        }
    }
    if !holders.is_empty() {
        outln!();
        print_table(&["DEVICE", "FUNCTION", "HOLDS"], &holders);
    }
    let models: Vec<Vec<String>> = value["models"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            vec![
                m["name"].as_str().unwrap_or_default().to_string(),
                mib(&m["bytes"]),
                m["location"].as_str().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    if !models.is_empty() {
        outln!();
        print_table(&["MODEL", "WEIGHTS", "WHERE"], &models);
    }
    Ok(ExitCode::SUCCESS)
}

/// `fnctl rm NAME`
pub fn remove(args: NameArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let value = client.json(
        Method::DELETE,
        &format!("/v1/functions/{}", encode(&args.name)),
        None,
    )?;
    if args.client.json {
        return print_json(&value);
    }
    outln!("Removed {}", args.name);
    Ok(ExitCode::SUCCESS)
}

/// `fnctl rollback NAME [--to VERSION]`
pub fn rollback(args: RollbackArgs) -> Result<ExitCode> {
    let client = AdminClient::connect(&args.client)?;
    let body = args
        .to
        .map(|version| serde_json::json!({ "version": version }));
    let value = client.json(
        Method::POST,
        &format!("/v1/functions/{}/rollback", encode(&args.name)),
        body,
    )?;
    if args.client.json {
        return print_json(&value);
    }
    outln!(
        "{} now serves version {} (versions: {})",
        args.name,
        value["version"],
        join(&value["versions"])
    );
    Ok(ExitCode::SUCCESS)
}

/// `fnctl invoke NAME [--data ...]`
pub fn invoke(args: InvokeArgs) -> Result<ExitCode> {
    let client_args = ClientArgs::from(args.client.clone());
    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => Some(Bytes::from(data.clone())),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buffer = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buffer)
                .context("reading stdin")?;
            Some(Bytes::from(buffer))
        }
        (None, Some(path)) => Some(Bytes::from(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )),
        (None, None) => None,
    };
    let method = match &args.method {
        Some(method) => method.to_uppercase(),
        None if body.is_some() => "POST".to_string(),
        None => "GET".to_string(),
    };
    let mut headers = Vec::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header `{header}` is not `Name: value`"))?;
        let name = header::HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("invalid header name in `{header}`"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("invalid header value in `{header}`"))?;
        headers.push((name, value));
    }
    let client = AdminClient::connect(&client_args)?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("method", &method);
    if !args.path.is_empty() {
        query.append_pair("path", &args.path);
    }
    let path = format!(
        "/v1/functions/{}/invoke?{}",
        encode(&args.name),
        query.finish()
    );
    let answer = client.send(
        Method::POST,
        &path,
        &headers,
        bytes_body(body.unwrap_or_default()),
    )?;
    let invocation = answer
        .headers
        .get(crate::invoke::INVOCATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    if args.client.json {
        let body_text = String::from_utf8_lossy(&answer.body).to_string();
        let body = serde_json::from_str::<Value>(&body_text).unwrap_or(Value::String(body_text));
        print_json(&serde_json::json!({
            "status": answer.status.as_u16(),
            "invocation_id": invocation,
            "body": body,
        }))?;
    } else {
        if args.include {
            outln!("HTTP {}", answer.status);
            for (name, value) in &answer.headers {
                outln!("{name}: {}", value.to_str().unwrap_or("<binary>"));
            }
            outln!();
        }
        if answer.status.is_success() || args.include {
            super::write_stdout(&answer.body);
            if !answer.body.ends_with(b"\n") {
                outln!();
            }
        }
    }
    if !answer.status.is_success() {
        let error = server_error(&answer);
        if !args.client.json {
            eprintln!("error: {error:#} [invocation {invocation}]");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a model described by the admin API runs: `GPU 0` or `CPU`.
fn model_placement(model: &serde_json::Value) -> String {
    match (model["backend"].as_str(), model["device"].as_u64()) {
        (Some("cuda"), Some(device)) => format!("GPU {device}"),
        _ => "CPU".to_string(),
    }
}
