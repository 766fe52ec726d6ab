//! GPU host calls end to end: examples over HTTP, the kernel capability, quotas, and GPU memory
//! released after every invocation whatever its outcome. On a node with a CUDA device the same
//! tests exercise it (the backend is whatever the node found).

use crate::support::{Node, guests};
use std::time::{Duration, Instant};

fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<Vec<f32>> {
    // A small LCG: fresh, non-trivial values without a dependency.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..rows)
        .map(|_| {
            (0..cols)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
                })
                .collect()
        })
        .collect()
}

fn wait_for_gpu_used(node: &Node, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.gpu_used() != bytes {
        assert!(
            Instant::now() < deadline,
            "GPU bytes in use stayed at {} (want {bytes})",
            node.gpu_used()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn matmul_example_computes_the_product() {
    let node = Node::start();
    node.deploy(&guests().matmul, "matmul", &[]);
    assert_eq!(check_matmul(&node, "matmul"), node.gpu_backend());
    assert_eq!(node.gpu_used(), 0, "the invocation's tensors were released");
}

/// Asks the matmul example deployed as `name` for the product of two fresh random matrices,
/// checks it against a float64 reference, and returns the backend it says it ran on.
fn check_matmul(node: &Node, name: &str) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let (m, k, n) = (7, 13, 5);
    let a = random_matrix(m, k, seed);
    let b = random_matrix(k, n, seed + 1);
    let body = serde_json::json!({ "a": a, "b": b }).to_string();
    let reply = node.post(&format!("/fn/{name}/"), body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    let c = answer["c"].as_array().unwrap();
    assert_eq!(c.len(), m);
    for i in 0..m {
        let row = c[i].as_array().unwrap();
        assert_eq!(row.len(), n);
        for j in 0..n {
            let want: f64 = (0..k).map(|p| a[i][p] as f64 * b[p][j] as f64).sum();
            let got = row[j].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                "c[{i}][{j}] = {got}, want {want}"
            );
        }
    }
    answer["backend"].as_str().unwrap().to_string()
}

#[test]
fn a_faulting_kernel_takes_the_gpu_out_of_service_and_the_node_serves_on() {
    let mut node = Node::start();
    if node.gpu_backend() != "cuda" {
        assert_ne!(
            std::env::var("FLINT_REQUIRE_GPU").as_deref(),
            Ok("1"),
            "FLINT_REQUIRE_GPU=1 but the node found no CUDA device"
        );
        eprintln!("skipping: the node has no CUDA device, where a custom kernel could fault");
        return;
    }
    node.deploy(&guests().gpu_hold, "wild", &["--allow-kernels"]);
    node.deploy(&guests().matmul, "matmul", &[]);
    node.deploy(&guests().hello, "hello", &[]);
    assert_eq!(check_matmul(&node, "matmul"), "cuda");

    let message = node
        .get("/fn/wild/?mb=4&then=fault")
        .expect_error(503, "device-fault");
    assert!(message.contains("ILLEGAL_ADDRESS"), "{message}");
    wait_for_gpu_used(&node, 0);

    // Everyone else is served: built-in ops on the CPU backend while the GPU is out.
    assert_eq!(node.get("/fn/hello/").status, 200);
    assert_eq!(check_matmul(&node, "matmul"), "cpu");
    let message = node
        .get("/fn/wild/?mb=1&then=fault")
        .expect_error(501, "unsupported");
    assert!(message.contains("need a CUDA device"), "{message}");
    let gpu = node.admin_call("GET", "/v1/gpu", None).json();
    assert_eq!(gpu["devices"][0]["faulted"], true, "{gpu}");
    assert!(
        gpu["devices"][0]["fault"]
            .as_str()
            .is_some_and(|f| f.contains("ILLEGAL_ADDRESS")),
        "{gpu}"
    );
    let table = node.fnctl(&["gpu"]);
    assert!(table.stdout.contains("faulted"), "{}", table.stdout);
    assert!(
        table.stdout.contains("GPU 0 is out of service"),
        "{}",
        table.stdout
    );

    let status = node.terminate();
    assert!(
        status.success(),
        "the node exited with {status}:\n{}",
        node.log()
    );
}

#[test]
fn matmul_example_rejects_bad_input_with_400() {
    let node = Node::start();
    node.deploy(&guests().matmul, "matmul", &[]);
    let message = node
        .post("/fn/matmul/", b"{not json")
        .expect_error(400, "invalid-argument");
    assert!(message.contains("bad JSON"), "{message}");
    let message = node
        .post("/fn/matmul/", br#"{"a": [[1, 2], [3]], "b": [[1], [2]]}"#)
        .expect_error(400, "invalid-argument");
    assert!(message.contains("row 1"), "{message}");
    // Shapes that do not multiply: the pool's own check, passed through.
    let message = node
        .post("/fn/matmul/", br#"{"a": [[1, 2, 3]], "b": [[1, 2]]}"#)
        .expect_error(400, "invalid-argument");
    assert!(message.contains("inner dimensions"), "{message}");
}

#[test]
fn custom_kernels_need_the_capability_and_say_so_on_the_cpu_backend() {
    let node = Node::start();
    node.deploy(&guests().vector_add, "plain", &[]);
    node.deploy(&guests().vector_add, "trusted", &["--allow-kernels"]);
    let body = br#"{"a": [1, 2, 3], "b": [10, 20, 30.5]}"#;
    let message = node
        .post("/fn/plain/", body)
        .expect_error(403, "permission-denied");
    assert!(message.contains("--allow-kernels"), "{message}");
    let reply = node.post("/fn/trusted/", body);
    if node.gpu_backend() == "cuda" {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["c"], serde_json::json!([11.0, 22.0, 33.5]));
        assert_eq!(reply.json()["backend"], "cuda");
    } else {
        let message = reply.expect_error(501, "unsupported");
        assert!(message.contains("CPU backend"), "{message}");
    }
    node.post("/fn/trusted/", br#"{"a": [1], "b": []}"#)
        .expect_error(400, "invalid-argument");
    let run = node.fnctl(&["show", "trusted"]);
    assert!(
        run.stdout.contains("allow_kernels   true"),
        "{}",
        run.stdout
    );
}

#[test]
fn gpu_memory_is_released_after_success_trap_and_timeout() {
    let node = Node::start();
    node.deploy(&guests().gpu_hold, "hold", &["--timeout", "1s"]);
    assert_eq!(node.gpu_used(), 0);

    let reply = node.get("/fn/hold/?mb=8&then=ok");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.starts_with(&format!("held {}", 8 << 20)),
        "{}",
        reply.body
    );
    wait_for_gpu_used(&node, 0);

    node.get("/fn/hold/?mb=8&then=trap")
        .expect_error(500, "guest-trap");
    wait_for_gpu_used(&node, 0);

    node.get("/fn/hold/?mb=8&then=loop")
        .expect_error(504, "timeout");
    wait_for_gpu_used(&node, 0);

    // While an invocation holds memory, the pool counts exactly its bytes.
    let in_flight = {
        let url = node.url("/fn/hold/?mb=8&then=sleep&ms=800");
        std::thread::spawn(move || crate::support::request("GET", &url, None, None))
    };
    wait_for_gpu_used(&node, 8 << 20);
    assert_eq!(in_flight.join().unwrap().status, 200);
    wait_for_gpu_used(&node, 0);
}

#[test]
fn tensors_larger_than_wasmtimes_default_hostcall_limit_upload() {
    // wasmtime lets one guest-to-host call pass 128 MiB by default; a function with more
    // memory and GPU quota than that must be able to upload a tensor of that size.
    let node = Node::start();
    node.deploy(
        &guests().gpu_hold,
        "big",
        &["--memory", "512MiB", "--gpu-memory", "512MiB"],
    );
    let reply = node.get("/fn/big/?mb=1&upload_mb=160");
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_for_gpu_used(&node, 0);
}

#[test]
fn gpu_quotas_are_enforced_per_invocation_and_per_function() {
    let node = Node::start();
    node.deploy(&guests().gpu_hold, "small", &["--gpu-memory", "4MiB"]);
    let message = node
        .get("/fn/small/?mb=8")
        .expect_error(507, "out-of-memory");
    assert!(
        message.contains("invocation's GPU memory quota"),
        "{message}"
    );
    let reply = node.get("/fn/small/?mb=2");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains(&format!("quota_left {} ", 2 << 20)),
        "{}",
        reply.body
    );

    node.deploy(
        &guests().gpu_hold,
        "shared",
        &["--gpu-memory", "8MiB", "--gpu-function-memory", "12MiB"],
    );
    let first = {
        let url = node.url("/fn/shared/?mb=8&then=sleep&ms=1000");
        std::thread::spawn(move || crate::support::request("GET", &url, None, None))
    };
    wait_for_gpu_used(&node, 8 << 20);
    let message = node
        .get("/fn/shared/?mb=8")
        .expect_error(507, "out-of-memory");
    assert!(message.contains("function's GPU memory quota"), "{message}");
    assert_eq!(
        node.get("/fn/shared/?mb=4").status,
        200,
        "within the function's quota"
    );
    assert_eq!(first.join().unwrap().status, 200);
    wait_for_gpu_used(&node, 0);
}
