//! A small HTTP load generator for the benchmarks, for machines without `wrk` (the GPU
//! machines have no package registry): `C` keep-alive connections, each sending the same POST
//! (or GET) back to back for `S` seconds. Prints JSON: requests, non-2xx answers, requests per
//! second, and latency percentiles in milliseconds. A connection that fails (refused, reset,
//! closed mid-answer) is counted under `errors`, with the first such error in `first_error`,
//! and opened again, as `wrk` counts socket errors: one bad connection does not end the run.
//!
//! `flint-load URL [--connections C] [--seconds S] [--body-file F] [--content-type T]`
//!
//! With `--probe` it times single requests instead, for cold-start measurements where the
//! benchmark script decides when each request goes out: one keep-alive connection to the URL's
//! host, and for every line read from standard input (a path such as `/fn/hello/`), one request
//! to that path and one line printed with its latency in milliseconds and its status. A native
//! client keeps the figure free of the script's own latency, which on a machine that sat idle
//! for a while is a large part of a Python client's.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use std::time::{Duration, Instant};

/// What `--help` and a wrong argument print.
const USAGE: &str = "usage: flint-load URL [--connections C] [--seconds S] [--body-file F] \
                     [--content-type T] [--probe]";

struct Options {
    url: http::Uri,
    connections: usize,
    seconds: f64,
    body: Option<Bytes>,
    content_type: String,
    probe: bool,
}

fn options() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let mut options = Options {
        url: http::Uri::default(),
        connections: 64,
        seconds: 10.0,
        body: None,
        content_type: "application/json".into(),
        probe: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--connections" => options.connections = value()?.parse()?,
            "--seconds" => options.seconds = value()?.parse()?,
            "--body-file" => {
                let path = value()?;
                options.body = Some(
                    std::fs::read(&path)
                        .with_context(|| format!("reading {path}"))?
                        .into(),
                )
            }
            "--content-type" => options.content_type = value()?,
            "--probe" => options.probe = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if url.is_none() && !other.starts_with('-') => url = Some(other.to_string()),
            other => bail!("unknown argument `{other}`; {USAGE}"),
        }
    }
    options.url = url
        .context("a URL is needed")?
        .parse()
        .context("parsing the URL")?;
    Ok(options)
}

/// A keep-alive HTTP/1.1 connection to the URL's host, with Nagle off.
async fn connect(
    options: &Options,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let authority = options.url.authority().context("the URL has no host")?;
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The request of these options, to `uri`: a POST of the body file, or a GET.
fn request(options: &Options, uri: http::Uri) -> Result<Request<Full<Bytes>>> {
    let authority = options.url.authority().context("the URL has no host")?;
    let builder = Request::builder()
        .uri(uri)
        .header(hyper::header::HOST, authority.as_str());
    Ok(match &options.body {
        Some(body) => builder
            .method("POST")
            .header(hyper::header::CONTENT_TYPE, &options.content_type)
            .body(Full::new(body.clone()))?,
        None => builder.method("GET").body(Full::new(Bytes::new()))?,
    })
}

/// Sends one request and reads the whole answer: (latency in ms, status).
async fn timed(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(f64, http::StatusCode)> {
    let started = Instant::now();
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok((started.elapsed().as_secs_f64() * 1e3, status))
}

/// What one connection's loop measured.
#[derive(Default)]
struct ConnectionReport {
    /// Latency of every answered request, in ms.
    latencies: Vec<f64>,
    /// Answers that were not 2xx.
    failures: u64,
    /// Connections that failed (to open, or while a request was out).
    errors: u64,
    /// The first of those failures.
    first_error: Option<String>,
}

impl ConnectionReport {
    fn error(&mut self, error: anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{error:#}"));
    }
}

/// One connection's loop. A failed connection is counted and opened again (after a short
/// pause if opening it failed).
async fn connection(options: &Options, until: Instant) -> Result<ConnectionReport> {
    let mut report = ConnectionReport::default();
    let mut sender = None;
    while Instant::now() < until {
        let open = match sender.as_mut() {
            Some(open) => open,
            None => match connect(options).await {
                Ok(opened) => sender.insert(opened),
                Err(error) => {
                    report.error(error);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match timed(open, request(options, options.url.clone())?).await {
            Ok((latency, status)) => {
                report.latencies.push(latency);
                if !status.is_success() {
                    report.failures += 1;
                }
            }
            Err(error) => {
                report.error(error.context("sending a request"));
                sender = None;
            }
        }
    }
    Ok(report)
}

/// `--probe`: one request per path read from standard input, each answered with a line
/// `LATENCY_MS STATUS` on standard output.
fn probe(options: &Options) -> Result<()> {
    use std::io::{BufRead, Write};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client's runtime")?;
    let mut sender = runtime.block_on(connect(options))?;
    let base = options.url.clone().into_parts();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading a path from standard input")?;
        let path = line.trim();
        if path.is_empty() {
            continue;
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = base.scheme.clone();
        parts.authority = base.authority.clone();
        parts.path_and_query = Some(
            path.parse()
                .with_context(|| format!("`{path}` is not a path"))?,
        );
        let uri = http::Uri::from_parts(parts).context("building the request's URI")?;
        let (latency, status) = runtime.block_on(timed(&mut sender, request(options, uri)?))?;
        writeln!(out, "{latency:.4} {}", status.as_u16())?;
        out.flush()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let options = options()?;
    if options.probe {
        return probe(&options);
    }
    tokio::runtime::Runtime::new()
        .context("starting the client's runtime")?
        .block_on(load(options))
}

/// The load mode: `connections` connections for `seconds`, then the JSON report.
async fn load(options: Options) -> Result<()> {
    let options = std::sync::Arc::new(options);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(options.seconds);
    let tasks: Vec<_> = (0..options.connections)
        .map(|_| {
            let options = options.clone();
            tokio::spawn(async move { connection(&options, until).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let mut report = task.await??;
        latencies.append(&mut report.latencies);
        failures += report.failures;
        errors += report.errors;
        first_error = first_error.or(report.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let report = serde_json::json!({
        "requests": latencies.len(),
        "non_2xx": failures,
        "errors": errors,
        "first_error": first_error,
        "seconds": elapsed,
        "rps": latencies.len() as f64 / elapsed,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
    });
    println!("{report}");
    Ok(())
}
