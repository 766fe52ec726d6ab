//! The CUDA backend against the same references as the CPU backend, plus custom kernels and
//! memory accounting on the device. Skips with a reason where there is no CUDA device.

mod common;

use flint_gpu::{DType, ErrorKind, KernelArg};

#[test]
fn every_op_matches_the_reference_on_cuda() {
    let Some(pool) = common::cuda_pool() else {
        return;
    };
    let session = pool
        .session(common::session_limits(1 << 30, false))
        .unwrap();
    assert_eq!(session.backend(), "cuda");
    common::check_every_op(&session);
    common::check_bad_inputs(&session);
}

#[test]
fn custom_kernels_compile_launch_and_cache() {
    let Some(pool) = common::cuda_pool() else {
        return;
    };
    let session = pool.session(common::session_limits(1 << 30, true)).unwrap();
    let n = 100_003u32;
    let a = common::random(n as usize);
    let b = common::random(n as usize);
    let ta = session.upload_f32(&[n], &a).unwrap();
    let tb = session.upload_f32(&[n], &b).unwrap();
    let tc = session.zeros(DType::F32, &[n]).unwrap();
    let kernel = session
        .compile_kernel(common::VECTOR_ADD, "vector_add")
        .unwrap();
    session
        .launch(
            &kernel,
            (n.div_ceil(256), 1, 1),
            (256, 1, 1),
            0,
            &[
                KernelArg::Tensor(&ta),
                KernelArg::Tensor(&tb),
                KernelArg::Tensor(&tc),
                KernelArg::U32(n),
            ],
        )
        .unwrap();
    let c = session.download_f32(&tc).unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    common::assert_close("vector_add", &c, &want, 0.0);

    let started = std::time::Instant::now();
    session
        .compile_kernel(common::VECTOR_ADD, "vector_add")
        .unwrap();
    assert!(
        started.elapsed().as_millis() < 50,
        "a second compile of the same source is a cache hit"
    );

    let error = session
        .compile_kernel("extern \"C\" __global__ void broken( { }", "broken")
        .err()
        .unwrap();
    assert_eq!(error.kind, ErrorKind::CompileError);
    assert!(
        error.message.contains("error"),
        "the NVRTC log is in the message: {}",
        error.message
    );
    let error = session
        .compile_kernel(common::VECTOR_ADD, "no_such_entry")
        .err()
        .unwrap();
    assert_eq!(error.kind, ErrorKind::NotFound);
    let error = session
        .launch(&kernel, (1, 1, 1), (2048, 1, 1), 0, &[])
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidArgument);
}

#[test]
fn device_memory_is_charged_and_released() {
    let Some(pool) = common::cuda_pool() else {
        return;
    };
    let before = pool.used_bytes();
    let session = pool
        .session(common::session_limits(6 << 20, false))
        .unwrap();
    let t = session.zeros(DType::F32, &[1024, 1024]).unwrap();
    assert_eq!(pool.used_bytes(), before + (4 << 20));
    let error = session.zeros(DType::F32, &[1024, 1024]).unwrap_err();
    assert_eq!(error.kind, ErrorKind::OutOfMemory);
    drop(t);
    drop(session);
    assert_eq!(pool.used_bytes(), before);
}

/// Spins on the device for `ns` nanoseconds of the GPU's global timer.
const SPIN: &str = r#"
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"#;

#[test]
fn gpu_time_is_measured_with_events_on_the_stream() {
    let Some(pool) = common::cuda_pool() else {
        return;
    };
    let session = pool.session(common::session_limits(1 << 30, true)).unwrap();
    let device = session.device_index();
    let busy_before = pool.busy(device);
    assert!(session.measures_device_time());
    assert_eq!(session.device_time(), std::time::Duration::ZERO);
    let kernel = session.compile_kernel(SPIN, "spin").unwrap();
    let started = std::time::Instant::now();
    for _ in 0..2 {
        session
            .launch(
                &kernel,
                (1, 1, 1),
                (1, 1, 1),
                0,
                &[KernelArg::U64(20_000_000)],
            )
            .unwrap();
        // Host time between ops is not GPU time.
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    let wall = started.elapsed();
    let gpu = session.device_time();
    println!("two 20 ms spins: {gpu:?} of GPU time in {wall:?} of wall time");
    assert!(gpu >= std::time::Duration::from_millis(38), "{gpu:?}");
    assert!(
        gpu <= std::time::Duration::from_millis(55),
        "the 60 ms of host sleep are not GPU time: {gpu:?}"
    );
    drop(session);
    // Other tests may add to the device's busy time too, never subtract.
    assert!(pool.busy(device) - busy_before >= std::time::Duration::from_millis(38));
}
