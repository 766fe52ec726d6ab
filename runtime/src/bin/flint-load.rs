//! A small HTTP load generator for the benchmarks, for machines without `wrk` (the GPU
//! machines have no package registry): `C` keep-alive connections, each sending the same POST
//! (or GET) back to back for `S` seconds. Prints JSON: requests, non-2xx answers, requests per
//! second, and latency percentiles in milliseconds.
//!
//! `flint-load URL [--connections C] [--seconds S] [--body-file F] [--content-type T]`

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use std::time::{Duration, Instant};

struct Options {
    url: http::Uri,
    connections: usize,
    seconds: f64,
    body: Option<Bytes>,
    content_type: String,
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
            other if url.is_none() && !other.starts_with('-') => url = Some(other.to_string()),
            other => bail!(
                "unknown argument `{other}`; usage: flint-load URL [--connections C] \
                 [--seconds S] [--body-file F] [--content-type T]"
            ),
        }
    }
    options.url = url
        .context("a URL is needed")?
        .parse()
        .context("parsing the URL")?;
    Ok(options)
}

/// One connection's loop: (latencies in ms, non-2xx answers).
async fn connection(options: &Options, until: Instant) -> Result<(Vec<f64>, u64)> {
    let authority = options
        .url
        .authority()
        .context("the URL has no host")?
        .clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut latencies = Vec::new();
    let mut failures = 0;
    while Instant::now() < until {
        let builder = Request::builder()
            .uri(options.url.clone())
            .header(hyper::header::HOST, authority.as_str());
        let request = match &options.body {
            Some(body) => builder
                .method("POST")
                .header(hyper::header::CONTENT_TYPE, &options.content_type)
                .body(Full::new(body.clone()))?,
            None => builder.method("GET").body(Full::new(Bytes::new()))?,
        };
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        if !ok {
            failures += 1;
        }
    }
    Ok((latencies, failures))
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = std::sync::Arc::new(options()?);
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
    for task in tasks {
        let (mut l, f) = task.await??;
        latencies.append(&mut l);
        failures += f;
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
        "seconds": elapsed,
        "rps": latencies.len() as f64 / elapsed,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
    });
    println!("{report}");
    Ok(())
}
