//! What happens to a function nobody calls: first it is parked, then unloaded.
//!
//! - **Loaded**: its pre-instantiated component is in memory, its code pages resident, and it
//!   may have spare sandboxes ready.
//! - **Parked** (after `--idle-park`): its code pages are handed back to the OS
//!   ([`crate::code_pages`]) unless a function deployed from the same component is resident
//!   (they share the code, see [`crate::shared_code`]), but the component's metadata and its
//!   linking stay (about
//!   110 KiB for `hello`, 1.8 MiB of heap for a componentize-py one), and so do its spare
//!   sandboxes: dropping them freed no measurable memory (their pooled slots keep their pages
//!   resident for the next instance either way) and cost a componentize-py function 1.3 ms on
//!   its next request. The next request faults back in only the pages it runs: no reload.
//! - **Unloaded** (after `--idle-unload`): the component and its spares are dropped too,
//!   leaving a few KiB. The next request loads it again: it takes the code of a function of
//!   the same component that holds it, or reloads it from the precompiled artifact on disk (a
//!   cold start).
//!
//! However recently they were called, at most `--max-loaded` functions keep their component in
//! memory (loaded or parked): beyond that, the least recently used ones unload
//! ([`beyond_cap`]), so that a burst of traffic to thousands of functions cannot hold them all
//! in memory until `--idle-unload`.
//!
//! A function is idle from the moment its last request finished (a request still running or
//! waiting keeps it busy), see [`crate::scheduler::Scheduler::idle_time`]. `--keep-warm`
//! functions stay loaded. The node's sweep ([`crate::node::Node::sweep_idle_functions`])
//! sleeps until the next step falls due, and while nothing is loaded, until something is.

use std::time::Duration;

/// When idle functions are parked and unloaded; `None` turns a step off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Park a function after this long without requests.
    pub park_after: Option<Duration>,
    /// Unload a function after this long without requests.
    pub unload_after: Option<Duration>,
    /// Keep at most this many functions loaded or parked; unload the least recently used
    /// beyond it.
    pub max_loaded: Option<usize>,
}

/// Where a function's code is (see the module docs). Serialized as its [`Residency::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// In memory and resident.
    Loaded = 0,
    /// In memory, its code pages given back.
    Parked = 1,
    /// Only on disk.
    Unloaded = 2,
}

impl serde::Serialize for Residency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl Residency {
    /// Its name in the admin API and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Residency::Loaded => "loaded",
            Residency::Parked => "parked",
            Residency::Unloaded => "unloaded",
        }
    }
}

/// A step taken on an idle function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleStep {
    /// Give back its code pages.
    Park,
    /// Drop its component and spare sandboxes.
    Unload,
}

impl IdlePolicy {
    /// Neither parks nor unloads.
    pub const NEVER: IdlePolicy = IdlePolicy {
        park_after: None,
        unload_after: None,
        max_loaded: None,
    };

    /// Whether it ever unloads (then a restarted node leaves functions unloaded until asked).
    pub fn unloads(&self) -> bool {
        self.unload_after.is_some() || self.max_loaded.is_some()
    }

    /// The step due for a function in `residency` that has been idle for `idle`, if any.
    /// Unloading wins over parking when both are due.
    pub fn due(&self, residency: Residency, idle: Duration) -> Option<IdleStep> {
        let reached = |after: Option<Duration>| after.is_some_and(|after| idle >= after);
        match residency {
            Residency::Unloaded => None,
            _ if reached(self.unload_after) => Some(IdleStep::Unload),
            Residency::Loaded if reached(self.park_after) => Some(IdleStep::Park),
            _ => None,
        }
    }

    /// How much longer until a step falls due for a function in `residency` idle for `idle`;
    /// `None` when none ever will (without a request in between).
    pub fn next_due_in(&self, residency: Residency, idle: Duration) -> Option<Duration> {
        let park = match residency {
            Residency::Loaded => self.park_after,
            _ => None,
        };
        let unload = match residency {
            Residency::Unloaded => None,
            _ => self.unload_after,
        };
        [park, unload]
            .into_iter()
            .flatten()
            .min()
            .map(|after| after.saturating_sub(idle))
    }
}

/// Which functions to unload when more than `max_loaded` of the `loaded` ones (each with how
/// long it has been idle, `None` if it may not be unloaded: kept warm, or busy) hold their
/// component: the longest idle first, down to 90 % of the cap, so that traffic spread over
/// more functions than the cap does not run a sweep on every reload. Fewer, if too few may go.
pub fn beyond_cap<T>(max_loaded: usize, loaded: Vec<(T, Option<Duration>)>) -> Vec<T> {
    if loaded.len() <= max_loaded {
        return Vec::new();
    }
    let excess = loaded.len() - (max_loaded - max_loaded / 10);
    let mut candidates: Vec<(T, Duration)> = loaded
        .into_iter()
        .filter_map(|(function, idle)| Some((function, idle?)))
        .collect();
    candidates.sort_by_key(|(_, idle)| std::cmp::Reverse(*idle));
    candidates
        .into_iter()
        .take(excess)
        .map(|(function, _)| function)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy(park: Option<u64>, unload: Option<u64>) -> IdlePolicy {
        IdlePolicy {
            park_after: park.map(S),
            unload_after: unload.map(S),
            max_loaded: None,
        }
    }

    #[test]
    fn a_loaded_function_is_parked_then_unloaded() {
        let p = policy(Some(30), Some(300));
        assert_eq!(p.due(Residency::Loaded, S(29)), None);
        assert_eq!(p.due(Residency::Loaded, S(30)), Some(IdleStep::Park));
        assert_eq!(p.due(Residency::Parked, S(100)), None);
        assert_eq!(p.due(Residency::Parked, S(300)), Some(IdleStep::Unload));
        assert_eq!(p.due(Residency::Unloaded, S(1000)), None);
    }

    #[test]
    fn unloading_wins_when_both_are_due() {
        let p = policy(Some(30), Some(300));
        assert_eq!(p.due(Residency::Loaded, S(400)), Some(IdleStep::Unload));
        // Parking after unloading never happens.
        let p = policy(Some(300), Some(30));
        assert_eq!(p.due(Residency::Loaded, S(30)), Some(IdleStep::Unload));
    }

    #[test]
    fn steps_that_are_off_never_fall_due() {
        let p = policy(None, Some(300));
        assert_eq!(p.due(Residency::Loaded, S(299)), None);
        assert_eq!(p.next_due_in(Residency::Loaded, S(100)), Some(S(200)));
        let p = policy(Some(30), None);
        assert_eq!(p.due(Residency::Parked, S(10_000)), None);
        assert_eq!(p.next_due_in(Residency::Parked, S(0)), None);
        assert_eq!(IdlePolicy::NEVER.next_due_in(Residency::Loaded, S(0)), None);
        assert!(!p.unloads());
    }

    #[test]
    fn beyond_the_cap_the_least_recently_used_unload() {
        let loaded = vec![("a", Some(S(5))), ("b", Some(S(50))), ("c", Some(S(1)))];
        assert_eq!(beyond_cap(3, loaded.clone()), Vec::<&str>::new());
        assert_eq!(beyond_cap(2, loaded.clone()), vec!["b"]);
        assert_eq!(beyond_cap(1, loaded.clone()), vec!["b", "a"]);
        assert_eq!(beyond_cap(0, loaded), vec!["b", "a", "c"]);
    }

    #[test]
    fn over_the_cap_it_unloads_down_to_ninety_percent() {
        let loaded = |n: u64| (0..n).map(|i| (i, Some(S(i)))).collect::<Vec<_>>();
        assert!(beyond_cap(100, loaded(100)).is_empty());
        // One over: the eleven longest idle go, leaving 90.
        assert_eq!(
            beyond_cap(100, loaded(101)),
            (90..101).rev().collect::<Vec<_>>()
        );
    }

    #[test]
    fn kept_warm_and_busy_functions_count_but_never_unload_for_the_cap() {
        // "warm" (kept warm) and "busy" hold memory too, so two others must go to reach 2.
        let loaded = vec![
            ("warm", None),
            ("busy", None),
            ("a", Some(S(5))),
            ("b", Some(S(50))),
        ];
        assert_eq!(beyond_cap(2, loaded.clone()), vec!["b", "a"]);
        // Not enough may go: as many as can.
        assert_eq!(beyond_cap(1, loaded), vec!["b", "a"]);
        assert!(policy(None, None).max_loaded.is_none());
        let capped = IdlePolicy {
            max_loaded: Some(10),
            ..IdlePolicy::NEVER
        };
        assert!(
            capped.unloads(),
            "a capped node starts with functions unloaded"
        );
    }

    #[test]
    fn the_next_step_is_the_nearest_one_still_ahead() {
        let p = policy(Some(30), Some(300));
        assert_eq!(p.next_due_in(Residency::Loaded, S(10)), Some(S(20)));
        assert_eq!(p.next_due_in(Residency::Parked, S(40)), Some(S(260)));
        assert_eq!(p.next_due_in(Residency::Unloaded, S(0)), None);
        // Overdue: due now.
        assert_eq!(
            p.next_due_in(Residency::Loaded, S(50)),
            Some(Duration::ZERO)
        );
    }
}
