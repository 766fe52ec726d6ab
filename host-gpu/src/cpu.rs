//! The CPU backend: the reference semantics of every built-in op, on f32 slices. It is what CI
//! and GPU-less machines run; the CUDA backend must agree with it.

use crate::shape::{broadcast_strides, elements};

/// 8-byte aligned bytes, so they can be viewed as any element type.
#[derive(Debug, Clone)]
pub struct CpuBuffer {
    words: Vec<u64>,
    len: usize,
}

impl CpuBuffer {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        CpuBuffer {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    /// A copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut buffer = CpuBuffer::zeroed(bytes.len());
        buffer.bytes_mut().copy_from_slice(bytes);
        buffer
    }

    /// From f32 values.
    pub fn from_f32(values: &[f32]) -> Self {
        CpuBuffer::from_bytes(bytemuck::cast_slice(values))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    /// The bytes, mutable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }

    /// The contents as f32 (the length must be a multiple of 4).
    pub fn f32(&self) -> &[f32] {
        bytemuck::cast_slice(self.bytes())
    }
}

/// `[m, k] x [k, n]` (row-major), on all cores.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    crate::math::gemm::matmul(a, b, m, k, n)
}

/// An element-wise binary op with broadcasting to `out_shape`.
pub fn binary(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out_shape: &[usize],
    op: impl Fn(f32, f32) -> f32,
) -> Vec<f32> {
    if a_shape == b_shape {
        return a.iter().zip(b).map(|(x, y)| op(*x, *y)).collect();
    }
    let count = elements(out_shape);
    let sa = broadcast_strides(a_shape, out_shape);
    let sb = broadcast_strides(b_shape, out_shape);
    let mut index = vec![0usize; out_shape.len()];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let ia: usize = index.iter().zip(&sa).map(|(i, s)| i * s).sum();
        let ib: usize = index.iter().zip(&sb).map(|(i, s)| i * s).sum();
        out.push(op(a[ia], b[ib]));
        for d in (0..out_shape.len()).rev() {
            index[d] += 1;
            if index[d] < out_shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// GELU, exact form.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Softmax over rows of length `row` (numerically stable).
pub fn softmax(a: &[f32], row: usize) -> Vec<f32> {
    let mut out = a.to_vec();
    if row == 0 {
        return out;
    }
    for chunk in out.chunks_mut(row) {
        let max = chunk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in chunk.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        for x in chunk.iter_mut() {
            *x /= sum;
        }
    }
    out
}

/// Sums over the middle axis of an `(outer, n, inner)` view (accumulating in f64).
pub fn sum_axis(a: &[f32], outer: usize, n: usize, inner: usize) -> Vec<f32> {
    let mut out = vec![0f32; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = 0f64;
            for j in 0..n {
                acc += a[(o * n + j) * inner + i] as f64;
            }
            out[o * inner + i] = acc as f32;
        }
    }
    out
}

/// Transposes a `[rows, cols]` matrix of `size`-byte elements.
pub fn transpose(bytes: &[u8], rows: usize, cols: usize, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    for r in 0..rows {
        for c in 0..cols {
            let from = (r * cols + c) * size;
            let to = (c * rows + r) * size;
            out[to..to + size].copy_from_slice(&bytes[from..from + size]);
        }
    }
    out
}
