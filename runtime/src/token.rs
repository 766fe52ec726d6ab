//! The admin token: 32 random bytes, hex, written to `DATA/admin-token` with mode 0600 on first
//! start. Every admin call must send it as `Authorization: Bearer <token>`.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The token file's name inside the data dir.
pub const TOKEN_FILE: &str = "admin-token";

/// Where the token lives for `data_dir`.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Reads the node's token, creating it (mode 0600) if this is the first start.
pub fn load_or_create(data_dir: &Path) -> Result<String> {
    let path = token_path(data_dir);
    if path.exists() {
        return read(data_dir);
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|_| file.write_all(b"\n"))
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "created a new admin token");
    Ok(token)
}

/// Reads an existing token.
pub fn read(data_dir: &Path) -> Result<String> {
    let path = token_path(data_dir);
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the admin token from {}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the admin token file {} is empty", path.display());
    }
    Ok(token)
}

/// Whether an `Authorization` header value carries `token` (compared in constant time).
pub fn authorizes(header: Option<&str>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let given = given.trim().as_bytes();
    let token = token.as_bytes();
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
    }

    #[test]
    fn bearer_header_is_checked_exactly() {
        assert!(authorizes(Some("Bearer abc"), "abc"));
        assert!(!authorizes(Some("Bearer abd"), "abc"));
        assert!(!authorizes(Some("Bearer ab"), "abc"));
        assert!(!authorizes(Some("abc"), "abc"));
        assert!(!authorizes(None, "abc"));
    }
}
