//! Sandbox start: the time to create a fresh instance of a deployed function from its
//! pre-instantiated component — a new `Store` with the invocation's state and limits, then
//! `instantiate_async` from the pooling allocator — exactly what every request pays.
//!
//! `cargo bench -p flint-runtime --bench sandbox -- COMPONENT.wasm [ITERATIONS]` prints one
//! JSON object: median, p99 and mean in microseconds (also for the store alone). Peer: the
//! same component instantiated with wasmtime's default on-demand allocator, measured in the
//! same run.

use anyhow::{Context, Result};
use flint_runtime::engine::{EngineOptions, build_engine, build_linker};
use flint_runtime::host::{InvocationInfo, InvocationState};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::Store;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize - 1;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    serde_json::json!({
        "median_us": percentile(&samples, 50.0),
        "p99_us": percentile(&samples, 99.0),
        "mean_us": samples.iter().sum::<f64>() / samples.len() as f64,
        "n": samples.len(),
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let component_path = args
        .first()
        .context("usage: sandbox COMPONENT.wasm [ITERATIONS]")?;
    let iterations: usize = args.get(1).map_or(Ok(20_000), |n| n.parse())?;
    let bytes =
        std::fs::read(component_path).with_context(|| format!("reading {component_path}"))?;
    let data = tempfile::tempdir()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pool = flint_gpu::Pool::cpu_only(1 << 20);
    let info = InvocationInfo {
        function: Arc::from("bench"),
        invocation_id: Arc::from("0000000000000000"),
        memory_bytes: 128 << 20,
        env: Arc::from(Vec::new()),
        allow_outbound: false,
        pool: pool.clone(),
        gpu_limits: flint_gpu::SessionLimits {
            invocation_bytes: 1 << 20,
            function: None,
            allow_kernels: false,
            holder: None,
        },
        models: Arc::new(flint_runtime::models::ModelRegistry::open(
            data.path(),
            Default::default(),
            pool,
        )?),
        log: flint_runtime::guest_log::GuestLogs::open(data.path())?.function("bench"),
    };

    let mut results = serde_json::Map::new();
    for (label, pooling) in [("pooling", true), ("on_demand", false)] {
        let engine = if pooling {
            build_engine(EngineOptions { max_instances: 16 })?
        } else {
            let mut config = wasmtime::Config::new();
            config.wasm_component_model(true).epoch_interruption(true);
            wasmtime::Engine::new(&config)?
        };
        let linker = build_linker(&engine)?;
        let component = flint_runtime::function::compile(&engine, &bytes)?;
        let pre = flint_runtime::function::pre_instantiate(&linker, &component)?;
        let mut store_only = Vec::with_capacity(iterations);
        let mut full = Vec::with_capacity(iterations);
        runtime.block_on(async {
            for i in 0..iterations + iterations / 10 {
                let started = Instant::now();
                let mut store = Store::new(&engine, InvocationState::new(&info));
                store.limiter(|state| &mut state.limiter);
                store.set_epoch_deadline(1);
                let stored = started.elapsed();
                let proxy = pre.instantiate_async(&mut store).await?;
                let instantiated = started.elapsed();
                std::hint::black_box(&proxy);
                drop(store);
                // The first tenth warms up caches and the pool's slots.
                if i >= iterations / 10 {
                    store_only.push(stored.as_secs_f64() * 1e6);
                    full.push(instantiated.as_secs_f64() * 1e6);
                }
            }
            anyhow::Ok(())
        })?;
        results.insert(
            label.to_string(),
            serde_json::json!({ "store_and_instantiate": summary(full), "store_only": summary(store_only) }),
        );
    }
    // What a cold start adds: reloading an unloaded function from its precompiled artifact
    // (mmap + deserialize) and linking it again, timed apart.
    let engine = build_engine(EngineOptions { max_instances: 16 })?;
    let linker = build_linker(&engine)?;
    let artifact = data.path().join("bench.cwasm");
    std::fs::write(
        &artifact,
        flint_runtime::function::precompile(&engine, &bytes)?,
    )?;
    let rounds = (iterations / 20).max(50);
    let (mut deserialize, mut link, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds + rounds / 10 {
        let started = Instant::now();
        // SAFETY: an artifact this process just serialized with the same engine settings.
        let component =
            unsafe { wasmtime::component::Component::deserialize_file(&engine, &artifact)? };
        let deserialized = started.elapsed();
        let pre = flint_runtime::function::pre_instantiate(&linker, &component)?;
        let linked = started.elapsed() - deserialized;
        // The first sandbox of the reloaded code: a new module for the pooling allocator.
        let started = Instant::now();
        runtime.block_on(async {
            let mut store = Store::new(&engine, InvocationState::new(&info));
            store.limiter(|state| &mut state.limiter);
            store.set_epoch_deadline(1);
            let proxy = pre.instantiate_async(&mut store).await?;
            std::hint::black_box(&proxy);
            anyhow::Ok(())
        })?;
        let instantiated = started.elapsed();
        if i >= rounds / 10 {
            deserialize.push(deserialized.as_secs_f64() * 1e6);
            link.push(linked.as_secs_f64() * 1e6);
            first.push(instantiated.as_secs_f64() * 1e6);
        }
    }
    results.insert(
        "reload".to_string(),
        serde_json::json!({
            "deserialize_file": summary(deserialize),
            "pre_instantiate": summary(link),
            "first_store_and_instantiate": summary(first),
        }),
    );
    println!("{}", serde_json::Value::Object(results));
    Ok(())
}
