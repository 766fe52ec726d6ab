//! # flint-runtime: the Flint node
//!
//! A Flint node serves WebAssembly components (`wasi:http/proxy`, WASI 0.2) on HTTP routes, one
//! fresh sandbox per request, created from a component pre-instantiated at deploy or load time.
//!
//! The layout follows one request ([`server::public`] → [`node::Node::resolve`] →
//! [`invoke::invoke`]) and one deploy ([`server::admin`] → [`node::Node::deploy`] →
//! [`function::compile`] → [`registry::Registry`]):
//!
//! - [`engine`]: the shared wasmtime engine (pooling allocator, epochs) and the WASI linker.
//! - [`host`]: the per-invocation store data and its limits.
//! - [`sandbox`]: a fresh store and instance per request, and spares built ahead of requests.
//! - [`function`]: a loaded function and the deploy-time checks on components.
//! - [`idle`]: parking and unloading functions nobody calls (scale to zero).
//! - [`scheduler`]: per-function concurrency and the bounded queue.
//! - [`registry`]: versions on disk, switched atomically.
//! - [`router`]: path → function.
//! - [`server`]: the public and admin listeners, graceful shutdown.
//! - [`cli`]: the `fnctl` command line (serve and the admin client).

pub mod cli;
pub mod code_pages;
pub mod engine;
pub mod epoch;
pub mod error;
pub mod function;
pub mod gpu;
pub mod gpu_budget;
pub mod guest_log;
pub mod heap;
pub mod host;
pub mod idle;
pub mod invoke;
pub mod metering;
pub mod models;
pub mod names;
pub mod node;
pub mod registry;
pub mod router;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod settings;
pub mod shared_code;
pub mod token;
pub mod units;
