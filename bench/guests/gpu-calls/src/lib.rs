//! Times `flint:gpu` host calls from inside the sandbox, so HTTP is not part of the figure.
//! Deploy with `allow_kernels=true` (for `launch`) and enough `memory`/`gpu_memory` for the
//! sizes asked for.
//!
//! `GET ?op=OP&bytes=B&iters=N` runs the call `N` times after one warm-up and answers JSON
//! `{"op", "bytes", "iters", "backend", "median_us", "min_us", "p90_us"}`. Ops:
//! - `launch`: launch an empty CUDA kernel (one block, one thread) and wait for it;
//! - `upload`: make a `B`-byte u8 tensor from guest memory;
//! - `download`: copy a `B`-byte tensor back into guest memory;
//! - `backend`: the cheapest host call (`backend()`), the floor of any call.

use flint_sdk::gpu::{self, Arg, DType, Kernel, Tensor};
use flint_sdk::{Request, Response};
use std::time::Instant;

const NOOP: &str = r#"extern "C" __global__ void noop() {}"#;

fn number(request: &Request, name: &str, default: u64) -> u64 {
    request
        .query_param(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `call` once to warm up, then `iters` times, timing each; answers the durations in µs.
fn time(iters: u64, mut call: impl FnMut() -> gpu::Result<()>) -> gpu::Result<Vec<f64>> {
    call()?;
    let mut samples = Vec::with_capacity(iters as usize);
    for _ in 0..iters {
        let started = Instant::now();
        call()?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

fn handle(request: Request) -> Response {
    let op = request
        .query_param("op")
        .unwrap_or_else(|| "backend".into());
    let bytes = number(&request, "bytes", 4096);
    let iters = number(&request, "iters", 100).clamp(1, 1_000_000);
    let samples = match op.as_str() {
        "backend" => time(iters, || {
            std::hint::black_box(gpu::backend());
            Ok(())
        }),
        "launch" => Kernel::compile(NOOP, "noop").and_then(|kernel| {
            time(iters, || {
                kernel.launch([1, 1, 1], [1, 1, 1], 0, &[] as &[Arg<'_>])
            })
        }),
        "upload" => {
            let data = vec![1u8; bytes as usize];
            time(iters, || {
                Tensor::from_bytes(DType::U8, &[bytes as u32], &data).map(drop)
            })
        }
        "download" => Tensor::zeros(DType::U8, &[bytes as u32]).and_then(|tensor| {
            time(iters, || {
                tensor
                    .to_bytes()
                    .map(|data| drop(std::hint::black_box(data)))
            })
        }),
        other => {
            return Response::text(
                400,
                format!("unknown op `{other}` (known: backend, launch, upload, download)\n"),
            );
        }
    };
    let samples = match samples {
        Ok(samples) => samples,
        Err(error) => return Response::from(&error),
    };
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Response::text(
        200,
        format!(
            "{{\"op\":\"{op}\",\"bytes\":{bytes},\"iters\":{iters},\"backend\":\"{}\",\"median_us\":{:.3},\"min_us\":{:.3},\"p90_us\":{:.3}}}\n",
            gpu::backend().backend,
            at(0.5),
            samples[0],
            at(0.9)
        ),
    )
}

flint_sdk::http_function!(handle);
