//! Operations: usage records, `fnctl usage` and `fnctl stats`, and Prometheus metrics, checked
//! against exactly what the test sent.

use crate::support::{Node, distinct_copy, guests, request};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn usage_records(node: &Node, want: usize) -> Vec<Value> {
    let path = node.data.join("usage/usage.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if records.len() >= want {
            assert_eq!(records.len(), want, "{text}");
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {want} usage records: {text}",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses Prometheus text: `name{labels} value` per sample, comments and blank lines skipped.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn usage_records_match_what_was_sent() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "raw", &["--timeout", "500ms"]);
    let mut sent = Vec::new();
    for size in [10usize, 100, 1000] {
        let reply = node.post("/fn/raw/echo", &vec![b'x'; size]);
        assert_eq!(reply.status, 200);
        sent.push((
            reply.header("x-flint-invocation-id").unwrap().to_string(),
            "ok",
            size,
            reply.body.len(),
        ));
    }
    let trap = node.get("/fn/raw/trap");
    sent.push((
        trap.header("x-flint-invocation-id").unwrap().to_string(),
        "trap",
        0,
        trap.body.len(),
    ));
    let timeout = node.get("/fn/raw/loop");
    sent.push((
        timeout.header("x-flint-invocation-id").unwrap().to_string(),
        "timeout",
        0,
        timeout.body.len(),
    ));

    let records = usage_records(&node, sent.len());
    for (record, (id, outcome, bytes_in, bytes_out)) in records.iter().zip(&sent) {
        assert_eq!(record["invocation_id"], id.as_str(), "{record}");
        assert_eq!(record["function"], "raw");
        assert_eq!(record["version"], 1);
        assert_eq!(record["outcome"], *outcome, "{record}");
        assert_eq!(record["bytes_in"], *bytes_in as u64, "{record}");
        assert_eq!(record["bytes_out"], *bytes_out as u64, "{record}");
        assert!(record["wall_us"].as_u64().unwrap() > 0);
        assert!(
            record["memory_peak_bytes"].as_u64().unwrap() > 0,
            "{record}"
        );
    }
    assert!(
        records.iter().all(|r| r["cold_start"] == false),
        "a freshly deployed function is loaded: no cold start"
    );
    assert_eq!(records[3]["status"], 500);
    assert_eq!(records[4]["status"], 504);

    let run = node.fnctl(&["usage", "--json"]);
    assert!(run.success, "{}", run.stderr);
    let usage: Value = serde_json::from_str(&run.stdout).unwrap();
    let raw = &usage["functions"]["raw"];
    assert_eq!(raw["invocations"], 5);
    assert_eq!(raw["outcomes"]["ok"], 3);
    assert_eq!(raw["outcomes"]["trap"], 1);
    assert_eq!(raw["outcomes"]["timeout"], 1);
    assert_eq!(raw["bytes_in"], 1110);
    let run = node.fnctl(&["usage", "raw", "--since", "1h"]);
    assert!(
        run.success
            && run
                .stdout
                .lines()
                .any(|l| l.starts_with("raw ") && l.contains(" 5 ")),
        "{}",
        run.stdout
    );
    let future = node.fnctl(&["usage", "--json", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(
        serde_json::from_str::<Value>(&future.stdout).unwrap()["records"],
        0
    );

    let run = node.fnctl(&["stats", "raw", "--json"]);
    let stats: Value = serde_json::from_str(&run.stdout).unwrap();
    let raw = &stats["functions"]["raw"];
    assert_eq!(raw["invocations"], 5);
    assert_eq!(raw["cold_starts"], 0);
    assert!(raw["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(
        raw["latency_ms"]["p99"].as_f64().unwrap() >= raw["latency_ms"]["p50"].as_f64().unwrap()
    );
    let table = node.fnctl(&["stats"]);
    assert!(
        table.stdout.contains("P95-MS") && table.stdout.contains("3/1/1/0/0"),
        "{}",
        table.stdout
    );
}

#[test]
fn metrics_parse_and_counters_move_by_exactly_the_invocations() {
    let node = Node::start();
    node.deploy(&guests().hello, "hello", &[]);
    let scrape = || {
        let reply = request("GET", &node.admin_url("/metrics"), None, None);
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .header("content-type")
                .unwrap()
                .starts_with("text/plain")
        );
        parse_metrics(&reply.body)
    };
    let key = r#"flint_invocations_total{function="hello",outcome="ok",status="200"}"#;
    let before = scrape().get(key).copied().unwrap_or(0.0);
    for _ in 0..7 {
        assert_eq!(node.get("/fn/hello/").status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let samples = scrape();
        if samples.get(key).copied().unwrap_or(0.0) >= before + 7.0 {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "counter stuck at {:?}",
            samples.get(key)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(after[key], before + 7.0);
    assert_eq!(
        after[r#"flint_invocation_duration_seconds_count{function="hello"}"#],
        7.0
    );
    let cold = r#"flint_cold_starts_total{function="hello"}"#;
    assert_eq!(
        after.get(cold).copied().unwrap_or(0.0),
        0.0,
        "no cold start without an unload"
    );
    assert_eq!(
        after[r#"flint_invocations_in_flight{function="hello"}"#],
        0.0
    );
    assert_eq!(after["flint_models_resident"], 0.0);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("flint_gpu_memory_used_bytes{")),
        "{after:?}"
    );
}

#[test]
fn gpu_use_is_metered() {
    let node = Node::start();
    node.deploy(&guests().gpu_hold, "hold", &[]);
    let reply = node.get("/fn/hold/?mb=4&then=sleep&ms=300");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let record = &usage_records(&node, 1)[0];
    assert_eq!(record["gpu_peak_bytes"], 4 << 20, "{record}");
    // 4 MiB were held for at least the 300 ms sleep.
    let byte_seconds = record["gpu_byte_seconds"].as_f64().unwrap();
    assert!(byte_seconds >= (4 << 20) as f64 * 0.3, "{record}");
    assert!(byte_seconds <= (4 << 20) as f64 * 30.0, "{record}");
}

#[test]
fn guest_output_shows_up_in_fnctl_logs_with_invocation_ids() {
    let node = Node::start();
    node.deploy(&guests().misbehave, "raw", &[]);
    // A function that has not printed has no log file (and holds no file descriptor for one).
    assert_eq!(node.get("/fn/raw/echo").status, 200);
    assert!(!node.data.join("logs/raw.log").exists());
    let first = node.get("/fn/raw/print?lines=3");
    let second = node.get("/fn/raw/print?lines=2");
    let id1 = first.header("x-flint-invocation-id").unwrap().to_string();
    let id2 = second.header("x-flint-invocation-id").unwrap().to_string();

    let run = node.fnctl(&["logs", "raw", "--json"]);
    assert!(run.success, "{}", run.stderr);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |id: &str, stream: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["invocation_id"] == id && l["stream"] == stream)
            .map(|l| l["line"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        of(&id1, "stdout"),
        ["guest line 0", "guest line 1", "guest line 2"]
    );
    assert_eq!(of(&id1, "stderr"), ["guest stderr line"]);
    assert_eq!(of(&id2, "stdout"), ["guest line 0", "guest line 1"]);
    assert_eq!(lines.len(), 7);

    let run = node.fnctl(&["logs", "raw", "--tail", "2"]);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    assert!(
        run.stdout.lines().all(|l| l.contains(&id2)),
        "{}",
        run.stdout
    );
    let file = std::fs::read_to_string(node.data.join("logs/raw.log")).unwrap();
    assert!(
        file.lines()
            .any(|l| l.contains(&id1) && l.ends_with("stdout guest line 2")),
        "{file}"
    );

    // `-f` prints lines written after it started.
    let mut follower = node
        .fnctl_command(&["logs", "raw", "-f", "--tail", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let third = node.get("/fn/raw/print?lines=1");
    let id3 = third.header("x-flint-invocation-id").unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains(&id3) && l.ends_with("guest line 0"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("`fnctl logs -f` never printed invocation {id3}: {seen:?}"),
        }
    }
    assert!(
        !seen.iter().any(|l| l.contains(&id1)),
        "--tail 0 starts at the end: {seen:?}"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
}

#[test]
fn idle_functions_are_parked_then_resume_without_reloading_then_unload() {
    // Spares for every function, so that what happens to them is seen.
    let node = Node::start_with(&[
        "--idle-park",
        "500ms",
        "--idle-unload",
        "4s",
        "--spare-after",
        "0",
    ]);
    node.deploy(&guests().hello, "hello", &[]);
    // A component of its own: one deployed from the same bytes would share hello's code and
    // keep it resident (see `functions_of_one_component_share_their_code`).
    let warm = distinct_copy(&guests().hello, "warm");
    node.deploy(&warm, "warm", &["--keep-warm"]);
    assert_eq!(node.get("/fn/hello/?name=first").status, 200);
    assert_eq!(node.get("/fn/warm/").status, 200);
    node.wait_for_function("hello", "2 spares", Duration::from_secs(20), |f| {
        f["spare_sandboxes"] == 2
    });
    let artifact = node.data.join("functions/hello/versions/1/component.cwasm");
    let code_before = node.resident_code_bytes(&artifact);
    assert!(
        code_before > 0,
        "a deployed function serves its stored artifact (file-backed code)"
    );

    let residency = |name: &str| {
        node.function(name)["residency"]
            .as_str()
            .unwrap()
            .to_string()
    };
    node.wait_for_function("hello", "parked", Duration::from_secs(20), |f| {
        f["residency"] == "parked"
    });
    let hello = node.function("hello");
    assert_eq!(
        hello["loaded"], true,
        "a parked function keeps its component"
    );
    assert_eq!(
        hello["spare_sandboxes"], 2,
        "a parked function keeps its spares"
    );
    assert_eq!(
        node.resident_code_bytes(&artifact),
        0,
        "parking hands its code pages back (before: {code_before} bytes)"
    );
    assert_eq!(residency("warm"), "loaded", "--keep-warm functions stay");

    // Its next request runs the same component: no reload, no cold start.
    let reply = node.get("/fn/hello/?name=again");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["message"], "Hello, again!");
    let records = usage_records(&node, 3);
    assert!(
        records.iter().all(|r| r["cold_start"] == false),
        "{records:?}"
    );
    // It parks again (so it was resumed), and later unloads.
    let parks = |log: &str| {
        log.lines()
            .filter(|l| l.contains("parked after being idle") && l.contains("hello"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while parks(&node.log()) < 2 {
        assert!(
            Instant::now() < deadline,
            "never parked again: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.wait_for_function("hello", "unloaded", Duration::from_secs(20), |f| {
        f["residency"] == "unloaded"
    });
    assert_eq!(
        node.function("hello")["spare_sandboxes"],
        0,
        "unloading drops the spares"
    );
    assert!(
        !node.log().contains("reloaded after being idle"),
        "{}",
        node.log()
    );
    assert_eq!(residency("warm"), "loaded");

    // Unloaded, it reloads: a cold start.
    assert_eq!(node.get("/fn/hello/?name=cold").status, 200);
    let records = usage_records(&node, 4);
    assert_eq!(records[3]["cold_start"], true, "{records:?}");
}

#[test]
fn functions_of_one_component_share_their_code() {
    let node = Node::start_with(&["--idle-park", "0", "--idle-unload", "500ms"]);
    let components = || {
        let metrics = parse_metrics(&request("GET", &node.admin_url("/metrics"), None, None).body);
        let info = node.admin_call("GET", "/v1/node", None).json();
        assert_eq!(
            info["components_in_memory"].as_f64(),
            Some(metrics["flint_components_in_memory"]),
            "{info}"
        );
        metrics["flint_components_in_memory"]
    };
    node.deploy(&guests().hello, "template", &["--keep-warm"]);
    node.deploy(&guests().hello, "tenant", &["--env", "GREETING=Hi"]);
    node.deploy(&distinct_copy(&guests().hello, "other"), "other", &[]);
    assert_eq!(components(), 2.0, "three functions, two components");

    let unloaded = |f: &Value| f["residency"] == "unloaded";
    node.wait_for_function("tenant", "unloaded", Duration::from_secs(20), unloaded);
    node.wait_for_function("other", "unloaded", Duration::from_secs(20), unloaded);
    assert_eq!(components(), 1.0, "`other` was the only holder of its code");

    // The tenant's own artifact is damaged, so a reload from disk would fail; it takes the
    // code its sibling holds instead, and runs it with its own settings.
    let artifact = node
        .data
        .join("functions/tenant/versions/1/component.cwasm");
    let tmp = artifact.with_extension("tmp");
    std::fs::write(&tmp, b"not an artifact").unwrap();
    std::fs::rename(&tmp, &artifact).unwrap();
    let reply = node.get("/fn/tenant/?name=Ada");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["message"], "Hi, Ada!");
    assert_eq!(reply.json()["function"], "tenant");
    assert_eq!(node.function("tenant")["residency"], "loaded");
    // A function with no sibling in memory reloads from disk: a cold start.
    let reply = node.get("/fn/other/?name=Bo");
    assert_eq!(reply.json()["message"], "Hello, Bo!");
    let records = usage_records(&node, 2);
    assert_eq!(records[0]["function"], "tenant");
    assert_eq!(records[0]["cold_start"], false, "{records:?}");
    assert_eq!(records[1]["function"], "other");
    assert_eq!(records[1]["cold_start"], true, "{records:?}");
    let log = node.log();
    let reloads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reloaded after being idle"))
        .collect();
    assert!(reloads.len() == 1 && reloads[0].contains("other"), "{log}");
    assert_eq!(components(), 2.0);

    // Once no function holds it, the code is freed with the last holder.
    let removed = node.admin_call("DELETE", "/v1/functions/template", None);
    assert_eq!(removed.status, 200, "{}", removed.body);
    node.wait_for_function("tenant", "unloaded", Duration::from_secs(20), unloaded);
    node.wait_for_function("other", "unloaded", Duration::from_secs(20), unloaded);
    assert_eq!(components(), 0.0);
    // Its damaged artifact now fails the tenant's reload, with a clear error, while the
    // others serve on.
    let reply = node.get("/fn/tenant/");
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(reply.body.contains("component.cwasm"), "{}", reply.body);
    assert_eq!(node.get("/fn/other/").status, 200);
}

#[test]
fn parking_keeps_the_code_pages_of_a_component_a_sibling_runs() {
    let node = Node::start_with(&["--idle-park", "1s", "--idle-unload", "0"]);
    node.deploy(&guests().hello, "a", &[]);
    node.deploy(&guests().hello, "b", &[]);
    // Both map the file `a` was deployed with (`b`'s artifact is a link to it).
    let artifact = node.data.join("functions/a/versions/1/component.cwasm");
    assert_eq!(node.get("/fn/a/").status, 200);

    // `a` goes idle and parks while `b` keeps being called: the pages stay for `b`.
    let parked = |f: &Value| f["residency"] == "parked";
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.function("a")["residency"] != "parked" {
        assert!(Instant::now() < deadline, "a never parked: {}", node.log());
        assert_eq!(node.get("/fn/b/").status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node.function("b")["residency"], "loaded");
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("kept its code pages") && l.contains(r#"function=a"#)),
        "{log}"
    );
    let resident = node.resident_code_bytes(&artifact);
    assert!(resident > 0, "the code b runs stays resident");

    // Once `b` parks too, nobody runs the code: its pages are handed back.
    node.wait_for_function("b", "parked", Duration::from_secs(20), parked);
    assert_eq!(
        node.resident_code_bytes(&artifact),
        0,
        "parking the last resident function hands the pages back (before: {resident} bytes)"
    );
    // Either answers again without a reload.
    assert_eq!(
        node.get("/fn/a/?name=again").json()["message"],
        "Hello, again!"
    );
    assert!(
        !node.log().contains("reloaded after being idle"),
        "{}",
        node.log()
    );
}

#[test]
fn beyond_max_loaded_the_least_recently_used_functions_unload() {
    // Idle parking and unloading off: only the cap unloads.
    let node = Node::start_with(&[
        "--max-loaded",
        "2",
        "--idle-park",
        "0",
        "--idle-unload",
        "0",
    ]);
    let residency = |name: &str| {
        node.function(name)["residency"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let unloaded = |f: &Value| f["residency"] == "unloaded";
    // Three components, so that each reloads on its own.
    node.deploy(&guests().hello, "warm", &["--keep-warm"]);
    node.deploy(&distinct_copy(&guests().hello, "a"), "a", &[]);
    assert_eq!(node.get("/fn/a/").status, 200);
    assert_eq!(residency("a"), "loaded", "two are within the cap");

    // A third: `a`, idle the longest of those that may go, unloads (`warm` counts, but stays).
    node.deploy(&distinct_copy(&guests().hello, "b"), "b", &[]);
    node.wait_for_function("a", "unloaded", Duration::from_secs(20), unloaded);
    assert_eq!(residency("b"), "loaded");
    assert_eq!(residency("warm"), "loaded");

    // `a` comes back, a cold start, and `b`, now the least recently used, makes room.
    let reply = node.get("/fn/a/?name=back");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["message"], "Hello, back!");
    node.wait_for_function("b", "unloaded", Duration::from_secs(20), unloaded);
    assert_eq!(residency("a"), "loaded");
    assert_eq!(residency("warm"), "loaded");
    let records = usage_records(&node, 2);
    assert_eq!(records[1]["cold_start"], true, "{records:?}");
    let log = node.log();
    assert_eq!(
        log.matches("to stay within --max-loaded").count(),
        2,
        "{log}"
    );
    let metrics = parse_metrics(&request("GET", &node.admin_url("/metrics"), None, None).body);
    assert_eq!(
        metrics[r#"flint_unloads_total{reason="max_loaded"}"#], 2.0,
        "{metrics:?}"
    );
    assert_eq!(metrics[r#"flint_functions{residency="loaded"}"#], 2.0);
    assert_eq!(metrics[r#"flint_functions{residency="parked"}"#], 0.0);
    assert_eq!(metrics[r#"flint_functions{residency="unloaded"}"#], 1.0);
    let info = node.admin_call("GET", "/v1/node", None).json();
    assert_eq!(info["max_loaded"], 2);
    assert_eq!(info["idle_park"], Value::Null, "off");
    assert_eq!(
        info["functions_by_residency"],
        serde_json::json!({"loaded": 2, "parked": 0, "unloaded": 1})
    );
}

#[test]
fn functions_busy_when_over_max_loaded_unload_once_they_finish() {
    // Idle parking and unloading off, so that nothing but the cap wakes the sweep.
    let node = Node::start_with(&[
        "--max-loaded",
        "1",
        "--idle-park",
        "0",
        "--idle-unload",
        "0",
    ]);
    let unloaded = |f: &Value| f["residency"] == "unloaded";
    node.deploy(&guests().misbehave, "a", &[]);
    node.deploy(&guests().misbehave, "b", &[]);
    node.wait_for_function("a", "unloaded", Duration::from_secs(20), unloaded);
    let slow = |name: &str| {
        let url = node.url(&format!("/fn/{name}/sleep?ms=3000"));
        std::thread::spawn(move || request("GET", &url, None, None))
    };
    // `a` reloads and runs; idle `b` makes room.
    let a = slow("a");
    node.wait_for_load("a", 1, 0);
    node.wait_for_function("b", "unloaded", Duration::from_secs(20), unloaded);
    // `b` reloads while `a` still runs: two loaded, both busy, neither may go yet.
    let b = slow("b");
    node.wait_for_load("b", 1, 0);
    assert_eq!(node.function("a")["residency"], "loaded");
    assert_eq!(a.join().unwrap().body, "slept 3000");
    assert_eq!(b.join().unwrap().body, "slept 3000");
    // `a` finished first: once it is idle, the sweep comes back for it.
    node.wait_for_function("a", "unloaded", Duration::from_secs(10), unloaded);
    assert_eq!(node.function("b")["residency"], "loaded");
}

#[test]
fn idle_functions_unload_and_come_back_as_counted_cold_starts() {
    let node = Node::start_with(&["--idle-unload", "300ms", "--spare-after", "0"]);
    node.deploy(&guests().hello, "hello", &[]);
    // A component of its own, so that hello reloads from disk.
    node.deploy(
        &distinct_copy(&guests().hello, "warm"),
        "warm",
        &["--keep-warm"],
    );
    assert_eq!(node.get("/fn/hello/?name=first").status, 200);
    assert_eq!(node.get("/fn/warm/").status, 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    while node.function("hello")["loaded"] == true {
        assert!(
            Instant::now() < deadline,
            "hello was never unloaded: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        node.function("warm")["loaded"],
        true,
        "--keep-warm functions stay loaded"
    );
    assert_eq!(
        node.function("hello")["spare_sandboxes"],
        0,
        "unloading drops the function's spare sandboxes"
    );
    let metrics = parse_metrics(&request("GET", &node.admin_url("/metrics"), None, None).body);
    assert_eq!(metrics[r#"flint_unloads_total{reason="idle"}"#], 1.0);
    assert_eq!(metrics[r#"flint_functions{residency="unloaded"}"#], 1.0);

    // The next request reloads it from the precompiled artifact and still answers correctly.
    let reply = node.get("/fn/hello/?name=again");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["message"], "Hello, again!");
    assert_eq!(node.function("hello")["loaded"], true);
    let id = reply.header("x-flint-invocation-id").unwrap().to_string();
    let records = usage_records(&node, 3);
    let cold: Vec<&Value> = records.iter().filter(|r| r["cold_start"] == true).collect();
    assert_eq!(cold.len(), 1, "{records:?}");
    assert_eq!(cold[0]["invocation_id"], id.as_str());
    let stats: Value =
        serde_json::from_str(&node.fnctl(&["stats", "hello", "--json"]).stdout).unwrap();
    assert_eq!(stats["functions"]["hello"]["cold_starts"], 1);
    // A small artifact is reloaded on the request's own worker thread.
    let reloaded = |log: &str| {
        log.lines()
            .find(|line| line.contains("reloaded after being idle"))
            .map(str::to_string)
    };
    let line = reloaded(&node.log()).unwrap_or_else(|| panic!("{}", node.log()));
    assert!(line.contains(r#"on="worker""#), "{line}");

    // After a restart, functions start scaled to zero (their artifacts were checked, their code
    // is not in memory) except --keep-warm ones; the first request loads them. This artifact
    // is grown past the inline limit first (wasmtime ignores bytes after its ELF image), so
    // this reload goes to the blocking pool.
    let mut node = node;
    assert!(node.terminate().success());
    let artifact = node.data.join("functions/hello/versions/1/component.cwasm");
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes.resize(
        flint_runtime::function::INLINE_RELOAD_MAX_BYTES as usize + 1,
        0,
    );
    std::fs::write(&artifact, bytes).unwrap();
    let restarted = Node::start_in(&node.data.clone(), &["--idle-unload", "300ms"]);
    assert_eq!(restarted.function("hello")["loaded"], false);
    assert_eq!(restarted.function("warm")["loaded"], true);
    let reply = restarted.get("/fn/hello/?name=after");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["message"], "Hello, after!");
    let line = reloaded(&restarted.log()).unwrap_or_else(|| panic!("{}", restarted.log()));
    assert!(line.contains(r#"on="blocking pool""#), "{line}");
}
