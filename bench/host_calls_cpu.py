#!/usr/bin/env python3
"""The host-call layer of `flint:gpu` on the CPU backend: upload and download of 4 KiB ... 256 MiB
through a guest (bench/guests/gpu-calls, timed inside the sandbox), with no GPU, so that what a
guest's call costs besides the device can be measured on any machine. Alternates the binaries
of FLINT_BIN_DIR-style folders given as arguments (default: target/release), `--runs` times, and
writes JSON (medians per size).

    python3 bench/host_calls_cpu.py [--runs 2] [--out FILE] [BIN_DIR ...]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]

PROBE = r'''
import json, os, sys, urllib.request
sys.path.insert(0, os.path.join(sys.argv[1], "bench"))
import cpu_suite
node = cpu_suite.FlintNode(log_level="warn")
try:
    node.deploy(os.path.join(cpu_suite.GUESTS, "gpu_calls.wasm"), "calls",
                "memory=1GiB&gpu_memory=1GiB&timeout=10m")
    url = node.url("/fn/calls/")
    out = {}
    for size in json.loads(sys.argv[2]):
        iters = max(5, min(200, (4 << 30) // size))
        for op in ("upload", "download"):
            with urllib.request.urlopen(f"{url}?op={op}&bytes={size}&iters={iters}", timeout=600) as r:
                out[f"{op} {size}"] = json.loads(r.read())["median_us"]
    print(json.dumps(out))
finally:
    node.close()
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "host-calls-cpu.json"))
    parser.add_argument("bin_dirs", nargs="*", default=[os.path.join(ROOT, "target", "release")])
    args = parser.parse_args()
    samples = {d: [] for d in args.bin_dirs}
    for run in range(args.runs):
        for bin_dir in args.bin_dirs:
            env = dict(os.environ, FLINT_BIN_DIR=bin_dir)
            output = subprocess.run([sys.executable, "-c", PROBE, ROOT, json.dumps(SIZES)], env=env,
                                    capture_output=True, text=True, check=True).stdout
            samples[bin_dir].append(json.loads(output))
            print(f"run {run + 1} {bin_dir}: done", file=sys.stderr)
    result = {}
    for bin_dir, runs in samples.items():
        result[bin_dir] = {key: {"median_us": statistics.median(r[key] for r in runs),
                                 "runs_us": [r[key] for r in runs]} for key in runs[0]}
    print(f"{'call':<18}" + "".join(f"{os.path.basename(d.rstrip('/')):>22}" for d in args.bin_dirs))
    for key in result[args.bin_dirs[0]]:
        size = int(key.split()[1])
        cells = []
        for d in args.bin_dirs:
            us = result[d][key]["median_us"]
            cells.append(f"{us:>10.1f} us {size / us / 1e3:>6.2f} GB/s")
        print(f"{key:<18}" + "".join(f"{c:>22}" for c in cells))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"sizes": SIZES, "results": result}, f, indent=1)
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
