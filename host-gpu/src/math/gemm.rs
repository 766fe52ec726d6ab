//! Matrix products on the CPU: the `gemm` crate's kernels (AVX-512 where the CPU has it), split
//! across rayon's threads by blocks of output columns (or rows, for narrow outputs).
//!
//! The `gemm` crate's own threading splits poorly for the shapes of small-batch inference
//! (a few hundred rows, 384 columns); splitting the output into one contiguous block per thread
//! and running each block single-threaded keeps both cores busy.

use rayon::prelude::*;

/// A matrix operand: a pointer and element strides. `row_stride`/`col_stride` say how far apart
/// two rows/columns are, so transposed and strided views (one attention head) need no copies.
#[derive(Debug, Clone, Copy)]
pub struct View {
    ptr: *const f32,
    row_stride: isize,
    col_stride: isize,
}

/// A destination matrix: like [`View`], writable; rows are `row_stride` apart, columns adjacent.
#[derive(Debug, Clone, Copy)]
pub struct Destination {
    ptr: *mut f32,
    row_stride: isize,
}

// SAFETY: the views are only used inside `gemm`, whose callers guarantee that the memory
// outlives the call and that concurrent blocks write disjoint parts of the destination.
unsafe impl Send for View {}
unsafe impl Sync for View {}
unsafe impl Send for Destination {}
unsafe impl Sync for Destination {}

impl View {
    /// A row-major matrix with rows `row_stride` elements apart.
    pub fn rows(ptr: *const f32, row_stride: usize) -> View {
        View {
            ptr,
            row_stride: row_stride as isize,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix whose rows are `row_stride` apart (so `W^T` of a
    /// PyTorch `[out, in]` weight).
    pub fn transposed(ptr: *const f32, row_stride: usize) -> View {
        View {
            ptr,
            row_stride: 1,
            col_stride: row_stride as isize,
        }
    }

    fn offset(self, rows: usize, cols: usize) -> View {
        View {
            // SAFETY (for callers): stays within the matrix the view was made for.
            ptr: self
                .ptr
                .wrapping_offset(rows as isize * self.row_stride + cols as isize * self.col_stride),
            ..self
        }
    }
}

impl Destination {
    /// A row-major destination with rows `row_stride` elements apart.
    pub fn rows(ptr: *mut f32, row_stride: usize) -> Destination {
        Destination {
            ptr,
            row_stride: row_stride as isize,
        }
    }

    fn offset(self, rows: usize, cols: usize) -> Destination {
        Destination {
            ptr: self
                .ptr
                .wrapping_offset(rows as isize * self.row_stride + cols as isize),
            ..self
        }
    }
}

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 18;
/// Column blocks are multiples of this (the widest SIMD register holds 16 f32).
const COLUMN_ALIGN: usize = 16;

/// `c[m, n] = scale * a[m, k] · b[k, n]`, plus `c`'s previous contents when `accumulate`.
/// Single-threaded.
///
/// # Safety
/// `a`, `b` and `c` must describe valid, live matrices of those sizes, and `c` must not
/// overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_serial(
    m: usize,
    k: usize,
    n: usize,
    scale: f32,
    a: View,
    b: View,
    c: Destination,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller. gemm computes dst = alpha*dst + beta*lhs*rhs and
    // ignores alpha when read_dst is false.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.ptr,
            1,
            c.row_stride,
            accumulate,
            a.ptr,
            a.col_stride,
            a.row_stride,
            b.ptr,
            b.col_stride,
            b.row_stride,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// [`gemm_serial`] split across rayon's threads into disjoint blocks of `c`.
///
/// # Safety
/// As for [`gemm_serial`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    k: usize,
    n: usize,
    scale: f32,
    a: View,
    b: View,
    c: Destination,
    accumulate: bool,
) {
    let threads = rayon::current_num_threads();
    if threads < 2 || m * n * k < PARALLEL_MIN_WORK {
        // SAFETY: forwarded.
        unsafe { gemm_serial(m, k, n, scale, a, b, c, accumulate) };
        return;
    }
    // Blocks of output columns when the output is wide enough, else blocks of rows.
    let by_columns = n / COLUMN_ALIGN >= 2 * threads;
    let (extent, size) = if by_columns {
        (n, n.div_ceil(threads).div_ceil(COLUMN_ALIGN) * COLUMN_ALIGN)
    } else {
        (m, m.div_ceil(threads))
    };
    (0..extent.div_ceil(size))
        .into_par_iter()
        .for_each(|block| {
            let first = block * size;
            let len = size.min(extent - first);
            let (rows, cols, a, b, c) = if by_columns {
                (m, len, a, b.offset(0, first), c.offset(0, first))
            } else {
                (len, n, a.offset(first, 0), b, c.offset(first, 0))
            };
            // SAFETY: each block reads its own columns of b (or rows of a) and writes its own
            // columns (or rows) of c.
            unsafe { gemm_serial(rows, k, cols, scale, a, b, c, accumulate) };
        });
}

/// `a[m, k] · b[k, n]` for row-major slices.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(
        a.len() >= m * k && b.len() >= k * n,
        "matmul operands too short"
    );
    let mut c = vec![0f32; m * n];
    // SAFETY: the asserts and the allocation above give the sizes the views describe.
    unsafe {
        gemm(
            m,
            k,
            n,
            1.0,
            View::rows(a.as_ptr(), k),
            View::rows(b.as_ptr(), n),
            Destination::rows(c.as_mut_ptr(), n),
            false,
        )
    };
    c
}

/// `x[rows, inputs] · W^T + bias`, given `W^T` (`[inputs, outputs]` row-major: a PyTorch
/// weight `W[outputs, inputs]` transposed once, at load time, so that no call repacks it).
pub fn linear(x: &[f32], rows: usize, weight_t: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut y = Vec::new();
    linear_into(x, rows, weight_t, bias, &mut y);
    y
}

/// [`linear`] into `y`, reusing its allocation (a forward pass reuses one buffer per step
/// instead of faulting in fresh pages for every layer).
pub fn linear_into(x: &[f32], rows: usize, weight_t: &[f32], bias: &[f32], y: &mut Vec<f32>) {
    let outputs = bias.len();
    let inputs = weight_t.len().checked_div(outputs).unwrap_or(0);
    assert_eq!(
        weight_t.len(),
        outputs * inputs,
        "weight is not [inputs, outputs]"
    );
    assert!(x.len() >= rows * inputs, "input too short");
    y.clear();
    for _ in 0..rows {
        y.extend_from_slice(bias);
    }
    // SAFETY: as asserted; `accumulate` adds the product to the bias rows already in y.
    unsafe {
        gemm(
            rows,
            inputs,
            outputs,
            1.0,
            View::rows(x.as_ptr(), inputs),
            View::rows(weight_t.as_ptr(), outputs),
            Destination::rows(y.as_mut_ptr(), outputs),
            true,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0f64;
                for p in 0..k {
                    sum += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
                c[i * n + j] = sum as f32;
            }
        }
        c
    }

    fn random(len: usize) -> Vec<f32> {
        let mut rng = rand::rng();
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn matmul_matches_the_reference_for_shapes_that_take_every_split() {
        // Small (serial), wide (column blocks), narrow and tall (row blocks), odd sizes.
        for (m, k, n) in [(3, 5, 7), (33, 300, 700), (700, 300, 20), (129, 77, 515)] {
            let a = random(m * k);
            let b = random(k * n);
            let got = matmul(&a, &b, m, k, n);
            let want = reference(&a, &b, m, k, n);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{m}x{k}x{n}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn linear_adds_the_bias_to_x_times_w_transposed() {
        let (rows, inputs, outputs) = (37, 150, 260);
        let x = random(rows * inputs);
        let w_t = random(inputs * outputs);
        let bias = random(outputs);
        let want = reference(&x, &w_t, rows, inputs, outputs);
        let got = linear(&x, rows, &w_t, &bias);
        for r in 0..rows {
            for o in 0..outputs {
                let (g, w) = (got[r * outputs + o], want[r * outputs + o] + bias[o]);
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }
}
