//! Allocates `?mb=N` MiB of GPU memory, then `?then=`: `ok` (answers with the bytes it holds
//! and the quota left), `trap` (panics), `loop` (spins until the timeout), `sleep` (sleeps
//! `?ms=` then answers). Errors from the pool are answered as JSON with their kind.

use flint_sdk::gpu::{self, DType, Tensor};
use flint_sdk::{Request, Response};

fn handle(request: Request) -> Response {
    let mb: u32 = request
        .query_param("mb")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let then = request.query_param("then").unwrap_or_else(|| "ok".into());
    let held = match Tensor::zeros(DType::U8, &[mb, 1 << 20]) {
        Ok(tensor) => tensor,
        Err(error) => return Response::from(&error),
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
            let ms: u64 = request
                .query_param("ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        _ => {}
    }
    Response::text(
        200,
        format!(
            "held {} quota_left {}",
            held.byte_size(),
            gpu::backend().quota_bytes_left
        ),
    )
}

flint_sdk::http_function!(handle);
