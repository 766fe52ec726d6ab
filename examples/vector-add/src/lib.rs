//! `vector-add`: `POST {"a": [f32...], "b": [f32...]}` → `{"c": [...], "backend": "cuda"}`,
//! computed by a custom CUDA kernel compiled on the node (NVRTC, cached across invocations).
//!
//! Custom kernels are a capability: deploy with `--allow-kernels`. Without it the answer is a
//! 403 `permission-denied`; on a node without a GPU it is a 501 `unsupported` — never a result
//! computed some other way.

use flint_sdk::gpu::{self, Arg, DType, Kernel, Tensor};
use flint_sdk::{Request, Response};
use serde::Deserialize;
use serde_json::json;

/// The kernel, in CUDA C.
const SOURCE: &str = r#"
extern "C" __global__ void vector_add(const float* a, const float* b, float* c, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}
"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    a: Vec<f32>,
    b: Vec<f32>,
}

fn add(a: &[f32], b: &[f32]) -> gpu::Result<Vec<f32>> {
    let n = a.len() as u32;
    let kernel = Kernel::compile(SOURCE, "vector_add")?;
    let ta = Tensor::from_f32(&[n], a)?;
    let tb = Tensor::from_f32(&[n], b)?;
    let tc = Tensor::zeros(DType::F32, &[n])?;
    kernel.launch(
        [n.div_ceil(256).max(1), 1, 1],
        [256, 1, 1],
        0,
        &[
            Arg::Tensor(&ta),
            Arg::Tensor(&tb),
            Arg::Tensor(&tc),
            Arg::U32(n),
        ],
    )?;
    tc.to_f32()
}

fn handle(request: Request) -> Response {
    if request.method() != "POST" {
        return Response::error(
            405,
            "method-not-allowed",
            "POST {\"a\": [...], \"b\": [...]}",
        );
    }
    let input: Input = match request.json() {
        Ok(input) => input,
        Err(error) => {
            return Response::error(400, "invalid-argument", format!("bad JSON: {error}"));
        }
    };
    if input.a.len() != input.b.len() {
        return Response::error(
            400,
            "invalid-argument",
            format!(
                "`a` has {} values and `b` has {}; they must match",
                input.a.len(),
                input.b.len()
            ),
        );
    }
    match add(&input.a, &input.b) {
        Ok(c) => Response::json(200, &json!({ "c": c, "backend": gpu::backend().backend })),
        Err(error) => Response::from(&error),
    }
}

flint_sdk::http_function!(handle);
