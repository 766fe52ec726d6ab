//! The admin API: authentication, the OpenAPI document against the real routes, and the CLI's
//! tables and JSON.

use crate::support::{Node, guests, request};
use std::os::unix::fs::PermissionsExt;

#[test]
fn admin_calls_need_the_token() {
    let node = Node::start();
    let token_mode = std::fs::metadata(node.data.join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(token_mode & 0o777, 0o600);

    let reply = request("GET", &node.admin_url("/v1/functions"), None, None);
    reply.expect_error(401, "unauthorized");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    request("GET", &node.admin_url("/v1/functions"), Some("wrong"), None)
        .expect_error(401, "unauthorized");
    let wasm = std::fs::read(&guests().hello).unwrap();
    request(
        "POST",
        &node.admin_url("/v1/functions/x/versions"),
        Some("nope"),
        Some(&wasm),
    )
    .expect_error(401, "unauthorized");
    assert!(!node.data.join("functions/x").exists());

    // Health and readiness are open on the admin listener too, for orchestrators.
    assert_eq!(
        request("GET", &node.admin_url("/healthz"), None, None).status,
        200
    );
    assert_eq!(
        request("GET", &node.admin_url("/readyz"), None, None).status,
        200
    );

    // The CLI shows the server's own words.
    let output = std::process::Command::new(crate::support::fnctl_binary())
        .args(["ls"])
        .env("FNCTL_SERVER", node.admin_url(""))
        .env("FNCTL_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("wrong admin token") && stderr.contains("HTTP 401"),
        "{stderr}"
    );
}

#[test]
fn openapi_document_matches_the_real_routes() {
    let node = Node::start();
    node.deploy(&guests().hello, "hello", &[]);
    let doc = node.admin_call("GET", "/v1/openapi.json", None).json();
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push((method.to_uppercase(), path.replace("{name}", "hello")));
        }
    }
    assert!(operations.len() >= 11, "{operations:?}");
    // DELETE last: it removes the function the others use.
    operations.sort_by_key(|(method, _)| method == "DELETE");
    for (method, path) in operations {
        let reply = node.admin_call(&method, &path, None);
        let routed = match reply.status {
            404 | 405 => {
                !reply.body.contains("no admin API route")
                    && !reply.body.contains("method-not-allowed")
            }
            _ => true,
        };
        assert!(
            routed,
            "{method} {path} is documented but not served: {} {}",
            reply.status, reply.body
        );
        assert_ne!(reply.status, 401, "{method} {path}");
    }
    node.admin_call("GET", "/v1/nothing", None)
        .expect_error(404, "not-found");
    let reply = node.admin_call("PUT", "/v1/functions", None);
    reply.expect_error(405, "method-not-allowed");
    assert_eq!(reply.header("allow"), Some("GET"));
}

#[test]
fn cli_lists_shows_and_invokes() {
    let node = Node::start();
    let run = node.fnctl(&["ls"]);
    assert!(
        run.success && run.stdout.contains("No functions deployed"),
        "{}",
        run.stdout
    );

    node.deploy(
        &guests().hello,
        "hello",
        &["--memory", "64MiB", "--timeout", "5s"],
    );
    node.deploy(&guests().misbehave, "raw", &[]);
    let run = node.fnctl(&["ls"]);
    assert!(run.success);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("VERSION"),
        "{}",
        run.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("hello")
            && l.contains("64MiB")
            && l.contains("5s")
            && l.split_whitespace().last() == Some("loaded")),
        "{}",
        run.stdout
    );
    assert!(lines.iter().any(|l| l.starts_with("raw")), "{}", run.stdout);

    let json: serde_json::Value =
        serde_json::from_str(&node.fnctl(&["ls", "--json"]).stdout).unwrap();
    assert_eq!(json["functions"].as_array().unwrap().len(), 2);

    // `--data DIR` alone (no environment) finds the node's address and token.
    let output = std::process::Command::new(crate::support::fnctl_binary())
        .args(["ls", "--json", "--data"])
        .arg(&node.data)
        .env_remove("FLINT_DATA")
        .env_remove("FNCTL_SERVER")
        .env_remove("FNCTL_TOKEN")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed["functions"][0]["name"], "hello");

    let run = node.fnctl(&["show", "hello"]);
    assert!(
        run.success && run.stdout.contains("64MiB"),
        "{}",
        run.stdout
    );

    let run = node.fnctl(&["invoke", "hello", "--path", "/greet?name=Ada"]);
    assert!(run.success, "{}", run.stderr);
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(answer["message"], "Hello, Ada!");
    assert_eq!(answer["method"], "GET");
    assert_eq!(answer["path"], "/fn/hello/greet");

    let run = node.fnctl(&["invoke", "raw", "--path", "/echo", "--data", "ping"]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.stdout, "POST /fn/raw/echo\nping\n");

    let run = node.fnctl(&["invoke", "raw", "--path", "/trap"]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("trapped") && run.stderr.contains("invocation"),
        "{}",
        run.stderr
    );

    let run = node.fnctl(&["invoke", "ghost"]);
    assert!(
        !run.success && run.stderr.contains("no function named `ghost`"),
        "{}",
        run.stderr
    );
}

#[test]
fn client_output_into_a_closed_pipe_ends_quietly() {
    let node = Node::start();
    node.deploy(&guests().hello, "hello", &[]);
    assert_eq!(node.get("/fn/hello/").status, 200);
    for args in [
        &["ls"][..],
        &["ls", "--json"],
        &["show", "hello"],
        &["invoke", "hello"],
    ] {
        // As in `fnctl ls | head -0`: whoever reads the output is gone before it is written.
        let mut child = node
            .fnctl_command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.is_empty(),
            "fnctl {args:?}: {} {stderr}",
            output.status
        );
    }
}
