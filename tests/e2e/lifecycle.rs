//! Lifecycle: restart and crash recovery without recompiling, redeploy with requests in
//! flight, rollback, removal, graceful shutdown.

use crate::support::{Node, guests, request};
use std::time::Duration;

fn artifact_mtime(node: &Node, name: &str, version: u64) -> std::time::SystemTime {
    let path = node.data.join(format!(
        "functions/{name}/versions/{version}/component.cwasm"
    ));
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn functions_serve_again_after_restart_without_recompiling() {
    let mut node = Node::start();
    node.deploy(
        &guests().hello,
        "hello",
        &["--route", "/hi", "--env", "GREETING=Howdy"],
    );
    let before = artifact_mtime(&node, "hello", 1);
    assert!(node.terminate().success());

    let data = node.data.clone();
    let restarted = Node::start_in(&data, &[]);
    let reply = restarted.get("/hi/there?name=Cy");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["message"], "Howdy, Cy!");
    assert_eq!(artifact_mtime(&restarted, "hello", 1), before);
    assert!(
        !restarted.log().contains("recompiling"),
        "{}",
        restarted.log()
    );
    assert_eq!(restarted.get("/readyz").json()["functions"], 1);
    drop(node);
}

#[test]
fn a_damaged_artifact_is_recompiled_stored_and_served_from_its_file() {
    let mut node = Node::start();
    // --keep-warm: it stays loaded after the restart, so its code can be looked at.
    node.deploy(&guests().hello, "hello", &["--keep-warm"]);
    assert!(node.terminate().success());
    let artifact = node.data.join("functions/hello/versions/1/component.cwasm");
    std::fs::write(&artifact, b"\x7fELF but not an artifact").unwrap();

    let data = node.data.clone();
    let mut restarted = Node::start_in(&data, &[]);
    let reply = restarted.get("/fn/hello/?name=again");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["message"], "Hello, again!");
    assert!(
        restarted.log().contains("recompiling"),
        "{}",
        restarted.log()
    );
    // The new artifact replaced the damaged one, and the code that serves is mapped from it
    // (file-backed, so that the kernel can reclaim it and parking can hand it back), not the
    // anonymous copy the compiler produced.
    assert!(std::fs::metadata(&artifact).unwrap().len() > 1024);
    assert!(
        restarted.resident_code_bytes(&artifact) > 0,
        "the recompiled function serves its stored artifact"
    );
    assert!(restarted.terminate().success());

    let again = Node::start_in(&data, &[]);
    assert_eq!(again.get("/fn/hello/").status, 200);
    assert!(!again.log().contains("recompiling"), "{}", again.log());
    drop((node, restarted));
}

#[test]
fn functions_of_one_component_are_recompiled_once_and_share_the_new_artifact() {
    use std::os::unix::fs::MetadataExt;
    let mut node = Node::start();
    for name in ["one", "two", "three"] {
        node.deploy(
            &guests().hello,
            name,
            &["--env", &format!("GREETING={name}")],
        );
    }
    assert!(node.terminate().success());
    // As after an engine upgrade: the one artifact the three share is unusable.
    let artifact = |name: &str| {
        node.data
            .join(format!("functions/{name}/versions/1/component.cwasm"))
    };
    std::fs::write(artifact("one"), b"\x7fELF but not an artifact").unwrap();
    assert_eq!(
        std::fs::read(artifact("three")).unwrap(),
        b"\x7fELF but not an artifact"
    );

    let restarted = Node::start_in(&node.data, &[]);
    for name in ["one", "two", "three"] {
        let reply = restarted.get(&format!("/fn/{name}/"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["message"], format!("{name}, world!"));
    }
    let log = restarted.log();
    assert_eq!(log.matches("recompiling").count(), 1, "{log}");
    assert_eq!(
        log.matches("compiled from the same component").count(),
        2,
        "{log}"
    );
    let inode = |name: &str| std::fs::metadata(artifact(name)).unwrap().ino();
    assert_eq!(inode("one"), inode("two"));
    assert_eq!(inode("one"), inode("three"));
    drop(restarted);
}

#[test]
fn kill_9_loses_nothing_that_was_deployed() {
    let mut node = Node::start();
    node.deploy(&guests().hello, "hello", &[]);
    node.deploy(&guests().misbehave, "raw", &[]);
    node.kill9();
    // A crash mid-deploy leaves a staging directory behind; it must never be served.
    let staging = node.data.join("functions/raw/versions/.staging-2-1");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("component.wasm"), b"half written").unwrap();

    let restarted = Node::start_in(&node.data.clone(), &[]);
    assert_eq!(restarted.get("/fn/hello/").status, 200);
    assert_eq!(
        restarted.post("/fn/raw/echo", b"x").body,
        "POST /fn/raw/echo\nx"
    );
    assert!(
        !staging.exists(),
        "leftover staging dir is cleaned at start"
    );
    assert_eq!(
        restarted.function("raw")["versions"],
        serde_json::json!([1])
    );
}

#[test]
fn redeploy_keeps_in_flight_requests_on_the_old_version() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "tagged", &["--env", "TAG=one"]);
    let in_flight = {
        let url = node.url("/fn/tagged/tag?ms=1500");
        std::thread::spawn(move || request("GET", &url, None, None))
    };
    node.wait_for_load("tagged", 1, 0);
    let redeployed = node.deploy(&guests().misbehave, "tagged", &["--env", "TAG=two"]);
    assert_eq!(redeployed["version"], 2);
    assert_eq!(
        node.get("/fn/tagged/tag").body,
        "two",
        "new requests get the new version"
    );
    assert_eq!(
        in_flight.join().unwrap().body,
        "one",
        "the in-flight request finished on v1"
    );
}

#[test]
fn rollback_switches_versions_and_survives_restart() {
    let mut node = Node::start();
    node.deploy(&guests().misbehave, "tagged", &["--env", "TAG=one"]);
    let run = node.fnctl(&["rollback", "tagged"]);
    assert!(!run.success, "nothing to roll back to");
    assert!(
        run.stderr.contains("nothing to roll back to") && run.stderr.contains("HTTP 409"),
        "{}",
        run.stderr
    );

    node.deploy(&guests().misbehave, "tagged", &["--env", "TAG=two"]);
    node.deploy(&guests().misbehave, "tagged", &["--env", "TAG=three"]);
    assert_eq!(node.get("/fn/tagged/tag").body, "three");

    let run = node.fnctl(&["rollback", "tagged"]);
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.contains("now serves version 2"),
        "{}",
        run.stdout
    );
    assert_eq!(node.get("/fn/tagged/tag").body, "two");

    let run = node.fnctl(&["rollback", "tagged", "--to", "1"]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(node.get("/fn/tagged/tag").body, "one");

    let run = node.fnctl(&["rollback", "tagged", "--to", "9"]);
    assert!(!run.success);
    assert!(run.stderr.contains("no version 9"), "{}", run.stderr);

    let versions = node.fnctl(&["versions", "tagged"]);
    assert!(versions.success);
    let current: Vec<&str> = versions
        .stdout
        .lines()
        .filter(|l| l.contains('*'))
        .collect();
    assert_eq!(current.len(), 1, "{}", versions.stdout);
    assert!(current[0].starts_with("1 "), "{}", versions.stdout);

    // A new deploy after a rollback gets the next number, and the choice survives a restart.
    let deployed = node.deploy(&guests().misbehave, "tagged", &["--env", "TAG=four"]);
    assert_eq!(deployed["version"], 4);
    node.fnctl(&["rollback", "tagged", "--to", "2"]);
    assert!(node.terminate().success());
    let restarted = Node::start_in(&node.data.clone(), &[]);
    assert_eq!(restarted.get("/fn/tagged/tag").body, "two");
}

#[test]
fn removed_functions_stop_serving_and_leave_no_files() {
    let node = Node::start();
    node.deploy(&guests().hello, "hello", &["--route", "/hi"]);
    let run = node.fnctl(&["rm", "hello"]);
    assert!(run.success, "{}", run.stderr);
    node.get("/fn/hello/").expect_error(404, "not-found");
    node.get("/hi").expect_error(404, "not-found");
    assert!(!node.data.join("functions/hello").exists());
    let run = node.fnctl(&["rm", "hello"]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("no function named `hello`"),
        "{}",
        run.stderr
    );
    // The route is free again.
    node.deploy(&guests().misbehave, "other", &["--route", "/hi"]);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let mut node = Node::start();
    node.deploy(&guests().misbehave, "slow", &[]);
    let in_flight = {
        let url = node.url("/fn/slow/sleep?ms=1500");
        std::thread::spawn(move || request("GET", &url, None, None))
    };
    node.wait_for_load("slow", 1, 0);
    node.signal_terminate();
    // Shortly after the signal, the node accepts no new connections.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect_timeout(&node.public, Duration::from_secs(1)).is_err(),
        "the listener must be closed while draining"
    );
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "slept 1500");
    let status = node.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(node.log().contains("drained"), "{}", node.log());
}
