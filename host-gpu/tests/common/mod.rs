//! The op suite shared by the CPU and CUDA tests: every op against a plain reference written
//! here (naive loops, f64 accumulation), on fresh random inputs, for shapes that are not
//! multiples of any block size.

#![allow(dead_code)]

use flint_gpu::{DType, ErrorKind, Session, Tensor, UnaryOp};
use rand::Rng;

/// Fresh random values in [-2, 2).
pub fn random(len: usize) -> Vec<f32> {
    let mut rng = rand::rng();
    (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

pub fn assert_close(name: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = tolerance * (1.0 + w.abs());
        assert!((g - w).abs() <= bound, "{name}[{i}]: got {g}, want {w}");
    }
}

fn upload(session: &Session, shape: &[u32], values: &[f32]) -> Tensor {
    session.upload_f32(shape, values).unwrap()
}

fn index_of(index: &[usize], shape: &[usize]) -> usize {
    // Row-major offset of `index` in a tensor of `shape` broadcast to `index.len()` dims.
    let offset = index.len() - shape.len();
    let mut flat = 0;
    for (d, size) in shape.iter().enumerate() {
        let i = if *size == 1 { 0 } else { index[d + offset] };
        flat = flat * size + i;
    }
    flat
}

fn reference_binary(
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    out: &[usize],
    f: fn(f32, f32) -> f32,
) -> Vec<f32> {
    let count: usize = out.iter().product();
    let mut result = Vec::with_capacity(count);
    let mut index = vec![0usize; out.len()];
    for flat in 0..count {
        let mut rest = flat;
        for d in (0..out.len()).rev() {
            index[d] = rest % out[d];
            rest /= out[d];
        }
        result.push(f(a[index_of(&index, sa)], b[index_of(&index, sb)]));
    }
    result
}

fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse; integrate the series instead (|x| < 6 here).
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Runs every op on `session` and checks it against the references.
pub fn check_every_op(session: &Session) {
    for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 129, 31)] {
        let a = random(m * k);
        let b = random(k * n);
        let ta = upload(session, &[m as u32, k as u32], &a);
        let tb = upload(session, &[k as u32, n as u32], &b);
        let c = session
            .download_f32(&session.matmul(&ta, &tb).unwrap())
            .unwrap();
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum::<f64>() as f32;
            }
        }
        assert_close(&format!("matmul {m}x{k}x{n}"), &c, &want, 1e-4);
    }

    for (sa, sb) in [
        (vec![1000usize], vec![1000usize]),
        (vec![37, 19], vec![19]),
        (vec![5, 1, 7], vec![3, 1]),
        (vec![4, 3], vec![4, 1]),
    ] {
        let out: Vec<usize> = flint_gpu::shape::broadcast("test", &sa, &sb).unwrap();
        let a = random(sa.iter().product());
        let b = random(sb.iter().product());
        let dims = |s: &[usize]| s.iter().map(|d| *d as u32).collect::<Vec<_>>();
        let ta = upload(session, &dims(&sa), &a);
        let tb = upload(session, &dims(&sb), &b);
        let sum = session
            .download_f32(&session.add(&ta, &tb).unwrap())
            .unwrap();
        assert_close(
            &format!("add {sa:?}+{sb:?}"),
            &sum,
            &reference_binary(&a, &sa, &b, &sb, &out, |x, y| x + y),
            1e-6,
        );
        let product = session
            .download_f32(&session.mul(&ta, &tb).unwrap())
            .unwrap();
        assert_close(
            &format!("mul {sa:?}*{sb:?}"),
            &product,
            &reference_binary(&a, &sa, &b, &sb, &out, |x, y| x * y),
            1e-6,
        );
    }

    let len = 4099;
    let x = random(len);
    let tx = upload(session, &[len as u32], &x);
    let scaled = session
        .download_f32(&session.scale(&tx, -1.5).unwrap())
        .unwrap();
    assert_close(
        "scale",
        &scaled,
        &x.iter().map(|v| v * -1.5).collect::<Vec<_>>(),
        1e-6,
    );
    let relu = session
        .download_f32(&session.unary(UnaryOp::Relu, &tx).unwrap())
        .unwrap();
    assert_close(
        "relu",
        &relu,
        &x.iter()
            .map(|v| if *v > 0.0 { *v } else { 0.0 })
            .collect::<Vec<_>>(),
        0.0,
    );
    let gelu = session
        .download_f32(&session.unary(UnaryOp::Gelu, &tx).unwrap())
        .unwrap();
    let want: Vec<f32> = x
        .iter()
        .map(|v| (0.5 * *v as f64 * (1.0 + erf(*v as f64 / 2f64.sqrt()))) as f32)
        .collect();
    assert_close("gelu", &gelu, &want, 1e-5);

    for (rows, cols) in [(1, 1), (3, 300), (33, 17)] {
        let v = random(rows * cols);
        let t = upload(session, &[rows as u32, cols as u32], &v);
        let got = session.download_f32(&session.softmax(&t).unwrap()).unwrap();
        let mut want = Vec::new();
        for r in 0..rows {
            let row = &v[r * cols..(r + 1) * cols];
            let total: f64 = row.iter().map(|x| (*x as f64).exp()).sum();
            want.extend(row.iter().map(|x| ((*x as f64).exp() / total) as f32));
        }
        assert_close(&format!("softmax {rows}x{cols}"), &got, &want, 1e-5);
    }

    let shape = [6usize, 7, 5];
    let v = random(shape.iter().product());
    let t = upload(session, &[6, 7, 5], &v);
    for axis in 0..3u32 {
        let got = session
            .download_f32(&session.sum(&t, Some(axis)).unwrap())
            .unwrap();
        let mean = session.mean(&t, Some(axis)).unwrap();
        let mut out_shape = shape.to_vec();
        out_shape.remove(axis as usize);
        assert_eq!(mean.shape(), out_shape.as_slice());
        let mean = session.download_f32(&mean).unwrap();
        let mut want = vec![0f64; out_shape.iter().product()];
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                for l in 0..shape[2] {
                    let idx = [i, j, l];
                    let mut rest: Vec<usize> = idx.to_vec();
                    rest.remove(axis as usize);
                    let flat = rest[0] * out_shape[1] + rest[1];
                    want[flat] += v[(i * shape[1] + j) * shape[2] + l] as f64;
                }
            }
        }
        let want_sum: Vec<f32> = want.iter().map(|x| *x as f32).collect();
        let want_mean: Vec<f32> = want
            .iter()
            .map(|x| (*x / shape[axis as usize] as f64) as f32)
            .collect();
        assert_close(&format!("sum axis {axis}"), &got, &want_sum, 1e-5);
        assert_close(&format!("mean axis {axis}"), &mean, &want_mean, 1e-5);
    }
    let total = session.sum(&t, None).unwrap();
    assert!(total.shape().is_empty(), "sum over everything is a scalar");
    let want = v.iter().map(|x| *x as f64).sum::<f64>() as f32;
    assert_close(
        "sum all",
        &session.download_f32(&total).unwrap(),
        &[want],
        1e-5,
    );

    for dtype in [DType::F32, DType::U8, DType::I64, DType::F16] {
        let (rows, cols) = (13usize, 29usize);
        let bytes: Vec<u8> = (0..rows * cols * dtype.size())
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let t = session
            .upload(dtype, &[rows as u32, cols as u32], &bytes)
            .unwrap();
        let tt = session.transpose(&t).unwrap();
        assert_eq!(tt.shape(), &[cols, rows]);
        let got = session.download(&tt).unwrap();
        let size = dtype.size();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    &got[(c * rows + r) * size..(c * rows + r + 1) * size],
                    &bytes[(r * cols + c) * size..(r * cols + c + 1) * size],
                    "transpose {dtype} at {r},{c}"
                );
            }
        }
    }
}

/// Bad shapes, dtype mismatches and wrong byte counts are clear `invalid-argument` errors.
pub fn check_bad_inputs(session: &Session) {
    let a = session.upload_f32(&[2, 3], &random(6)).unwrap();
    let b = session.upload_f32(&[4, 5], &random(20)).unwrap();
    let error = session.matmul(&a, &b).unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidArgument);
    assert!(
        error.message.contains("inner dimensions"),
        "{}",
        error.message
    );
    let error = session.add(&a, &b).unwrap_err();
    assert!(
        error.message.contains("do not broadcast"),
        "{}",
        error.message
    );
    let ints = session.upload(DType::I32, &[2, 3], &[0u8; 24]).unwrap();
    let error = session.add(&a, &ints).unwrap_err();
    assert!(
        error.message.contains("f32") && error.message.contains("i32"),
        "{}",
        error.message
    );
    let error = session.upload(DType::F32, &[2, 3], &[0u8; 23]).unwrap_err();
    assert!(
        error.message.contains("needs 24 bytes"),
        "{}",
        error.message
    );
    let error = session.sum(&a, Some(2)).unwrap_err();
    assert!(error.message.contains("axis 2"), "{}", error.message);
    let error = session
        .transpose(&session.upload_f32(&[2], &[1.0, 2.0]).unwrap())
        .unwrap_err();
    assert!(error.message.contains("2-D"), "{}", error.message);
    assert_eq!(
        session
            .upload_f32(&[u32::MAX, u32::MAX], &[])
            .unwrap_err()
            .kind,
        ErrorKind::InvalidArgument
    );
}

/// A pool on a real CUDA device, or `None` with the reason printed (a failure instead under
/// `FLINT_REQUIRE_GPU=1`).
pub fn cuda_pool() -> Option<std::sync::Arc<flint_gpu::Pool>> {
    let pool = flint_gpu::Pool::probe(flint_gpu::PoolOptions::default());
    if pool.backend() == "cuda" {
        return Some(pool);
    }
    let reason = pool.cpu_reason().unwrap_or("unknown").to_string();
    if std::env::var("FLINT_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("FLINT_REQUIRE_GPU=1 but no usable CUDA device: {reason}");
    }
    eprintln!("skipping: no CUDA device ({reason}); FLINT_REQUIRE_GPU=1 makes this a failure");
    None
}

/// Limits for a test session.
pub fn session_limits(bytes: u64, allow_kernels: bool) -> flint_gpu::SessionLimits {
    flint_gpu::SessionLimits {
        invocation_bytes: bytes,
        function: None,
        allow_kernels,
        holder: None,
    }
}

/// A vector-add kernel in CUDA C.
pub const VECTOR_ADD: &str = r#"
extern "C" __global__ void vector_add(const float* a, const float* b, float* c, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}
"#;
