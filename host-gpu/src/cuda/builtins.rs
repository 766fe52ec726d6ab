//! The built-in ops' CUDA source, compiled with NVRTC once per device.

use crate::error::{ErrorKind, GpuError, GpuResult};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts};
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

extern "C" __global__ void flint_softmax(const float* a, float* out, long long rows, long long cols) {
    extern __shared__ float scratch[];
    long long row = blockIdx.x;
    if (row >= rows) return;
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
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) y[j] /= sum;
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

/// Compiles CUDA C with NVRTC for `arch` (e.g. `sm_90`); a failure carries the NVRTC log.
/// Needs NVRTC but no device, so it also runs on machines without a GPU.
pub fn compile_ptx(source: &str, arch: &str) -> GpuResult<Ptx> {
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        ..Default::default()
    };
    compile_ptx_with_opts(source, options).map_err(|error| match error {
        CompileError::CompileError { log, .. } => GpuError::new(
            ErrorKind::CompileError,
            format!(
                "NVRTC failed to compile the kernel:\n{}",
                log.to_string_lossy()
            ),
        ),
        other => GpuError::new(ErrorKind::CompileError, format!("NVRTC: {other:?}")),
    })
}

/// Compiles CUDA C with NVRTC for `arch` and loads the module into `ctx`.
pub fn compile_module(
    ctx: &Arc<CudaContext>,
    arch: &str,
    source: &str,
) -> GpuResult<Arc<CudaModule>> {
    let ptx = compile_ptx(source, arch)?;
    ctx.load_module(ptx)
        .map_err(|e| GpuError::device("loading the compiled module", format!("{e:?}")))
}
