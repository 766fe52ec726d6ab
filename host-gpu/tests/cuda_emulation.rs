//! The model encoder's CUDA kernels, run on the CPU by a small emulator of CUDA blocks
//! (`cuda_emulation/harness.cpp`) and checked against double-precision references. This tests
//! their logic — LayerNorm, GELU, attention's online softmax across key tiles, pooling — on
//! machines without a GPU; the CUDA test in `minilm.rs` runs them on a real device.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); skips with a reason without one.

use std::path::Path;
use std::process::Command;

/// The kernel source as the emulator compiles it: dynamic shared memory (`extern __shared__`)
/// becomes the emulator's buffer.
fn emulated_source() -> String {
    let source = flint_gpu::model::cuda_encoder::SOURCE;
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

#[test]
fn encoder_kernels_match_references_under_emulation() {
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let dir = tempfile::tempdir().unwrap();
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulation/harness.cpp");
    std::fs::write(dir.path().join("encoder_emulated.inc"), emulated_source()).unwrap();
    std::fs::copy(&harness, dir.path().join("harness.cpp")).unwrap();
    let binary = dir.path().join("harness");
    let compiled = match Command::new(&compiler)
        .args(["-std=c++20", "-O1", "-pthread", "harness.cpp", "-o"])
        .arg(&binary)
        .current_dir(dir.path())
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            eprintln!("skipping: no C++ compiler `{compiler}` ({error})");
            return;
        }
    };
    assert!(
        compiled.status.success(),
        "compiling the emulated kernels failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
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
