//! `tensor.upload` reading the guest's bytes where they are.
//!
//! The generated binding of `upload: static func(dtype, shape: list<u32>, data: list<u8>)`
//! first copies `data` out of the guest's memory into a fresh `Vec`, and only then does the
//! backend copy it again (into its own buffer, or through the CUDA driver's staging buffers).
//! For large tensors that first copy, and the page faults of a fresh buffer as large as the
//! tensor, cost as much as the upload itself (on the CPU backend, 256 MiB through a guest took
//! 330 ms that way, 150–175 ms read in place). This definition replaces the generated one: it
//! takes the list as a [`WasmList`] and uploads straight from the guest's memory, borrowed (the
//! guest is paused in the call) only while the copy runs, on the async thread that the
//! generated binding's own copy ran on. On CUDA, when the invocation's stream is still busy
//! (a copy from host memory would wait for it), the bytes are copied once and uploaded on the
//! blocking pool instead, so that no async thread waits on the device.

use super::bindings::flint::gpu::types::{Dtype, Error};
use super::host::run;
use super::{GpuView, HostTensor};
use std::sync::Arc;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, WasmList};

/// The instance and name the generated binding defines `tensor.upload` under.
const TYPES_INSTANCE: &str = "flint:gpu/types@0.1.0";
const UPLOAD: &str = "[static]tensor.upload";

/// Replaces the generated `tensor.upload` of `linker` with one that reads the guest's memory in
/// place (call after the generated `add_to_linker`).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> GpuView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker.instance(TYPES_INSTANCE)?.func_wrap_async(
        UPLOAD,
        move |mut store: StoreContextMut<'_, T>,
              (dtype, shape, data): (Dtype, Vec<u32>, WasmList<u8>)| {
            Box::new(async move {
                let result = upload(&mut store, get, dtype, shape, &data).await?;
                Ok((result,))
            })
        },
    );
    linker.allow_shadowing(false);
    defined
}

async fn upload<T: Send + 'static>(
    store: &mut StoreContextMut<'_, T>,
    get: fn(&mut T) -> GpuView<'_>,
    dtype: Dtype,
    shape: Vec<u32>,
    data: &WasmList<u8>,
) -> wasmtime::Result<Result<Resource<HostTensor>, Error>> {
    let session = match get(store.data_mut()).ctx.session() {
        Ok(session) => session,
        Err(error) => return Ok(Err(error.into())),
    };
    let started = std::time::Instant::now();
    // Always on the CPU backend; on CUDA while nothing is queued that the copy would wait for.
    let result = if session.is_idle() {
        // The guest is paused in this call: its memory holds still while the copy runs.
        let bytes = data.as_le_slice(&*store);
        session.upload(dtype.into(), &shape, bytes)
    } else {
        let bytes = data.as_le_slice(&*store).to_vec();
        let worker = Arc::clone(&session);
        run(usize::MAX, move || {
            worker.upload(dtype.into(), &shape, &bytes)
        })
        .await?
    };
    let view = get(store.data_mut());
    view.ctx.record_host_time(started);
    match result {
        Ok(tensor) => Ok(Ok(view.table.push(HostTensor(Arc::new(tensor)))?)),
        Err(error) => Ok(Err(error.into())),
    }
}
