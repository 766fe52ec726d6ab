//! Sandboxes: a fresh store and instance of a function for exactly one request, and the spare
//! ones built ahead of requests.
//!
//! Instantiating a small component takes microseconds, but an interpreter-based one
//! (componentize-py, ComponentizeJS) takes milliseconds: linking dozens of core instances and
//! copying in its memory image. A request that arrives while the node has an idle core should
//! not wait for that. So when a function is invoked, the node also builds up to
//! `--spare-sandboxes` fresh instances of it in the background; the next requests take one
//! ready-made. A spare is still used by exactly one request and dropped after it: the fresh
//! sandbox per request is unchanged, only built earlier. Handing a spare over costs more than
//! instantiating a small component in place, so only functions whose instantiation was
//! measured at `--spare-after` (default 250 µs) or more get spares.
//!
//! Spares cost a pooling-allocator slot each, so the node caps them ([`SpareBudget`]: an
//! eighth of `--max-instances`, at most [`MAX_SPARES`]) and drops a function's spares when its code is unloaded for
//! being idle. A spare that fails to build (a trap or a memory bomb in the component's start
//! code) stops spares for that version: its requests instantiate inline and report the
//! failure as usual.

use crate::epoch::GuestActivity;
use crate::host::{InvocationInfo, InvocationState};
use anyhow::Result;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

/// The most spare sandboxes a node keeps, all functions together.
pub const MAX_SPARES: usize = 64;

/// wasmtime's default limit on the bytes one guest-to-host call may pass.
const DEFAULT_HOSTCALL_FUEL: u64 = 128 << 20;

/// The bytes one guest-to-host call may pass: everything a guest with `memory_bytes` of
/// linear memory can hold, and never less than wasmtime's default.
fn hostcall_fuel(memory_bytes: u64) -> usize {
    usize::try_from(memory_bytes.max(DEFAULT_HOSTCALL_FUEL)).unwrap_or(usize::MAX)
}

/// A fresh store for one invocation: its state, memory cap and host-call limit, and a
/// deadline (see [`set_deadline`]).
pub fn new_store(
    engine: &Engine,
    info: &InvocationInfo,
    deadline: Instant,
) -> Store<InvocationState> {
    let mut store = Store::new(engine, InvocationState::new(info));
    store.limiter(|state| &mut state.limiter);
    // One host call may take as much data as the guest can hold (a tensor upload as large as
    // its memory), not only wasmtime's default 128 MiB; the memory cap still bounds it.
    store.set_hostcall_fuel(hostcall_fuel(info.memory_bytes));
    set_deadline(&mut store, deadline);
    store
}

/// Interrupts the guest at the first epoch tick after `deadline`; until then it yields to the
/// async runtime at every tick.
pub fn set_deadline(store: &mut Store<InvocationState>, deadline: Instant) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

/// A spare: an instance built before its request, with the invocation id it was built for
/// (the guest sees it as `FLINT_INVOCATION_ID`, so the request takes that id).
pub struct Sandbox {
    /// The invocation's store.
    pub store: Store<InvocationState>,
    /// The instance.
    pub proxy: Proxy,
    /// The id of the invocation that will use it.
    pub invocation_id: Arc<str>,
    _permit: SparePermit,
}

/// When a node builds spare sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparePolicy {
    /// Spares per function (0: none).
    pub per_function: usize,
    /// Only for functions whose instantiation takes at least this long.
    pub after: Duration,
}

impl Default for SparePolicy {
    fn default() -> Self {
        SparePolicy {
            per_function: 2,
            after: Duration::from_micros(250),
        }
    }
}

/// Node-wide count of spare sandboxes, capped so spares never take the slots requests need.
#[derive(Debug)]
pub struct SpareBudget {
    held: AtomicUsize,
    limit: usize,
}

impl SpareBudget {
    /// A budget of spares for a pooling allocator of `max_instances` instances.
    pub fn for_instances(max_instances: u32) -> Arc<SpareBudget> {
        Arc::new(SpareBudget {
            held: AtomicUsize::new(0),
            limit: (max_instances as usize / 8).min(MAX_SPARES),
        })
    }

    /// Spares alive or being built now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn acquire(self: &Arc<Self>) -> Option<SparePermit> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.limit).then_some(held + 1)
            })
            .ok()
            .map(|_| SparePermit(self.clone()))
    }
}

/// One spare's share of the [`SpareBudget`], returned on drop.
struct SparePermit(Arc<SpareBudget>);

impl Drop for SparePermit {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One function version's spare sandboxes.
#[derive(Default)]
pub struct Spares {
    ready: Mutex<Vec<Sandbox>>,
    building: AtomicUsize,
    /// Requests that started on a spare.
    used: AtomicU64,
    /// How long the last instantiation took, in nanoseconds (0: not measured yet).
    instantiation_ns: AtomicU64,
    /// Set when a spare failed to build: no more spares for this version.
    failed: AtomicBool,
}

impl Spares {
    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<Sandbox>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a ready spare, if there is one.
    pub fn take(&self) -> Option<Sandbox> {
        let spare = self.ready().pop();
        if spare.is_some() {
            self.used.fetch_add(1, Ordering::Relaxed);
        }
        spare
    }

    /// How many requests started on a spare.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Spares ready now.
    pub fn ready_count(&self) -> usize {
        self.ready().len()
    }

    /// Records how long an instantiation of this version took.
    pub fn record_instantiation(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.instantiation_ns.store(ns, Ordering::Relaxed);
    }

    /// Whether instantiating this version takes at least `threshold` (as last measured; a
    /// zero threshold is always met).
    fn slow_to_instantiate(&self, threshold: Duration) -> bool {
        let ns = self.instantiation_ns.load(Ordering::Relaxed);
        threshold.is_zero() || (ns > 0 && Duration::from_nanos(ns) >= threshold)
    }

    /// Drops every ready spare (the function's code is being unloaded).
    pub fn clear(&self) {
        let spares = std::mem::take(&mut *self.ready());
        drop(spares);
    }

    /// Whether `policy` wants more spares of this version than are ready or being built: its
    /// instantiation was measured at `policy.after` or slower, and no spare failed to build.
    pub fn wanted(&self, policy: SparePolicy) -> bool {
        !self.failed.load(Ordering::Relaxed)
            && self.slow_to_instantiate(policy.after)
            && self.ready_count() + self.building.load(Ordering::Acquire) < policy.per_function
    }

    /// Starts building spares until `policy.per_function` are ready or being built (as far as
    /// `budget` allows), if instantiation was measured at `policy.after` or slower. Each one's
    /// invocation state is made from `template` with a fresh invocation id; `activity` keeps
    /// the epoch advancing while a spare's guest code (its start functions) runs.
    pub fn refill(
        self: &Arc<Self>,
        policy: SparePolicy,
        budget: &Arc<SpareBudget>,
        activity: &GuestActivity,
        pre: &ProxyPre<InvocationState>,
        template: &InvocationInfo,
        timeout: Duration,
    ) {
        while self.wanted(policy) {
            let Some(permit) = budget.acquire() else {
                return;
            };
            self.building.fetch_add(1, Ordering::AcqRel);
            let spares = self.clone();
            let activity = activity.clone();
            let pre = pre.clone();
            let info = InvocationInfo {
                invocation_id: Arc::from(crate::invoke::new_invocation_id()),
                ..template.clone()
            };
            tokio::spawn(async move {
                let started = Instant::now();
                let running = activity.enter();
                let built = build(&pre, &info, timeout).await;
                drop(running);
                if built.is_ok() {
                    spares.record_instantiation(started.elapsed());
                }
                spares.building.fetch_sub(1, Ordering::AcqRel);
                match built {
                    Ok((store, proxy)) => spares.ready().push(Sandbox {
                        store,
                        proxy,
                        invocation_id: info.invocation_id.clone(),
                        _permit: permit,
                    }),
                    Err(error) => {
                        spares.failed.store(true, Ordering::Relaxed);
                        tracing::debug!(
                            function = %info.function,
                            "building a spare sandbox failed, requests will instantiate their own: {error:#}"
                        );
                    }
                }
            });
        }
    }
}

/// Instantiates `pre` in a fresh store, within `timeout`.
async fn build(
    pre: &ProxyPre<InvocationState>,
    info: &InvocationInfo,
    timeout: Duration,
) -> Result<(Store<InvocationState>, Proxy)> {
    let engine = pre.instance_pre().engine();
    let mut store = new_store(engine, info, Instant::now() + timeout);
    let proxy = tokio::time::timeout(timeout, pre.instantiate_async(&mut store))
        .await
        .map_err(|_| anyhow::anyhow!("instantiation timed out"))??;
    Ok((store, proxy))
}
