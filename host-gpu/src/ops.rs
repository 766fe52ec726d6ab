//! Built-in ops: shape and dtype checks shared by every backend, then the backend's kernel.
//! Every op reserves its output's bytes before computing it.

use crate::cpu::{self, CpuBuffer};
use crate::cuda::{Binary, Elementwise};
use crate::dtype::DType;
use crate::error::{GpuError, GpuResult};
use crate::pool::Session;
use crate::shape;
use crate::tensor::{Storage, Tensor};

/// Element-wise ops without parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `max(x, 0)`.
    Relu,
    /// Exact GELU.
    Gelu,
}

fn require_f32(op: &str, tensor: &Tensor) -> GpuResult<()> {
    if tensor.dtype != DType::F32 {
        return Err(GpuError::invalid(format!(
            "`{op}` takes f32 tensors; got {}",
            tensor.describe()
        )));
    }
    Ok(())
}

impl Session {
    fn cpu_f32(&self, shape: Vec<usize>, compute: impl FnOnce() -> Vec<f32>) -> GpuResult<Tensor> {
        let reservation = self.reserve((shape::elements(&shape) * 4) as u64)?;
        let values = compute();
        Ok(Tensor {
            dtype: DType::F32,
            shape,
            storage: Storage::Cpu(CpuBuffer::from_f32(&values)),
            reservation,
        })
    }

    fn cuda_output(
        &self,
        dtype: DType,
        shape: Vec<usize>,
        compute: impl FnOnce(&crate::cuda::StreamLease) -> GpuResult<crate::cuda::DeviceBuffer>,
    ) -> GpuResult<Tensor> {
        let lease = self.cuda().expect("a CUDA tensor implies a CUDA session");
        let reservation = self.reserve((shape::elements(&shape) * dtype.size()) as u64)?;
        let buffer = compute(lease)?;
        Ok(Tensor {
            dtype,
            shape,
            storage: Storage::Cuda(buffer),
            reservation,
        })
    }

    /// `[m, k] x [k, n] -> [m, n]`.
    pub fn matmul(&self, a: &Tensor, b: &Tensor) -> GpuResult<Tensor> {
        require_f32("matmul", a)?;
        require_f32("matmul", b)?;
        let (&[m, k], &[k2, n]) = (a.shape.as_slice(), b.shape.as_slice()) else {
            return Err(GpuError::invalid(format!(
                "`matmul` takes two 2-D tensors; got {} and {}",
                a.describe(),
                b.describe()
            )));
        };
        if k != k2 {
            return Err(GpuError::invalid(format!(
                "`matmul`: inner dimensions differ: {} x {}",
                a.describe(),
                b.describe()
            )));
        }
        match (&a.storage, &b.storage) {
            (Storage::Cpu(x), Storage::Cpu(y)) => {
                self.cpu_f32(vec![m, n], || cpu::matmul(x.f32(), y.f32(), m, k, n))
            }
            (Storage::Cuda(x), Storage::Cuda(y)) => {
                self.cuda_output(DType::F32, vec![m, n], |lease| lease.matmul(x, y, m, k, n))
            }
            _ => Err(GpuError::invalid("tensors on different backends")),
        }
    }

    fn binary(&self, op: Binary, a: &Tensor, b: &Tensor) -> GpuResult<Tensor> {
        let name = match op {
            Binary::Add => "add",
            Binary::Mul => "mul",
        };
        require_f32(name, a)?;
        require_f32(name, b)?;
        let out = shape::broadcast(name, &a.shape, &b.shape)?;
        match (&a.storage, &b.storage) {
            (Storage::Cpu(x), Storage::Cpu(y)) => self.cpu_f32(out.clone(), || {
                cpu::binary(
                    x.f32(),
                    &a.shape,
                    y.f32(),
                    &b.shape,
                    &out,
                    |p, q| match op {
                        Binary::Add => p + q,
                        Binary::Mul => p * q,
                    },
                )
            }),
            (Storage::Cuda(x), Storage::Cuda(y)) => {
                self.cuda_output(DType::F32, out.clone(), |lease| {
                    lease.binary(op, x, &a.shape, y, &b.shape, &out)
                })
            }
            _ => Err(GpuError::invalid("tensors on different backends")),
        }
    }

    /// Element-wise `a + b` with broadcasting.
    pub fn add(&self, a: &Tensor, b: &Tensor) -> GpuResult<Tensor> {
        self.binary(Binary::Add, a, b)
    }

    /// Element-wise `a * b` with broadcasting.
    pub fn mul(&self, a: &Tensor, b: &Tensor) -> GpuResult<Tensor> {
        self.binary(Binary::Mul, a, b)
    }

    fn elementwise(&self, name: &str, op: Elementwise, a: &Tensor) -> GpuResult<Tensor> {
        require_f32(name, a)?;
        match &a.storage {
            Storage::Cpu(x) => self.cpu_f32(a.shape.clone(), || {
                x.f32()
                    .iter()
                    .map(|v| match op {
                        Elementwise::Relu => v.max(0.0),
                        Elementwise::Gelu => cpu::gelu(*v),
                        Elementwise::Scale(factor) => v * factor,
                    })
                    .collect()
            }),
            Storage::Cuda(x) => self.cuda_output(DType::F32, a.shape.clone(), |lease| {
                lease.elementwise(op, x, a.len())
            }),
        }
    }

    /// `a * factor`.
    pub fn scale(&self, a: &Tensor, factor: f32) -> GpuResult<Tensor> {
        self.elementwise("scale", Elementwise::Scale(factor), a)
    }

    /// ReLU or GELU.
    pub fn unary(&self, op: UnaryOp, a: &Tensor) -> GpuResult<Tensor> {
        match op {
            UnaryOp::Relu => self.elementwise("relu", Elementwise::Relu, a),
            UnaryOp::Gelu => self.elementwise("gelu", Elementwise::Gelu, a),
        }
    }

    /// Softmax over the last axis.
    pub fn softmax(&self, a: &Tensor) -> GpuResult<Tensor> {
        require_f32("softmax", a)?;
        let Some(&cols) = a.shape.last() else {
            return Err(GpuError::invalid(
                "`softmax` needs at least one dimension; got a scalar",
            ));
        };
        let rows = a.len().checked_div(cols).unwrap_or(0);
        match &a.storage {
            Storage::Cpu(x) => self.cpu_f32(a.shape.clone(), || cpu::softmax(x.f32(), cols)),
            Storage::Cuda(x) => self.cuda_output(DType::F32, a.shape.clone(), |lease| {
                lease.softmax(x, rows, cols)
            }),
        }
    }

    fn reduce(&self, name: &str, a: &Tensor, axis: Option<u32>, mean: bool) -> GpuResult<Tensor> {
        require_f32(name, a)?;
        let (outer, n, inner, out_shape) = match axis {
            Some(axis) => {
                let (outer, n, inner) = shape::around_axis(name, &a.shape, axis)?;
                let mut out = a.shape.clone();
                out.remove(axis as usize);
                (outer, n, inner, out)
            }
            None => (1, a.len(), 1, Vec::new()),
        };
        if mean && n == 0 {
            return Err(GpuError::invalid(format!(
                "`{name}` over an empty axis of {}",
                a.describe()
            )));
        }
        let divisor = if mean { n as f32 } else { 1.0 };
        match &a.storage {
            Storage::Cpu(x) => self.cpu_f32(out_shape, || {
                let mut sums = cpu::sum_axis(x.f32(), outer, n, inner);
                if mean {
                    sums.iter_mut().for_each(|s| *s /= divisor);
                }
                sums
            }),
            Storage::Cuda(x) => self.cuda_output(DType::F32, out_shape, |lease| {
                lease.reduce(x, outer, n, inner, divisor)
            }),
        }
    }

    /// Sum over `axis`, or over everything.
    pub fn sum(&self, a: &Tensor, axis: Option<u32>) -> GpuResult<Tensor> {
        self.reduce("sum", a, axis, false)
    }

    /// Mean over `axis`, or over everything.
    pub fn mean(&self, a: &Tensor, axis: Option<u32>) -> GpuResult<Tensor> {
        self.reduce("mean", a, axis, true)
    }

    /// Transpose of a 2-D tensor of any dtype.
    pub fn transpose(&self, a: &Tensor) -> GpuResult<Tensor> {
        let &[rows, cols] = a.shape.as_slice() else {
            return Err(GpuError::invalid(format!(
                "`transpose` takes a 2-D tensor; got {}",
                a.describe()
            )));
        };
        let size = a.dtype.size();
        match &a.storage {
            Storage::Cpu(x) => {
                let reservation = self.reserve(a.byte_size())?;
                let bytes = cpu::transpose(x.bytes(), rows, cols, size);
                Ok(Tensor {
                    dtype: a.dtype,
                    shape: vec![cols, rows],
                    storage: Storage::Cpu(CpuBuffer::from_bytes(&bytes)),
                    reservation,
                })
            }
            Storage::Cuda(x) => self.cuda_output(a.dtype, vec![cols, rows], |lease| {
                lease.transpose(x, rows, cols, size)
            }),
        }
    }
}
