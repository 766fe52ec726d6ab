//! The wasmtime engine every function shares: pooling allocator, async, epoch interruption
//! (driven by [`crate::epoch`]), and the linker that gives guests what `wasmtime serve -S cli`
//! gives them.

use crate::host::InvocationState;
use anyhow::{Context, Result};
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Linear memory per pooled slot reset with `memset` and kept resident between requests.
pub const KEEP_RESIDENT_MEMORY: usize = 2 << 20;
/// Table bytes per pooled slot reset with `memset` and kept resident between requests.
pub const KEEP_RESIDENT_TABLE: usize = 256 << 10;
/// Async stack bytes per pooled slot kept resident between requests.
pub const KEEP_RESIDENT_STACK: usize = 128 << 10;

/// Sizing of the engine's pooling allocator.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Component instances alive at once, node-wide (every running invocation holds one).
    pub max_instances: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_instances: 1000,
        }
    }
}

/// Builds the shared engine: Cranelift, component model, pooling allocator sized by `options`,
/// epoch interruption on.
pub fn build_engine(options: EngineOptions) -> Result<Engine> {
    let instances = options.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        // A component is several core instances (the main module plus adapter shims), each of
        // which may have a table; one linear memory is the norm.
        .total_core_instances(instances.saturating_mul(8))
        .total_tables(instances.saturating_mul(4))
        .total_memories(instances.saturating_mul(2))
        .total_stacks(instances)
        .max_tables_per_module(8)
        .max_memories_per_module(2)
        // Interpreter-based components (componentize-py, ComponentizeJS) have large tables and
        // instance state.
        .table_elements(200_000)
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(8 << 20)
        .max_memory_size(crate::settings::MAX_MEMORY as usize)
        // Resetting a slot for the next request with `madvise` unmaps its pages: every core
        // that ran the guest then takes a TLB shootdown (an IPI, costly in VMs) and the next
        // guest page-faults them back in. Instead, reset the pages actually touched (found
        // with Linux's PAGEMAP_SCAN where the kernel has it) with `memset` and keep them
        // resident, up to these sizes per slot; beyond them `madvise` still returns memory.
        // The scan is the vendored wasmtime's (vendor/README.md): it also resets pages that
        // were swapped out, and does not stop after 32 dirty runs.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_TABLE)
        .async_stack_keep_resident(KEEP_RESIDENT_STACK);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine")
}

/// Builds the linker every function is instantiated against: all of WASI 0.2 (`cli`,
/// `filesystem`, `sockets`, `clocks`, `random`, `io`; what `wasmtime serve -S cli` provides)
/// plus `wasi:http`, plus `flint:gpu`. Imports at any 0.2.x version resolve, as in wasmtime.
pub fn build_linker(engine: &Engine) -> Result<Linker<InvocationState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("adding WASI to the linker")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("adding wasi:http to the linker")?;
    crate::gpu::add_to_linker(&mut linker, InvocationState::gpu_view)
        .map_err(anyhow::Error::from)
        .context("adding flint:gpu to the linker")?;
    Ok(linker)
}
