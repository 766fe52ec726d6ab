//! The model encoder's CUDA kernels, run on the CPU by a small emulator of CUDA blocks
//! (`cuda_emulation/harness.cpp`) and checked against double-precision references. This tests
//! their logic — LayerNorm, GELU, attention's online softmax across key tiles, pooling — on
//! machines without a GPU; the CUDA test in `minilm.rs` runs them on a real device.
//!
//! The built-in ops' kernels (`flint_gpu::cuda::BUILTINS_SOURCE`) run the same way, launched
//! with the backend's own geometry, and must agree with the CPU backend.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); skips with a reason without one.

mod common;

use cudarc::driver::LaunchConfig;
use flint_gpu::cuda::{BUILTINS_SOURCE, Broadcast, grid_stride_launch, softmax_launch};
use flint_gpu::{DType, Pool, Session, UnaryOp};
use rand::Rng;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// `source` as the emulator compiles it: dynamic shared memory (`extern __shared__`) becomes
/// the emulator's buffer, sized by each launch.
fn emulated(source: &str) -> String {
    let rewritten = source
        .replace(
            "extern __shared__ float shared[];",
            "float* shared = g_dynamic_shared;",
        )
        .replace(
            "extern __shared__ float scratch[];",
            "float* scratch = g_dynamic_shared;",
        );
    assert!(
        !rewritten.contains("extern __shared__"),
        "a kernel declares dynamic shared memory the emulator does not know about"
    );
    rewritten
}

/// Compiles `tests/cuda_emulation/{harness}` with `source` (emulated) as `{include}`; `None`,
/// after printing why, where there is no C++ compiler.
fn build_emulator(harness: &str, include: &str, source: &str) -> Option<(TempDir, PathBuf)> {
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let dir = tempfile::tempdir().unwrap();
    let harness_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulation");
    std::fs::write(dir.path().join(include), emulated(source)).unwrap();
    let binary = dir.path().join(harness.trim_end_matches(".cpp"));
    let compiled = match Command::new(&compiler)
        .args(["-std=c++20", "-O1", "-pthread", "-I"])
        .arg(dir.path())
        .arg(harness_dir.join(harness))
        .arg("-o")
        .arg(&binary)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            eprintln!("skipping: no C++ compiler `{compiler}` ({error})");
            return None;
        }
    };
    assert!(
        compiled.status.success(),
        "compiling the emulated kernels of {harness} failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    Some((dir, binary))
}

#[test]
fn encoder_kernels_match_references_under_emulation() {
    let Some((_dir, binary)) = build_emulator(
        "harness.cpp",
        "encoder_emulated.inc",
        flint_gpu::model::cuda_encoder::SOURCE,
    ) else {
        return;
    };
    let run = Command::new(&binary).output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    eprintln!("{report}");
    assert!(
        run.status.success(),
        "a kernel disagrees with its reference:\n{report}"
    );
    for kernel in [
        "embed",
        "residual_norm",
        "bias_gelu",
        "attention",
        "mean_pool",
    ] {
        assert!(
            report.contains(kernel) && !report.contains("FAILED"),
            "{kernel}: {report}"
        );
    }
}

/// The built-in kernels under the emulator, one launch per run.
struct BuiltinKernels {
    dir: TempDir,
    binary: PathBuf,
    runs: usize,
}

/// A launch: grid blocks, threads per block, dynamic shared memory bytes.
type Geometry = (u32, u32, u32);

impl BuiltinKernels {
    /// Runs `kernel` with `geometry` on `inputs` and `params` (see `builtins.cpp`); returns the
    /// output buffer of `out_bytes`.
    fn run(
        &mut self,
        kernel: &str,
        geometry: Geometry,
        out_bytes: usize,
        inputs: &[&[u8]],
        params: &[String],
    ) -> Vec<u8> {
        self.runs += 1;
        let dir = self.dir.path();
        let out = dir.join(format!("out{}", self.runs));
        let mut command = Command::new(&self.binary);
        command.arg(kernel).args([
            geometry.0.to_string(),
            geometry.1.to_string(),
            geometry.2.to_string(),
            out_bytes.to_string(),
        ]);
        command.arg(&out);
        for (i, input) in inputs.iter().enumerate() {
            let path = dir.join(format!("in{}-{i}", self.runs));
            std::fs::write(&path, input).unwrap();
            command.arg(path);
        }
        let run = command.args(params).output().unwrap();
        assert!(
            run.status.success(),
            "{kernel} {params:?} under emulation failed ({}):\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
        std::fs::read(out).unwrap()
    }

    /// Runs grid-stride `kernel` twice over as many items as `want` has, with the backend's
    /// launch and with [`two_blocks`], and checks both f32 outputs against `want` (see
    /// [`assert_agrees`]).
    fn check_grid_stride(
        &mut self,
        what: &str,
        kernel: &str,
        inputs: &[&[u8]],
        params: &[String],
        want: &[f32],
        relative: f32,
    ) {
        for geometry in [grid_stride(want.len()), two_blocks(want.len())] {
            let got = self.run(kernel, geometry, want.len() * 4, inputs, params);
            assert_agrees(&format!("{what} {geometry:?}"), &f32s(&got), want, relative);
        }
    }
}

/// What the emulator needs of a backend launch (Flint's kernels use one-dimensional ones).
fn geometry(config: LaunchConfig) -> Geometry {
    (
        config.grid_dim.0,
        config.block_dim.0,
        config.shared_mem_bytes,
    )
}

/// The backend's launch of a grid-stride kernel over `n` items.
fn grid_stride(n: usize) -> Geometry {
    geometry(grid_stride_launch(n))
}

/// The same launch with only two blocks, as when there are more items than
/// `MAX_BLOCKS × BLOCK` and every thread handles several.
fn two_blocks(n: usize) -> Geometry {
    let (_, block, shared) = grid_stride(n);
    (2, block, shared)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn dims(shape: &[usize]) -> Vec<u32> {
    shape.iter().map(|d| *d as u32).collect()
}

/// `got` within `relative` of `want` (plus 1e-7 absolute), element by element; 0 is exact.
fn assert_agrees(what: &str, got: &[f32], want: &[f32], relative: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if relative == 0.0 {
            g.to_bits() == w.to_bits()
        } else {
            (g - w).abs() <= relative * w.abs() + 1e-7
        };
        assert!(ok, "{what}[{i}]: emulated kernel {g}, CPU backend {w}");
    }
}

fn cpu_session() -> Session {
    Pool::cpu_only(1 << 30)
        .session(common::session_limits(1 << 30, false))
        .unwrap()
}

#[test]
fn builtin_kernels_match_the_cpu_backend_under_emulation() {
    let Some((dir, binary)) =
        build_emulator("builtins.cpp", "builtins_emulated.inc", BUILTINS_SOURCE)
    else {
        return;
    };
    let mut kernels = BuiltinKernels {
        dir,
        binary,
        runs: 0,
    };
    let session = cpu_session();

    // Add and multiply, with and without broadcasting: bit for bit.
    for (sa, sb) in [
        (vec![3, 5], vec![3, 5]),
        (vec![1000], vec![1]),
        (vec![4, 1, 3], vec![2, 1]),
        (vec![2, 3, 4], vec![4]),
        (vec![1, 9, 1], vec![5, 1, 7]),
        (vec![2, 1, 3, 1, 2, 1, 2, 3], vec![3, 2, 1, 2, 1]),
    ] {
        let a = common::random(sa.iter().product());
        let b = common::random(sb.iter().product());
        let ta = session.upload_f32(&dims(&sa), &a).unwrap();
        let tb = session.upload_f32(&dims(&sb), &b).unwrap();
        let out_shape = flint_gpu::shape::broadcast("add", &sa, &sb).unwrap();
        let n: usize = out_shape.iter().product();
        let g = Broadcast::new(&sa, &sb, &out_shape);
        for (op, code) in [("add", 0), ("mul", 1)] {
            let want = match op {
                "add" => session.add(&ta, &tb),
                _ => session.mul(&ta, &tb),
            };
            let want = session.download_f32(&want.unwrap()).unwrap();
            let mut params = vec![n.to_string(), code.to_string(), g.rank.to_string()];
            for list in [g.dims, g.strides_a, g.strides_b] {
                params.extend(list.iter().map(|v| v.to_string()));
            }
            let inputs = [&f32_bytes(&a)[..], &f32_bytes(&b)[..]];
            let what = format!("{op} {sa:?} {sb:?}");
            kernels.check_grid_stride(&what, "binary", &inputs, &params, &want, 0.0);
        }
    }

    // ReLU and scale bit for bit; GELU within what two erff implementations differ by.
    for n in [1usize, 255, 257, 1000] {
        let a = common::random(n);
        let ta = session.upload_f32(&[n as u32], &a).unwrap();
        let factor = rand::rng().random_range(-3.0f32..3.0);
        for (name, code, relative) in [("relu", 0, 0.0), ("gelu", 1, 1e-6), ("scale", 2, 0.0)] {
            let want = match name {
                "relu" => session.unary(UnaryOp::Relu, &ta),
                "gelu" => session.unary(UnaryOp::Gelu, &ta),
                _ => session.scale(&ta, factor),
            };
            let want = session.download_f32(&want.unwrap()).unwrap();
            let params = [n.to_string(), code.to_string(), format!("{factor:?}")];
            let inputs = [&f32_bytes(&a)[..]];
            let what = format!("{name} n={n}");
            kernels.check_grid_stride(&what, "unary", &inputs, &params, &want, relative);
        }
    }

    // Softmax over the last axis: rows shorter and longer than a block, and more rows than
    // blocks (the launch capped, blocks striding over rows).
    for (rows, cols) in [(1usize, 1usize), (3, 7), (2, 256), (5, 257), (2, 1000)] {
        let a: Vec<f32> = common::random(rows * cols)
            .iter()
            .map(|v| v * 10.0)
            .collect();
        let ta = session.upload_f32(&[rows as u32, cols as u32], &a).unwrap();
        let want = session
            .download_f32(&session.softmax(&ta).unwrap())
            .unwrap();
        let launched = geometry(softmax_launch(rows));
        assert_eq!(launched.0 as usize, rows, "one block per row");
        let params = [rows.to_string(), cols.to_string()];
        for geometry in [launched, (2, launched.1, launched.2)] {
            let got = kernels.run(
                "softmax",
                geometry,
                rows * cols * 4,
                &[&f32_bytes(&a)],
                &params,
            );
            assert_agrees(
                &format!("softmax {rows}x{cols} {geometry:?}"),
                &f32s(&got),
                &want,
                1e-5,
            );
        }
    }

    // Sum and mean over each axis and over everything.
    let shape = [5usize, 7, 3];
    let a = common::random(shape.iter().product());
    let ta = session.upload_f32(&dims(&shape), &a).unwrap();
    for axis in [Some(0u32), Some(1), Some(2), None] {
        let (outer, n, inner) = match axis {
            Some(axis) => flint_gpu::shape::around_axis("sum", &shape, axis).unwrap(),
            None => (1, a.len(), 1),
        };
        for mean in [false, true] {
            let want = if mean {
                session.mean(&ta, axis)
            } else {
                session.sum(&ta, axis)
            };
            let want = session.download_f32(&want.unwrap()).unwrap();
            let divisor = if mean { n as f32 } else { 1.0 };
            let params = [
                outer.to_string(),
                n.to_string(),
                inner.to_string(),
                format!("{divisor:?}"),
            ];
            let inputs = [&f32_bytes(&a)[..]];
            let what = format!("reduce mean={mean} axis={axis:?}");
            kernels.check_grid_stride(&what, "reduce", &inputs, &params, &want, 1e-6);
        }
    }

    // Transpose of every element size, byte for byte.
    for dtype in [DType::U8, DType::F16, DType::F32, DType::I64] {
        for (rows, cols) in [(1usize, 1usize), (3, 5), (17, 33), (1, 300)] {
            let size = dtype.size();
            let mut bytes = vec![0u8; rows * cols * size];
            rand::rng().fill(&mut bytes[..]);
            let ta = session
                .upload(dtype, &[rows as u32, cols as u32], &bytes)
                .unwrap();
            let want = session.download(&session.transpose(&ta).unwrap()).unwrap();
            let params = [rows.to_string(), cols.to_string(), size.to_string()];
            for geometry in [grid_stride(rows * cols), two_blocks(rows * cols)] {
                let got = kernels.run("transpose", geometry, bytes.len(), &[&bytes], &params);
                assert!(
                    got == want,
                    "transpose {dtype:?} {rows}x{cols} {geometry:?} differs from the CPU backend"
                );
            }
        }
    }
    eprintln!(
        "{} launches of the built-in kernels agreed with the CPU backend",
        kernels.runs
    );
}
