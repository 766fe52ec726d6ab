//! The one error type of the pool, with the kinds the `flint:gpu` WIT `error` variant has.

/// What kind of failure (mirrors the WIT `error` cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A quota or the device's memory is exhausted.
    OutOfMemory,
    /// Wrong shape, dtype, size or argument.
    InvalidArgument,
    /// No such thing (kernel entry point, model, ...).
    NotFound,
    /// Kernel source failed to compile (message is the NVRTC log).
    CompileError,
    /// This backend cannot do it.
    Unsupported,
    /// The device faulted; retryable.
    DeviceFault,
    /// Ran out of time waiting for the device.
    Timeout,
    /// The capability was not granted.
    PermissionDenied,
}

/// A pool error: a kind and a message that says what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuError {
    /// The kind.
    pub kind: ErrorKind,
    /// What happened, in words.
    pub message: String,
}

impl GpuError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GpuError {
            kind,
            message: message.into(),
        }
    }

    /// [`ErrorKind::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        GpuError::new(ErrorKind::InvalidArgument, message)
    }

    /// [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        GpuError::new(ErrorKind::Unsupported, message)
    }

    /// [`ErrorKind::DeviceFault`] from any device error.
    pub fn device(context: &str, error: impl std::fmt::Display) -> Self {
        GpuError::new(ErrorKind::DeviceFault, format!("{context}: {error}"))
    }
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for GpuError {}

/// Results of pool operations.
pub type GpuResult<T> = Result<T, GpuError>;
