//! Test support: builds the guest components once, starts real `fnctl serve` processes on
//! ephemeral ports with temporary data dirs, and talks to them over real HTTP.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "../fixtures.rs"]
mod fixtures;

pub use fixtures::{golden, minilm_dir, repo_root};

/// Paths of the built guest components.
pub struct Guests {
    /// examples/hello (flint-sdk).
    pub hello: PathBuf,
    /// tests/guests/misbehave (plain `wasi` crate).
    pub misbehave: PathBuf,
    /// examples/matmul (built-in GPU op).
    pub matmul: PathBuf,
    /// examples/vector-add (custom CUDA kernel).
    pub vector_add: PathBuf,
    /// tests/guests/gpu-hold (allocates GPU memory, then misbehaves on request).
    pub gpu_hold: PathBuf,
    /// examples/embed (sentence embeddings with a registered model).
    pub embed: PathBuf,
}

/// Builds the example and test guests for wasm32-wasip2 (once per test process; a file lock
/// keeps parallel test processes from building at the same time). With `FLINT_GUESTS_DIR` set
/// (a machine with no Rust toolchain, such as the GPU machines of `scripts/bench-gpu.sh`), the
/// guests are taken prebuilt from that folder instead.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("FLINT_GUESTS_DIR") {
            return Guests::in_dir(Path::new(&dir));
        }
        let root = repo_root();
        let target_dir = root.join("target").join("wasm-guests");
        std::fs::create_dir_all(&target_dir).unwrap();
        let lock = std::fs::File::create(target_dir.join(".build-lock")).unwrap();
        lock.lock().unwrap();
        for manifest in ["examples/Cargo.toml", "tests/guests/Cargo.toml"] {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let output = Command::new(cargo)
                .args(["build", "--release", "--target", "wasm32-wasip2", "--workspace", "--manifest-path"])
                .arg(root.join(manifest))
                .env("CARGO_TARGET_DIR", &target_dir)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET")
                .env_remove("CARGO_MAKEFLAGS")
                .output()
                .expect("running cargo to build the guests");
            assert!(
                output.status.success(),
                "building {manifest} for wasm32-wasip2 failed (run `rustup target add wasm32-wasip2`, \
                 which scripts/setup.sh does):\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Guests::in_dir(&target_dir.join("wasm32-wasip2").join("release"))
    })
}

impl Guests {
    /// The guests as built into `dir`; a missing one is a failure that names it.
    fn in_dir(dir: &Path) -> Guests {
        let guest = |name: &str| {
            let path = dir.join(name);
            assert!(path.is_file(), "guest {} is missing", path.display());
            path
        };
        Guests {
            hello: guest("hello.wasm"),
            misbehave: guest("misbehave.wasm"),
            matmul: guest("matmul.wasm"),
            vector_add: guest("vector_add.wasm"),
            gpu_hold: guest("gpu_hold.wasm"),
            embed: guest("embed.wasm"),
        }
    }
}

/// A copy of the component at `wasm` with a custom section naming `tag` appended: it runs the
/// same, but to a node it is another component (compiled and loaded on its own), as another
/// build of the same code would be. Functions deployed from the same bytes share their code
/// (see `flint_runtime::shared_code`); tests about one function's reload use a copy of its own.
pub fn distinct_copy(wasm: &Path, tag: &str) -> PathBuf {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                return;
            }
        }
    }
    let name = b"flint-test";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
    bytes.push(0); // custom section
    leb128(payload.len(), &mut bytes);
    bytes.extend_from_slice(&payload);

    let dir = std::env::temp_dir().join("flint-test-copies");
    std::fs::create_dir_all(&dir).unwrap();
    let stem = wasm.file_stem().unwrap().to_str().unwrap();
    let path = dir.join(format!("{stem}-{tag}.wasm"));
    // Written aside and renamed, as tests running at once may write the same copy.
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{stem}-{tag}.{}-{write}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts this is a Flint JSON error of `kind` with `status`; returns its message.
    pub fn expect_error(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.body);
        let json = self.json();
        assert_eq!(json["error"]["kind"], kind, "body: {}", self.body);
        json["error"]["message"].as_str().unwrap().to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn reply(response: Result<http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("HTTP request failed");
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .expect("reading the body"),
    }
}

/// Sends a request; `token` adds `Authorization: Bearer`.
pub fn request(method: &str, url: &str, token: Option<&str>, body: Option<&[u8]>) -> Reply {
    let agent = agent();
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    match body {
        Some(body) => reply(agent.run(builder.body(body.to_vec()).unwrap())),
        None => reply(agent.run(builder.body(()).unwrap())),
    }
}

/// What a `fnctl` run printed.
#[derive(Debug)]
pub struct Run {
    /// Whether it exited 0.
    pub success: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// The `fnctl` binary under test: the one cargo built with this test, or the one in
/// `FLINT_BIN_DIR` (a prebuilt kit on a machine with no Rust toolchain).
pub fn fnctl_binary() -> PathBuf {
    match std::env::var_os("FLINT_BIN_DIR") {
        Some(dir) => Path::new(&dir).join("fnctl"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_fnctl")),
    }
}

/// A `fnctl serve` process with its own data dir and ephemeral ports.
pub struct Node {
    child: Option<Child>,
    /// The data dir.
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// The public listener.
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The admin token.
    pub token: String,
    log: PathBuf,
}

impl Node {
    /// Starts a node in a fresh temporary data dir and waits until it is ready.
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Starts a node with extra `fnctl serve` arguments in a fresh data dir.
    pub fn start_with(extra: &[&str]) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut node = Node::start_in(&data, extra);
        node._tmp = Some(tmp);
        node
    }

    /// Starts a node on `data` (which may hold a previous node's registry).
    pub fn start_in(data: &Path, extra: &[&str]) -> Node {
        std::fs::create_dir_all(data).unwrap();
        let log = data.with_extension(format!("log-{}", rand_suffix()));
        let addresses = data.join("node.json");
        let _ = std::fs::remove_file(&addresses);
        let child = Command::new(fnctl_binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--max-instances",
                "64",
                "--data",
            ])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting fnctl serve");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        let described: Value = loop {
            if let Ok(bytes) = std::fs::read(&addresses)
                && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
                && value["pid"] == pid
            {
                break value;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let node = Node {
            child: Some(child),
            data: data.to_path_buf(),
            _tmp: None,
            public: described["public"].as_str().unwrap().parse().unwrap(),
            admin: described["admin"].as_str().unwrap().parse().unwrap(),
            token: std::fs::read_to_string(data.join("admin-token"))
                .unwrap()
                .trim()
                .to_string(),
            log,
        };
        node.wait_ready();
        node
    }

    /// Waits until `/readyz` says ready.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.get("/readyz").status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "never ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A URL on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// GET on the public listener.
    pub fn get(&self, path: &str) -> Reply {
        request("GET", &self.url(path), None, None)
    }

    /// POST on the public listener.
    pub fn post(&self, path: &str, body: &[u8]) -> Reply {
        request("POST", &self.url(path), None, Some(body))
    }

    /// An authenticated admin API call.
    pub fn admin_call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        request(method, &self.admin_url(path), Some(&self.token), body)
    }

    /// `fnctl ARGS` made to talk to this node (through its data dir, whatever the environment
    /// says), to be run as a test needs it.
    pub fn fnctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(fnctl_binary());
        command
            .args(args)
            .env("FLINT_DATA", &self.data)
            .env_remove("FNCTL_SERVER")
            .env_remove("FNCTL_TOKEN");
        command
    }

    /// Runs `fnctl` against this node (it finds the address and token in the data dir).
    pub fn fnctl(&self, args: &[&str]) -> Run {
        let output = self.fnctl_command(args).output().expect("running fnctl");
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Deploys with `fnctl deploy --json` and returns what the node reported; panics on failure.
    pub fn deploy(&self, wasm: &Path, name: &str, extra: &[&str]) -> Value {
        let mut args = vec!["deploy", wasm.to_str().unwrap(), "--name", name, "--json"];
        args.extend_from_slice(extra);
        let run = self.fnctl(&args);
        assert!(run.success, "deploy {name} failed: {}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap()
    }

    /// The function as `GET /v1/functions/NAME` describes it.
    pub fn function(&self, name: &str) -> Value {
        let reply = self.admin_call("GET", &format!("/v1/functions/{name}"), None);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    }

    /// Waits up to `limit` until `ready` holds for `name` as `GET /v1/functions/NAME`
    /// describes it; `what` names the awaited state in the failure message.
    pub fn wait_for_function(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        ready: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let f = self.function(name);
            if ready(&f) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reached {what}: {f}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `name` has `running` invocations running and `queued` waiting.
    pub fn wait_for_load(&self, name: &str, running: u64, queued: u64) {
        self.wait_for_function(
            name,
            &format!("load {running}/{queued}"),
            Duration::from_secs(30),
            |f| f["running"] == running && f["queued"] == queued,
        );
    }

    /// GPU bytes in use on the node (all devices).
    pub fn gpu_used(&self) -> u64 {
        self.admin_call("GET", "/v1/gpu", None).json()["used_bytes"]
            .as_u64()
            .unwrap()
    }

    /// The node's GPU backend (`cuda` or `cpu`).
    pub fn gpu_backend(&self) -> String {
        self.admin_call("GET", "/v1/gpu", None).json()["backend"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Resident bytes of the node's read-only mappings of `artifact`: the code wasmtime mapped
    /// from it (its writable mappings are linear-memory images inside instance slots). Zero
    /// when the node serves no code from that file.
    pub fn resident_code_bytes(&self, artifact: &Path) -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid())).unwrap();
        let artifact = artifact.to_str().unwrap();
        let mut in_code = false;
        let mut bytes = 0;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields
                .first()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                // A mapping's header: range, permissions, offset, device, inode, path.
                in_code = fields.get(5) == Some(&artifact) && !fields[1].contains('w');
            } else if in_code && fields.first() == Some(&"Rss:") {
                bytes += fields[1].parse::<u64>().unwrap() * 1024;
            }
        }
        bytes
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_with_timeout(&mut child, Duration::from_secs(60))
    }

    /// Sends SIGTERM without waiting; the caller then calls [`Node::wait_exit`].
    pub fn signal_terminate(&self) {
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node running");
        wait_with_timeout(&mut child, Duration::from_secs(60))
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("node running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every file and directory under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(base).unwrap().display().to_string());
            if path.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
