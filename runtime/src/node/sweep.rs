//! The idle sweep: one task per node that parks and unloads the functions nobody calls, as
//! the node's [`IdlePolicy`] says ([`crate::idle`]), and keeps the node within `--max-loaded`.
//! It sleeps until the next step falls due, and is woken early when a function's code becomes
//! resident again (a deploy, a reload, a request to a parked function).

use super::Node;
use crate::function::LoadedFunction;
use crate::idle::{IdlePolicy, IdleStep, Residency};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

impl Node {
    /// Parks and unloads idle functions (see [`crate::idle`]) until the node is dropped. It
    /// sleeps until the next step falls due; while no function is loaded, until one is.
    pub async fn sweep_idle_functions(self: Arc<Self>) {
        let policy = self.options.idle;
        if policy == IdlePolicy::NEVER {
            return;
        }
        let wake = self.wake_sweep.clone();
        let node = Arc::downgrade(&self);
        drop(self);
        loop {
            let (next, cap_due) = {
                let Some(node) = node.upgrade() else { return };
                let functions = node.snapshot();
                let functions = functions.functions.values();
                let next = functions
                    .clone()
                    .filter_map(|function| function.next_idle_step_in(&policy))
                    .min();
                (next, cap_due_in(&policy, functions))
            };
            match next.into_iter().chain(cap_due).min() {
                // Over the cap with a function that may go: now, even while reloads keep
                // waking the sweep.
                _ if cap_due == Some(Duration::ZERO) => {}
                // Not sooner than every 10 ms, however many functions fall due one by one.
                Some(due_in) => {
                    let due_in = due_in.max(Duration::from_millis(10));
                    tokio::select! {
                        () = tokio::time::sleep(due_in) => {}
                        () = wake.notified() => continue,
                    }
                }
                None => {
                    wake.notified().await;
                    continue;
                }
            }
            let Some(node) = node.upgrade() else { return };
            let functions = node.snapshot();
            let metering = node.metering.clone();
            drop(node);
            let _ = tokio::task::spawn_blocking(move || {
                step_idle_functions(&functions.functions, &policy, &metering.metrics.unloads)
            })
            .await;
        }
    }
}

/// Takes every step `policy` has due: parks and unloads idle functions, then unloads the least
/// recently used beyond the cap, counting unloads in `unloads`. Parking reads
/// `/proc/self/pagemap`: call it from a blocking thread.
fn step_idle_functions(
    functions: &HashMap<String, Arc<LoadedFunction>>,
    policy: &IdlePolicy,
    unloads: &prometheus::IntCounterVec,
) {
    let mut unloaded = 0;
    for function in functions.values() {
        match function.take_idle_step(policy) {
            Some(IdleStep::Park) => {
                tracing::info!(function = %function.name, "parked after being idle");
            }
            Some(IdleStep::Unload) => {
                tracing::info!(function = %function.name, "unloaded after being idle");
                unloads.with_label_values(&["idle"]).inc();
                unloaded += 1;
            }
            None => {}
        }
    }
    if let Some(max_loaded) = policy.max_loaded {
        for function in crate::idle::beyond_cap(max_loaded, holding_code(functions.values())) {
            function.unload();
            tracing::info!(
                function = %function.name,
                max_loaded,
                "unloaded the least recently used to stay within --max-loaded"
            );
            unloads.with_label_values(&["max_loaded"]).inc();
            unloaded += 1;
        }
    }
    if unloaded > 0 {
        crate::heap::release_freed();
    }
}

/// How often the sweep looks again at a node over its `--max-loaded` cap whose functions that
/// could go are all busy.
const CAP_RECHECK: Duration = Duration::from_secs(1);

/// When the sweep must next enforce `policy`'s cap on loaded functions: now, if more functions
/// than it allows hold their component and one may be unloaded; in [`CAP_RECHECK`], if none
/// may only because they are busy; never, if the node is within the cap or over it only with
/// `--keep-warm` functions.
fn cap_due_in<'a>(
    policy: &IdlePolicy,
    functions: impl Iterator<Item = &'a Arc<LoadedFunction>>,
) -> Option<Duration> {
    let max_loaded = policy.max_loaded?;
    let loaded = holding_code(functions);
    if loaded.len() <= max_loaded {
        None
    } else if loaded.iter().any(|(_, idle)| idle.is_some()) {
        Some(Duration::ZERO)
    } else {
        let busy = |f: &LoadedFunction| !f.manifest.settings.keep_warm && f.scheduler.busy();
        loaded
            .iter()
            .any(|(function, _)| busy(function))
            .then_some(CAP_RECHECK)
    }
}

/// The functions that hold their component (loaded or parked), each with how long it has been
/// idle if it may be unloaded for the cap: what [`crate::idle::beyond_cap`] chooses from.
fn holding_code<'a>(
    functions: impl Iterator<Item = &'a Arc<LoadedFunction>>,
) -> Vec<(&'a Arc<LoadedFunction>, Option<Duration>)> {
    functions
        .filter(|function| function.residency() != Residency::Unloaded)
        .map(|function| (function, function.idle_time_if_unloadable()))
        .collect()
}
