//! Per-function settings chosen at deploy time, their defaults, limits and parsing from the
//! deploy request's query string.

use crate::gpu_budget::GpuBudget;
use crate::names;
use crate::units::{format_duration, parse_duration, parse_size};
use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default linear-memory cap of one invocation.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// Largest memory cap a deploy may ask for (the pooling allocator's slot size).
pub const MAX_MEMORY: u64 = 4 << 30;
/// Default wall-clock timeout of one invocation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout a deploy may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default number of invocations of one function running at once.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 64;
/// Default number of requests allowed to wait for a slot; beyond it the answer is 503.
pub const DEFAULT_QUEUE_DEPTH: u32 = 128;
/// Default largest request body passed to a function.
pub const DEFAULT_MAX_BODY: u64 = 10 << 20;
/// Default GPU memory quota of one invocation.
pub const DEFAULT_GPU_MEMORY: u64 = 512 << 20;
/// Most extra routes one function may claim.
pub const MAX_ROUTES: usize = 16;
/// Most environment variables one function may set.
pub const MAX_ENV_VARS: usize = 256;

/// How one function runs: limits, routes and environment. Persisted in each version's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSettings {
    /// Extra route prefixes (besides `/fn/NAME`), normalized, without trailing `/`.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Linear-memory cap per invocation, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock timeout per invocation, in milliseconds.
    pub timeout_ms: u64,
    /// Invocations running at once.
    pub max_concurrency: u32,
    /// Requests waiting for a slot before new ones are refused with 503.
    pub queue_depth: u32,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: u64,
    /// Environment variables the guest sees.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Whether the guest may make outbound HTTP requests and open sockets.
    #[serde(default)]
    pub allow_outbound: bool,
    /// GPU memory quota of one invocation, in bytes.
    #[serde(default = "default_gpu_memory")]
    pub gpu_memory_bytes: u64,
    /// GPU memory quota of all running invocations of the function together, if any.
    #[serde(default)]
    pub gpu_function_memory_bytes: Option<u64>,
    /// Whether the function may compile and launch custom CUDA kernels.
    #[serde(default)]
    pub allow_kernels: bool,
    /// Never unload it when idle (no cold starts).
    #[serde(default)]
    pub keep_warm: bool,
    /// GPU invocations of this function running at once, if limited (a function is a GPU
    /// function when its component imports `flint:gpu`).
    #[serde(default)]
    pub max_gpu_concurrency: Option<u32>,
    /// GPU time allowed per period; beyond it requests get 429 until the period resets.
    #[serde(default)]
    pub gpu_budget: Option<GpuBudget>,
}

fn default_gpu_memory() -> u64 {
    DEFAULT_GPU_MEMORY
}

fn parse_flag(name: &str, value: &str) -> Result<bool> {
    match value {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => bail!("setting `{name}`: `{other}` is not true or false"),
    }
}

impl Default for FunctionSettings {
    fn default() -> Self {
        FunctionSettings {
            routes: Vec::new(),
            memory_bytes: DEFAULT_MEMORY,
            timeout_ms: DEFAULT_TIMEOUT.as_millis() as u64,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            max_body_bytes: DEFAULT_MAX_BODY,
            env: Vec::new(),
            allow_outbound: false,
            gpu_memory_bytes: DEFAULT_GPU_MEMORY,
            gpu_function_memory_bytes: None,
            allow_kernels: false,
            keep_warm: false,
            max_gpu_concurrency: None,
            gpu_budget: None,
        }
    }
}

impl FunctionSettings {
    /// The invocation timeout as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Parses settings from a deploy query string (`route=/x&memory=64MiB&env=K=V&...`).
    ///
    /// Unknown keys are an error, so a typo never silently deploys with defaults.
    pub fn from_query(query: &str) -> Result<Self> {
        let mut settings = FunctionSettings::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.as_ref();
            match key.as_ref() {
                "route" => settings.routes.push(names::normalize_route(value)?),
                "memory" => {
                    settings.memory_bytes = parse_size(value).context("setting `memory`")?
                }
                "timeout" => {
                    settings.timeout_ms = parse_duration(value)
                        .context("setting `timeout`")?
                        .as_millis()
                        .try_into()
                        .context("setting `timeout` is too long")?
                }
                "max_concurrency" => {
                    settings.max_concurrency = value.parse().with_context(|| {
                        format!("setting `max_concurrency`: `{value}` is not a number")
                    })?
                }
                "queue_depth" => {
                    settings.queue_depth = value.parse().with_context(|| {
                        format!("setting `queue_depth`: `{value}` is not a number")
                    })?
                }
                "max_body" => {
                    settings.max_body_bytes = parse_size(value).context("setting `max_body`")?
                }
                "env" => {
                    let (name, val) = value
                        .split_once('=')
                        .with_context(|| format!("setting `env`: `{value}` is not KEY=VALUE"))?;
                    settings.env.push((name.to_string(), val.to_string()));
                }
                "allow_outbound" => settings.allow_outbound = parse_flag("allow_outbound", value)?,
                "gpu_memory" => {
                    settings.gpu_memory_bytes = parse_size(value).context("setting `gpu_memory`")?
                }
                "gpu_function_memory" => {
                    settings.gpu_function_memory_bytes =
                        Some(parse_size(value).context("setting `gpu_function_memory`")?)
                }
                "allow_kernels" => settings.allow_kernels = parse_flag("allow_kernels", value)?,
                "keep_warm" => settings.keep_warm = parse_flag("keep_warm", value)?,
                "max_gpu_concurrency" => {
                    settings.max_gpu_concurrency = Some(value.parse().with_context(|| {
                        format!("setting `max_gpu_concurrency`: `{value}` is not a number")
                    })?)
                }
                "gpu_budget" => {
                    settings.gpu_budget =
                        Some(GpuBudget::parse(value).context("setting `gpu_budget`")?)
                }
                other => bail!(
                    "unknown setting `{other}` (known: route, memory, timeout, max_concurrency, queue_depth, max_body, env, allow_outbound, gpu_memory, gpu_function_memory, allow_kernels, keep_warm, max_gpu_concurrency, gpu_budget)"
                ),
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Renders the settings back into a deploy query string (what `fnctl deploy` sends).
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for route in &self.routes {
            query.append_pair("route", route);
        }
        query.append_pair("memory", &self.memory_bytes.to_string());
        query.append_pair("timeout", &format!("{}ms", self.timeout_ms));
        query.append_pair("max_concurrency", &self.max_concurrency.to_string());
        query.append_pair("queue_depth", &self.queue_depth.to_string());
        query.append_pair("max_body", &self.max_body_bytes.to_string());
        for (name, value) in &self.env {
            query.append_pair("env", &format!("{name}={value}"));
        }
        if self.allow_outbound {
            query.append_pair("allow_outbound", "true");
        }
        query.append_pair("gpu_memory", &self.gpu_memory_bytes.to_string());
        if let Some(bytes) = self.gpu_function_memory_bytes {
            query.append_pair("gpu_function_memory", &bytes.to_string());
        }
        if self.allow_kernels {
            query.append_pair("allow_kernels", "true");
        }
        if self.keep_warm {
            query.append_pair("keep_warm", "true");
        }
        if let Some(limit) = self.max_gpu_concurrency {
            query.append_pair("max_gpu_concurrency", &limit.to_string());
        }
        if let Some(budget) = &self.gpu_budget {
            query.append_pair(
                "gpu_budget",
                &format!("{}ms/{}ms", budget.gpu_ms, budget.period_ms),
            );
        }
        query.finish()
    }

    /// Checks every setting against its limits.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1 << 16..=MAX_MEMORY).contains(&self.memory_bytes),
            "setting `memory`: {} is outside 64KiB..=4GiB",
            self.memory_bytes
        );
        let timeout = self.timeout();
        ensure!(
            timeout >= Duration::from_millis(10) && timeout <= MAX_TIMEOUT,
            "setting `timeout`: {} is outside 10ms..=15m",
            format_duration(timeout)
        );
        ensure!(
            (1..=10_000).contains(&self.max_concurrency),
            "setting `max_concurrency`: {} is outside 1..=10000",
            self.max_concurrency
        );
        if let Some(limit) = self.max_gpu_concurrency {
            ensure!(
                (1..=10_000).contains(&limit),
                "setting `max_gpu_concurrency`: {limit} is outside 1..=10000"
            );
        }
        ensure!(
            self.queue_depth <= 100_000,
            "setting `queue_depth`: {} is above 100000",
            self.queue_depth
        );
        ensure!(
            self.max_body_bytes <= 1 << 30,
            "setting `max_body`: {} is above 1GiB",
            self.max_body_bytes
        );
        ensure!(
            self.gpu_memory_bytes <= 1 << 40,
            "setting `gpu_memory`: {} is above 1TiB",
            self.gpu_memory_bytes
        );
        if let Some(function) = self.gpu_function_memory_bytes {
            ensure!(
                function >= self.gpu_memory_bytes,
                "setting `gpu_function_memory` ({function}) must be at least `gpu_memory` ({})",
                self.gpu_memory_bytes
            );
        }
        ensure!(
            self.routes.len() <= MAX_ROUTES,
            "at most {MAX_ROUTES} routes per function"
        );
        let mut routes = self.routes.clone();
        routes.sort();
        routes.dedup();
        ensure!(
            routes.len() == self.routes.len(),
            "the same route is given twice"
        );
        ensure!(
            self.env.len() <= MAX_ENV_VARS,
            "at most {MAX_ENV_VARS} environment variables per function"
        );
        for (name, value) in &self.env {
            ensure!(
                !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit()),
                "environment variable name `{}` is invalid (use letters, digits and `_`)",
                name.escape_default()
            );
            ensure!(
                !value.contains('\0'),
                "environment variable `{name}` contains a NUL byte"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips() {
        let settings = FunctionSettings {
            routes: vec!["/api".into(), "/hello/world".into()],
            memory_bytes: 64 << 20,
            timeout_ms: 1500,
            max_concurrency: 3,
            queue_depth: 7,
            max_body_bytes: 1024,
            env: vec![("GREETING".into(), "hi=there & more".into())],
            allow_outbound: true,
            gpu_memory_bytes: 64 << 20,
            gpu_function_memory_bytes: Some(256 << 20),
            allow_kernels: true,
            keep_warm: true,
            max_gpu_concurrency: Some(2),
            gpu_budget: Some(GpuBudget::parse("1.5s/10m").unwrap()),
        };
        assert_eq!(
            FunctionSettings::from_query(&settings.to_query()).unwrap(),
            settings
        );
    }

    #[test]
    fn empty_query_gives_defaults() {
        assert_eq!(
            FunctionSettings::from_query("").unwrap(),
            FunctionSettings::default()
        );
    }

    #[test]
    fn bad_settings_name_the_setting() {
        for (query, needle) in [
            ("memory=lots", "memory"),
            ("memory=1B", "memory"),
            ("memory=8GiB", "memory"),
            ("timeout=0s", "timeout"),
            ("timeout=1d", "timeout"),
            ("max_concurrency=0", "max_concurrency"),
            ("max_concurrency=x", "max_concurrency"),
            ("env=NOEQUALS", "env"),
            ("env=BAD-NAME=1", "BAD-NAME"),
            ("route=/fn/other", "reserved"),
            ("route=/a&route=/a/", "twice"),
            ("colour=blue", "unknown setting `colour`"),
            ("gpu_memory=huge", "gpu_memory"),
            ("gpu_memory=64MiB&gpu_function_memory=1MiB", "at least"),
            ("allow_kernels=maybe", "allow_kernels"),
            ("max_gpu_concurrency=0", "max_gpu_concurrency"),
            ("gpu_budget=lots", "gpu_budget"),
            ("gpu_budget=0/1h", "gpu_budget"),
        ] {
            let error = format!("{:#}", FunctionSettings::from_query(query).unwrap_err());
            assert!(error.contains(needle), "{query}: {error}");
        }
    }
}
