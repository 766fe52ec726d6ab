//! GPU limits an operator sets: concurrency (per function and node-wide), GPU-time budgets
//! (429 and reset, kept across a restart), and what `fnctl gpu` shows of who holds what.

use crate::support::{Node, Reply, guests, request};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The wall-clock interval a gpu-hold invocation reported for itself, in ns.
fn interval(reply: &Reply) -> (u128, u128) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let words: Vec<&str> = reply.body.split_whitespace().collect();
    let field = |name: &str| -> u128 {
        let at = words.iter().position(|w| *w == name).unwrap();
        words[at + 1].parse().unwrap()
    };
    (field("started_ns"), field("ended_ns"))
}

/// The most intervals that overlap at any instant.
fn max_overlap(intervals: &[(u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = intervals
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    // Ends sort before starts at the same instant: touching intervals do not overlap.
    events.sort();
    let mut now = 0;
    let mut most = 0;
    for (_, change) in events {
        now += change;
        most = most.max(now);
    }
    most as usize
}

/// Sends `count` requests to each URL at once and returns every reply.
fn burst(node: &Node, paths: &[&str], count: usize) -> Vec<Reply> {
    let threads: Vec<_> = paths
        .iter()
        .flat_map(|path| {
            (0..count).map(move |_| {
                let url = node.url(path);
                std::thread::spawn(move || request("GET", &url, None, None))
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn gpu_concurrency_limits_hold_under_a_burst() {
    let node = Node::start_with(&["--max-gpu-concurrency", "3"]);
    node.deploy(&guests().gpu_hold, "two", &["--max-gpu-concurrency", "2"]);
    node.deploy(&guests().gpu_hold, "open", &[]);
    node.deploy(&guests().hello, "hello", &[]);
    assert_eq!(node.function("two")["uses_gpu"], true);
    assert_eq!(node.function("two")["max_gpu_concurrency"], 2);
    assert_eq!(
        node.function("hello")["uses_gpu"],
        false,
        "hello never imports flint:gpu, so GPU limits do not apply to it"
    );

    // The function's own limit: 6 requests, never more than 2 at once, all answered.
    let replies = burst(&node, &["/fn/two/?then=sleep&ms=300"], 6);
    let intervals: Vec<_> = replies.iter().map(interval).collect();
    assert_eq!(max_overlap(&intervals), 2, "{intervals:?}");

    // The node's limit across functions: 4 + 4 requests, never more than 3 at once.
    let replies = burst(
        &node,
        &["/fn/two/?then=sleep&ms=300", "/fn/open/?then=sleep&ms=300"],
        4,
    );
    let intervals: Vec<_> = replies.iter().map(interval).collect();
    assert_eq!(max_overlap(&intervals), 3, "{intervals:?}");
    let gpu = node.admin_call("GET", "/v1/gpu", None).json();
    assert_eq!(gpu["gpu_invocations"]["limit"], 3, "{gpu}");
    assert_eq!(gpu["gpu_invocations"]["running"], 0, "{gpu}");

    // Non-GPU functions are not held back by the GPU limit.
    let hold = {
        let url = node.url("/fn/open/?then=sleep&ms=1500");
        (0..3)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || request("GET", &url, None, None))
            })
            .collect::<Vec<_>>()
    };
    node.wait_for_load("open", 3, 0);
    assert_eq!(node.get("/fn/hello/").status, 200);
    assert_eq!(
        node.function("open")["running"],
        3,
        "hello answered while every GPU slot was still taken"
    );
    // With the node's slots taken and no queue, a GPU request is refused at once, naming the
    // node's limit.
    node.deploy(&guests().gpu_hold, "noqueue", &["--queue-depth", "0"]);
    let refused = node.get("/fn/noqueue/");
    let message = refused.expect_error(503, "overloaded");
    assert!(message.contains("limit of 3 GPU invocations"), "{message}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    for thread in hold {
        assert_eq!(thread.join().unwrap().status, 200);
    }

    // The function's limit with no queue names the function's GPU limit.
    node.deploy(
        &guests().gpu_hold,
        "single",
        &["--max-gpu-concurrency", "1", "--queue-depth", "0"],
    );
    let first = {
        let url = node.url("/fn/single/?then=sleep&ms=1000");
        std::thread::spawn(move || request("GET", &url, None, None))
    };
    node.wait_for_load("single", 1, 0);
    let message = node.get("/fn/single/").expect_error(503, "overloaded");
    assert!(message.contains("GPU concurrency limit"), "{message}");
    assert_eq!(first.join().unwrap().status, 200);
}

/// Waits until the wall clock is just past a multiple of `period` (so a test's requests fall
/// into one budget window).
fn wait_for_window_start(period: Duration) {
    let period_ms = period.as_millis();
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        if now % period_ms < 300 {
            return;
        }
        std::thread::sleep(Duration::from_millis(
            (period_ms - now % period_ms).min(50) as u64
        ));
    }
}

/// Waits until `name`'s GPU budget shows as spent. GPU time is charged when an invocation ends,
/// which can be a moment after its client has read the answer (the guest returns after its body
/// is sent), so a client's very next request may still be admitted.
fn wait_until_budget_is_spent(node: &Node, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(node, name)["gpu_budget"]["left_seconds"] != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the GPU time of `{name}` was never charged"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A request to `gpu-hold` that takes well over 5 ms of GPU time on the node's backend: four
/// 512×512 products on the CPU backend; on a GPU, which does one of those in microseconds,
/// forty 2048×2048 ones (about 0.7 TFLOP).
fn heavy_work(node: &Node) -> &'static str {
    if node.gpu_backend() == "cuda" {
        "?then=work&n=2048&reps=40"
    } else {
        "?then=work&n=512&reps=4"
    }
}

fn stats(node: &Node, name: &str) -> Value {
    let run = node.fnctl(&["stats", name, "--json"]);
    assert!(run.success, "{}", run.stderr);
    serde_json::from_str::<Value>(&run.stdout).unwrap()["functions"][name].clone()
}

#[test]
fn spent_gpu_budget_gives_429_naming_it_until_the_period_resets() {
    let node = Node::start();
    node.deploy(&guests().gpu_hold, "metered", &["--gpu-budget", "5ms/6s"]);
    let before = stats(&node, "metered");
    assert_eq!(before["gpu_budget"]["budget"], "5ms/6s", "{before}");
    assert_eq!(before["gpu_budget"]["left_seconds"], 0.005, "{before}");

    wait_for_window_start(Duration::from_secs(6));
    let reply = node.get(&format!("/fn/metered/{}", heavy_work(&node)));
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_until_budget_is_spent(&node, "metered");
    let refused = node.get("/fn/metered/");
    let message = refused.expect_error(429, "budget-exhausted");
    assert!(message.contains("GPU budget of 5ms/6s"), "{message}");
    assert!(message.contains("resets at"), "{message}");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");

    let spent = stats(&node, "metered");
    assert_eq!(spent["gpu_budget"]["left_seconds"], 0.0, "{spent}");
    assert!(
        spent["gpu_budget"]["used_seconds"].as_f64().unwrap() >= 0.005,
        "{spent}"
    );
    assert_eq!(spent["outcomes"]["rejected"], 1, "{spent}");
    let table = node.fnctl(&["stats", "metered"]);
    assert!(table.stdout.contains("GPU-BUDGET-LEFT"), "{}", table.stdout);
    assert!(
        table.stdout.contains("0.000s of 5ms/6s"),
        "{}",
        table.stdout
    );

    // Once the period is over, the budget is whole again.
    std::thread::sleep(Duration::from_secs(retry_after));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = node.get("/fn/metered/");
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert!(Instant::now() < deadline, "the budget never reset");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_spent_gpu_budget_stays_spent_across_a_restart() {
    let mut node = Node::start();
    node.deploy(
        &guests().gpu_hold,
        "monthly",
        &["--gpu-budget", "1ms/30days"],
    );
    let work = node.get(&format!("/fn/monthly/{}", heavy_work(&node)));
    assert_eq!(work.status, 200, "{}", work.body);
    wait_until_budget_is_spent(&node, "monthly");
    node.get("/fn/monthly/")
        .expect_error(429, "budget-exhausted");
    // The usage record is on disk before the node goes away.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(node.data.join("usage/usage.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "usage records never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(node.terminate().success());
    let node = Node::start_in(&node.data.clone(), &[]);
    let message = node
        .get("/fn/monthly/")
        .expect_error(429, "budget-exhausted");
    assert!(message.contains("1ms/30days"), "{message}");
}

fn gpu_json(node: &Node) -> Value {
    let run = node.fnctl(&["gpu", "--json"]);
    assert!(run.success, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn fnctl_gpu_shows_who_holds_memory_and_utilization() {
    let node = Node::start();
    node.deploy(&guests().gpu_hold, "holder", &[]);
    let idle = gpu_json(&node);
    assert_eq!(
        idle["devices"][0]["holders"],
        serde_json::json!([]),
        "{idle}"
    );
    assert_eq!(idle["devices"][0]["utilization_percent"], 0.0, "{idle}");
    assert_eq!(idle["devices"][0]["faulted"], false, "{idle}");
    assert_eq!(idle["devices"][0]["context_rebuilds"], 0, "{idle}");

    let holding = {
        let url = node.url("/fn/holder/?mb=6&then=sleep&ms=1500");
        std::thread::spawn(move || request("GET", &url, None, None))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let value = gpu_json(&node);
        if value["devices"][0]["holders"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
        {
            break value;
        }
        assert!(Instant::now() < deadline, "no holder ever shown: {value}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let device = &seen["devices"][0];
    assert_eq!(
        device["holders"],
        serde_json::json!([{ "function": "holder", "bytes": 6 << 20 }]),
        "{seen}"
    );
    assert_eq!(
        device["free_bytes"].as_u64().unwrap() + device["used_bytes"].as_u64().unwrap(),
        device["capacity_bytes"].as_u64().unwrap()
    );
    assert_eq!(seen["functions"][0]["name"], "holder", "{seen}");
    assert_eq!(seen["functions"][0]["held_bytes"], 6 << 20, "{seen}");
    let table = node.fnctl(&["gpu"]);
    assert!(table.success, "{}", table.stderr);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("holder") && l.contains("6 MiB")),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.lines().any(|l| l.ends_with(" ok")),
        "the device's STATE is `ok`: {}",
        table.stdout
    );
    assert_eq!(holding.join().unwrap().status, 200);

    // GPU work shows up as busy time and utilization.
    let reply = node.get(&format!("/fn/holder/{}", heavy_work(&node)));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let busy = gpu_json(&node);
    let device = &busy["devices"][0];
    assert!(device["busy_seconds"].as_f64().unwrap() > 0.0, "{busy}");
    assert!(
        device["utilization_percent"].as_f64().unwrap() > 0.0,
        "{busy}"
    );
    assert_eq!(device["holders"], serde_json::json!([]), "{busy}");
}
