//! End-to-end tests: a real `fnctl serve` on ephemeral ports with a temporary data dir, real
//! components deployed with the real `fnctl`, real HTTP.

mod admin;
mod deploy;
mod gpu;
mod gpu_limits;
mod isolation;
mod lifecycle;
mod load_tool;
mod models;
mod operations;
mod serving;
mod support;
