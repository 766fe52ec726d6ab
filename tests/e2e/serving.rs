//! Serving: foreign components, env vars, body limits, traps, timeouts, memory bombs, queue
//! limits and outbound policy — and the node keeps serving everyone else.

use crate::support::{Node, guests};
use std::time::Duration;

#[test]
fn foreign_component_runs_unchanged() {
    // misbehave is built with the plain `wasi` crate, not flint-sdk.
    let node = Node::start();
    node.deploy(&guests().misbehave, "raw", &[]);
    let reply = node.post("/fn/raw/echo", b"hello from a plain wasi component");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        "POST /fn/raw/echo\nhello from a plain wasi component"
    );
}

#[test]
fn env_vars_reach_the_guest() {
    let node = Node::start();
    node.deploy(
        &guests().misbehave,
        "envy",
        &["--env", "FOO=bar baz", "--env", "EMPTY="],
    );
    assert_eq!(node.get("/fn/envy/env?key=FOO").body, "bar baz");
    assert_eq!(node.get("/fn/envy/env?key=EMPTY").status, 200);
    assert_eq!(node.get("/fn/envy/env?key=FLINT_FUNCTION").body, "envy");
    assert_eq!(
        node.get("/fn/envy/env?key=HOME").status,
        404,
        "the host's env does not leak"
    );
}

/// Waits until `name` has `count` spare sandboxes ready.
fn wait_for_spares(node: &Node, name: &str, count: u64) {
    node.wait_for_function(
        name,
        &format!("{count} spares"),
        Duration::from_secs(20),
        |f| f["spare_sandboxes"] == count,
    );
}

#[test]
fn spare_sandboxes_are_fresh_and_serve_one_request_each() {
    // This guest instantiates in microseconds; by default only slower ones get spares.
    let node = Node::start_with(&["--spare-after", "0s"]);
    node.deploy(&guests().misbehave, "spare", &[]);
    assert_eq!(
        node.function("spare")["spare_sandboxes"],
        0,
        "none before a request"
    );
    let mut ids = std::collections::HashSet::new();
    for round in 0..6 {
        let reply = node.get("/fn/spare/count");
        assert_eq!(reply.status, 200, "{}", reply.body);
        let header = reply.header("x-flint-invocation-id").unwrap().to_string();
        // Every request gets an instance that has handled nothing before, spare or not, and
        // the id its guest sees is the one the response carries.
        assert_eq!(reply.body, format!("1 {header}"), "round {round}");
        assert!(ids.insert(header), "invocation ids are unique");
        // After a request, the node has built spares for the next ones.
        wait_for_spares(&node, "spare", 2);
    }
    assert_eq!(
        node.function("spare")["spare_sandboxes_used"],
        5,
        "every request after the first started on a spare"
    );

    let off = Node::start_with(&["--spare-sandboxes", "0", "--spare-after", "0s"]);
    off.deploy(&guests().misbehave, "spare", &[]);
    assert_eq!(off.get("/fn/spare/count").body.split(' ').next(), Some("1"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(off.function("spare")["spare_sandboxes"], 0);
}

#[test]
fn oversized_bodies_get_413_and_small_ones_pass() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "small", &["--max-body", "1KiB"]);
    let message = node
        .post("/fn/small/echo", &[b'x'; 2048])
        .expect_error(413, "payload-too-large");
    assert!(message.contains("1KiB"), "{message}");
    let ok = node.post("/fn/small/echo", &[b'y'; 1000]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body.len(), "POST /fn/small/echo\n".len() + 1000);
}

#[test]
fn trap_is_a_500_with_an_id_and_others_keep_serving() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "bad", &[]);
    node.deploy(&guests().hello, "hello", &[]);
    let reply = node.get("/fn/bad/trap");
    let message = reply.expect_error(500, "guest-trap");
    assert!(message.contains("unreachable"), "{message}");
    let id = reply
        .header("x-flint-invocation-id")
        .expect("id on errors too")
        .to_string();
    // The guest's panic message is in the node log under that invocation id.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node.log().contains("deliberate panic") {
        assert!(std::time::Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = node
        .log()
        .lines()
        .find(|l| l.contains("deliberate panic"))
        .unwrap()
        .to_string();
    assert!(line.contains(&id), "{line}");

    assert_eq!(node.get("/fn/hello/").status, 200);
    assert_eq!(
        node.get("/fn/bad/echo").status,
        200,
        "the same function serves the next request"
    );
}

#[test]
fn infinite_loops_and_slow_guests_time_out_with_504() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "slow", &["--timeout", "500ms"]);
    node.deploy(&guests().hello, "hello", &[]);
    let started = std::time::Instant::now();
    let message = node.get("/fn/slow/loop").expect_error(504, "timeout");
    assert!(message.contains("500ms"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // Blocked in a host call (sleep) rather than spinning: also a timeout.
    node.get("/fn/slow/sleep?ms=5000")
        .expect_error(504, "timeout");
    assert_eq!(node.get("/fn/hello/").status, 200);
    assert_eq!(node.get("/fn/slow/sleep?ms=1").body, "slept 1");
}

#[test]
fn a_spinning_guest_does_not_starve_others() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "spin", &["--timeout", "3s"]);
    node.deploy(&guests().hello, "hello", &[]);
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let url = node.url("/fn/spin/loop");
            std::thread::spawn(move || crate::support::request("GET", &url, None, None).status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // More spinning guests than cores, yet hello answers while they run.
    let reply = node.get("/fn/hello/");
    assert_eq!(reply.status, 200);
    for spinner in spinners {
        assert_eq!(spinner.join().unwrap(), 504);
    }
}

#[test]
fn memory_bomb_hits_the_cap_with_a_clear_error() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "bomb", &["--memory", "32MiB"]);
    let message = node.get("/fn/bomb/bomb").expect_error(500, "guest-trap");
    assert!(message.contains("memory limit of 32MiB"), "{message}");
    assert_eq!(node.get("/fn/bomb/echo").status, 200);
}

#[test]
fn no_response_is_a_502() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "mute", &[]);
    let message = node
        .get("/fn/mute/noresponse")
        .expect_error(502, "bad-guest-response");
    assert!(message.contains("without sending a response"), "{message}");
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    let node = Node::start();
    node.deploy(
        &guests().misbehave,
        "narrow",
        &["--max-concurrency", "1", "--queue-depth", "1"],
    );
    let first = {
        let url = node.url("/fn/narrow/sleep?ms=1500");
        std::thread::spawn(move || crate::support::request("GET", &url, None, None))
    };
    node.wait_for_load("narrow", 1, 0);
    let second = {
        let url = node.url("/fn/narrow/sleep?ms=10");
        std::thread::spawn(move || crate::support::request("GET", &url, None, None))
    };
    node.wait_for_load("narrow", 1, 1);
    let third = node.get("/fn/narrow/sleep?ms=10");
    let message = third.expect_error(503, "overloaded");
    assert!(message.contains("concurrency limit"), "{message}");
    assert_eq!(third.header("retry-after"), Some("1"));
    assert!(third.header("x-flint-invocation-id").is_some());

    assert_eq!(first.join().unwrap().body, "slept 1500");
    assert_eq!(
        second.join().unwrap().body,
        "slept 10",
        "the queued request ran"
    );
    node.wait_for_load("narrow", 0, 0);
}

#[test]
fn outbound_http_is_denied_unless_granted() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "closed", &[]);
    node.deploy(&guests().misbehave, "open", &["--allow-outbound"]);
    let target = format!("http://{}/healthz", node.public);
    let denied = node.get(&format!("/fn/closed/outbound?url={target}"));
    assert!(denied.body.contains("HttpRequestDenied"), "{}", denied.body);
    let allowed = node.get(&format!("/fn/open/outbound?url={target}"));
    assert_eq!(allowed.body, "status 200");
}

#[test]
fn unknown_paths_get_404_json() {
    let node = Node::start();
    node.get("/fn/nobody/here").expect_error(404, "not-found");
    node.get("/elsewhere").expect_error(404, "not-found");
    assert_eq!(node.get("/healthz").json()["status"], "ok");
    assert_eq!(node.get("/readyz").json()["status"], "ready");
}

/// Context switches of each of `pid`'s threads, by thread name (Linux's `/proc`).
fn context_switches(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut switches = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue; // a thread that just exited
        };
        let count: u64 = status
            .lines()
            .filter(|line| line.contains("ctxt_switches"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        *switches.entry(name.trim().to_string()).or_default() += count;
    }
    switches
}

#[test]
fn an_idle_node_sleeps_without_waking_and_still_times_out_spinning_guests() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "spin", &["--timeout", "500ms"]);
    node.deploy(&guests().hello, "hello", &[]);
    assert_eq!(node.get("/fn/hello/").status, 200);
    // Let the epoch ticker and the usage-log writer see that nothing runs.
    std::thread::sleep(Duration::from_millis(500));

    let before = context_switches(node.pid());
    std::thread::sleep(Duration::from_secs(2));
    let after = context_switches(node.pid());
    let woke: Vec<(String, u64)> = after
        .iter()
        .map(|(name, n)| {
            (
                name.clone(),
                n.saturating_sub(before.get(name).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: u64 = woke.iter().map(|(_, n)| n).sum();
    // It used to be about 500 in 2 s (the epoch ticker's 200/s and the usage log's 50/s). What
    // is left is housekeeping: the GPU utilization sampler (once a second until 10 s without
    // GPU work; this node is younger), the idle sweep when a step falls due, idle blocking
    // threads exiting.
    assert!(
        total <= 10,
        "the idle node woke up {total} times in 2 s: {woke:?}"
    );

    // The sleeping epoch ticker wakes for the next guest: a spinning one still times out,
    // and the usage log still records what ran.
    node.get("/fn/spin/loop").expect_error(504, "timeout");
    assert_eq!(node.get("/fn/hello/").status, 200);
}
