//! `matmul`: `POST {"a": [[f32...]...], "b": [[f32...]...]}` → `{"c": [[...]...], "backend": "cuda" | "cpu"}`,
//! computed with the pool's built-in matmul (cuBLAS on a GPU, the CPU backend elsewhere).
//! Bad JSON, ragged rows and mismatched shapes get a 400 with a message.

use flint_sdk::gpu::{self, Tensor};
use flint_sdk::{Request, Response};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
}

/// Flattens a matrix given as rows, checking they all have the same length.
fn matrix(name: &str, rows: &[Vec<f32>]) -> Result<Tensor, Response> {
    let cols = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || cols == 0 {
        return Err(Response::error(
            400,
            "invalid-argument",
            format!("`{name}` must be a non-empty matrix"),
        ));
    }
    if let Some(bad) = rows.iter().position(|r| r.len() != cols) {
        return Err(Response::error(
            400,
            "invalid-argument",
            format!(
                "`{name}` row {bad} has {} values; row 0 has {cols}",
                rows[bad].len()
            ),
        ));
    }
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_f32(&[rows.len() as u32, cols as u32], &values).map_err(|e| Response::from(&e))
}

fn handle(request: Request) -> Response {
    if request.method() != "POST" {
        return Response::error(
            405,
            "method-not-allowed",
            "POST {\"a\": [[...]], \"b\": [[...]]}",
        );
    }
    let input: Input = match request.json() {
        Ok(input) => input,
        Err(error) => {
            return Response::error(400, "invalid-argument", format!("bad JSON: {error}"));
        }
    };
    let result = (|| {
        let a = matrix("a", &input.a)?;
        let b = matrix("b", &input.b)?;
        let c = a.matmul(&b).map_err(|e| Response::from(&e))?;
        let shape = c.shape();
        let values = c.to_f32().map_err(|e| Response::from(&e))?;
        let rows: Vec<&[f32]> = values.chunks(shape[1].max(1) as usize).collect();
        Ok::<_, Response>(Response::json(
            200,
            &json!({ "c": rows, "backend": gpu::backend().backend }),
        ))
    })();
    result.unwrap_or_else(|response| response)
}

flint_sdk::http_function!(handle);
