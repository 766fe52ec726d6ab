//! The built-in ops' CUDA source, compiled with NVRTC once per device, and how each kernel is
//! launched (grid, block, shared memory, the broadcast geometry). The launch geometry is public
//! so that `tests/cuda_emulation.rs` runs the kernels exactly as the backend launches them.

use super::nvrtc;
use crate::error::{GpuError, GpuResult};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, DeviceRepr, LaunchConfig};
use std::sync::Arc;

/// CUDA C of the built-in ops; semantics match `crate::cpu`.
pub const SOURCE: &str = r#"
struct Broadcast { long long rank; long long dims[8]; long long strides_a[8]; long long strides_b[8]; };

extern "C" __global__ void flint_binary(const float* a, const float* b, float* out, long long n, int op, Broadcast g) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long rest = i, ia = 0, ib = 0;
        for (int d = (int)g.rank - 1; d >= 0; --d) {
            long long index = rest % g.dims[d];
            rest /= g.dims[d];
            ia += index * g.strides_a[d];
            ib += index * g.strides_b[d];
        }
        float x = a[ia], y = b[ib];
        out[i] = op == 0 ? x + y : x * y;
    }
}

extern "C" __global__ void flint_unary(const float* a, float* out, long long n, int op, float factor) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float x = a[i];
        float y;
        if (op == 0) y = x > 0.0f ? x : 0.0f;
        else if (op == 1) y = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        else y = x * factor;
        out[i] = y;
    }
}

// One block per row at a time (blocks stride over the rows); blockDim.x must be a power of two.
extern "C" __global__ void flint_softmax(const float* a, float* out, long long rows, long long cols) {
    extern __shared__ float scratch[];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* x = a + row * cols;
        float* y = out + row * cols;
        float m = __int_as_float(0xff800000);
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, x[j]);
        scratch[threadIdx.x] = m;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) scratch[threadIdx.x] = fmaxf(scratch[threadIdx.x], scratch[threadIdx.x + s]);
            __syncthreads();
        }
        m = scratch[0];
        __syncthreads();
        float sum = 0.0f;
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            float e = expf(x[j] - m);
            y[j] = e;
            sum += e;
        }
        scratch[threadIdx.x] = sum;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
            __syncthreads();
        }
        sum = scratch[0];
        // Every thread has read the row's sum before the next row reuses `scratch`.
        __syncthreads();
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) y[j] /= sum;
    }
}

extern "C" __global__ void flint_reduce(const float* a, float* out, long long outer, long long n, long long inner, float divisor) {
    long long count = outer * inner;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < count; t += (long long)gridDim.x * blockDim.x) {
        long long o = t / inner, i = t % inner;
        double acc = 0.0;
        for (long long j = 0; j < n; ++j) acc += (double)a[(o * n + j) * inner + i];
        out[t] = (float)(acc / (double)divisor);
    }
}

extern "C" __global__ void flint_transpose(const unsigned char* a, unsigned char* out, long long rows, long long cols, int size) {
    long long n = rows * cols;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < n; t += (long long)gridDim.x * blockDim.x) {
        long long r = t / cols, c = t % cols;
        const unsigned char* from = a + t * size;
        unsigned char* to = out + (c * rows + r) * size;
        for (int b = 0; b < size; ++b) to[b] = from[b];
    }
}
"#;

/// Threads per block of the built-in kernels (a power of two: `flint_softmax` reduces by halves).
pub const BLOCK: u32 = 256;

/// Most blocks a built-in launch uses; the kernels stride over the rest.
pub const MAX_BLOCKS: usize = 65_535;

/// Launch geometry of the grid-stride kernels (`flint_binary`, `flint_unary`, `flint_reduce`,
/// `flint_transpose`) over `n` items: one thread per item, up to [`MAX_BLOCKS`] blocks.
pub fn grid_stride_launch(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch geometry of `flint_softmax` over `rows` rows: one block per row (up to
/// [`MAX_BLOCKS`], striding over the rest) and one float of shared memory per thread.
pub fn softmax_launch(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: BLOCK * 4,
    }
}

/// Broadcast geometry passed by value to `flint_binary`: the output's dims and each input's
/// strides aligned to them (0 along broadcast dims), as `struct Broadcast` in [`SOURCE`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broadcast {
    /// Number of dims of the output (at most [`crate::shape::MAX_RANK`]).
    pub rank: i64,
    /// The output's dims; unused entries are 1.
    pub dims: [i64; 8],
    /// Element strides of `a` along the output's dims.
    pub strides_a: [i64; 8],
    /// Element strides of `b` along the output's dims.
    pub strides_b: [i64; 8],
}

// SAFETY: a plain `#[repr(C)]` struct of integers, matching `struct Broadcast` in the kernels.
unsafe impl DeviceRepr for Broadcast {}

impl Broadcast {
    /// The geometry of `a_shape` and `b_shape` broadcast to `out_shape` (already checked by
    /// [`crate::shape::broadcast`], so of rank at most [`crate::shape::MAX_RANK`]).
    pub fn new(a_shape: &[usize], b_shape: &[usize], out_shape: &[usize]) -> Broadcast {
        let mut geometry = Broadcast {
            rank: out_shape.len() as i64,
            dims: [1; 8],
            strides_a: [0; 8],
            strides_b: [0; 8],
        };
        let sa = crate::shape::broadcast_strides(a_shape, out_shape);
        let sb = crate::shape::broadcast_strides(b_shape, out_shape);
        for (i, d) in out_shape.iter().enumerate() {
            geometry.dims[i] = *d as i64;
            geometry.strides_a[i] = sa[i] as i64;
            geometry.strides_b[i] = sb[i] as i64;
        }
        geometry
    }
}

/// The built-in kernels of one device.
pub struct Builtins {
    pub binary: CudaFunction,
    pub unary: CudaFunction,
    pub softmax: CudaFunction,
    pub reduce: CudaFunction,
    pub transpose: CudaFunction,
    _module: Arc<CudaModule>,
}

impl Builtins {
    /// Compiles the built-in ops for `arch` and loads them into `ctx`.
    pub fn compile(ctx: &Arc<CudaContext>, arch: &str) -> GpuResult<Builtins> {
        let module = compile_module(ctx, arch, SOURCE)?;
        let load = |name: &str| {
            module.load_function(name).map_err(|e| {
                GpuError::device(&format!("loading built-in kernel {name}"), format!("{e:?}"))
            })
        };
        Ok(Builtins {
            binary: load("flint_binary")?,
            unary: load("flint_unary")?,
            softmax: load("flint_softmax")?,
            reduce: load("flint_reduce")?,
            transpose: load("flint_transpose")?,
            _module: module,
        })
    }
}

/// Compiles CUDA C with NVRTC into a CUBIN for `arch` ([`nvrtc::compile`]) and loads it into
/// `ctx`.
pub fn compile_module(
    ctx: &Arc<CudaContext>,
    arch: &str,
    source: &str,
) -> GpuResult<Arc<CudaModule>> {
    let cubin = nvrtc::compile(source, arch)?;
    ctx.load_module(cubin.into_module_image())
        .map_err(|e| GpuError::device("loading the compiled module", format!("{e:?}")))
}
