//! Memory accounting: budgets (a device, a function, an invocation) and reservations that charge
//! a chain of them before an allocation happens and give the bytes back when dropped.

use crate::error::{ErrorKind, GpuError, GpuResult};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A named byte budget with a limit, what is in use and the peak.
#[derive(Debug)]
pub struct MemoryBudget {
    name: String,
    limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
    /// Bytes in use integrated over time: (last change, byte-seconds so far).
    integral: Mutex<(Instant, f64)>,
}

impl MemoryBudget {
    /// A budget called `name` (used in error messages) of `limit` bytes.
    pub fn new(name: impl Into<String>, limit: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            name: name.into(),
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            integral: Mutex::new((Instant::now(), 0.0)),
        })
    }

    /// Bytes in use integrated over time since the budget was made (byte-seconds).
    pub fn byte_seconds(&self) -> f64 {
        let mut integral = self.integral.lock().unwrap_or_else(|e| e.into_inner());
        Self::advance(&mut integral, self.used());
        integral.1
    }

    fn advance(integral: &mut (Instant, f64), used_before: u64) {
        let now = Instant::now();
        integral.1 += used_before as f64 * now.duration_since(integral.0).as_secs_f64();
        integral.0 = now;
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes in use now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The most bytes ever in use at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Acquire)
    }

    /// Bytes still available.
    pub fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    fn try_charge(&self, bytes: u64) -> bool {
        let mut integral = self.integral.lock().unwrap_or_else(|e| e.into_inner());
        Self::advance(&mut integral, self.used());
        let charged = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            });
        match charged {
            Ok(previous) => {
                self.peak.fetch_max(previous + bytes, Ordering::AcqRel);
                true
            }
            Err(_) => false,
        }
    }

    fn release(&self, bytes: u64) {
        let mut integral = self.integral.lock().unwrap_or_else(|e| e.into_inner());
        Self::advance(&mut integral, self.used());
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes charged to a chain of budgets; released from all of them on drop.
#[derive(Debug)]
pub struct Reservation {
    budgets: Vec<Arc<MemoryBudget>>,
    bytes: u64,
}

impl Reservation {
    /// Charges `bytes` to every budget in `budgets`, or to none of them: the error names the
    /// first budget that had no room.
    pub fn new(budgets: &[Arc<MemoryBudget>], bytes: u64) -> GpuResult<Self> {
        for (i, budget) in budgets.iter().enumerate() {
            if !budget.try_charge(bytes) {
                for charged in &budgets[..i] {
                    charged.release(bytes);
                }
                return Err(GpuError::new(
                    ErrorKind::OutOfMemory,
                    format!(
                        "allocating {bytes} bytes would exceed the {} of {} bytes ({} in use)",
                        budget.name,
                        budget.limit,
                        budget.used()
                    ),
                ));
            }
        }
        Ok(Reservation {
            budgets: budgets.to_vec(),
            bytes,
        })
    }

    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for budget in &self.budgets {
            budget.release(self.bytes);
        }
    }
}

/// What one holder (a function) has allocated on each device, for operators: unlimited
/// budgets, one per device index, made on first use and charged like any other budget.
#[derive(Debug)]
pub struct Holdings {
    name: String,
    per_device: Mutex<Vec<(usize, Arc<MemoryBudget>)>>,
}

impl Holdings {
    /// Holdings of the holder called `name`.
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(Holdings {
            name: name.into(),
            per_device: Mutex::new(Vec::new()),
        })
    }

    /// The budget that tracks this holder on device `index`.
    pub fn on_device(&self, index: usize) -> Arc<MemoryBudget> {
        let mut per_device = self.per_device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, budget)) = per_device.iter().find(|(i, _)| *i == index) {
            return budget.clone();
        }
        let budget = MemoryBudget::new(format!("{}'s GPU memory", self.name), u64::MAX);
        per_device.push((index, budget.clone()));
        budget
    }

    /// Bytes held now, by device index (devices it holds nothing on are left out).
    pub fn by_device(&self) -> Vec<(usize, u64)> {
        let per_device = self.per_device.lock().unwrap_or_else(|e| e.into_inner());
        let mut held: Vec<_> = per_device
            .iter()
            .map(|(index, budget)| (*index, budget.used()))
            .filter(|(_, bytes)| *bytes > 0)
            .collect();
        held.sort_unstable();
        held
    }

    /// Bytes held now on all devices.
    pub fn total(&self) -> u64 {
        self.by_device().iter().map(|(_, bytes)| bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_charge_all_or_nothing_and_release_on_drop() {
        let device = MemoryBudget::new("device memory", 1000);
        let function = MemoryBudget::new("function quota", 600);
        let invocation = MemoryBudget::new("invocation quota", 400);
        let chain = [invocation.clone(), function.clone(), device.clone()];

        let first = Reservation::new(&chain, 300).unwrap();
        let error = Reservation::new(&chain, 200).unwrap_err();
        assert_eq!(error.kind, ErrorKind::OutOfMemory);
        assert!(
            error.message.contains("invocation quota of 400"),
            "{}",
            error.message
        );
        assert_eq!(
            (invocation.used(), function.used(), device.used()),
            (300, 300, 300)
        );

        // Another invocation of the same function hits the function's quota.
        let other = MemoryBudget::new("invocation quota", 400);
        let other_chain = [other.clone(), function.clone(), device.clone()];
        let error = Reservation::new(&other_chain, 350).unwrap_err();
        assert!(
            error.message.contains("function quota"),
            "{}",
            error.message
        );
        assert_eq!(
            other.used(),
            0,
            "a failed reservation leaves nothing charged"
        );

        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(first);
        assert_eq!(
            (invocation.used(), function.used(), device.used()),
            (0, 0, 0)
        );
        // 300 bytes held for at least 50 ms; nothing held since.
        let held = invocation.byte_seconds();
        assert!((15.0..60.0).contains(&held), "{held} byte-seconds");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(invocation.byte_seconds(), held);
        assert_eq!(invocation.peak(), 300);
    }

    #[test]
    fn holdings_track_each_device_and_release() {
        let holdings = Holdings::new("function `f`");
        let device0 = MemoryBudget::new("device 0", 1000);
        let device1 = MemoryBudget::new("device 1", 1000);
        let a = Reservation::new(&[holdings.on_device(0), device0], 100).unwrap();
        let b = Reservation::new(&[holdings.on_device(1), device1.clone()], 250).unwrap();
        assert_eq!(holdings.by_device(), vec![(0, 100), (1, 250)]);
        assert_eq!(holdings.total(), 350);
        drop(a);
        assert_eq!(holdings.by_device(), vec![(1, 250)]);
        drop(b);
        assert_eq!(holdings.total(), 0);
        assert_eq!(device1.used(), 0);
    }
}
