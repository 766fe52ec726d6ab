//! A kernel that writes to an illegal address poisons its CUDA context. The failure is a
//! retryable `device-fault`; meanwhile new work runs on the CPU backend and (where the model is
//! installed) a resident model answers from the CPU with the same vectors. Then either the
//! device rebuilds its context and serves again (ops, custom kernels, the model loaded again),
//! or, as CUDA documents for such faults and as an H200 with driver 580 did, the driver
//! refuses new contexts in the process and the device is reported out of service until a
//! restart, with work still served on the CPU. (Its own test binary, one test: the fault
//! affects everything on the device.)

mod common;
#[path = "../../tests/fixtures.rs"]
mod fixtures;

use flint_gpu::model::EmbeddingModel;
use flint_gpu::{DType, ErrorKind, KernelArg, Pool, Session};
use std::time::{Duration, Instant};

const WILD_WRITE: &str = r#"
extern "C" __global__ void wild(float* out) {
    float* wild = (float*)0x10;
    wild[threadIdx.x] = out[0];
}
"#;

/// Launches [`WILD_WRITE`] in `session` and returns the error it gets.
fn fault(session: &Session) -> flint_gpu::GpuError {
    let out = session.zeros(DType::F32, &[4]).unwrap();
    let kernel = session.compile_kernel(WILD_WRITE, "wild").unwrap();
    session
        .launch(
            &kernel,
            (1, 1, 1),
            (32, 1, 1),
            0,
            &[KernelArg::Tensor(&out)],
        )
        .unwrap_err()
}

/// What became of device `index` after a fault.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// A new context passed its self-test: the device serves again.
    Rebuilt,
    /// The driver refused new contexts: out of service until the process restarts.
    OutOfService(String),
}

/// Waits until device `index` either has rebuilt its context `rebuilds` times and is in
/// service, or is reported out of service until a restart.
fn wait_for_outcome(pool: &Pool, index: usize, rebuilds: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let device = &pool.devices()[index];
        if !device.faulted && device.context_rebuilds >= rebuilds {
            assert_eq!(device.context_rebuilds, rebuilds);
            assert_eq!(device.fault, None);
            return Outcome::Rebuilt;
        }
        if let Some(reason) = device.fault.as_ref().filter(|r| r.contains("restarts")) {
            assert!(device.faulted, "{device:?}");
            return Outcome::OutOfService(reason.clone());
        }
        assert!(
            Instant::now() < deadline,
            "GPU {index} neither came back nor was given up on within 60 s: {device:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The installed MiniLM, if there is one (the GPU kit carries it separately).
fn installed_model() -> Option<std::path::PathBuf> {
    let dir = std::panic::catch_unwind(fixtures::minilm_dir).ok();
    if dir.is_none() {
        eprintln!("skipping the resident-model part: all-MiniLM-L6-v2 is not installed");
    }
    dir
}

#[test]
fn a_faulting_kernel_fails_its_work_and_the_device_comes_back() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    let Some(pool) = common::cuda_pool() else {
        return;
    };
    let baseline = pool.used_bytes();
    let model = installed_model().map(|dir| {
        let device = pool
            .device_for_model()
            .expect("a CUDA pool offers a device");
        let model = EmbeddingModel::load_on(&dir, Some(device)).unwrap();
        assert_eq!(model.backend(), "cuda", "{:?}", model.cpu_reason());
        model
    });
    let texts = ["a faulting kernel must not take the model down", "hello"];
    let before_fault = model.as_ref().map(|m| m.embed(&texts).unwrap().vectors);

    let session = pool.session(common::session_limits(1 << 20, true)).unwrap();
    let index = session.device_index();
    let survivor = session.upload_f32(&[3], &[1.0, 2.0, 3.0]).unwrap();
    let error = fault(&session);
    assert_eq!(error.kind, ErrorKind::DeviceFault, "{}", error.message);
    assert!(error.message.contains("retry"), "{}", error.message);
    // The rest of the in-flight session's work fails the same way, without panics or hangs.
    let later = session.download_f32(&survivor).unwrap_err();
    assert_eq!(later.kind, ErrorKind::DeviceFault, "{}", later.message);

    // A model on the poisoned device answers from the CPU meanwhile, with the same vectors.
    if let (Some(model), Some(want)) = (&model, &before_fault) {
        let got = model.embed(&texts).unwrap().vectors;
        assert_eq!(model.backend(), "cpu");
        let reason = model.cpu_reason().unwrap();
        assert!(reason.contains("faulted"), "{reason}");
        for (g, w) in got.iter().zip(want) {
            common::assert_close("embedding during the rebuild", g, w, 1e-5);
        }
    }
    drop(survivor);
    drop(session);

    // The device is out of service meanwhile: new work runs on the CPU backend (on a pool of
    // one GPU), with every op still right.
    let info = &pool.devices()[index];
    if info.faulted && pool.devices().len() == 1 {
        assert!(info.fault.is_some(), "{info:?}");
        let session = pool.session(common::session_limits(1 << 30, true)).unwrap();
        assert_eq!(session.backend(), "cpu");
        common::check_every_op(&session);
        let error = session
            .compile_kernel(common::VECTOR_ADD, "vector_add")
            .err()
            .unwrap();
        assert_eq!(error.kind, ErrorKind::Unsupported, "{}", error.message);
    }

    let outcome = wait_for_outcome(&pool, index, 1);
    eprintln!("after the fault: {outcome:?}");
    if let Outcome::OutOfService(reason) = &outcome {
        // What CUDA documents for sticky errors, and what an H200 with driver 580 did: the
        // node says so, and serves GPU work on the CPU until it restarts.
        assert!(reason.contains("CPU backend"), "{reason}");
        if pool.devices().len() == 1 {
            let session = pool.session(common::session_limits(1 << 30, true)).unwrap();
            assert_eq!(session.backend(), "cpu");
            common::check_every_op(&session);
        }
        if let (Some(model), Some(want)) = (&model, &before_fault) {
            let got = model.embed(&texts).unwrap().vectors;
            assert_eq!(model.backend(), "cpu");
            for (g, w) in got.iter().zip(want) {
                common::assert_close("embedding after the fault", g, w, 1e-5);
            }
        }
        drop(model);
        assert_eq!(
            pool.used_bytes(),
            baseline,
            "every tensor and the model's weights were released"
        );
        return;
    }

    let session = pool.session(common::session_limits(1 << 30, true)).unwrap();
    common::check_every_op(&session);
    let kernel = session
        .compile_kernel(common::VECTOR_ADD, "vector_add")
        .unwrap();
    let a = session
        .upload_f32(&[5], &[1.0, 2.0, 3.0, 4.0, 5.0])
        .unwrap();
    let c = session.zeros(DType::F32, &[5]).unwrap();
    session
        .launch(
            &kernel,
            (1, 1, 1),
            (32, 1, 1),
            0,
            &[
                KernelArg::Tensor(&a),
                KernelArg::Tensor(&a),
                KernelArg::Tensor(&c),
                KernelArg::U32(5),
            ],
        )
        .unwrap();
    let doubled = session.download_f32(&c).unwrap();
    assert_eq!(doubled, [2.0, 4.0, 6.0, 8.0, 10.0]);
    drop((a, c, kernel, session));

    // The model's next batch loads it into the rebuilt context.
    if let (Some(model), Some(want)) = (&model, &before_fault) {
        let got = model.embed(&texts).unwrap().vectors;
        assert_eq!(model.backend(), "cuda", "{:?}", model.cpu_reason());
        assert_eq!(model.cpu_reason(), None);
        for (g, w) in got.iter().zip(want) {
            common::assert_close("embedding after the rebuild", g, w, 1e-5);
        }
    }
    drop(model);

    // A second fault is handled the same way.
    let session = pool.session(common::session_limits(1 << 20, true)).unwrap();
    let second = session.device_index();
    assert_eq!(fault(&session).kind, ErrorKind::DeviceFault);
    drop(session);
    let rebuilds = if second == index { 2 } else { 1 };
    assert_eq!(wait_for_outcome(&pool, second, rebuilds), Outcome::Rebuilt);
    assert_eq!(
        pool.used_bytes(),
        baseline,
        "every tensor and the model's weights were released"
    );
}
