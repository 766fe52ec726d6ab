//! `hello`: greets `?name=` (default "world") with `$GREETING` (default "Hello") and echoes
//! what it received, so a caller can tell a real answer from a canned one.
//!
//! ```text
//! $ curl 'http://127.0.0.1:8080/fn/hello/greet?name=Ada'
//! {"message":"Hello, Ada!","method":"GET","path":"/fn/hello/greet","query":"name=Ada",
//!  "body_bytes":0,"function":"hello","invocation_id":"..."}
//! ```

use flint_sdk::{Request, Response};
use serde_json::json;

fn handle(request: Request) -> Response {
    let name = request
        .query_param("name")
        .unwrap_or_else(|| "world".to_string());
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
    Response::json(
        200,
        &json!({
            "message": format!("{greeting}, {name}!"),
            "method": request.method(),
            "path": request.path(),
            "query": request.query(),
            "body_bytes": request.body().len(),
            "function": std::env::var("FLINT_FUNCTION").ok(),
            "invocation_id": std::env::var("FLINT_INVOCATION_ID").ok(),
        }),
    )
}

flint_sdk::http_function!(handle);
