//! The function registry on disk, under `DATA/functions/`:
//!
//! ```text
//! functions/NAME/versions/1/component.wasm    the component as uploaded
//! functions/NAME/versions/1/component.cwasm   its precompiled artifact (for this engine)
//! functions/NAME/versions/1/manifest.json     name, version, settings, hash, time
//! functions/NAME/current                      the serving version number, e.g. `1`
//! ```
//!
//! A version is written into a `.staging-*` directory, fsynced and renamed into place, so a
//! crash mid-deploy never leaves a half-written version visible; `current` is switched by
//! writing `current.tmp` and renaming it over `current`. Leftover staging directories and
//! removed functions (`.trash-*`) are cleaned up when the registry is opened.
//!
//! Versions deployed from the same component may share one artifact file (hard links, see
//! [`NewArtifact::SameAs`]). No artifact is ever changed in place: a stale one is replaced by
//! renaming a new file over it, which leaves the other links as they were.

use crate::settings::FunctionSettings;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything recorded about one deployed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The function's name.
    pub name: String,
    /// The version number, counting from 1 per function.
    pub version: u64,
    /// How the function runs.
    pub settings: FunctionSettings,
    /// SHA-256 of the uploaded component, hex.
    pub sha256: String,
    /// Size of the uploaded component in bytes.
    pub component_bytes: u64,
    /// When it was deployed, RFC 3339.
    pub deployed_at: String,
}

/// Where the files of one version live.
#[derive(Debug, Clone)]
pub struct VersionPaths {
    /// The version's directory.
    pub dir: PathBuf,
    /// The component as uploaded.
    pub component: PathBuf,
    /// The precompiled artifact.
    pub artifact: PathBuf,
    /// The manifest JSON.
    pub manifest: PathBuf,
}

impl VersionPaths {
    fn in_dir(dir: PathBuf) -> Self {
        VersionPaths {
            component: dir.join("component.wasm"),
            artifact: dir.join("component.cwasm"),
            manifest: dir.join("manifest.json"),
            dir,
        }
    }
}

/// Where a new version's precompiled artifact comes from.
#[derive(Debug, Clone, Copy)]
pub enum NewArtifact<'a> {
    /// Freshly compiled: these bytes are written to the version.
    Compiled(&'a [u8]),
    /// Another version's, compiled from the same component by the same engine: its artifact
    /// is hard-linked, so that the two share one file on disk and one copy of their code in
    /// the page cache (copied where the file system refuses the link); so is its component
    /// file, if it holds the same bytes.
    SameAs(&'a VersionPaths),
}

/// The on-disk store of functions and their versions.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// Opens (creating if needed) the registry under `data_dir/functions` and removes what a
    /// crash may have left behind (staging and trash directories).
    pub fn open(data_dir: &Path) -> Result<Self> {
        let root = data_dir.join("functions");
        fs::create_dir_all(&root)
            .with_context(|| format!("creating the registry directory {}", root.display()))?;
        let registry = Registry { root };
        registry.clean_leftovers()?;
        Ok(registry)
    }

    /// The directory holding every function.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn clean_leftovers(&self) -> Result<()> {
        for entry in read_dir_names(&self.root)? {
            let path = self.root.join(&entry);
            if entry.starts_with(".trash-") {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                continue;
            }
            let versions = path.join("versions");
            if versions.is_dir() {
                for version in read_dir_names(&versions)? {
                    if version.starts_with(".staging-") {
                        let staging = versions.join(&version);
                        tracing::warn!(path = %staging.display(), "removing a half-written version left by a crash");
                        fs::remove_dir_all(&staging)
                            .with_context(|| format!("removing {}", staging.display()))?;
                    }
                }
            }
            let _ = fs::remove_file(path.join("current.tmp"));
        }
        Ok(())
    }

    /// Names of all functions that have a current version, sorted.
    pub fn function_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = read_dir_names(&self.root)?
            .into_iter()
            .filter(|name| !name.starts_with('.'))
            .filter(|name| self.root.join(name).join("current").is_file())
            .collect();
        names.sort();
        Ok(names)
    }

    fn function_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The paths of one version's files.
    pub fn paths(&self, name: &str, version: u64) -> VersionPaths {
        VersionPaths::in_dir(
            self.function_dir(name)
                .join("versions")
                .join(version.to_string()),
        )
    }

    /// All complete versions of a function, ascending.
    pub fn versions(&self, name: &str) -> Result<Vec<u64>> {
        let dir = self.function_dir(name).join("versions");
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut versions: Vec<u64> = read_dir_names(&dir)?
            .iter()
            .filter_map(|entry| entry.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The version currently serving, if the function exists.
    pub fn current(&self, name: &str) -> Result<Option<u64>> {
        let path = self.function_dir(name).join("current");
        match fs::read_to_string(&path) {
            Ok(text) => {
                Ok(Some(text.trim().parse().with_context(|| {
                    format!("corrupt {}: {text:?}", path.display())
                })?))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Reads one version's manifest.
    pub fn manifest(&self, name: &str, version: u64) -> Result<Manifest> {
        let path = self.paths(name, version).manifest;
        let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes a new version (component, artifact, manifest) and returns its paths. The version
    /// becomes visible only complete; it does not become current until [`Registry::set_current`].
    ///
    /// `manifest.version` is ignored: the next free number is used and written back.
    pub fn add_version(
        &self,
        manifest: &mut Manifest,
        component: &[u8],
        artifact: NewArtifact<'_>,
    ) -> Result<VersionPaths> {
        let versions_dir = self.function_dir(&manifest.name).join("versions");
        fs::create_dir_all(&versions_dir)
            .with_context(|| format!("creating {}", versions_dir.display()))?;
        let version = self.versions(&manifest.name)?.last().copied().unwrap_or(0) + 1;
        manifest.version = version;

        let staging = versions_dir.join(format!(".staging-{version}-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        let staged = VersionPaths::in_dir(staging.clone());
        let result = (|| -> Result<()> {
            match artifact {
                NewArtifact::Compiled(bytes) => {
                    write_synced(&staged.component, component)?;
                    write_synced(&staged.artifact, bytes)?;
                }
                NewArtifact::SameAs(existing) => {
                    link_or_copy(&existing.artifact, &staged.artifact)?;
                    let same_bytes = fs::read(&existing.component).is_ok_and(|b| b == component);
                    if !(same_bytes
                        && fs::hard_link(&existing.component, &staged.component).is_ok())
                    {
                        write_synced(&staged.component, component)?;
                    }
                }
            }
            write_synced(&staged.manifest, &serde_json::to_vec_pretty(manifest)?)?;
            sync_dir(&staging)?;
            let target = versions_dir.join(version.to_string());
            fs::rename(&staging, &target)
                .with_context(|| format!("moving {} to {}", staging.display(), target.display()))?;
            sync_dir(&versions_dir)
        })();
        if let Err(error) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(error);
        }
        Ok(self.paths(&manifest.name, version))
    }

    /// Replaces a version's precompiled artifact (after an engine upgrade made it stale) by
    /// renaming a new file over it: written, or linked to another version's artifact
    /// ([`NewArtifact::SameAs`]; the component file stays as it is).
    pub fn replace_artifact(
        &self,
        name: &str,
        version: u64,
        artifact: NewArtifact<'_>,
    ) -> Result<()> {
        let paths = self.paths(name, version);
        let tmp = paths.dir.join("component.cwasm.tmp");
        let _ = fs::remove_file(&tmp);
        match artifact {
            NewArtifact::Compiled(bytes) => write_synced(&tmp, bytes)?,
            NewArtifact::SameAs(existing) => link_or_copy(&existing.artifact, &tmp)?,
        }
        fs::rename(&tmp, &paths.artifact)
            .with_context(|| format!("replacing {}", paths.artifact.display()))?;
        sync_dir(&paths.dir)
    }

    /// Atomically makes `version` the one that serves.
    pub fn set_current(&self, name: &str, version: u64) -> Result<()> {
        let dir = self.function_dir(name);
        if !self.paths(name, version).dir.is_dir() {
            bail!("function `{name}` has no version {version}");
        }
        let tmp = dir.join("current.tmp");
        write_synced(&tmp, format!("{version}\n").as_bytes())?;
        fs::rename(&tmp, dir.join("current"))
            .with_context(|| format!("switching {name} to version {version}"))?;
        sync_dir(&dir)
    }

    /// Removes a function and all its versions: renamed away first (atomic), then deleted.
    pub fn remove(&self, name: &str) -> Result<()> {
        let dir = self.function_dir(name);
        let trash = self
            .root
            .join(format!(".trash-{name}-{}", rand::random::<u32>()));
        fs::rename(&dir, &trash).with_context(|| format!("removing {}", dir.display()))?;
        sync_dir(&self.root)?;
        fs::remove_dir_all(&trash).with_context(|| format!("deleting {}", trash.display()))
    }

    /// Removes a version that never became current (a deploy that failed after writing it).
    pub fn discard_version(&self, name: &str, version: u64) -> Result<()> {
        let paths = self.paths(name, version);
        fs::remove_dir_all(&paths.dir)
            .with_context(|| format!("removing {}", paths.dir.display()))?;
        let function_dir = self.function_dir(name);
        if self.current(name)?.is_none() && self.versions(name)?.is_empty() {
            let _ = fs::remove_dir_all(&function_dir);
        }
        Ok(())
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file =
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// Hard-links `existing` as `path` (made durable by syncing `path`'s directory), or copies it
/// where linking fails (a file system without hard links, or one at its link limit).
fn link_or_copy(existing: &Path, path: &Path) -> Result<()> {
    if fs::hard_link(existing, path).is_ok() {
        return Ok(());
    }
    fs::copy(existing, path)
        .with_context(|| format!("copying {} to {}", existing.display(), path.display()))?;
    fs::File::open(path)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            version: 0,
            settings: FunctionSettings::default(),
            sha256: "00".into(),
            component_bytes: 3,
            deployed_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn versions_count_up_and_current_switches() {
        let data = tempfile::tempdir().unwrap();
        let registry = Registry::open(data.path()).unwrap();
        let mut first = manifest("hello");
        registry
            .add_version(&mut first, b"one", NewArtifact::Compiled(b"art1"))
            .unwrap();
        assert_eq!(first.version, 1);
        assert_eq!(registry.current("hello").unwrap(), None);
        assert!(
            registry.function_names().unwrap().is_empty(),
            "no current yet"
        );
        registry.set_current("hello", 1).unwrap();
        let mut second = manifest("hello");
        let paths = registry
            .add_version(&mut second, b"two", NewArtifact::Compiled(b"art2"))
            .unwrap();
        registry.set_current("hello", 2).unwrap();
        assert_eq!(registry.versions("hello").unwrap(), vec![1, 2]);
        assert_eq!(registry.current("hello").unwrap(), Some(2));
        assert_eq!(fs::read(paths.component).unwrap(), b"two");
        assert_eq!(registry.manifest("hello", 2).unwrap().version, 2);
        assert_eq!(registry.function_names().unwrap(), vec!["hello"]);
        assert!(registry.set_current("hello", 9).is_err());
    }

    #[test]
    fn crash_leftovers_are_cleaned_and_never_listed() {
        let data = tempfile::tempdir().unwrap();
        let registry = Registry::open(data.path()).unwrap();
        let mut first = manifest("hello");
        registry
            .add_version(&mut first, b"one", NewArtifact::Compiled(b"art"))
            .unwrap();
        registry.set_current("hello", 1).unwrap();
        // Simulate a crash in the middle of writing version 2 and of a removal.
        let staging = registry.root().join("hello/versions/.staging-2-999");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("component.wasm"), b"half").unwrap();
        fs::create_dir_all(registry.root().join(".trash-gone-1/versions")).unwrap();
        assert_eq!(registry.versions("hello").unwrap(), vec![1]);

        let reopened = Registry::open(data.path()).unwrap();
        assert!(!staging.exists());
        assert!(!reopened.root().join(".trash-gone-1").exists());
        assert_eq!(reopened.current("hello").unwrap(), Some(1));
    }

    #[test]
    fn a_version_can_share_another_versions_artifact() {
        use std::os::unix::fs::MetadataExt;
        let data = tempfile::tempdir().unwrap();
        let registry = Registry::open(data.path()).unwrap();
        let mut first = manifest("one");
        let one = registry
            .add_version(&mut first, b"same", NewArtifact::Compiled(b"art"))
            .unwrap();
        let mut second = manifest("two");
        let two = registry
            .add_version(&mut second, b"same", NewArtifact::SameAs(&one))
            .unwrap();
        assert_eq!(fs::read(&two.artifact).unwrap(), b"art");
        let inode = |path: &Path| fs::metadata(path).unwrap().ino();
        assert_eq!(
            inode(&one.artifact),
            inode(&two.artifact),
            "one file, linked"
        );
        assert_eq!(
            inode(&one.component),
            inode(&two.component),
            "same bytes, linked"
        );

        // Removing one function leaves the other's file; replacing the other's artifact (after
        // an engine upgrade) writes a new file instead of changing the shared one.
        registry.remove("one").unwrap();
        assert_eq!(fs::read(&two.artifact).unwrap(), b"art");
        let mut third = manifest("three");
        let three = registry
            .add_version(&mut third, b"same", NewArtifact::SameAs(&two))
            .unwrap();
        let mut odd = manifest("odd");
        let odd = registry
            .add_version(&mut odd, b"other", NewArtifact::SameAs(&two))
            .unwrap();
        assert_eq!(fs::read(&odd.component).unwrap(), b"other", "not linked");
        assert_eq!(inode(&odd.artifact), inode(&two.artifact));
        registry
            .replace_artifact("two", 1, NewArtifact::Compiled(b"new"))
            .unwrap();
        assert_eq!(fs::read(&two.artifact).unwrap(), b"new");
        assert_eq!(fs::read(&three.artifact).unwrap(), b"art");

        let mut fourth = manifest("four");
        let missing = registry.add_version(&mut fourth, b"same", NewArtifact::SameAs(&one));
        assert!(missing.is_err(), "nothing to link or copy");
        assert!(registry.versions("four").unwrap().is_empty());
    }

    #[test]
    fn remove_deletes_everything() {
        let data = tempfile::tempdir().unwrap();
        let registry = Registry::open(data.path()).unwrap();
        let mut first = manifest("bye");
        registry
            .add_version(&mut first, b"one", NewArtifact::Compiled(b"art"))
            .unwrap();
        registry.set_current("bye", 1).unwrap();
        registry.remove("bye").unwrap();
        assert!(registry.function_names().unwrap().is_empty());
        assert_eq!(fs::read_dir(registry.root()).unwrap().count(), 0);
    }
}
