//! The node's GPU pool, from a function: tensors, built-in ops and custom CUDA kernels.
//!
//! ```no_run
//! use flint_sdk::gpu::Tensor;
//!
//! # fn demo() -> Result<(), flint_sdk::gpu::Error> {
//! let a = Tensor::from_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! let b = Tensor::from_f32(&[3, 1], &[1.0, 0.0, -1.0])?;
//! let c = a.matmul(&b)?; // [2, 1] on the node's GPU (or CPU backend)
//! assert_eq!(c.to_f32()?, vec![-2.0, -2.0]);
//! # Ok(()) }
//! ```
//!
//! Tensors live on the device until dropped, and every one is released when the invocation
//! ends. Every failure is an [`Error`] with a [`ErrorKind`] and a message; nothing traps.

mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "flint:gpu/gpu",
    });
}

use bindings::flint::gpu::{kernels, ops, types};

/// Element types.
pub use types::Dtype as DType;

/// What kind of failure (mirrors the WIT `error` variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The invocation's or function's GPU memory quota, or the device, is exhausted.
    OutOfMemory,
    /// Wrong shape, dtype, size or argument.
    InvalidArgument,
    /// No such thing.
    NotFound,
    /// The kernel source did not compile (the message is the NVRTC log).
    CompileError,
    /// The backend cannot do it (custom kernels on the CPU backend).
    Unsupported,
    /// The device faulted; retry.
    DeviceFault,
    /// Ran out of time.
    Timeout,
    /// The function lacks the capability (custom kernels need `--allow-kernels`).
    PermissionDenied,
}

impl ErrorKind {
    /// The WIT name (`out-of-memory`, ...), also used in Flint's JSON errors.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::OutOfMemory => "out-of-memory",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::NotFound => "not-found",
            ErrorKind::CompileError => "compile-error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::DeviceFault => "device-fault",
            ErrorKind::Timeout => "timeout",
            ErrorKind::PermissionDenied => "permission-denied",
        }
    }

    /// The HTTP status a function would usually answer with for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::CompileError => 400,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::OutOfMemory => 507,
            ErrorKind::Unsupported => 501,
            ErrorKind::DeviceFault => 503,
            ErrorKind::Timeout => 504,
        }
    }
}

/// A GPU call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, in words.
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for Error {}

impl From<types::Error> for Error {
    fn from(error: types::Error) -> Self {
        let (kind, message) = match error {
            types::Error::OutOfMemory(m) => (ErrorKind::OutOfMemory, m),
            types::Error::InvalidArgument(m) => (ErrorKind::InvalidArgument, m),
            types::Error::NotFound(m) => (ErrorKind::NotFound, m),
            types::Error::CompileError(m) => (ErrorKind::CompileError, m),
            types::Error::Unsupported(m) => (ErrorKind::Unsupported, m),
            types::Error::DeviceFault(m) => (ErrorKind::DeviceFault, m),
            types::Error::Timeout(m) => (ErrorKind::Timeout, m),
            types::Error::PermissionDenied(m) => (ErrorKind::PermissionDenied, m),
        };
        Error { kind, message }
    }
}

#[cfg(feature = "json")]
impl From<&Error> for crate::Response {
    /// A JSON error response with the kind's usual status.
    fn from(error: &Error) -> Self {
        crate::Response::error(
            error.kind.http_status(),
            error.kind.name(),
            error.message.clone(),
        )
    }
}

/// Results of GPU calls.
pub type Result<T> = std::result::Result<T, Error>;

/// Where this invocation's tensors live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `cuda` or `cpu`.
    pub backend: String,
    /// The device's name.
    pub device: String,
    /// Bytes this invocation may still allocate.
    pub quota_bytes_left: u64,
}

/// The backend serving this invocation.
pub fn backend() -> Backend {
    let info = types::backend();
    Backend {
        backend: info.backend,
        device: info.device,
        quota_bytes_left: info.quota_bytes_left,
    }
}

/// A tensor on the node's GPU (or CPU backend).
pub struct Tensor(types::Tensor);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}{:?})", self.dtype(), self.shape())
    }
}

impl Tensor {
    /// Uploads little-endian bytes of `dtype` with `shape`.
    pub fn from_bytes(dtype: DType, shape: &[u32], bytes: &[u8]) -> Result<Tensor> {
        Ok(Tensor(types::Tensor::upload(dtype, shape, bytes)?))
    }

    /// Uploads f32 values with `shape`.
    pub fn from_f32(shape: &[u32], values: &[f32]) -> Result<Tensor> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(DType::F32, shape, &bytes)
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: &[u32]) -> Result<Tensor> {
        Ok(Tensor(types::Tensor::zeros(dtype, shape)?))
    }

    /// The dimensions.
    pub fn shape(&self) -> Vec<u32> {
        self.0.shape()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype()
    }

    /// Size in bytes.
    pub fn byte_size(&self) -> u64 {
        self.0.byte_size()
    }

    /// Downloads the bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.0.download()?)
    }

    /// Downloads f32 values.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if self.dtype() != DType::F32 {
            return Err(Error {
                kind: ErrorKind::InvalidArgument,
                message: format!("to_f32 on a {:?} tensor", self.dtype()),
            });
        }
        Ok(self
            .to_bytes()?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// `[m, k] x [k, n] -> [m, n]`.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        Ok(Tensor(ops::matmul(&self.0, &other.0)?))
    }

    /// Element-wise sum with broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        Ok(Tensor(ops::add(&self.0, &other.0)?))
    }

    /// Element-wise product with broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        Ok(Tensor(ops::mul(&self.0, &other.0)?))
    }

    /// Multiplies by a scalar.
    pub fn scale(&self, factor: f32) -> Result<Tensor> {
        Ok(Tensor(ops::scale(&self.0, factor)?))
    }

    /// ReLU.
    pub fn relu(&self) -> Result<Tensor> {
        Ok(Tensor(ops::relu(&self.0)?))
    }

    /// GELU (exact).
    pub fn gelu(&self) -> Result<Tensor> {
        Ok(Tensor(ops::gelu(&self.0)?))
    }

    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Tensor> {
        Ok(Tensor(ops::softmax(&self.0)?))
    }

    /// Sum over `axis`, or everything.
    pub fn sum(&self, axis: Option<u32>) -> Result<Tensor> {
        Ok(Tensor(ops::sum(&self.0, axis)?))
    }

    /// Mean over `axis`, or everything.
    pub fn mean(&self, axis: Option<u32>) -> Result<Tensor> {
        Ok(Tensor(ops::mean(&self.0, axis)?))
    }

    /// Transpose of a 2-D tensor.
    pub fn transpose(&self) -> Result<Tensor> {
        Ok(Tensor(ops::transpose(&self.0)?))
    }
}

/// An argument of [`Kernel::launch`].
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// A tensor, passed as a device pointer.
    Tensor(&'a Tensor),
    /// `float`.
    F32(f32),
    /// `double`.
    F64(f64),
    /// `int`.
    I32(i32),
    /// `unsigned int`.
    U32(u32),
    /// `long long`.
    I64(i64),
    /// `unsigned long long`.
    U64(u64),
}

/// A custom CUDA kernel (needs `fnctl deploy --allow-kernels` and a CUDA device).
pub struct Kernel(kernels::Kernel);

impl Kernel {
    /// Compiles CUDA C `source` (NVRTC, cached on the node) and finds `entry`.
    pub fn compile(source: &str, entry: &str) -> Result<Kernel> {
        Ok(Kernel(kernels::Kernel::compile(source, entry)?))
    }

    /// Launches it with `grid` x `block` threads and waits for it.
    pub fn launch(
        &self,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem_bytes: u32,
        args: &[Arg<'_>],
    ) -> Result<()> {
        let args: Vec<kernels::KernelArg<'_>> = args
            .iter()
            .map(|arg| match arg {
                Arg::Tensor(t) => kernels::KernelArg::Tensor(&t.0),
                Arg::F32(v) => kernels::KernelArg::F32(*v),
                Arg::F64(v) => kernels::KernelArg::F64(*v),
                Arg::I32(v) => kernels::KernelArg::I32(*v),
                Arg::U32(v) => kernels::KernelArg::U32(*v),
                Arg::I64(v) => kernels::KernelArg::I64(*v),
                Arg::U64(v) => kernels::KernelArg::U64(*v),
            })
            .collect();
        let dim = |d: [u32; 3]| kernels::Dim3 {
            x: d[0],
            y: d[1],
            z: d[2],
        };
        Ok(self
            .0
            .launch(dim(grid), dim(block), shared_mem_bytes, &args)?)
    }
}

/// What a model is and takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name it was registered under.
    pub name: String,
    /// `sentence-embedding`.
    pub kind: String,
    /// Width of its embeddings.
    pub dimension: u32,
    /// Longest input in tokens (longer texts are truncated).
    pub max_tokens: u32,
    /// Input names of [`Model::infer`].
    pub inputs: Vec<String>,
    /// Output names of [`Model::infer`].
    pub outputs: Vec<String>,
}

/// The answer of [`Model::embed`].
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens processed, special tokens included.
    pub tokens: u32,
}

/// A model the operator registered on the node (`fnctl model add`), resident in the pool.
pub struct Model(models::Model);

use bindings::flint::gpu::models;

impl Model {
    /// Opens the model registered as `name`.
    pub fn open(name: &str) -> Result<Model> {
        Ok(Model(models::Model::open(name)?))
    }

    /// What it is and takes.
    pub fn describe(&self) -> ModelInfo {
        let info = self.0.describe();
        ModelInfo {
            name: info.name,
            kind: info.kind,
            dimension: info.dimension,
            max_tokens: info.max_tokens,
            inputs: info.inputs.into_iter().map(|s| s.name).collect(),
            outputs: info.outputs.into_iter().map(|s| s.name).collect(),
        }
    }

    /// Embeds `texts` (tokenized on the node with the model's own tokenizer; batched with other
    /// invocations' requests).
    pub fn embed(&self, texts: &[String]) -> Result<Embeddings> {
        let result = self.0.embed(texts)?;
        Ok(Embeddings {
            vectors: result.vectors,
            tokens: result.tokens,
        })
    }

    /// Runs the model on named tensors (`input_ids`, `attention_mask`) and returns its named
    /// outputs (`sentence_embedding`).
    pub fn infer(&self, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let inputs: Vec<(String, &types::Tensor)> = inputs
            .iter()
            .map(|(name, t)| (name.to_string(), &t.0))
            .collect();
        Ok(self
            .0
            .infer(&inputs)?
            .into_iter()
            .map(|(name, tensor)| (name, Tensor(tensor)))
            .collect())
    }
}
