//! Deploying: the happy path and every bad input, each a clear JSON error with nothing left on
//! disk.

use crate::support::{Node, distinct_copy, guests, tree};

fn assert_nothing_written(node: &Node, name: &str) {
    let functions = node.data.join("functions");
    let entries = tree(&functions);
    assert!(
        !entries
            .iter()
            .any(|e| e == name || e.starts_with(&format!("{name}/")) || e.contains(".staging")),
        "leftovers on disk for `{name}`: {entries:?}"
    );
}

fn deploy_raw(node: &Node, name: &str, query: &str, body: &[u8]) -> crate::support::Reply {
    node.admin_call(
        "POST",
        &format!("/v1/functions/{name}/versions?{query}"),
        Some(body),
    )
}

#[test]
fn deploy_then_invoke_hello_over_http() {
    let node = Node::start();
    let deployed = node.deploy(&guests().hello, "hello", &[]);
    assert_eq!(deployed["version"], 1);
    assert_eq!(deployed["url"], format!("http://{}/fn/hello/", node.public));

    let reply = node.get("/fn/hello/greet?name=Ada");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["message"], "Hello, Ada!");
    assert_eq!(body["path"], "/fn/hello/greet");
    assert_eq!(body["query"], "name=Ada");
    assert_eq!(body["function"], "hello");
    let id = reply
        .header("x-flint-invocation-id")
        .expect("invocation id header");
    assert_eq!(
        body["invocation_id"], id,
        "the guest sees the id the client gets"
    );
    assert_eq!(id.len(), 16);

    // Every request is a fresh sandbox: a new id each time.
    let again = node.get("/fn/hello/");
    assert_ne!(again.header("x-flint-invocation-id"), Some(id));
}

#[test]
fn deploy_progress_and_summary_are_readable() {
    let node = Node::start();
    let hello = guests().hello.to_str().unwrap().to_string();
    let run = node.fnctl(&["deploy", &hello, "--name", "hello", "--route", "/hi"]);
    assert!(run.success, "{}", run.stderr);
    assert!(run.stderr.contains("Uploading"), "{}", run.stderr);
    assert!(run.stderr.contains("compiling"), "{}", run.stderr);
    assert!(
        run.stdout.contains("Deployed hello version 1"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("http://{}/fn/hello/", node.public)),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("/fn/hello, /hi"), "{}", run.stdout);
}

#[test]
fn bad_names_are_rejected_and_nothing_is_written() {
    let node = Node::start();
    let wasm = std::fs::read(&guests().hello).unwrap();
    let long = "a".repeat(64);
    for name in [
        "Hello",
        "a_b",
        "%2E%2E",
        "..",
        "1abc",
        long.as_str(),
        "with%20space",
    ] {
        let reply = deploy_raw(&node, name, "", &wasm);
        let message = reply.expect_error(400, "invalid-argument");
        assert!(message.contains("name"), "{name}: {message}");
    }
    let entries = tree(&node.data.join("functions"));
    assert!(entries.is_empty(), "{entries:?}");

    // The CLI refuses before uploading, with a message and a non-zero exit.
    let run = node.fnctl(&[
        "deploy",
        guests().hello.to_str().unwrap(),
        "--name",
        "../etc",
    ]);
    assert!(!run.success);
    assert!(run.stderr.contains("only a-z"), "{}", run.stderr);
}

#[test]
fn core_modules_and_non_wasm_are_explained() {
    let node = Node::start();
    let core = wat::parse_str("(module (func (export \"f\")))").unwrap();
    let message = deploy_raw(&node, "core", "", &core).expect_error(400, "invalid-argument");
    assert!(
        message.contains("core WebAssembly module") && message.contains("wasm32-wasip2"),
        "{message}"
    );
    assert_nothing_written(&node, "core");

    let message = deploy_raw(&node, "junk", "", b"#!/bin/sh\necho not wasm\n")
        .expect_error(400, "invalid-argument");
    assert!(message.contains("not a WebAssembly binary"), "{message}");
    assert_nothing_written(&node, "junk");

    let truncated = &std::fs::read(&guests().hello).unwrap()[..4096];
    let message = deploy_raw(&node, "cut", "", truncated).expect_error(400, "invalid-argument");
    assert!(message.contains("does not compile"), "{message}");
    assert_nothing_written(&node, "cut");
}

#[test]
fn unsatisfiable_imports_are_named() {
    let node = Node::start();
    let component = wat::parse_str(
        r#"(component
             (import "acme:db/query@1.0.0" (instance (export "run" (func))))
             (import "acme:cache/get@2.1.0" (instance)))"#,
    )
    .unwrap();
    let message =
        deploy_raw(&node, "foreign", "", &component).expect_error(400, "invalid-argument");
    assert!(message.contains("acme:db/query@1.0.0"), "{message}");
    assert!(message.contains("acme:cache/get@2.1.0"), "{message}");
    assert_nothing_written(&node, "foreign");

    let no_handler = wat::parse_str("(component)").unwrap();
    let message = deploy_raw(&node, "empty", "", &no_handler).expect_error(400, "invalid-argument");
    assert!(message.contains("wasi:http/incoming-handler"), "{message}");
    assert_nothing_written(&node, "empty");
}

#[test]
fn oversized_uploads_get_413() {
    let node = Node::start_with(&["--max-component-size", "64KiB"]);
    let wasm = std::fs::read(&guests().hello).unwrap();
    assert!(
        wasm.len() > 64 << 10,
        "hello.wasm must exceed the limit for this test"
    );
    let message = deploy_raw(&node, "big", "", &wasm).expect_error(413, "payload-too-large");
    assert!(message.contains("64KiB"), "{message}");
    assert_nothing_written(&node, "big");

    let run = node.fnctl(&["deploy", guests().hello.to_str().unwrap(), "--name", "big"]);
    assert!(!run.success);
    assert!(run.stderr.contains("HTTP 413"), "{}", run.stderr);
}

#[test]
fn bad_settings_are_rejected() {
    let node = Node::start();
    let wasm = std::fs::read(&guests().hello).unwrap();
    for (query, needle) in [
        ("memory=lots", "memory"),
        ("timeout=never", "timeout"),
        ("route=/fn/other", "reserved"),
        ("route=../up", "must start with"),
        ("colour=blue", "unknown setting"),
    ] {
        let message =
            deploy_raw(&node, "settings", query, &wasm).expect_error(400, "invalid-argument");
        assert!(message.contains(needle), "{query}: {message}");
    }
    assert_nothing_written(&node, "settings");
}

#[test]
fn route_conflicts_get_409_and_longest_prefix_wins() {
    let node = Node::start();
    node.deploy(&guests().hello, "hello", &["--route", "/api"]);
    let wasm = std::fs::read(&guests().misbehave).unwrap();
    let message = deploy_raw(&node, "other", "route=/api", &wasm).expect_error(409, "conflict");
    assert!(
        message.contains("/api") && message.contains("hello"),
        "{message}"
    );
    assert_nothing_written(&node, "other");

    // A longer prefix under /api is fine and wins for its paths.
    node.deploy(&guests().misbehave, "other", &["--route", "/api/echo"]);
    let echoed = node.post("/api/echo", b"payload");
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.body, "POST /api/echo\npayload");
    let greeted = node.get("/api/anything?name=Bo");
    assert_eq!(greeted.json()["message"], "Hello, Bo!");
    assert_eq!(
        node.get("/apix").status,
        404,
        "prefixes match whole segments"
    );
    // Redeploying the owner with the same route is not a conflict.
    node.deploy(&guests().hello, "hello", &["--route", "/api"]);
}

/// `dev:ino` of a file, to tell hard links of one file from copies.
fn file_id(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (metadata.dev(), metadata.ino())
}

fn artifact(node: &Node, name: &str, version: u64) -> std::path::PathBuf {
    node.data.join(format!(
        "functions/{name}/versions/{version}/component.cwasm"
    ))
}

#[test]
fn deploying_the_same_component_again_reuses_its_compiled_code() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().join("data");
    let mut node = Node::start_in(&data, &[]);
    let first = node.deploy(&guests().hello, "hello", &[]);
    assert!(first.get("reused_code_of").is_none(), "{first}");

    // The same bytes under another name: nothing to compile, one file of each kind on disk.
    let copy = node.deploy(&guests().hello, "copy", &["--env", "GREETING=Hi"]);
    assert_eq!(
        copy["reused_code_of"],
        serde_json::json!({"function": "hello", "version": 1}),
        "{copy}"
    );
    assert_eq!(
        file_id(&artifact(&node, "hello", 1)),
        file_id(&artifact(&node, "copy", 1))
    );
    let component = |name: &str| artifact(&node, name, 1).with_file_name("component.wasm");
    assert_eq!(file_id(&component("hello")), file_id(&component("copy")));
    let greeted = node.get("/fn/copy/?name=Ada").json();
    assert_eq!(greeted["message"], "Hi, Ada!");
    assert_eq!(greeted["function"], "copy");
    assert_eq!(node.get("/fn/hello/").json()["message"], "Hello, world!");

    // Redeploying a function with other settings reuses its own code, and says so.
    let hello = guests().hello.to_str().unwrap().to_string();
    let run = node.fnctl(&["deploy", &hello, "--name", "hello", "--env", "GREETING=Hey"]);
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("same component as hello version 1: its compiled code is reused"),
        "{}",
        run.stdout
    );
    assert_eq!(node.get("/fn/hello/").json()["message"], "Hey, world!");

    // Other bytes compile.
    let other = node.deploy(&guests().misbehave, "other", &[]);
    assert!(other.get("reused_code_of").is_none(), "{other}");

    // The shared file serves both after a restart, and removing one function leaves the other
    // its code.
    node.terminate();
    let node = Node::start_in(&data, &[]);
    let removed = node.admin_call("DELETE", "/v1/functions/hello", None);
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(node.get("/fn/copy/").json()["message"], "Hi, world!");
    let again = node.deploy(&guests().hello, "again", &[]);
    assert_eq!(
        again["reused_code_of"],
        serde_json::json!({"function": "copy", "version": 1}),
        "{again}"
    );
    assert_eq!(node.get("/fn/again/").status, 200);
}

#[test]
fn code_that_no_longer_loads_is_compiled_again_instead_of_reused() {
    let node = Node::start();
    node.deploy(&guests().hello, "first", &[]);
    // Damaged on disk (replaced, as a file is never changed in place: the code `first` has
    // mapped stays as it was).
    let damaged = artifact(&node, "first", 1);
    let tmp = damaged.with_extension("tmp");
    std::fs::write(&tmp, b"not an artifact").unwrap();
    std::fs::rename(&tmp, &damaged).unwrap();

    let second = node.deploy(&guests().hello, "second", &[]);
    assert!(second.get("reused_code_of").is_none(), "{second}");
    assert_ne!(file_id(&damaged), file_id(&artifact(&node, "second", 1)));
    assert_eq!(node.get("/fn/second/").json()["function"], "second");
    assert_eq!(
        node.get("/fn/first/").status,
        200,
        "first serves the code it has"
    );
    assert!(
        node.log().contains("could not reuse the code of first v1"),
        "{}",
        node.log()
    );
}

#[test]
fn deploys_of_the_same_new_component_at_once_compile_it_once() {
    let node = Node::start();
    let wasm = distinct_copy(&guests().hello, "burst");
    let start = std::sync::Barrier::new(4);
    let answers: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let deploys: Vec<_> = (0..4)
            .map(|i| {
                let (node, wasm, start) = (&node, &wasm, &start);
                scope.spawn(move || {
                    start.wait();
                    node.deploy(wasm, &format!("burst{i}"), &[])
                })
            })
            .collect();
        deploys.into_iter().map(|d| d.join().unwrap()).collect()
    });
    let compiled: Vec<&serde_json::Value> = answers
        .iter()
        .filter(|a| a.get("reused_code_of").is_none())
        .collect();
    assert_eq!(
        compiled.len(),
        1,
        "one compiles, the others wait and reuse: {answers:?}"
    );
    let first = compiled[0]["name"].as_str().unwrap();
    for i in 0..4 {
        let name = format!("burst{i}");
        assert_eq!(
            file_id(&artifact(&node, &name, 1)),
            file_id(&artifact(&node, first, 1)),
            "{name} shares {first}'s artifact"
        );
        assert_eq!(node.get(&format!("/fn/{name}/")).json()["function"], name);
    }
    assert_eq!(node.log().matches("compiling").count(), 1, "{}", node.log());
}

#[test]
fn components_compile_one_at_a_time() {
    let node = Node::start();
    let copies: Vec<_> = (0..3)
        .map(|i| distinct_copy(&guests().hello, &format!("queue{i}")))
        .collect();
    let start = std::sync::Barrier::new(3);
    std::thread::scope(|scope| {
        for (i, wasm) in copies.iter().enumerate() {
            let (node, start) = (&node, &start);
            scope.spawn(move || {
                start.wait();
                let deployed = node.deploy(wasm, &format!("queue{i}"), &[]);
                assert!(deployed.get("reused_code_of").is_none(), "{deployed}");
            });
        }
    });
    // Every compile ends before the next begins.
    let log = node.log();
    let events: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            if line.contains("compiling") {
                Some("start")
            } else if line.contains("compiled") && line.contains("elapsed_ms") {
                Some("end")
            } else {
                None
            }
        })
        .collect();
    assert_eq!(events, ["start", "end"].repeat(3), "{log}");
    for i in 0..3 {
        assert_eq!(node.get(&format!("/fn/queue{i}/")).status, 200);
    }
}
