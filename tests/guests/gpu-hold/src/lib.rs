//! Allocates `?mb=N` MiB of GPU memory (plus, with `?upload_mb=M`, a tensor of `M` MiB
//! uploaded from guest memory, checked by reading its last byte back), then `?then=`: `ok` (answers at once), `trap` (panics),
//! `loop` (spins until the timeout), `sleep` (sleeps `?ms=` then answers), `work` (multiplies
//! two `?n=`×`?n=` matrices `?reps=` times on the GPU), `fault` (launches a custom kernel that
//! writes to an illegal address; needs `--allow-kernels` and a CUDA device). Errors from the
//! pool are answered as JSON with their kind.
//!
//! A successful answer is `held BYTES quota_left BYTES started_ns T0 ended_ns T1`: the wall
//! clock when the handler started and finished, so tests can measure from inside the function
//! how many invocations ran at once.

use flint_sdk::gpu::{self, DType, Tensor};
use flint_sdk::{Request, Response};

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn number<T: std::str::FromStr>(request: &Request, name: &str, default: T) -> T {
    request
        .query_param(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn handle(request: Request) -> Response {
    let started_ns = now_ns();
    let mb: u32 = number(&request, "mb", 1);
    let then = request.query_param("then").unwrap_or_else(|| "ok".into());
    let held = match Tensor::zeros(DType::U8, &[mb, 1 << 20]) {
        Ok(tensor) => tensor,
        Err(error) => return Response::from(&error),
    };
    let upload_mb: u32 = number(&request, "upload_mb", 0);
    let _uploaded = if upload_mb > 0 {
        let mut data = vec![7u8; (upload_mb as usize) << 20];
        *data.last_mut().expect("not empty") = 42;
        let tensor = match Tensor::from_bytes(DType::U8, &[upload_mb, 1 << 20], &data) {
            Ok(tensor) => tensor,
            Err(error) => return Response::from(&error),
        };
        drop(data);
        match tensor.to_bytes() {
            Ok(back) if back.len() == (upload_mb as usize) << 20 && back.last() == Some(&42) => {}
            Ok(_) => return Response::text(500, "the uploaded tensor came back different\n"),
            Err(error) => return Response::from(&error),
        }
        Some(tensor)
    } else {
        None
    };
    match then.as_str() {
        "trap" => panic!("gpu-hold: trapping while holding {mb} MiB"),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "sleep" => {
            let ms: u64 = number(&request, "ms", 100);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        "fault" => {
            const WILD_WRITE: &str = r#"
extern "C" __global__ void wild(float* out) {
    float* wild = (float*)0x10;
    wild[threadIdx.x] = out[0];
}
"#;
            let launched = gpu::Kernel::compile(WILD_WRITE, "wild").and_then(|kernel| {
                let out = Tensor::zeros(DType::F32, &[4])?;
                kernel.launch([1, 1, 1], [32, 1, 1], 0, &[gpu::Arg::Tensor(&out)])
            });
            if let Err(error) = launched {
                return Response::from(&error);
            }
        }
        "work" => {
            let n: u32 = number(&request, "n", 256);
            let reps: u32 = number(&request, "reps", 1);
            let values: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.25).collect();
            let result = Tensor::from_f32(&[n, n], &values).and_then(|a| {
                for _ in 0..reps {
                    a.matmul(&a)?;
                }
                Ok(())
            });
            if let Err(error) = result {
                return Response::from(&error);
            }
        }
        _ => {}
    }
    Response::text(
        200,
        format!(
            "held {} quota_left {} started_ns {started_ns} ended_ns {}",
            held.byte_size(),
            gpu::backend().quota_bytes_left,
            now_ns()
        ),
    )
}

flint_sdk::http_function!(handle);
