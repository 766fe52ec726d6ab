//! `flint-load`, the benchmarks' native HTTP client, against a real node: its load mode and
//! its `--probe` mode (one timed request per path read from standard input).

use crate::support::{Node, guests};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn flint_load() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flint-load"))
}

#[test]
fn probe_mode_times_one_request_per_line_and_reports_its_status() {
    let node = Node::start();
    node.deploy(&guests().hello, "hello", &[]);
    let mut probe = flint_load()
        .args([&format!("http://{}/", node.public), "--probe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = probe.stdin.take().unwrap();
    let mut lines = BufReader::new(probe.stdout.take().unwrap()).lines();
    let mut ask = |path: &str| -> (f64, u16) {
        writeln!(stdin, "{path}").unwrap();
        stdin.flush().unwrap();
        let line = lines.next().expect("an answer line").unwrap();
        let (latency, status) = line.split_once(' ').expect("`LATENCY STATUS`");
        (latency.parse().unwrap(), status.parse().unwrap())
    };
    // Each line is answered before the next is sent, on the same connection.
    for path in ["/fn/hello/?name=a", "/fn/hello/?name=b"] {
        let (latency, status) = ask(path);
        assert_eq!(status, 200);
        assert!(latency > 0.0 && latency < 60_000.0, "{latency}");
    }
    assert_eq!(ask("/fn/missing/").1, 404);
    drop(stdin);
    assert!(probe.wait().unwrap().success());
    // The node really served the two hello requests (its statistics may lag the answers).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = node
            .admin_call("GET", "/v1/stats?function=hello", None)
            .json();
        let invocations = stats["functions"]["hello"]["invocations"]
            .as_u64()
            .unwrap_or(0);
        if invocations >= 2 || Instant::now() > deadline {
            assert_eq!(invocations, 2, "{stats}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn load_mode_reports_requests_and_failures_as_json() {
    let node = Node::start();
    node.deploy(&guests().hello, "hello", &[]);
    let run = |path: &str| -> Value {
        let out = flint_load()
            .args([
                &format!("http://{}{path}", node.public),
                "--connections",
                "2",
                "--seconds",
                "0.5",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let ok = run("/fn/hello/");
    assert!(ok["requests"].as_u64().unwrap() > 0, "{ok}");
    assert_eq!(ok["non_2xx"], 0, "{ok}");
    assert_eq!(ok["errors"], 0, "{ok}");
    assert_eq!(ok["first_error"], Value::Null, "{ok}");
    let missing = run("/fn/missing/");
    assert_eq!(missing["non_2xx"], missing["requests"], "{missing}");
}

#[test]
fn load_mode_counts_failed_connections_and_keeps_going() {
    let mut node = Node::start();
    node.deploy(&guests().hello, "hello", &[]);
    let load = flint_load()
        .args([
            &format!("http://{}/fn/hello/", node.public),
            "--connections",
            "4",
            "--seconds",
            "1.5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The node goes away mid-run: open connections break, new ones are refused.
    std::thread::sleep(Duration::from_millis(500));
    node.kill9();
    let out = load.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    let first = report["first_error"].as_str().unwrap();
    assert!(
        first.contains("connecting to") || first.contains("sending a request"),
        "{report}"
    );
}
