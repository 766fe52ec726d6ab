//! A kernel that writes to an illegal address poisons its CUDA context: the failure is a
//! retryable `device-fault`, and the device is taken out of service instead of failing later
//! calls in confusing ways. (Its own test binary: the fault poisons the process's context.)

mod common;

use flint_gpu::{DType, ErrorKind, KernelArg};

const WILD_WRITE: &str = r#"
extern "C" __global__ void wild(float* out) {
    float* wild = (float*)0x10;
    wild[threadIdx.x] = out[0];
}
"#;

#[test]
fn illegal_address_is_a_device_fault() {
    let Some(pool) = common::cuda_pool() else {
        return;
    };
    let session = pool.session(common::session_limits(1 << 20, true)).unwrap();
    let out = session.zeros(DType::F32, &[4]).unwrap();
    let kernel = session.compile_kernel(WILD_WRITE, "wild").unwrap();
    let error = session
        .launch(
            &kernel,
            (1, 1, 1),
            (32, 1, 1),
            0,
            &[KernelArg::Tensor(&out)],
        )
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::DeviceFault, "{}", error.message);
    assert!(error.message.contains("retry"), "{}", error.message);
    drop(out);
    drop(session);
    let after = pool.session(common::session_limits(1 << 20, true));
    // With one device, the pool refuses new work on the poisoned device with a clear error.
    if pool.devices().len() == 1 {
        assert_eq!(after.err().unwrap().kind, ErrorKind::DeviceFault);
    }
}
