#!/usr/bin/env python3
"""Flint's CPU benchmark suite, side by side with its peers in the same run.

Run it through `scripts/bench.sh` (which builds everything and installs the peers); it prints a
table and writes JSON (default target/bench/cpu.json). Every figure is a median over several
runs; peers are measured alternately (A B A B) so drift on a noisy machine hits both.

Sections (each can be picked with --only):
  sandbox   fresh instance of a deployed function (in-process, cargo bench)
  hello     HTTP throughput/latency of examples/hello: Flint vs `wasmtime serve`, c=1 and c=32
  heavy     the same for a componentize-py hello world (if bench/heavy built one)
  cold      first request after scale to zero (unloaded, and parked) vs warm, for hello, embed
            and the componentize-py component; deploy-to-first-answer
  density   node memory with 1, 100 and 1000 deployed idle functions
  template  one component deployed as many functions vs as many distinct components: node
            memory, and the first request after an unload while a sibling is loaded
  cap       the worst case of --max-loaded: round robin over twice as many functions (every
            request a cold start) vs no cap
  idle      what an idle server costs: wake-ups and CPU time per second, Flint vs `wasmtime serve`
  minilm    MiniLM embeddings/s on the CPU backend vs PyTorch + sentence-transformers, 2 threads
  overhead  the same with the model's transformer layers removed on both sides: what each spends
            around the forward pass (HTTP, guest, tokenizer, pooling; Python for PyTorch)
  batching  64 concurrent single-text clients, dynamic batching vs --no-batching
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "bench-tools")
# FLINT_BIN_DIR / FLINT_GUESTS_DIR point elsewhere (the GPU kit of scripts/bench-gpu.sh).
BIN_DIR = os.environ.get("FLINT_BIN_DIR", os.path.join(ROOT, "target", "release"))
FNCTL = os.path.join(BIN_DIR, "fnctl")
LOAD = os.path.join(BIN_DIR, "flint-load")
GUESTS = os.environ.get("FLINT_GUESTS_DIR", os.path.join(ROOT, "target", "wasm-guests", "wasm32-wasip2", "release"))
MODEL_DIR = os.environ.get("FLINT_MINILM_DIR", os.path.join(ROOT, "target", "models", "all-MiniLM-L6-v2"))
WASMTIME = os.path.join(TOOLS, "bin", "wasmtime")
VENV_PYTHON = os.path.join(TOOLS, "venv", "bin", "python")


def log(message):
    print(message, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def status_bytes(pid, field):
    """A size from /proc/PID/status, such as `VmRSS` (resident now) or `VmHWM` (the peak), in
    bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def rss_bytes(pid):
    return status_bytes(pid, "VmRSS")


class FlintNode:
    """A `fnctl serve` process on ephemeral ports with a temporary data dir."""

    def __init__(self, *extra, log_level="info", data=None):
        """`data`: the data dir of an earlier node to restart on (kept on close)."""
        self.tmp = tempfile.TemporaryDirectory(prefix="flint-bench-")
        self.data = data or os.path.join(self.tmp.name, "data")
        self.stderr = open(os.path.join(self.tmp.name, "node.log"), "w")
        env = dict(os.environ, RUST_LOG=log_level, NO_COLOR="1")
        self.proc = subprocess.Popen(
            [FNCTL, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--data", self.data, *extra],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env=env)
        deadline = time.time() + 600
        while True:
            try:
                with open(os.path.join(self.data, "node.json")) as f:
                    node = json.load(f)
                if node.get("pid") == self.proc.pid:
                    break
            except (OSError, ValueError):
                pass
            if time.time() > deadline:
                raise RuntimeError("node did not start")
            time.sleep(0.02)
        self.public = node["public"]
        self.admin = node["admin"]
        with open(os.path.join(self.data, "admin-token")) as f:
            self.token = f.read().strip()
        wait_http(f"http://{self.public}/readyz")

    def admin_call(self, method, path, body=None, content_type="application/json"):
        host, port = self.admin.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else None

    def deploy(self, wasm, name, query=""):
        """Deploys `wasm` as `name`, made distinct by a custom section naming it: a node does
        not compile a component again that it already serves (it reuses that code), and each
        measured function is to stand for a function of its own."""
        with open(wasm, "rb") as f:
            return self.deploy_bytes(with_custom_section(f.read(), name), name, query)

    def deploy_bytes(self, component, name, query=""):
        """Deploys the component `component` (bytes) as `name`, as it is."""
        return self.admin_call("POST", f"/v1/functions/{name}/versions?{query}", component, "application/wasm")

    def wait_for_residency(self, residency, name=None, timeout=120, poll=1.0):
        """Waits until function `name` (or every function) is `residency`: "loaded", "parked"
        or "unloaded"."""
        deadline = time.time() + timeout
        while True:
            if name:
                functions = [self.admin_call("GET", f"/v1/functions/{name}")]
            else:
                functions = self.admin_call("GET", "/v1/functions")["functions"]
            if all(f["residency"] == residency for f in functions):
                return
            if time.time() > deadline:
                raise RuntimeError(f"{name or 'the functions'} never became {residency}")
            time.sleep(poll)

    def add_model(self, name, path):
        return self.admin_call("POST", f"/v1/models/{name}", json.dumps({"path": path}).encode())

    def url(self, path):
        return f"http://{self.public}{path}"

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()
        self.tmp.cleanup()


class WasmtimeServe:
    """`wasmtime serve` of the same version as Flint's wasmtime, with WASI cli imports on."""

    def __init__(self, wasm, *extra):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [WASMTIME, "serve", "-S", "cli", *extra, "--addr", f"127.0.0.1:{self.port}", wasm],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def wrk(url, connections, seconds, script=None):
    """Runs wrk; returns requests/s, median and p99 latency in ms, and non-2xx count."""
    threads = max(1, min(2, connections))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        command += ["-s", script]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))

    def latency(pct):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": rps, "p50_ms": latency(50), "p99_ms": latency(99),
            "non_2xx": int(errors.group(1)) if errors else 0}


def alternate(runs, contenders, measure):
    """Measures each contender `runs` times, alternating A B A B; returns per-contender runs."""
    results = {name: [] for name in contenders}
    for _ in range(runs):
        for name, target in contenders.items():
            results[name].append(measure(target))
    return results


def medians(samples, keys=("rps", "p50_ms", "p99_ms")):
    out = {k: statistics.median(s[k] for s in samples) for k in keys}
    rps = [s["rps"] for s in samples]
    out["spread_pct"] = (max(rps) - min(rps)) / statistics.median(rps) * 100
    out["runs"] = len(samples)
    out["non_2xx"] = sum(s.get("non_2xx", 0) for s in samples)
    return out


# --- sections ---------------------------------------------------------------------------------

def bench_sandbox(args):
    output = subprocess.run(
        ["cargo", "bench", "--quiet", "-p", "flint-runtime", "--bench", "sandbox", "--",
         os.path.join(GUESTS, "hello.wasm"), str(args.sandbox_iterations)],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def bench_http(args, wasm, flint_name):
    node = FlintNode()
    node.deploy(wasm, flint_name)
    # The same node without spare sandboxes: every request instantiates its own, as
    # `wasmtime serve` does.
    no_spares = FlintNode("--spare-sandboxes", "0")
    no_spares.deploy(wasm, flint_name)
    peer = WasmtimeServe(wasm)
    try:
        contenders = {"flint": node.url(f"/fn/{flint_name}/"),
                      "flint_no_spares": no_spares.url(f"/fn/{flint_name}/"),
                      "wasmtime_serve": peer.url("/")}
        for url in contenders.values():  # warm all
            wrk(url, 8, 1)
        out = {}
        for connections in (1, 32):
            runs = alternate(args.runs, contenders, lambda url: wrk(url, connections, args.seconds))
            row = {name: medians(samples) for name, samples in runs.items()}
            row["ratio_rps"] = row["flint"]["rps"] / row["wasmtime_serve"]["rps"]
            row["ratio_no_spares_rps"] = row["flint_no_spares"]["rps"] / row["wasmtime_serve"]["rps"]
            out[f"c{connections}"] = row
            log(f"  {flint_name} c={connections}: flint {row['flint']['rps']:.0f} req/s, "
                f"without spares {row['flint_no_spares']['rps']:.0f} req/s, "
                f"wasmtime serve {row['wasmtime_serve']['rps']:.0f} req/s, ratio {row['ratio_rps']:.2f} "
                f"({row['ratio_no_spares_rps']:.2f} without spares)")
        return out
    finally:
        peer.close()
        no_spares.close()
        node.close()


def timed_get(conn, path, body=None):
    started = time.perf_counter()
    conn.request("POST" if body else "GET", path, body=body,
                 headers={"Content-Type": "application/json"} if body else {})
    response = conn.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status}")
    return elapsed


class Probe:
    """A native client (`flint-load --probe`) on one keep-alive connection: `get(path)` sends
    one request when the script says so and returns its latency in ms. After the machine sat
    idle, Python's own http.client adds a few tenths of a millisecond of its own (its code
    comes back into cold caches too), which is not the server's to answer for."""

    def __init__(self, base_url, body=None):
        args = [LOAD, base_url, "--probe"]
        self.body_file = None
        if body is not None:
            self.body_file = tempfile.NamedTemporaryFile(prefix="flint-probe-", suffix=".json")
            self.body_file.write(body)
            self.body_file.flush()
            args += ["--body-file", self.body_file.name]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def get(self, path):
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if len(line) != 2:
            raise RuntimeError(f"flint-load --probe ended: {path}")
        if line[1] != "200":
            raise RuntimeError(f"{path}: {line[1]}")
        return float(line[0])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.body_file:
            self.body_file.close()


IDLE_SECONDS = 1.2


HEAVY_WASM = os.path.join(ROOT, "target", "bench", "heavy-hello.wasm")


def first_requests_after_idle(node, peers, residency, args):
    """For `hello`, `embed` and (if built) the componentize-py component `heavy`: the first
    request once the function reached `residency` ("unloaded" or "parked") after the same idle
    time as a `--keep-warm` copy and, where `peers` has one, `wasmtime serve` of it."""
    wasm = {"hello": os.path.join(GUESTS, "hello.wasm"), "embed": os.path.join(GUESTS, "embed.wasm")}
    if os.path.exists(HEAVY_WASM):
        wasm["heavy"] = HEAVY_WASM
    for name, path in wasm.items():
        node.deploy(path, name)
        node.deploy(path, f"{name}-warm", "keep_warm=true")
    node.add_model("minilm", MODEL_DIR)
    embed_body = json.dumps({"texts": ["a cold start with the model still resident"]}).encode()
    out = {}
    for name in wasm:
        body = embed_body if name == "embed" else None
        peer = peers.get(name)
        path, warm_path = f"/fn/{name}/", f"/fn/{name}-warm/"
        client = Probe(f"http://{node.public}/", body)
        warm_client = Probe(f"http://{node.public}/", body)
        peer_client = Probe(peer.url("/")) if peer else None
        try:
            for _ in range(5):
                client.get(path)
                warm_client.get(warm_path)
                if peer_client:
                    peer_client.get("/")
            warm = [client.get(path) for _ in range(args.cold_runs * 5)]
            peer_warm = [peer_client.get("/") for _ in range(args.cold_runs * 5)] if peer_client else []
            cold, idle_warm, idle_peer = [], [], []
            for _ in range(args.cold_runs):
                node.wait_for_residency(residency, name, timeout=30, poll=0.1)
                time.sleep(IDLE_SECONDS)
                cold.append(client.get(path))
                time.sleep(IDLE_SECONDS)
                idle_warm.append(warm_client.get(warm_path))
                if peer_client:
                    time.sleep(IDLE_SECONDS)
                    idle_peer.append(peer_client.get("/"))
        finally:
            for c in (client, warm_client, peer_client):
                if c:
                    c.close()
        r = {"warm_ms": statistics.median(warm), "cold_ms": statistics.median(cold),
             "cold_p99_ms": max(cold), "runs": len(cold), "idle_seconds": IDLE_SECONDS,
             "idle_warm_ms": statistics.median(idle_warm)}
        r["cold_minus_warm_ms"] = r["cold_ms"] - r["warm_ms"]
        r["cold_minus_idle_warm_ms"] = r["cold_ms"] - r["idle_warm_ms"]
        if idle_peer:
            r["wasmtime_serve_warm_ms"] = statistics.median(peer_warm)
            r["wasmtime_serve_idle_ms"] = statistics.median(idle_peer)
        out[name] = r
        log(f"  {name} {residency}: warm {r['warm_ms']:.3f} ms; after {IDLE_SECONDS} s idle: first request "
            f"{r['cold_ms']:.3f} ms, kept warm {r['idle_warm_ms']:.3f} ms"
            + (f", wasmtime serve {r['wasmtime_serve_idle_ms']:.3f} ms" if idle_peer else ""))
    return out


def with_custom_section(component, tag):
    """`component` with a custom section appended: other bytes (so a node has no compiled code
    for them yet) that run the same."""
    def leb(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    name = b"flint-bench"
    payload = leb(len(name)) + name + tag.encode()
    return component + b"\x00" + leb(len(payload)) + payload


def deploy_to_first_answer(node, runs):
    """Deploy (upload, validate, compile or reuse, store) plus the first request, for `hello`
    and, where built, the componentize-py component: as new code (a custom section makes each
    upload's bytes unique) and as code the node already serves (the same bytes under a new
    name, as when a function is deployed again with other settings)."""
    wasm = {"hello": os.path.join(GUESTS, "hello.wasm")}
    if os.path.exists(HEAVY_WASM):
        wasm["heavy"] = HEAVY_WASM
    host, port = node.public.split(":")
    out = {}
    for name, path in wasm.items():
        with open(path, "rb") as f:
            component = f.read()
        times = {"new": [], "same": []}
        node.deploy_bytes(component, f"deploy-{name}-served")
        # The componentize-py component takes seconds to compile on 2 cores: fewer runs.
        for i in range(runs if name == "hello" else min(runs, 3)):
            for kind in ("new", "same"):
                body = with_custom_section(component, f"{kind}-{i}") if kind == "new" else component
                function = f"deploy-{name}-{kind}-{i}"
                conn = http.client.HTTPConnection(host, int(port))
                started = time.perf_counter()
                answer = node.deploy_bytes(body, function)
                timed_get(conn, f"/fn/{function}/")
                times[kind].append((time.perf_counter() - started) * 1000)
                conn.close()
                if (kind == "same") != ("reused_code_of" in answer):
                    raise RuntimeError(f"{function}: unexpected compile or reuse: {answer}")
        key = "" if name == "hello" else f"_{name}"
        out[f"deploy_to_first_answer{key}_ms"] = statistics.median(times["new"])
        out[f"deploy_same_code_to_first_answer{key}_ms"] = statistics.median(times["same"])
        log(f"  {name} deploy to first answer: new code {statistics.median(times['new']):.1f} ms, "
            f"code already served {statistics.median(times['same']):.1f} ms")
    return out


def bench_cold(args):
    """First request after scale to zero vs a warm one, timed by a native client. Every idle
    figure is a request after the same 1.2 s of idleness: to the unloaded (or parked) function,
    to a `--keep-warm` copy of it (so what the machine loses by sitting idle, such as cold
    caches and parked threads, is not charged to unloading) and, for `hello`, to `wasmtime
    serve` of the same component (the peer, which never unloads). Unloaded functions reload
    from disk; parked ones (a node with `--idle-park 1s` and unloading off) only fault their
    code pages back in."""
    peers = {"hello": WasmtimeServe(os.path.join(GUESTS, "hello.wasm"))}
    if os.path.exists(HEAVY_WASM):
        peers["heavy"] = WasmtimeServe(HEAVY_WASM)
    try:
        node = FlintNode("--idle-unload", "1s", "--idle-park", "0")
        try:
            out = first_requests_after_idle(node, peers, "unloaded", args)
            stats = node.admin_call("GET", "/v1/stats?function=hello")["functions"]["hello"]
            out["hello"]["cold_starts_counted"] = stats["cold_starts"]
            out.update(deploy_to_first_answer(node, args.cold_runs))
        finally:
            node.close()
        node = FlintNode("--idle-park", "1s", "--idle-unload", "0")
        try:
            out["parked"] = first_requests_after_idle(node, peers, "parked", args)
        finally:
            node.close()
        return out
    finally:
        for peer in peers.values():
            peer.close()


def template_memory(wasm, count, same):
    """Node RSS above an empty node with `count` functions of `wasm`, each called once: right
    after (loaded) and once they parked. `same`: every function deployed from the same bytes
    (one component, many functions), else each from bytes of its own (which it compiles)."""
    node = FlintNode("--idle-park", "2s", "--idle-unload", "1h", log_level="warn")
    try:
        empty = rss_bytes(node.proc.pid)
        with open(wasm, "rb") as f:
            component = f.read()
        # The first deploy compiles; with `same`, the others reuse its code.
        node.deploy_bytes(component if same else with_custom_section(component, "t0"), "t0")
        with concurrent.futures.ThreadPoolExecutor(2) as deployers:
            list(deployers.map(
                lambda i: node.deploy_bytes(component, f"t{i}") if same else node.deploy(wasm, f"t{i}"),
                range(1, count)))
        node.wait_for_residency("parked", timeout=60, poll=0.2)
        host, port = node.public.split(":")
        conn = http.client.HTTPConnection(host, int(port))
        for i in range(count):
            timed_get(conn, f"/fn/t{i}/")
        conn.close()
        loaded = rss_bytes(node.proc.pid)
        node.wait_for_residency("parked", timeout=60, poll=0.2)
        time.sleep(1)
        parked = rss_bytes(node.proc.pid)
        return {"loaded_mib": (loaded - empty) / 2**20, "parked_mib": (parked - empty) / 2**20}
    finally:
        node.close()


def deploy_burst(wasm, count):
    """`count` deploys of the same new bytes at once (a template rolled out to as many tenants):
    wall time until all answered, how many compiled, and the node's peak RSS above its start."""
    node = FlintNode(log_level="warn")
    try:
        start_rss = rss_bytes(node.proc.pid)
        with open(wasm, "rb") as f:
            component = with_custom_section(f.read(), f"burst-{time.time()}")
        barrier = threading.Barrier(count)

        def deploy(i):
            barrier.wait()
            return node.deploy_bytes(component, f"burst{i}")
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(count) as deployers:
            answers = list(deployers.map(deploy, range(count)))
        seconds = time.perf_counter() - started
        return {"burst_deploys": count, "burst_seconds": seconds,
                "burst_compiled": sum("reused_code_of" not in a for a in answers),
                "burst_peak_rss_mib": (status_bytes(node.proc.pid, "VmHWM") - start_rss) / 2**20}
    finally:
        node.close()


def first_requests_of_tenants(wasm, body, args):
    """The first request to an unloaded function while another function deployed from the
    same component is loaded (`--keep-warm`), alternated with the first request to an unloaded
    function of a component of its own, after the same idle time."""
    node = FlintNode("--idle-unload", "1s", "--idle-park", "0")
    try:
        with open(wasm, "rb") as f:
            component = f.read()
        node.deploy_bytes(component, "tenant-warm", "keep_warm=true")
        node.deploy_bytes(component, "tenant")
        node.deploy(wasm, "alone")
        client = Probe(f"http://{node.public}/", body)
        try:
            for _ in range(3):
                client.get("/fn/tenant/")
                client.get("/fn/alone/")
            tenant, alone = [], []
            for _ in range(args.cold_runs):
                node.wait_for_residency("unloaded", "tenant", timeout=30, poll=0.1)
                node.wait_for_residency("unloaded", "alone", timeout=30, poll=0.1)
                time.sleep(IDLE_SECONDS)
                tenant.append(client.get("/fn/tenant/"))
                time.sleep(IDLE_SECONDS)
                alone.append(client.get("/fn/alone/"))
        finally:
            client.close()
        stats = node.admin_call("GET", "/v1/stats")["functions"]
        return {"tenant_unloaded_ms": statistics.median(tenant), "alone_unloaded_ms": statistics.median(alone),
                "runs": len(tenant), "tenant_cold_starts_counted": stats["tenant"]["cold_starts"],
                "alone_cold_starts_counted": stats["alone"]["cold_starts"]}
    finally:
        node.close()


def bench_template(args):
    """One component deployed as many functions (a template per tenant) against as many
    functions each deployed from a component of its own: node memory with the functions
    loaded and parked, and the first request after an unload while a sibling is loaded."""
    wasm = {"hello": (os.path.join(GUESTS, "hello.wasm"), args.template_functions)}
    if os.path.exists(HEAVY_WASM):
        # Each distinct componentize-py function compiles for seconds on 2 cores: fewer.
        wasm["heavy"] = (HEAVY_WASM, max(2, args.template_functions // 10))
    out = {}
    for name, (path, count) in wasm.items():
        r = {"functions": count}
        for same in (True, False):
            memory = template_memory(path, count, same)
            for key, value in memory.items():
                r[("same_" if same else "distinct_") + key] = value
        r.update(first_requests_of_tenants(path, None, args))
        r.update(deploy_burst(path, 8))
        out[name] = r
        log(f"  {name}, {count} functions, each called once: one component "
            f"{r['same_loaded_mib']:.1f} MiB loaded, {r['same_parked_mib']:.1f} MiB parked; "
            f"distinct components {r['distinct_loaded_mib']:.1f} / {r['distinct_parked_mib']:.1f} MiB. "
            f"First request after an unload, a sibling loaded {r['tenant_unloaded_ms']:.3f} ms, "
            f"alone {r['alone_unloaded_ms']:.3f} ms. {r['burst_deploys']} deploys of new bytes at once: "
            f"{r['burst_seconds']:.2f} s, {r['burst_compiled']} compiled, peak RSS +{r['burst_peak_rss_mib']:.0f} MiB")
    return out


def thread_activity(pid):
    """(thread name, context switches, CPU seconds) of every thread of `pid`, by thread id."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{task}"
        try:
            with open(f"{base}/comm") as f:
                name = f.read().strip()
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"{base}/status") as f:
                switches = sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            continue  # a thread that just exited
        out[task] = (name, switches, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def idle_cost(pid, seconds):
    """Wake-ups (context switches) and CPU milliseconds per second of `pid` over `seconds`, by
    thread name. Threads that exit in between are not counted; new ones count in full."""
    before = thread_activity(pid)
    time.sleep(seconds)
    after = thread_activity(pid)
    by_thread = {}
    for tid, (name, switches, cpu) in after.items():
        _, was_switches, was_cpu = before.get(tid, (name, 0, 0.0))
        total = by_thread.setdefault(name, {"wakeups_per_s": 0.0, "cpu_ms_per_s": 0.0})
        total["wakeups_per_s"] += (switches - was_switches) / seconds
        total["cpu_ms_per_s"] += (cpu - was_cpu) * 1000 / seconds
    return {"wakeups_per_s": sum(t["wakeups_per_s"] for t in by_thread.values()),
            "cpu_ms_per_s": sum(t["cpu_ms_per_s"] for t in by_thread.values()),
            "threads": {k: v for k, v in by_thread.items() if v["wakeups_per_s"] > 0}}


IDLE_COST_SECONDS = 20
# Wait this long after the last request before measuring, so that what a server does only
# right after work (Flint samples GPU utilization for one 10 s window after the last GPU work)
# is over: the figure is what a server that stays idle costs.
IDLE_SETTLE_SECONDS = 12


def bench_idle(args):
    """What a server that serves nothing costs: `hello` deployed and called once, then
    IDLE_SETTLE_SECONDS and IDLE_COST_SECONDS of nothing, counting over the latter every thread's context switches (each one a wake-up)
    and CPU time. The peer is `wasmtime serve` without and with a timeout (`-W timeout=30s`,
    the protection from spinning guests that Flint always has: it adds an epoch thread)."""
    wasm = os.path.join(GUESTS, "hello.wasm")
    out = {}
    node = FlintNode(log_level="warn")
    try:
        node.deploy(wasm, "hello")
        urllib.request.urlopen(node.url("/fn/hello/")).read()
        time.sleep(IDLE_SETTLE_SECONDS)
        out["flint"] = idle_cost(node.proc.pid, IDLE_COST_SECONDS)
    finally:
        node.close()
    for key, extra in (("wasmtime_serve", ()), ("wasmtime_serve_timeout", ("-W", "timeout=30s"))):
        peer = WasmtimeServe(wasm, *extra)
        try:
            urllib.request.urlopen(peer.url("/")).read()
            time.sleep(IDLE_SETTLE_SECONDS)
            out[key] = idle_cost(peer.proc.pid, IDLE_COST_SECONDS)
        finally:
            peer.close()
    for key, r in out.items():
        log(f"  {key}: {r['wakeups_per_s']:.1f} wake-ups/s, {r['cpu_ms_per_s']:.2f} ms CPU/s, {r['threads']}")
    return out


def bench_density(args):
    """Node RSS with N deployed `hello` functions: just deployed (loaded), after they were
    idle-unloaded (scale to zero), after a restart (functions start unloaded), after each
    was called once on the restarted node and then parked, and the same on a node restarted
    with `--max-loaded N/10` (the least recently used unload beyond it)."""
    out = {}
    wasm = os.path.join(GUESTS, "hello.wasm")
    for count in args.density:
        data_dir = tempfile.TemporaryDirectory(prefix="flint-density-")
        data = os.path.join(data_dir.name, "data")
        node = FlintNode("--idle-unload", "5s", log_level="warn", data=data)
        restarted = None
        try:
            empty = rss_bytes(node.proc.pid)
            started = time.time()
            # Two deploys at a time (the machine's cores); each compiles its own copy.
            with concurrent.futures.ThreadPoolExecutor(2) as deployers:
                list(deployers.map(lambda i: node.deploy(wasm, f"f{i}"), range(count)))
            deploy_s = time.time() - started
            conn_host, conn_port = node.public.split(":")
            conn = http.client.HTTPConnection(conn_host, int(conn_port))
            timed_get(conn, f"/fn/f{count - 1}/")  # they serve
            conn.close()
            loaded = rss_bytes(node.proc.pid)
            loaded_count = sum(f["loaded"] for f in node.admin_call("GET", "/v1/functions")["functions"])
            node.wait_for_residency("unloaded")
            time.sleep(1)
            idle = rss_bytes(node.proc.pid)
            node.close()
            started = time.time()
            restarted = FlintNode("--idle-park", "2s", "--idle-unload", "1h", log_level="warn", data=data)
            restart_s = time.time() - started
            conn_host, conn_port = restarted.public.split(":")
            conn = http.client.HTTPConnection(conn_host, int(conn_port))
            timed_get(conn, f"/fn/f{count - 1}/")  # they serve after the restart
            time.sleep(1)
            after_restart = rss_bytes(restarted.proc.pid)
            # Every function called once, then parked: what a parked function keeps.
            for i in range(count):
                timed_get(conn, f"/fn/f{i}/")
            conn.close()
            restarted.wait_for_residency("parked")
            time.sleep(1)
            parked = rss_bytes(restarted.proc.pid)
            restarted.close()
            # The same burst with a cap on loaded functions.
            cap = max(1, count // 10)
            restarted = FlintNode("--idle-park", "2s", "--idle-unload", "1h", "--max-loaded", str(cap),
                                  log_level="warn", data=data)
            conn_host, conn_port = restarted.public.split(":")
            conn = http.client.HTTPConnection(conn_host, int(conn_port))
            for i in range(count):
                timed_get(conn, f"/fn/f{i}/")
            conn.close()
            deadline = time.time() + 120
            while True:
                residency = [f["residency"] for f in restarted.admin_call("GET", "/v1/functions")["functions"]]
                if "loaded" not in residency:
                    break
                if time.time() > deadline:
                    raise RuntimeError("the capped node's functions never parked")
                time.sleep(1)
            time.sleep(1)
            capped = rss_bytes(restarted.proc.pid)
            capped_parked = residency.count("parked")
            per = lambda rss: (rss - empty) / count / 1024
            out[str(count)] = {
                "empty_node_rss_mib": empty / 2**20,
                "loaded_rss_mib": loaded / 2**20, "loaded_functions": loaded_count,
                "loaded_per_function_kib": per(loaded),
                "idle_rss_mib": idle / 2**20, "idle_per_function_kib": per(idle),
                "restarted_rss_mib": after_restart / 2**20, "restarted_per_function_kib": per(after_restart),
                "parked_rss_mib": parked / 2**20, "parked_per_function_kib": per(parked),
                "max_loaded": cap, "capped_rss_mib": capped / 2**20, "capped_parked_functions": capped_parked,
                "capped_per_function_kib": per(capped),
                "deploy_seconds": deploy_s, "restart_to_ready_seconds": restart_s}
            log(f"  {count} functions: empty node {empty / 2**20:.1f} MiB; just deployed "
                f"{loaded / 2**20:.1f} MiB ({loaded_count} loaded); idle-unloaded {idle / 2**20:.1f} MiB "
                f"({per(idle):.1f} KiB each); restarted {after_restart / 2**20:.1f} MiB "
                f"({per(after_restart):.1f} KiB each); all called once, then parked {parked / 2**20:.1f} MiB "
                f"({per(parked):.1f} KiB each); the same with --max-loaded {cap}: {capped / 2**20:.1f} MiB "
                f"({capped_parked} parked, {per(capped):.1f} KiB each); deploying took {deploy_s:.1f} s, "
                f"restart {restart_s:.1f} s")
        finally:
            node.close() if node.proc.poll() is None else None
            if restarted:
                restarted.close()
            data_dir.cleanup()
    return out


def node_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_cap(args, functions=200, cap=100):
    """The worst case of `--max-loaded`: one client calling `functions` deployed `hello`s in
    turn on a node that may keep only `cap` loaded, so that every request reloads (the least
    recently used is always the next one called), against the same node without a cap.
    Alternated runs; req/s, median latency, the node's CPU time per request."""
    wasm = os.path.join(GUESTS, "hello.wasm")
    data_dir = tempfile.TemporaryDirectory(prefix="flint-cap-")
    data = os.path.join(data_dir.name, "data")
    try:
        node = FlintNode(log_level="warn", data=data)
        with concurrent.futures.ThreadPoolExecutor(2) as deployers:
            list(deployers.map(lambda i: node.deploy(wasm, f"f{i}"), range(functions)))
        node.close()

        def measure(max_loaded):
            node = FlintNode("--idle-park", "1h", "--idle-unload", "1h", "--max-loaded", str(max_loaded),
                             log_level="warn", data=data)
            try:
                host, port = node.public.split(":")
                conn = http.client.HTTPConnection(host, int(port))
                for i in range(functions):
                    timed_get(conn, f"/fn/f{i}/")
                latencies = []
                cpu = node_cpu_seconds(node.proc.pid)
                started = time.perf_counter()
                while time.perf_counter() - started < args.seconds:
                    latencies.append(timed_get(conn, f"/fn/f{len(latencies) % functions}/"))
                elapsed = time.perf_counter() - started
                cpu = node_cpu_seconds(node.proc.pid) - cpu
                conn.close()
                stats = node.admin_call("GET", "/v1/stats")["functions"]
                return {"rps": len(latencies) / elapsed, "p50_ms": statistics.median(latencies),
                        "node_cpu_ms_per_request": cpu * 1000 / len(latencies),
                        "cold_starts": sum(f["cold_starts"] for f in stats.values())}
            finally:
                node.close()

        runs = alternate(args.runs, {"capped": cap, "uncapped": 0}, measure)
        out = {"functions": functions, "max_loaded": cap, "runs": runs}
        for name, samples in runs.items():
            out[name] = {k: statistics.median(s[k] for s in samples)
                         for k in ("rps", "p50_ms", "node_cpu_ms_per_request")}
        out["ratio_rps"] = out["capped"]["rps"] / out["uncapped"]["rps"]
        log(f"  round robin over {functions} functions: --max-loaded {cap} {out['capped']['rps']:.0f} req/s "
            f"({out['capped']['node_cpu_ms_per_request']:.2f} ms CPU each), no cap "
            f"{out['uncapped']['rps']:.0f} req/s ({out['uncapped']['node_cpu_ms_per_request']:.2f} ms CPU each)")
        return out
    finally:
        data_dir.cleanup()


def texts_of_tokens(tokens, count):
    """`count` distinct texts of about `tokens` word-piece tokens each."""
    words = ("the quick brown fox jumps over the lazy dog while serverless functions scale to "
             "zero and the pooled gpu keeps model weights resident between requests").split()
    texts = []
    for i in range(count):
        body = [words[(i + j) % len(words)] for j in range(tokens - 2)]
        body[0] = f"text{i}"
        texts.append(" ".join(body))
    return texts


def flint_embed_rate(node, texts, batch, seconds):
    host, port = node.public.split(":")
    conn = http.client.HTTPConnection(host, int(port))
    bodies = [json.dumps({"texts": texts[i:i + batch]}).encode() for i in range(0, len(texts), batch)]
    timed_get(conn, "/fn/embed/", bodies[0])
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        timed_get(conn, "/fn/embed/", bodies[done % len(bodies)])
        done += 1
    elapsed = time.perf_counter() - started
    conn.close()
    return done * batch / elapsed


MINILM_BATCHES = (1, 8, 32)


def bench_minilm(args, python=VENV_PYTHON, torch_device="cpu", torch_threads=2, model_dir=MODEL_DIR,
                 sequence_lengths=(128, 256)):
    """MiniLM (`model_dir`) through examples/embed vs PyTorch + sentence-transformers (`python`
    runs it on `torch_device`; 0 threads: torch's default), batch 1, 8, 32. Each run measures
    every configuration on Flint, then every one on PyTorch in one process (its start costs
    more than a measurement), the two alternated run by run."""
    if not os.path.exists(python):
        return {"skipped": f"no Python with PyTorch at {python} (scripts/bench.sh makes one)"}
    node = FlintNode(log_level="warn")
    out = {"torch_device": torch_device}
    texts_dir = tempfile.TemporaryDirectory(prefix="flint-bench-texts-")
    try:
        node.deploy(os.path.join(GUESTS, "embed.wasm"), "embed")
        node.add_model("minilm", model_dir)
        out["node_gpu"] = node.admin_call("GET", "/v1/gpu")
        # Where the model runs (backend, device, and why it fell back to the CPU if it did).
        out["model"] = node.admin_call("GET", "/v1/models")["models"][0]
        texts, files = {}, {}
        for seq in sequence_lengths:
            texts[seq] = texts_of_tokens(seq, 64)
            files[seq] = os.path.join(texts_dir.name, f"seq{seq}.json")
            with open(files[seq], "w") as f:
                json.dump(texts[seq], f)
        configs = [(seq, batch) for seq in sequence_lengths for batch in MINILM_BATCHES]
        flint_runs = {config: [] for config in configs}
        torch_runs = {config: [] for config in configs}
        for _ in range(args.runs):
            for seq, batch in configs:
                flint_runs[(seq, batch)].append(flint_embed_rate(node, texts[seq], batch, args.seconds))
            torch = subprocess.run(
                [python, os.path.join(ROOT, "bench", "pytorch_minilm.py"), "--model", model_dir,
                 "--texts", *files.values(), "--batch", *map(str, MINILM_BATCHES), "--seconds", str(args.seconds),
                 "--device", torch_device, "--threads", str(torch_threads)],
                capture_output=True, text=True, check=True).stdout
            rates = {(r["texts"], r["batch"]): r["embeddings_per_second"] for r in json.loads(torch)["results"]}
            for seq, batch in configs:
                torch_runs[(seq, batch)].append(rates[(files[seq], batch)])
        for seq, batch in configs:
            f, t = flint_runs[(seq, batch)], torch_runs[(seq, batch)]
            row = {"flint": statistics.median(f), "pytorch": statistics.median(t), "flint_runs": f, "pytorch_runs": t}
            row["ratio"] = row["flint"] / row["pytorch"]
            out[f"seq{seq}_batch{batch}"] = row
            log(f"  seq {seq} batch {batch}: flint {row['flint']:.1f}/s, pytorch {row['pytorch']:.1f}/s, "
                f"ratio {row['ratio']:.2f}")
        return out
    finally:
        node.close()
        texts_dir.cleanup()


def model_without_layers(parent):
    """A copy of MiniLM in a new directory under `parent` with no transformer layers (the weights
    file is linked, and its layers go unused): tokenizer, embeddings, LayerNorm, pooling and the
    same 384-wide output, but no forward pass to speak of."""
    path = tempfile.mkdtemp(prefix="minilm-no-layers-", dir=parent)
    for name in os.listdir(MODEL_DIR):
        if name != "config.json":
            os.symlink(os.path.join(MODEL_DIR, name), os.path.join(path, name))
    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        config = json.load(f)
    config["num_hidden_layers"] = 0
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


def bench_overhead(args, python=VENV_PYTHON, torch_device="cpu", torch_threads=2):
    """What each side spends around the forward pass: `bench_minilm` at seq 128 with MiniLM
    stripped of its transformer layers (`model_without_layers`) on both sides, so what is left is
    HTTP, the guest, tokenizing, embedding lookup, pooling and, for PyTorch, its Python and
    padding. On a GPU, where the layers cost little, this is much of a request."""
    with tempfile.TemporaryDirectory(prefix="flint-bench-overhead-") as parent:
        return bench_minilm(args, python, torch_device, torch_threads,
                            model_dir=model_without_layers(parent), sequence_lengths=(128,))


ONE_TEXT = {"texts": ["one short sentence to embed, as a chat app would send it"]}


def wrk_one_text(seconds):
    """A measure for bench_batching: wrk with 64 connections posting ONE_TEXT."""
    script = os.path.join(tempfile.gettempdir(), "flint-embed-one.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = '{json.dumps(ONE_TEXT)}'\n")
    return lambda url: wrk(url, 64, seconds, script)


def bench_batching(args, measure=None):
    """64 concurrent single-text clients (`measure(url)`, wrk by default) against a node with
    dynamic batching and one with --no-batching, alternated."""
    measure = measure or wrk_one_text(args.seconds)
    out = {}
    nodes = {}
    try:
        for label, extra in (("batching", ()), ("no_batching", ("--no-batching",))):
            node = FlintNode(*extra, log_level="warn")
            node.deploy(os.path.join(GUESTS, "embed.wasm"), "embed")
            node.add_model("minilm", MODEL_DIR)
            nodes[label] = node
        contenders = {label: node.url("/fn/embed/") for label, node in nodes.items()}
        runs = alternate(args.runs, contenders, measure)
        for label, samples in runs.items():
            out[label] = medians(samples)
        out["ratio_rps"] = out["batching"]["rps"] / out["no_batching"]["rps"]
        for label, node in nodes.items():
            models = node.admin_call("GET", "/v1/models")["models"]
            out[label]["model_counters"] = models[0].get("batching") or models[0]
        log(f"  64 clients: batching {out['batching']['rps']:.1f} req/s, "
            f"no batching {out['no_batching']['rps']:.1f} req/s, ratio {out['ratio_rps']:.2f}")
        return out
    finally:
        for node in nodes.values():
            node.close()


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    wasmtime_version = subprocess.run([WASMTIME, "--version"], capture_output=True, text=True).stdout.strip() \
        if os.path.exists(WASMTIME) else None
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%d"), "wasmtime": wasmtime_version, "wrk": wrk_version}


def print_table(results):
    rows = []
    s = results.get("sandbox")
    if s:
        p, o = s["pooling"]["store_and_instantiate"], s["on_demand"]["store_and_instantiate"]
        rows.append(("fresh sandbox (store + instantiate), median", f"{p['median_us']:.1f} us",
                     f"on-demand alloc {o['median_us']:.1f} us", f"{o['median_us'] / p['median_us']:.2f}x faster",
                     "<= 10 us"))
        rows.append(("fresh sandbox, p99", f"{p['p99_us']:.1f} us", f"{o['p99_us']:.1f} us", "", ""))
    for key, label in (("hello", "hello"), ("heavy", "componentize-py hello")):
        h = results.get(key)
        if h and "c1" in h:
            for c in ("c1", "c32"):
                r = h[c]
                rows.append((f"{label} req/s, {c.replace('c', 'c=')}", f"{r['flint']['rps']:.0f}",
                             f"wasmtime serve {r['wasmtime_serve']['rps']:.0f}", f"{r['ratio_rps']:.2f}x",
                             ">= 1.2x"))
                if "flint_no_spares" in r:
                    rows.append((f"{label} req/s, {c.replace('c', 'c=')}, --spare-sandboxes 0",
                                 f"{r['flint_no_spares']['rps']:.0f}",
                                 f"wasmtime serve {r['wasmtime_serve']['rps']:.0f}",
                                 f"{r['ratio_no_spares_rps']:.2f}x", ""))
                rows.append((f"{label} p50 / p99 ms, {c.replace('c', 'c=')}",
                             f"{r['flint']['p50_ms']:.3f} / {r['flint']['p99_ms']:.3f}",
                             f"{r['wasmtime_serve']['p50_ms']:.3f} / {r['wasmtime_serve']['p99_ms']:.3f}", "", ""))
    c = results.get("cold")
    if c:
        names = [name for name in ("hello", "embed", "heavy") if name in c]
        cases = [(name, c[name], "scale to zero (unloaded)") for name in names]
        cases += [(name, c["parked"][name], "parking") for name in names if "parked" in c]
        for name, r, after in cases:
            name = "componentize-py hello" if name == "heavy" else name
            rows.append((f"{name}: first request after {after}", f"{r['cold_ms']:.3f} ms",
                         f"warm {r['warm_ms']:.3f} ms", f"{r['cold_minus_warm_ms']:+.3f} ms", "<= 1 ms"))
            if "idle_warm_ms" in r:
                rows.append((f"{name}: ... vs kept warm, same idle time", f"{r['cold_ms']:.3f} ms",
                             f"kept warm {r['idle_warm_ms']:.3f} ms", f"{r['cold_minus_idle_warm_ms']:+.3f} ms",
                             "<= 1 ms"))
            if "wasmtime_serve_idle_ms" in r:
                rows.append((f"{name}: ... vs wasmtime serve, same idle time", f"{r['cold_ms']:.3f} ms",
                             f"wasmtime serve {r['wasmtime_serve_idle_ms']:.3f} ms",
                             f"{r['cold_ms'] / r['wasmtime_serve_idle_ms']:.2f}x", ""))
        for key, label in (("", "hello"), ("_heavy", "componentize-py hello")):
            new, same = c.get(f"deploy_to_first_answer{key}_ms"), c.get(f"deploy_same_code_to_first_answer{key}_ms")
            if new is not None:
                rows.append((f"deploy to first answer ({label}), new code", f"{new:.1f} ms", "", "", ""))
            if same is not None:
                rows.append((f"deploy to first answer ({label}), same component already served",
                             f"{same:.1f} ms", f"new code {new:.1f} ms", f"{new / same:.0f}x faster", ""))
    d = results.get("density")
    if d:
        # Fixed costs (threads, the compiler's code paged in) dominate small counts: the cost of
        # a function is the growth from the previous count.
        previous = None
        for count, r in sorted(d.items(), key=lambda kv: int(kv[0])):
            def growth(key):
                if previous is None:
                    return ""
                kib = (r[key] - d[previous][key]) * 1024 / (int(count) - int(previous))
                return f"{kib:+.1f} KiB per function over {previous}"
            rows.append((f"node RSS, {count} idle functions (unloaded)", f"{r['idle_rss_mib']:.1f} MiB",
                         growth("idle_rss_mib"), "", "10k in <= 1 GiB"))
            rows.append((f"node RSS, {count} idle functions after restart", f"{r['restarted_rss_mib']:.1f} MiB",
                         growth("restarted_rss_mib"), "", "10k in <= 1 GiB"))
            if "parked_rss_mib" in r:
                rows.append((f"node RSS, {count} parked functions", f"{r['parked_rss_mib']:.1f} MiB",
                             growth("parked_rss_mib"), "", ""))
            if "capped_rss_mib" in r:
                rows.append((f"node RSS, {count} called once, --max-loaded {r['max_loaded']}",
                             f"{r['capped_rss_mib']:.1f} MiB", growth("capped_rss_mib"), "", ""))
            rows.append((f"node RSS, {count} just deployed ({r['loaded_functions']} loaded)",
                         f"{r['loaded_rss_mib']:.1f} MiB", growth("loaded_rss_mib"), "", ""))
            previous = count
    for name, r in (results.get("template") or {}).items():
        label = "componentize-py hello" if name == "heavy" else name
        for state in ("loaded", "parked"):
            same, distinct = r[f"same_{state}_mib"], r[f"distinct_{state}_mib"]
            rows.append((f"{label}: {r['functions']} functions of one component, {state}, node RSS above empty",
                         f"{same:.1f} MiB", f"{r['functions']} distinct components {distinct:.1f} MiB",
                         f"{same / distinct:.2f}x", ""))
        rows.append((f"{label}: first request after scale to zero, a sibling loaded",
                     f"{r['tenant_unloaded_ms']:.3f} ms", f"no sibling {r['alone_unloaded_ms']:.3f} ms",
                     f"{r['tenant_unloaded_ms'] / r['alone_unloaded_ms']:.2f}x", ""))
        if "burst_seconds" in r:
            rows.append((f"{label}: {r['burst_deploys']} deploys of the same new bytes at once, wall / peak RSS",
                         f"{r['burst_seconds']:.2f} s / +{r['burst_peak_rss_mib']:.0f} MiB",
                         f"{r['burst_compiled']} compiled", "", ""))
    m = results.get("cap")
    if m:
        rows.append((f"hello, round robin over {m['functions']} functions, --max-loaded {m['max_loaded']}: req/s, c=1",
                     f"{m['capped']['rps']:.0f}", f"no cap {m['uncapped']['rps']:.0f}",
                     f"{m['ratio_rps']:.2f}x", "(worst case)"))
    i = results.get("idle")
    if i:
        f, w, t = i["flint"], i["wasmtime_serve"], i["wasmtime_serve_timeout"]
        rows.append(("idle server, wake-ups/s", f"{f['wakeups_per_s']:.1f}",
                     f"wasmtime serve {w['wakeups_per_s']:.1f}; with -W timeout {t['wakeups_per_s']:.1f}", "", ""))
        rows.append(("idle server, CPU ms/s", f"{f['cpu_ms_per_s']:.2f}",
                     f"wasmtime serve {w['cpu_ms_per_s']:.2f}; with -W timeout {t['cpu_ms_per_s']:.2f}", "", ""))
    m = results.get("minilm")
    if m and "skipped" not in m:
        for key, r in m.items():
            if not key.startswith("seq"):
                continue
            rows.append((f"MiniLM CPU embeddings/s, {key}", f"{r['flint']:.1f}", f"PyTorch {r['pytorch']:.1f}",
                         f"{r['ratio']:.2f}x", ">= 1.0x"))
    rows += overhead_rows(results.get("overhead"))
    if results.get("batching"):
        rows.append(batching_row(results["batching"]))
    print_rows(rows)


def overhead_rows(o):
    """The table rows of an overhead section (none if it did not run or was skipped)."""
    if not o or "skipped" in o:
        return []
    return [(f"MiniLM without its layers (all but the forward pass), embeddings/s, {key}", f"{r['flint']:.1f}",
             f"PyTorch {r['pytorch']:.1f}", f"{r['ratio']:.2f}x", "")
            for key, r in o.items() if key.startswith("seq")]


def batching_row(b):
    """The table row of a batching section."""
    return ("64 single-text clients, req/s", f"{b['batching']['rps']:.1f}",
            f"no batching {b['no_batching']['rps']:.1f}", f"{b['ratio_rps']:.2f}x", ">= 10x")


def print_rows(rows):
    """Prints `rows` under HEADER in aligned columns."""
    widths = [max(len(str(row[i])) for row in rows + [HEADER]) for i in range(len(HEADER))]
    for row in [HEADER] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


def finish(results, out, table):
    """Writes `results` as JSON to `out`, then prints the machine and `table(results)`."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"machine: {results['machine']}")
    table(results)
    print(f"JSON: {out}")


HEADER = ("measure", "flint", "peer (same run)", "ratio", "target")
SECTIONS = ["sandbox", "hello", "heavy", "cold", "idle", "density", "template", "cap", "minilm", "overhead", "batching"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=SECTIONS)
    parser.add_argument("--runs", type=int, default=3, help="alternated runs per contender")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per load run")
    parser.add_argument("--cold-runs", type=int, default=10)
    parser.add_argument("--sandbox-iterations", type=int, default=20000)
    parser.add_argument("--density", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--template-functions", type=int, default=100,
                        help="functions per component in `template` (a tenth for componentize-py)")
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "cpu.json"))
    args = parser.parse_args()
    for tool in ("wrk",):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/bench.sh, which installs it")
    results = {"machine": machine()}
    for section in args.only or SECTIONS:
        log(f"== {section}")
        if section == "sandbox":
            results[section] = bench_sandbox(args)
        elif section == "hello":
            results[section] = bench_http(args, os.path.join(GUESTS, "hello.wasm"), "hello")
        elif section == "heavy":
            results[section] = bench_http(args, HEAVY_WASM, "heavy") if os.path.exists(HEAVY_WASM) else \
                {"skipped": "no componentize-py component (scripts/bench.sh builds it)"}
        elif section == "cold":
            results[section] = bench_cold(args)
        elif section == "idle":
            results[section] = bench_idle(args)
        elif section == "density":
            results[section] = bench_density(args)
        elif section == "template":
            results[section] = bench_template(args)
        elif section == "cap":
            results[section] = bench_cap(args)
        elif section == "minilm":
            results[section] = bench_minilm(args)
        elif section == "overhead":
            results[section] = bench_overhead(args)
        elif section == "batching":
            results[section] = bench_batching(args)
    finish(results, args.out, print_table)


if __name__ == "__main__":
    main()
