//! # flint-gpu: the GPU pool
//!
//! A plain Rust library (no Wasm inside) that owns what is expensive — CUDA contexts, compiled
//! kernels, device memory — and outlives every sandbox. The runtime exposes it to guests
//! through the `flint:gpu` WIT interface.
//!
//! - [`Pool::probe`] finds the devices (cudarc with dynamic loading: the same binary runs where
//!   there is no CUDA at all and then uses the CPU backend) and never panics.
//! - [`Pool::session`] opens one invocation's view of the pool: the device it was placed on
//!   (least loaded), its memory quota chain (invocation → function → device) and whether it may
//!   launch custom kernels.
//! - [`Session`] uploads tensors, runs built-in ops and custom kernels. Every allocation is
//!   charged to the quotas before it happens; a [`Tensor`] gives its bytes back when dropped.
//! - The CPU backend ([`cpu`]) defines the semantics of every op; the CUDA backend matches it.

pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod math;
pub mod memory;
pub mod model;
mod ops;
mod pool;
pub mod shape;
mod tensor;

pub use dtype::DType;
pub use error::{ErrorKind, GpuError, GpuResult};
pub use memory::{Holdings, MemoryBudget, Reservation};
pub use ops::UnaryOp;
pub use pool::{DeviceInfo, Kernel, KernelArg, Pool, PoolOptions, Session, SessionLimits};
pub use tensor::Tensor;
