//! Per-function GPU budgets: at most so many GPU seconds per period (`--gpu-budget 30s/1h`).
//!
//! Periods are fixed windows aligned to the Unix epoch (a `1h` budget resets on the hour), as
//! billing periods are. What a function spent is charged when each invocation ends, so the
//! budget is checked at admission: once it is spent, new requests get 429 with the time it
//! resets, and invocations already running finish (the overshoot is bounded by what is in
//! flight). A restarted node rebuilds the current window's spend from the usage log.

use crate::units::{format_duration, parse_duration};
use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shortest period a budget may have.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// Longest period a budget may have.
pub const MAX_PERIOD: Duration = Duration::from_secs(31 * 24 * 3600);

/// A budget: `gpu_ms` of GPU time per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuBudget {
    /// GPU time allowed per period, in milliseconds.
    pub gpu_ms: u64,
    /// The period, in milliseconds.
    pub period_ms: u64,
}

impl GpuBudget {
    /// Parses `GPU_SECONDS/PERIOD`: `30/1h` (30 GPU seconds per hour), `1.5s/10m`, `500ms/1m`.
    pub fn parse(text: &str) -> Result<Self> {
        let (gpu, period) = text.split_once('/').with_context(|| {
            format!("`{text}` is not GPU_SECONDS/PERIOD (for example `30/1h` or `500ms/1m`)")
        })?;
        let gpu = gpu.trim();
        let gpu_time = match gpu.parse::<f64>() {
            Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                Duration::from_secs_f64(seconds)
            }
            Ok(_) => anyhow::bail!("GPU time `{gpu}` must be a positive number of seconds"),
            Err(_) => parse_duration(gpu).context("the GPU time")?,
        };
        let period = parse_duration(period).context("the period")?;
        ensure!(
            gpu_time >= Duration::from_millis(1),
            "the GPU time of a budget must be at least 1ms"
        );
        ensure!(
            (MIN_PERIOD..=MAX_PERIOD).contains(&period),
            "the period of a budget must be within 1s..=31days"
        );
        ensure!(
            gpu_time <= period * 1024,
            "a GPU time above 1024 times the period is no budget at all"
        );
        Ok(GpuBudget {
            gpu_ms: gpu_time.as_millis() as u64,
            period_ms: period.as_millis() as u64,
        })
    }

    /// The budget as `parse` reads it, e.g. `30s/1h`.
    pub fn render(&self) -> String {
        format!(
            "{}/{}",
            format_duration(Duration::from_millis(self.gpu_ms)),
            format_duration(Duration::from_millis(self.period_ms))
        )
    }

    /// Start of the window that `now_ms` (ms since the Unix epoch) falls in.
    pub fn window_start(&self, now_ms: u64) -> u64 {
        now_ms - now_ms % self.period_ms
    }
}

/// A spent budget: what was used and when it resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// GPU time used in this window, microseconds.
    pub used_us: u64,
    /// When the window ends, ms since the Unix epoch.
    pub resets_at_ms: u64,
}

/// What a function spent of its budget in the current window.
#[derive(Debug, Default)]
pub struct GpuSpend {
    /// (window start in ms since the epoch, GPU microseconds spent in it).
    window: Mutex<(u64, u64)>,
}

impl GpuSpend {
    /// Nothing spent yet.
    pub fn new() -> Self {
        GpuSpend::default()
    }

    fn used_in_window(&self, budget: &GpuBudget, now_ms: u64) -> u64 {
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.0 == budget.window_start(now_ms) {
            window.1
        } else {
            0
        }
    }

    /// `Ok` while some of the budget is left at `now_ms`.
    pub fn check(&self, budget: &GpuBudget, now_ms: u64) -> Result<(), Exhausted> {
        let used_us = self.used_in_window(budget, now_ms);
        if used_us < budget.gpu_ms * 1000 {
            Ok(())
        } else {
            Err(Exhausted {
                used_us,
                resets_at_ms: budget.window_start(now_ms) + budget.period_ms,
            })
        }
    }

    /// Adds `gpu_us` spent at `at_ms` (a new window starts from zero).
    pub fn charge(&self, budget: &GpuBudget, at_ms: u64, gpu_us: u64) {
        let start = budget.window_start(at_ms);
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.0 != start {
            *window = (start, 0);
        }
        window.1 += gpu_us;
    }

    /// The budget, what is used and left of it and when it resets, as the admin API shows it.
    pub fn status(&self, budget: &GpuBudget, now_ms: u64) -> serde_json::Value {
        let used_us = self.used_in_window(budget, now_ms);
        let limit_us = budget.gpu_ms * 1000;
        let resets_at =
            UNIX_EPOCH + Duration::from_millis(budget.window_start(now_ms) + budget.period_ms);
        serde_json::json!({
            "budget": budget.render(),
            "gpu_seconds": budget.gpu_ms as f64 / 1000.0,
            "period_seconds": budget.period_ms as f64 / 1000.0,
            "used_seconds": used_us as f64 / 1e6,
            "left_seconds": limit_us.saturating_sub(used_us) as f64 / 1e6,
            "resets_at": humantime::format_rfc3339_millis(resets_at).to_string(),
        })
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_and_render() {
        let budget = GpuBudget::parse("30/1h").unwrap();
        assert_eq!((budget.gpu_ms, budget.period_ms), (30_000, 3_600_000));
        assert_eq!(budget.render(), "30s/1h");
        assert_eq!(GpuBudget::parse(&budget.render()).unwrap(), budget);
        let budget = GpuBudget::parse("1.5/10m").unwrap();
        assert_eq!((budget.gpu_ms, budget.period_ms), (1_500, 600_000));
        let budget = GpuBudget::parse("500ms/1m").unwrap();
        assert_eq!((budget.gpu_ms, budget.period_ms), (500, 60_000));
        for bad in [
            "30",
            "x/1h",
            "30/soon",
            "0/1h",
            "1/0s",
            "-1/1h",
            "5000/1s",
            "1/400days",
        ] {
            assert!(GpuBudget::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn spend_is_checked_charged_and_reset_per_window() {
        let budget = GpuBudget::parse("100ms/10s").unwrap();
        let spend = GpuSpend::new();
        let t0 = 1_700_000_000_000; // a multiple of 10 s
        assert!(spend.check(&budget, t0).is_ok());
        spend.charge(&budget, t0 + 1, 60_000);
        assert!(spend.check(&budget, t0 + 2).is_ok());
        spend.charge(&budget, t0 + 3, 60_000);
        assert_eq!(
            spend.check(&budget, t0 + 4),
            Err(Exhausted {
                used_us: 120_000,
                resets_at_ms: t0 + 10_000
            })
        );
        let status = spend.status(&budget, t0 + 4);
        assert_eq!(status["left_seconds"], 0.0);
        assert_eq!(status["used_seconds"], 0.12);
        // The next window starts from zero.
        assert!(spend.check(&budget, t0 + 10_000).is_ok());
        assert_eq!(spend.status(&budget, t0 + 10_000)["used_seconds"], 0.0);
        spend.charge(&budget, t0 + 10_001, 30_000);
        assert_eq!(spend.status(&budget, t0 + 10_002)["left_seconds"], 0.07);
    }
}
