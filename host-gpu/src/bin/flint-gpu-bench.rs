//! Native baseline of the GPU host-call benchmark: the driver calls Flint's pool makes for a
//! guest's `launch`, `upload` and `download`, made directly with cudarc from Rust, timed the same
//! way the `gpu-calls` bench guest times them (one warm-up, then each call on its own).
//!
//! `flint-gpu-bench [--iters N] [--sizes BYTES,...]` prints one JSON object. Exits 2 with the
//! reason on a machine without a usable CUDA device. `bench/gpu_suite.py` runs it beside the
//! same calls made through a guest.

use cudarc::driver::{CudaContext, LaunchConfig, sys};
use std::time::Instant;

const NOOP: &str = r#"extern "C" __global__ void noop() {}"#;
const DEFAULT_SIZES: [usize; 5] = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20];

/// Median, minimum and 90th percentile of per-call times, in µs.
fn summary(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    serde_json::json!({"median_us": at(0.5), "min_us": samples[0], "p90_us": at(0.9)})
}

fn time(iters: usize, mut call: impl FnMut()) -> Vec<f64> {
    call();
    (0..iters)
        .map(|_| {
            let started = Instant::now();
            call();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// Calls per transfer size: enough for a stable median, bounded in total bytes.
fn transfer_iters(bytes: usize) -> usize {
    ((4usize << 30) / bytes).clamp(5, 200)
}

fn run(iters: usize, sizes: &[usize]) -> Result<serde_json::Value, String> {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda) was not found".into());
    }
    let ctx = CudaContext::new(0).map_err(|e| format!("creating a context on GPU 0: {e:?}"))?;
    let name = ctx.name().unwrap_or_default();
    // Flint gives each session its own stream; so does this.
    let stream = ctx
        .new_stream()
        .map_err(|e| format!("creating a stream: {e:?}"))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| format!("reading the compute capability: {e:?}"))?;
    // Compiled the way Flint compiles kernels: a CUBIN for this device, no PTX JIT.
    let cubin = flint_gpu::cuda::nvrtc::compile(NOOP, &format!("sm_{major}{minor}"))
        .map_err(|e| e.to_string())?;
    let module = ctx
        .load_module(cubin.into_module_image())
        .map_err(|e| format!("loading the module: {e:?}"))?;
    let noop = module
        .load_function("noop")
        .map_err(|e| format!("finding `noop`: {e:?}"))?;
    let config = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    let launch = time(iters, || {
        let mut builder = stream.launch_builder(&noop);
        // SAFETY: `noop` takes no arguments.
        unsafe { builder.launch(config) }.expect("launching noop");
        stream.synchronize().expect("waiting for noop");
    });

    let mut upload = Vec::new();
    let mut download = Vec::new();
    for &bytes in sizes {
        let n = transfer_iters(bytes);
        let data = vec![1u8; bytes];
        let up = time(n, || {
            let buffer = stream.clone_htod(&data).expect("copying to the device");
            drop(buffer);
        });
        let on_device = stream.alloc_zeros::<u8>(bytes).expect("allocating");
        let down = time(n, || {
            let back = stream
                .clone_dtoh(&on_device)
                .expect("copying from the device");
            std::hint::black_box(back);
        });
        for (samples, out) in [(up, &mut upload), (down, &mut download)] {
            let mut row = summary(samples);
            let median_s = row["median_us"].as_f64().unwrap_or(f64::NAN) / 1e6;
            row["bytes"] = bytes.into();
            row["iters"] = n.into();
            row["gb_per_s"] = (bytes as f64 / median_s / 1e9).into();
            out.push(row);
        }
    }
    Ok(serde_json::json!({
        "device": name,
        "launch": summary(launch),
        "launch_iters": iters,
        "upload": upload,
        "download": download,
    }))
}

fn main() {
    let mut iters = 2000usize;
    let mut sizes = DEFAULT_SIZES.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--iters", Some(v)) => iters = v.parse().expect("--iters takes a number"),
            ("--sizes", Some(v)) => {
                sizes = v
                    .split(',')
                    .map(|s| s.parse().expect("--sizes takes bytes, comma-separated"))
                    .collect()
            }
            _ => {
                eprintln!("usage: flint-gpu-bench [--iters N] [--sizes BYTES,...]");
                std::process::exit(64);
            }
        }
    }
    match run(iters, &sizes) {
        Ok(report) => println!("{report}"),
        Err(reason) => {
            eprintln!("flint-gpu-bench: no usable CUDA device: {reason}");
            std::process::exit(2);
        }
    }
}
