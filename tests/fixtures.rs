//! Test fixtures shared by the crates' test suites (included with `#[path]`): where the
//! repository, the installed MiniLM model and the golden embeddings are.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root (every crate including this sits one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The installed all-MiniLM-L6-v2 (`scripts/install-model.sh`; `FLINT_MINILM_DIR` overrides).
/// A missing model is a failure, not a skip.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("FLINT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 is not installed in {}: run scripts/install-model.sh",
        dir.display()
    );
    // Absolute, as tests link to its files from other directories.
    dir.canonicalize().unwrap_or(dir)
}

/// The golden MiniLM embeddings in `../shared/golden/` (`FLINT_SHARED_DIR` overrides where
/// `shared` is).
pub fn golden() -> serde_json::Value {
    let shared = std::env::var_os("FLINT_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().parent().unwrap().join("shared"));
    let path = shared.join("golden/minilm-l6-v2.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading the golden file {}: {e} (set FLINT_SHARED_DIR)",
            path.display()
        )
    });
    serde_json::from_slice(&bytes).unwrap()
}
