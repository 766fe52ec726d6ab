//! Models end to end: registration (validated, persisted, loaded again at start), the embed
//! example over HTTP against the golden vectors, its input checks, removal, and dynamic
//! batching of concurrent requests.

use crate::support::{Node, golden, guests, minilm_dir, request};
use serde_json::{Value, json};

fn register(node: &Node) {
    let dir = minilm_dir();
    let run = node.fnctl(&["model", "add", "minilm", dir.to_str().unwrap()]);
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.contains("Registered model minilm"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("384 dimensions"), "{}", run.stdout);
}

fn assert_matches_golden(got: &Value, want: &Value, text: &str) {
    let got = got.as_array().unwrap();
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len());
    let max = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
        .fold(0f64, f64::max);
    assert!(max <= 1e-4, "{text:?}: max |diff| {max:e}");
}

#[test]
fn embed_example_matches_the_golden_vectors_and_survives_restart() {
    let mut node = Node::start();
    register(&node);
    node.deploy(&guests().embed, "embed", &[]);
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();

    // One text per request.
    for case in cases.iter().take(4) {
        let body = json!({ "texts": [case["text"]] }).to_string();
        let reply = node.post("/fn/embed/", body.as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.body);
        let answer = reply.json();
        assert_eq!(answer["model"], "minilm");
        assert_eq!(
            answer["tokens"],
            case["input_ids"].as_array().unwrap().len()
        );
        assert_matches_golden(
            &answer["embeddings"][0],
            &case["embedding"],
            case["text"].as_str().unwrap(),
        );
    }
    // Every golden text in one request: long and short texts together.
    let texts: Vec<&Value> = cases.iter().map(|c| &c["text"]).collect();
    let reply = node.post(
        "/fn/embed/",
        json!({ "texts": texts, "model": "minilm" })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    for (i, case) in cases.iter().enumerate() {
        assert_matches_golden(
            &answer["embeddings"][i],
            &case["embedding"],
            case["text"].as_str().unwrap(),
        );
    }

    // After a restart the model is back without a re-add, loaded before the node is ready.
    let status = node.terminate();
    assert!(
        status.success(),
        "the node exited with {status}:\n{}",
        node.log()
    );
    let restarted = Node::start_in(&node.data.clone(), &[]);
    let listed = restarted.admin_call("GET", "/v1/models", None).json();
    assert_eq!(listed["models"][0]["name"], "minilm");
    // On a GPU node the model is resident on the device, on a CPU node in host memory.
    assert_eq!(
        listed["models"][0]["backend"],
        restarted.gpu_backend(),
        "{listed}"
    );
    assert_eq!(listed["models"][0]["cpu_reason"], Value::Null, "{listed}");
    let case = &cases[0];
    let reply = restarted.post(
        "/fn/embed/",
        json!({ "texts": [case["text"]] }).to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_matches_golden(
        &reply.json()["embeddings"][0],
        &case["embedding"],
        "after restart",
    );
    assert!(
        restarted.log().contains("model loaded"),
        "{}",
        restarted.log()
    );
}

#[test]
fn embed_example_rejects_bad_requests_with_4xx() {
    let node = Node::start();
    register(&node);
    node.deploy(&guests().embed, "embed", &[]);
    node.post("/fn/embed/", b"{\"texts\": ")
        .expect_error(400, "invalid-argument");
    let message = node
        .post("/fn/embed/", br#"{"texts": []}"#)
        .expect_error(400, "invalid-argument");
    assert!(message.contains("empty"), "{message}");
    let many = json!({ "texts": vec!["a"; 65] }).to_string();
    let message = node
        .post("/fn/embed/", many.as_bytes())
        .expect_error(400, "invalid-argument");
    assert!(message.contains("limit is 64"), "{message}");
    let ok = json!({ "texts": vec!["a"; 64] }).to_string();
    assert_eq!(
        node.post("/fn/embed/", ok.as_bytes()).status,
        200,
        "64 texts are allowed"
    );
    let message = node
        .post("/fn/embed/", br#"{"texts": ["x"], "model": "nope"}"#)
        .expect_error(404, "not-found");
    assert!(message.contains("no model named `nope`"), "{message}");
    // A text far over 256 tokens is truncated, not refused.
    let long = json!({ "texts": ["word ".repeat(1000)] }).to_string();
    let reply = node.post("/fn/embed/", long.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["tokens"], 256);
}

#[test]
fn model_registration_is_validated_and_removal_works() {
    let node = Node::start();
    let message = node
        .admin_call(
            "POST",
            "/v1/models/minilm",
            Some(br#"{"path": "/no/such/dir"}"#),
        )
        .expect_error(400, "invalid-argument");
    assert!(message.contains("/no/such/dir"), "{message}");
    node.admin_call("POST", "/v1/models/Bad_Name", Some(br#"{"path": "/tmp"}"#))
        .expect_error(400, "invalid-argument");

    // A directory whose weights do not match its config: every bad tensor is named.
    let source = minilm_dir();
    let broken = tempfile::tempdir().unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(source.join(file), broken.path().join(file)).unwrap();
    }
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(source.join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = 512.into();
    config["num_attention_heads"] = 8.into();
    std::fs::write(broken.path().join("config.json"), config.to_string()).unwrap();
    let body = json!({ "path": broken.path() }).to_string();
    let message = node
        .admin_call("POST", "/v1/models/broken", Some(body.as_bytes()))
        .expect_error(400, "invalid-argument");
    assert!(
        message.contains("embeddings.word_embeddings.weight") && message.contains("[30522, 512]"),
        "{message}"
    );
    assert!(
        !node.data.join("models/broken").exists(),
        "nothing is written for a rejected model"
    );

    register(&node);
    let run = node.fnctl(&["model", "ls"]);
    assert!(
        run.success && run.stdout.contains("minilm") && run.stdout.contains("384"),
        "{}",
        run.stdout
    );
    let run = node.fnctl(&["model", "add", "minilm", source.to_str().unwrap()]);
    assert!(
        !run.success && run.stderr.contains("already registered"),
        "{}",
        run.stderr
    );

    node.deploy(&guests().embed, "embed", &[]);
    let run = node.fnctl(&["model", "rm", "minilm"]);
    assert!(run.success, "{}", run.stderr);
    assert!(!node.data.join("models/minilm").exists());
    node.post("/fn/embed/", br#"{"texts": ["x"]}"#)
        .expect_error(404, "not-found");
}

#[test]
fn concurrent_requests_share_forward_passes() {
    let node = Node::start();
    register(&node);
    node.deploy(&guests().embed, "embed", &[]);
    let clients = 24;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let url = node.url("/fn/embed/");
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let body =
                    json!({ "texts": [format!("client {i} asks about batching")] }).to_string();
                barrier.wait();
                request("POST", &url, None, Some(body.as_bytes())).status
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), 200);
    }
    let model = node.admin_call("GET", "/v1/models/minilm", None).json();
    let (requests, batches) = (
        model["requests"].as_u64().unwrap(),
        model["batches"].as_u64().unwrap(),
    );
    eprintln!("{requests} concurrent single-text requests ran in {batches} forward passes");
    assert_eq!(requests, clients as u64);
    assert!(
        batches < requests,
        "{requests} requests ran in {batches} forward passes: no batching happened"
    );
}

#[test]
fn without_batching_every_request_is_its_own_forward_pass() {
    let node = Node::start_with(&["--no-batching"]);
    register(&node);
    node.deploy(&guests().embed, "embed", &[]);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let url = node.url("/fn/embed/");
            std::thread::spawn(move || {
                let body = json!({ "texts": [format!("text {i}")] }).to_string();
                request("POST", &url, None, Some(body.as_bytes())).status
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), 200);
    }
    let model = node.admin_call("GET", "/v1/models/minilm", None).json();
    assert_eq!(model["requests"], 8);
    assert_eq!(model["batches"], 8);
}
