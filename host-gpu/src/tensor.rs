//! Tensors: an element type, a shape, storage on the session's backend, and the reservation that
//! charged its bytes (released when the tensor drops).

use crate::cpu::CpuBuffer;
use crate::dtype::DType;
use crate::memory::Reservation;

/// Where a tensor's bytes live.
pub(crate) enum Storage {
    /// Host memory (CPU backend).
    Cpu(CpuBuffer),
    /// Device memory on one CUDA device.
    Cuda(crate::cuda::DeviceBuffer),
}

/// An n-dimensional array owned by one invocation.
pub struct Tensor {
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    pub(crate) storage: Storage,
    /// Held for its `Drop`, which gives the tensor's bytes back to every quota it charged.
    #[expect(dead_code, reason = "held for its Drop")]
    pub(crate) reservation: Reservation,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({}{:?}, {})",
            self.dtype,
            self.shape,
            self.backend()
        )
    }
}

impl Tensor {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        crate::shape::elements(&self.shape)
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes.
    pub fn byte_size(&self) -> u64 {
        (self.len() * self.dtype.size()) as u64
    }

    /// The dimensions as `u32` (the WIT `shape`).
    pub fn dims(&self) -> Vec<u32> {
        self.shape.iter().map(|d| *d as u32).collect()
    }

    /// `cpu` or `cuda`.
    pub fn backend(&self) -> &'static str {
        match self.storage {
            Storage::Cpu(_) => "cpu",
            Storage::Cuda(_) => "cuda",
        }
    }

    /// `dtype[d0, d1, ...]`, for messages.
    pub fn describe(&self) -> String {
        format!("{}{:?}", self.dtype, self.shape)
    }
}
