//! # flint-sdk: write Flint functions
//!
//! A Flint function is a `wasi:http` component built for `wasm32-wasip2`. This crate hides the
//! raw bindings: you write `fn(Request) -> Response` and export it with [`http_function!`].
//!
//! ```no_run
//! use flint_sdk::{Request, Response};
//!
//! fn handle(request: Request) -> Response {
//!     let name = request.query_param("name").unwrap_or_else(|| "world".to_string());
//!     Response::text(200, format!("Hello, {name}! You asked for {}\n", request.path()))
//! }
//!
//! flint_sdk::http_function!(handle);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`) and deploy
//! the `.wasm` with `fnctl deploy target/wasm32-wasip2/release/NAME.wasm --name NAME`.
//!
//! Each request runs in a fresh sandbox: globals never carry over between requests. Environment
//! variables given with `fnctl deploy --env` are read with `std::env::var`; `FLINT_FUNCTION` and
//! `FLINT_INVOCATION_ID` are always set. `println!`/`eprintln!` go to the node's log.
//!
//! With the default `gpu` feature, [`gpu`] gives the function the node's GPU pool: tensors,
//! built-in ops and (where the operator allows it) custom CUDA kernels.

#[cfg(feature = "gpu")]
pub mod gpu;
mod request;
mod response;
mod serve;

pub use request::Request;
pub use response::Response;

#[doc(hidden)]
pub mod __private {
    pub use crate::serve::serve;
    pub use wasi;
}

/// Exports `handler` (a `fn(Request) -> Response`) as the component's
/// `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! http_function {
    ($handler:path) => {
        struct __FlintHttpFunction;

        impl $crate::__private::wasi::exports::http::incoming_handler::Guest
            for __FlintHttpFunction
        {
            fn handle(
                request: $crate::__private::wasi::http::types::IncomingRequest,
                response_out: $crate::__private::wasi::http::types::ResponseOutparam,
            ) {
                $crate::__private::serve(request, response_out, $handler)
            }
        }

        $crate::__private::wasi::http::proxy::export!(__FlintHttpFunction);
    };
}
