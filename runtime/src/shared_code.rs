//! Functions deployed from the same component share one loaded copy of its code.
//!
//! A node often serves one component as many functions: a template deployed once per tenant,
//! or a function deployed again with other settings. Their compiled code is the same (the
//! registry links their artifacts to one file, see [`crate::registry::NewArtifact::SameAs`]),
//! and so is everything wasmtime builds when it loads that code: the decoded metadata (about
//! 110 KiB for `hello`, 1.8 MiB for a componentize-py component), the linking against the
//! node's linker, the copy-on-write images of its memories. [`CodeCache`] hands out one
//! [`SharedCode`] per component (by the SHA-256 of its bytes) for as long as any function holds
//! it, so that
//!
//! - functions of one component hold that memory once, not once each;
//! - a function whose sibling has the code in memory loads it by taking a reference: its first
//!   request after an idle unload reads nothing from disk.
//!
//! Residency stays per function ([`crate::idle`]), but code pages are the component's:
//! parking a function hands them back only once no function holding the code is resident
//! ([`SharedCode::resident_holders`]), so an idle function does not take pages from under a
//! busy sibling.

use crate::host::InvocationState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Components by SHA-256, each entry alive while a function holds it.
type Entries = Mutex<HashMap<String, Weak<SharedCode>>>;

/// The components in memory, by the SHA-256 of their bytes (one per node).
#[derive(Default)]
pub struct CodeCache {
    entries: Arc<Entries>,
}

impl std::fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeCache")
            .field("components", &self.len())
            .finish()
    }
}

impl CodeCache {
    /// The code of the component with hash `sha256`, if a function holds it in memory now.
    pub fn get(&self, sha256: &str) -> Option<Arc<SharedCode>> {
        self.lock().get(sha256).and_then(Weak::upgrade)
    }

    /// Shares `pre`, just loaded, as the code of the component with hash `sha256`; if a
    /// function holds that component's code already (loaded meanwhile), returns that one
    /// instead and `pre` is dropped.
    pub fn share(&self, sha256: &str, pre: ProxyPre<InvocationState>) -> Arc<SharedCode> {
        let mut entries = self.lock();
        if let Some(held) = entries.get(sha256).and_then(Weak::upgrade) {
            return held;
        }
        let code = Arc::new(SharedCode {
            pre,
            sha256: sha256.to_string(),
            resident: AtomicUsize::new(0),
            entries: Arc::downgrade(&self.entries),
        });
        entries.insert(sha256.to_string(), Arc::downgrade(&code));
        code
    }

    /// How many components are in memory now.
    pub fn len(&self) -> usize {
        // An entry whose code is being dropped goes with it (see `SharedCode::drop`).
        self.lock()
            .values()
            .filter(|code| code.strong_count() > 0)
            .count()
    }

    /// Whether no component is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<SharedCode>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One component's code in memory, shared by the functions deployed from it; dropped (and its
/// entry in the [`CodeCache`] with it) when the last of them unloads.
pub struct SharedCode {
    pre: ProxyPre<InvocationState>,
    sha256: String,
    /// Functions holding it that are not parked.
    resident: AtomicUsize,
    entries: Weak<Entries>,
}

impl std::fmt::Debug for SharedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCode")
            .field("sha256", &self.sha256)
            .field("resident_holders", &self.resident_holders())
            .finish_non_exhaustive()
    }
}

impl SharedCode {
    /// The pre-instantiated component.
    pub fn pre(&self) -> &ProxyPre<InvocationState> {
        &self.pre
    }

    /// SHA-256 of the component it was compiled from.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// How many functions hold it resident (loaded, not parked) now.
    pub fn resident_holders(&self) -> usize {
        self.resident.load(Ordering::Acquire)
    }

    /// Holds it resident for one function until the returned guard is dropped.
    pub fn hold_resident(self: &Arc<Self>) -> ResidentHold {
        self.resident.fetch_add(1, Ordering::AcqRel);
        ResidentHold(self.clone())
    }

    /// Hands its code pages back to the OS ([`crate::code_pages::release`]); returns how many
    /// bytes were resident. Blocking.
    pub fn release_code_pages(&self) -> std::io::Result<usize> {
        crate::code_pages::release(self.pre.instance_pre().component().image_range())
    }
}

impl Drop for SharedCode {
    fn drop(&mut self) {
        let Some(entries) = self.entries.upgrade() else {
            return;
        };
        let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
        // A function may have loaded the component again since this one's last holder let go:
        // that entry is alive and stays.
        if entries
            .get(&self.sha256)
            .is_some_and(|entry| entry.strong_count() == 0)
        {
            entries.remove(&self.sha256);
        }
    }
}

/// One function holding a [`SharedCode`] resident (see [`SharedCode::hold_resident`]).
#[derive(Debug)]
pub struct ResidentHold(Arc<SharedCode>);

impl ResidentHold {
    /// The code held.
    pub fn code(&self) -> &Arc<SharedCode> {
        &self.0
    }
}

impl Drop for ResidentHold {
    fn drop(&mut self) {
        self.0.resident.fetch_sub(1, Ordering::AcqRel);
    }
}
