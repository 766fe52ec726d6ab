//! The CPU backend against the references, quotas and memory release.

mod common;

use flint_gpu::{ErrorKind, Holdings, MemoryBudget, Pool, SessionLimits};

fn limits(bytes: u64) -> SessionLimits {
    SessionLimits {
        invocation_bytes: bytes,
        function: None,
        allow_kernels: false,
        holder: None,
    }
}

#[test]
fn every_op_matches_the_reference() {
    let pool = Pool::cpu_only(1 << 30);
    assert_eq!(pool.backend(), "cpu");
    let session = pool.session(limits(1 << 30)).unwrap();
    common::check_every_op(&session);
}

#[test]
fn bad_inputs_are_invalid_arguments() {
    let pool = Pool::cpu_only(1 << 30);
    common::check_bad_inputs(&pool.session(limits(1 << 30)).unwrap());
}

#[test]
fn quotas_are_enforced_before_allocating_and_memory_returns() {
    let pool = Pool::cpu_only(10 << 20);
    let function = MemoryBudget::new("function's GPU memory quota", 5 << 20);
    let before = pool.used_bytes();
    let holdings = Holdings::new("function `f`");
    let session = pool
        .session(SessionLimits {
            invocation_bytes: 4 << 20,
            function: Some(function.clone()),
            allow_kernels: false,
            holder: Some(holdings.clone()),
        })
        .unwrap();
    let big = session.zeros(flint_gpu::DType::F32, &[512, 1024]).unwrap(); // 2 MiB
    assert_eq!(holdings.by_device(), vec![(0, 2 << 20)]);
    let error = session
        .zeros(flint_gpu::DType::F32, &[1024, 1024])
        .unwrap_err(); // 4 MiB more
    assert_eq!(error.kind, ErrorKind::OutOfMemory);
    assert!(
        error.message.contains("invocation's GPU memory quota"),
        "{}",
        error.message
    );
    // An op's output counts too.
    let input = session.zeros(flint_gpu::DType::F32, &[1024, 384]).unwrap(); // 1.5 MiB: 3.5 in use
    let error = session.scale(&input, 2.0).unwrap_err(); // the output would make it 5
    drop(input);
    assert_eq!(error.kind, ErrorKind::OutOfMemory);

    let other = pool
        .session(SessionLimits {
            invocation_bytes: 4 << 20,
            function: Some(function.clone()),
            allow_kernels: false,
            holder: None,
        })
        .unwrap();
    let error = other
        .zeros(flint_gpu::DType::F32, &[1024, 1024])
        .unwrap_err();
    assert!(
        error.message.contains("function's GPU memory quota"),
        "{}",
        error.message
    );
    assert_eq!(pool.used_bytes(), before + (2 << 20));
    drop(big);
    drop(session);
    drop(other);
    assert_eq!(pool.used_bytes(), before, "every byte comes back");
    assert_eq!(function.used(), 0);
    assert_eq!(holdings.total(), 0);
}

#[test]
fn custom_kernels_need_the_capability_and_a_gpu() {
    let pool = Pool::cpu_only(1 << 20);
    let error = pool
        .session(limits(1 << 20))
        .unwrap()
        .compile_kernel("", "f")
        .err()
        .unwrap();
    assert_eq!(error.kind, ErrorKind::PermissionDenied);
    assert!(
        error.message.contains("--allow-kernels"),
        "{}",
        error.message
    );
    let allowed = pool
        .session(SessionLimits {
            invocation_bytes: 1 << 20,
            function: None,
            allow_kernels: true,
            holder: None,
        })
        .unwrap();
    let error = allowed
        .compile_kernel("extern \"C\" __global__ void f() {}", "f")
        .err()
        .unwrap();
    assert_eq!(error.kind, ErrorKind::Unsupported);
    assert!(error.message.contains("CPU backend"), "{}", error.message);
}
