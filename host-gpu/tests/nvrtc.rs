//! The CUDA sources of the built-in ops and of the model encoder compile with NVRTC into CUBINs
//! for each architecture Flint runs on, and NVRTC's failures come back readable. NVRTC needs no
//! device, so this runs wherever the library is found (a GPU machine, or one with the CUDA
//! libraries from PyPI on `LD_LIBRARY_PATH`) and catches a kernel that does not compile before
//! any device sees it. Skips with a reason where NVRTC is missing, and fails instead under
//! `FLINT_REQUIRE_GPU=1`.

use flint_gpu::ErrorKind;
use flint_gpu::cuda::BUILTINS_SOURCE;
use flint_gpu::cuda::nvrtc::{self, Cubin};
use flint_gpu::model::cuda_encoder::{SOURCE as ENCODER_SOURCE, source_for_head_dim};
use object::{Object, ObjectSymbol, SymbolKind};

fn nvrtc() -> bool {
    match nvrtc::available() {
        Ok(()) => true,
        Err(reason) if std::env::var("FLINT_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("FLINT_REQUIRE_GPU=1 but {reason}")
        }
        Err(reason) => {
            eprintln!("skipping: {reason}; FLINT_REQUIRE_GPU=1 makes this a failure");
            false
        }
    }
}

/// Architectures of the GPUs Flint is run on: A100, L4/Ada, H100/H200.
const ARCHES: [&str; 3] = ["sm_80", "sm_89", "sm_90"];

/// `cubin` is CUDA machine code for `arch` (not PTX, which the driver would JIT) that defines
/// every kernel in `entries`.
fn assert_cubin_for(cubin: &Cubin, arch: &str, entries: &[&str]) {
    let bytes = cubin.as_bytes();
    assert_eq!(cubin.arch(), arch);
    assert_eq!(&bytes[..4], b"\x7fELF", "{arch}: not an ELF image");
    assert_eq!(bytes[4], 2, "{arch}: not a 64-bit ELF");
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    assert_eq!(machine, 190, "{arch}: e_machine is not EM_CUDA");
    // The SM version is in e_flags: its second byte from CUDA ELF ABI version 8 (CUDA 13's
    // NVRTC), its first before.
    let flags = u32::from_le_bytes(bytes[48..52].try_into().unwrap());
    let sm = if bytes[8] >= 8 {
        (flags >> 8) & 0xff
    } else {
        flags & 0xff
    };
    assert_eq!(
        format!("sm_{sm}"),
        arch,
        "e_flags {flags:#x}, ELF ABI version {}",
        bytes[8]
    );
    let elf = object::File::parse(bytes).unwrap_or_else(|e| panic!("{arch}: {e}"));
    let kernels: Vec<&str> = elf
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_definition())
        .filter_map(|symbol| symbol.name().ok())
        .collect();
    for entry in entries {
        assert!(
            kernels.contains(entry),
            "{arch}: {entry} not in {kernels:?}"
        );
    }
}

#[test]
fn builtin_ops_compile_to_cubins_for_each_architecture() {
    if !nvrtc() {
        return;
    }
    for arch in ARCHES {
        let cubin = nvrtc::compile(BUILTINS_SOURCE, arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_cubin_for(
            &cubin,
            arch,
            &[
                "flint_binary",
                "flint_unary",
                "flint_softmax",
                "flint_reduce",
                "flint_transpose",
            ],
        );
    }
}

#[test]
fn encoder_kernels_compile_for_minilm_and_bert_base_heads() {
    if !nvrtc() {
        return;
    }
    // MiniLM-L6 has heads of 32, BERT-base of 64.
    for head_dim in [32, 64] {
        for arch in ARCHES {
            let cubin = nvrtc::compile(&source_for_head_dim(head_dim), arch)
                .unwrap_or_else(|e| panic!("head {head_dim}, {arch}: {e}"));
            assert_cubin_for(
                &cubin,
                arch,
                &[
                    "flint_embed",
                    "flint_residual_norm",
                    "flint_bias_activation",
                    "flint_attention",
                    "flint_mean_pool",
                ],
            );
        }
    }
}

#[test]
fn compile_errors_carry_the_nvrtc_log_and_name_the_architecture() {
    if !nvrtc() {
        return;
    }
    let (major, _) = nvrtc::version().expect("a loaded NVRTC has a version");
    assert!(major >= 12, "NVRTC {major}.x");

    let error = nvrtc::compile(
        "extern \"C\" __global__ void broken() { undefined_name(); }",
        "sm_90",
    )
    .unwrap_err();
    assert_eq!(error.kind, ErrorKind::CompileError);
    let message = error.to_string();
    assert!(message.contains("undefined_name"), "the log: {message}");
    assert!(message.contains("sm_90"), "the architecture: {message}");

    // Without HEAD_DIM the encoder refuses to compile, with a message saying so.
    let error = nvrtc::compile(ENCODER_SOURCE, "sm_90").unwrap_err();
    assert!(error.to_string().contains("HEAD_DIM"), "{error}");

    // An architecture NVRTC does not know is a compile error that says so.
    let error = nvrtc::compile(BUILTINS_SOURCE, "sm_1").unwrap_err();
    assert_eq!(error.kind, ErrorKind::CompileError);
    assert!(error.to_string().contains("not for sm_1"), "{error}");
    let supported = nvrtc::supported_architectures();
    for arch in ARCHES {
        let sm: i32 = arch["sm_".len()..].parse().unwrap();
        assert!(supported.contains(&sm), "{arch} not in {supported:?}");
    }

    // What is not a real architecture never reaches NVRTC.
    for arch in ["compute_90", "sm_", "90", "sm_9 0"] {
        let error = nvrtc::compile(BUILTINS_SOURCE, arch).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidArgument, "{arch}: {error}");
    }
}
