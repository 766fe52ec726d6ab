//! Conversions between the WIT types and `flint-gpu`'s.

use super::bindings::flint::gpu::types::{Dtype, Error};
use flint_gpu::{DType, ErrorKind, GpuError};

impl From<Dtype> for DType {
    fn from(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::BF16,
            Dtype::I32 => DType::I32,
            Dtype::I64 => DType::I64,
            Dtype::U8 => DType::U8,
        }
    }
}

impl From<DType> for Dtype {
    fn from(dtype: DType) -> Self {
        match dtype {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::Bf16,
            DType::I32 => Dtype::I32,
            DType::I64 => Dtype::I64,
            DType::U8 => Dtype::U8,
        }
    }
}

impl From<GpuError> for Error {
    fn from(error: GpuError) -> Self {
        let message = error.message;
        match error.kind {
            ErrorKind::OutOfMemory => Error::OutOfMemory(message),
            ErrorKind::InvalidArgument => Error::InvalidArgument(message),
            ErrorKind::NotFound => Error::NotFound(message),
            ErrorKind::CompileError => Error::CompileError(message),
            ErrorKind::Unsupported => Error::Unsupported(message),
            ErrorKind::DeviceFault => Error::DeviceFault(message),
            ErrorKind::Timeout => Error::Timeout(message),
            ErrorKind::PermissionDenied => Error::PermissionDenied(message),
        }
    }
}
