#!/usr/bin/env python3
"""Flint's GPU benchmark suite: run on a machine with a CUDA device and no Rust toolchain.

`scripts/bench-gpu.sh --build` builds everything it needs on a Rust machine (release `fnctl`,
`flint-gpu-bench`, `flint-load`, the guests, the GPU test binaries) and packs them with the
model into `target/gpu-kit/m0` and `m1`; carry both to the GPU machine and run
`scripts/bench-gpu.sh` there, which unpacks the kit and runs this script. It prints a table
and writes JSON (default target/bench/gpu.json). Needs torch and sentence-transformers for the
PyTorch side (the lent H100/H200 machines have both).

Sections (each can be picked with --only):
  calls     kernel launch, upload and download through a guest (bench/guests/gpu-calls, timed
            inside the sandbox) vs the same driver calls made natively with cudarc
            (flint-gpu-bench); 4 KiB ... 256 MiB
  minilm    MiniLM embeddings/s through examples/embed vs PyTorch + sentence-transformers on the
            same GPU, batch 1, 8, 32 at sequence lengths 128 and 256
  overhead  the same at seq 128 with the model's transformer layers removed on both sides: what
            each spends around the forward pass (HTTP, guest, tokenizer, pooling; Python)
  batching  64 concurrent single-text clients (flint-load), dynamic batching vs --no-batching
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_suite  # noqa: E402  (shares the node driver, texts and helpers)
from cpu_suite import BIN_DIR, GUESTS, ROOT, FlintNode, log  # noqa: E402

GPU_BENCH = os.path.join(BIN_DIR, "flint-gpu-bench")
LOAD = os.path.join(BIN_DIR, "flint-load")
SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]
SECTIONS = ["calls", "minilm", "overhead", "batching"]


def transfer_iters(size):
    """Calls per transfer size; the same rule as flint-gpu-bench."""
    return max(5, min(200, (4 << 30) // size))


def get_json(url, timeout=600):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def flint_load(url, connections, seconds, body_file):
    run = subprocess.run([LOAD, url, "--connections", str(connections), "--seconds", str(seconds),
                          "--body-file", body_file], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"flint-load {url} failed ({run.returncode}): {run.stderr.strip()}")
    report = json.loads(run.stdout)
    if report.get("errors"):
        log(f"  flint-load: {report['errors']} failed connections (reopened), first: {report['first_error']}")
    return report


def bench_calls(args):
    native = subprocess.run([GPU_BENCH, "--iters", str(args.launch_iters)], capture_output=True, text=True)
    if native.returncode != 0:
        return {"skipped": native.stderr.strip()}
    native = json.loads(native.stdout)
    node = FlintNode(log_level="warn")
    try:
        node.deploy(os.path.join(GUESTS, "gpu_calls.wasm"), "calls",
                    "allow_kernels=true&memory=1GiB&gpu_memory=1GiB&timeout=10m")
        url = node.url("/fn/calls/")
        guest = {
            "backend_call": get_json(f"{url}?op=backend&iters={args.launch_iters}"),
            "launch": get_json(f"{url}?op=launch&iters={args.launch_iters}"),
            "upload": [get_json(f"{url}?op=upload&bytes={s}&iters={transfer_iters(s)}") for s in SIZES],
            "download": [get_json(f"{url}?op=download&bytes={s}&iters={transfer_iters(s)}") for s in SIZES],
        }
    finally:
        node.close()
    rows = {"launch": {"guest_us": guest["launch"]["median_us"], "native_us": native["launch"]["median_us"],
                       "overhead_us": guest["launch"]["median_us"] - native["launch"]["median_us"]},
            "host_call_floor_us": guest["backend_call"]["median_us"]}
    for op in ("upload", "download"):
        rows[op] = []
        for g, n in zip(guest[op], native[op]):
            guest_gbps = g["bytes"] / (g["median_us"] / 1e6) / 1e9
            rows[op].append({"bytes": g["bytes"], "guest_gb_per_s": guest_gbps, "native_gb_per_s": n["gb_per_s"],
                             "ratio": guest_gbps / n["gb_per_s"], "guest_us": g["median_us"],
                             "native_us": n["median_us"]})
    log(f"  launch: guest {rows['launch']['guest_us']:.2f} us, native {rows['launch']['native_us']:.2f} us")
    return {"device": native["device"], "backend": guest["launch"]["backend"], "summary": rows,
            "guest": guest, "native": native}


def bench_minilm(args):
    return cpu_suite.bench_minilm(args, python=args.python, torch_device=args.torch_device, torch_threads=0)


def bench_overhead(args):
    return cpu_suite.bench_overhead(args, python=args.python, torch_device=args.torch_device, torch_threads=0)


def bench_batching(args):
    body = os.path.join(tempfile.gettempdir(), "flint-embed-one.json")
    with open(body, "w") as f:
        json.dump(cpu_suite.ONE_TEXT, f)
    return cpu_suite.bench_batching(args, lambda url: flint_load(url, 64, args.seconds, body))


def machine():
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        gpu = ""
    return {"gpu": gpu or "none found", "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def print_table(results):
    rows = []
    c = results.get("calls")
    if c and "skipped" not in c:
        s = c["summary"]
        rows.append(("kernel launch + wait, median", f"{s['launch']['guest_us']:.2f} us",
                     f"native cudarc {s['launch']['native_us']:.2f} us", f"+{s['launch']['overhead_us']:.2f} us",
                     "<= +3 us"))
        rows.append(("cheapest host call (backend)", f"{s['host_call_floor_us']:.2f} us", "", "", ""))
        for op in ("upload", "download"):
            for r in s[op]:
                rows.append((f"{op} {r['bytes'] // 1024} KiB", f"{r['guest_gb_per_s']:.2f} GB/s",
                             f"native {r['native_gb_per_s']:.2f} GB/s", f"{r['ratio']:.2f}x",
                             ">= 0.9x" if op == "upload" else ""))
    elif c:
        rows.append(("host calls", "skipped", c["skipped"], "", ""))
    m = results.get("minilm")
    if m and "model" in m:
        model = m["model"]
        where = f"GPU {model['device']}" if model.get("backend") == "cuda" else "the host CPU"
        rows.append(("MiniLM runs on", where, model.get("cpu_reason") or "", "", ""))
    if m:
        for key, r in m.items():
            if key.startswith("seq"):
                rows.append((f"MiniLM embeddings/s, {key}", f"{r['flint']:.1f}",
                             f"PyTorch ({m['torch_device']}) {r['pytorch']:.1f}",
                             f"{r['ratio']:.2f}x", ">= 1.5x at batch 32"))
    rows += cpu_suite.overhead_rows(results.get("overhead"))
    b = results.get("batching")
    if b:
        rows.append(cpu_suite.batching_row(b))
    cpu_suite.print_rows(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=SECTIONS)
    parser.add_argument("--runs", type=int, default=3, help="alternated runs per contender")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per load run")
    parser.add_argument("--launch-iters", type=int, default=2000)
    parser.add_argument("--torch-device", default="cuda", help="PyTorch's device (cpu: a smoke test of the suite)")
    parser.add_argument("--python", default=sys.executable, help="the Python that has torch")
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "gpu.json"))
    args = parser.parse_args()
    for path in (cpu_suite.FNCTL, GPU_BENCH, LOAD, os.path.join(GUESTS, "gpu_calls.wasm")):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: build it with `scripts/bench-gpu.sh --build` on a Rust machine")
    results = {"machine": machine()}
    for section in args.only or SECTIONS:
        log(f"== {section}")
        results[section] = {"calls": bench_calls, "minilm": bench_minilm, "overhead": bench_overhead,
                            "batching": bench_batching}[section](args)
    cpu_suite.finish(results, args.out, print_table)


if __name__ == "__main__":
    main()
