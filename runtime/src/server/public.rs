//! The public listener: `/healthz`, `/readyz`, and every function route.

use crate::error::ApiError;
use crate::invoke::{self, ResponseBody, json_response};
use crate::node::Node;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

/// Answers one request on the public listener.
pub async fn handle(node: &Node, request: Request<Incoming>) -> Response<ResponseBody> {
    let path = request.uri().path();
    if request.method() == Method::GET {
        match path {
            "/healthz" => return health(),
            "/readyz" => return readiness(node),
            _ => {}
        }
    }
    match node.resolve(path) {
        Some((function, _route)) => invoke::invoke(node, function, request).await,
        None if !node.is_ready() => invoke::error_response(
            &ApiError::new(
                crate::error::ErrorKind::Unavailable,
                "the node is still loading its functions; retry shortly",
            )
            .retry_after(1),
        ),
        None => invoke::error_response(&ApiError::not_found(format!(
            "no function serves `{path}` (functions are at /fn/NAME/)"
        ))),
    }
}

/// `GET /healthz`: the process is up.
pub fn health() -> Response<ResponseBody> {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once every deployed function has been loaded, 503 before.
pub fn readiness(node: &Node) -> Response<ResponseBody> {
    let failed: Vec<_> = node
        .load_failures()
        .into_iter()
        .map(|(name, error)| json!({ "function": name, "error": error }))
        .collect();
    if node.is_ready() {
        json_response(
            StatusCode::OK,
            &json!({ "status": "ready", "functions": node.function_names().len(), "failed": failed }),
        )
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "loading", "failed": failed }),
        )
    }
}
