//! `embed`: `POST {"texts": [...], "model": "minilm"}` → `{"model": ..., "embeddings": [[...]],
//! "tokens": N}` with a sentence-embedding model the operator registered
//! (`fnctl model add minilm DIR`). The model stays resident in the pool while this function
//! scales to zero; concurrent requests are batched into shared forward passes on the node.
//!
//! Bad JSON, an empty list, more than 64 texts and an unknown model each get a clear 4xx. Texts
//! longer than the model's limit (256 tokens for MiniLM) are truncated, as sentence-transformers
//! does.

use flint_sdk::gpu::Model;
use flint_sdk::{Request, Response};
use serde::{Deserialize, Serialize};

/// Most texts per request.
const MAX_TEXTS: usize = 64;
/// The model used when the request names none.
const DEFAULT_MODEL: &str = "minilm";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    texts: Vec<String>,
    #[serde(default)]
    model: Option<String>,
}

/// The answer, serialized straight from the vectors (a `serde_json::Value` would copy every
/// number first: twice the time for 32 vectors).
#[derive(Serialize)]
struct Output<'a> {
    model: &'a str,
    embeddings: &'a [Vec<f32>],
    tokens: u32,
}

fn handle(request: Request) -> Response {
    if request.method() != "POST" {
        return Response::error(
            405,
            "method-not-allowed",
            "POST {\"texts\": [...], \"model\": \"minilm\"}",
        );
    }
    let input: Input = match request.json() {
        Ok(input) => input,
        Err(error) => {
            return Response::error(400, "invalid-argument", format!("bad JSON: {error}"));
        }
    };
    if input.texts.is_empty() {
        return Response::error(
            400,
            "invalid-argument",
            "`texts` is empty; send at least one text",
        );
    }
    if input.texts.len() > MAX_TEXTS {
        return Response::error(
            400,
            "invalid-argument",
            format!(
                "too many texts ({}); the limit is {MAX_TEXTS} per request",
                input.texts.len()
            ),
        );
    }
    let name = input.model.unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let model = match Model::open(&name) {
        Ok(model) => model,
        Err(error) => return Response::from(&error),
    };
    match model.embed(&input.texts) {
        Ok(result) => Response::json(
            200,
            &Output {
                model: &name,
                embeddings: &result.vectors,
                tokens: result.tokens,
            },
        ),
        Err(error) => Response::from(&error),
    }
}

flint_sdk::http_function!(handle);
