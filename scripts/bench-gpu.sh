#!/usr/bin/env bash
# The GPU benchmark suite, in two halves, because the GPU machines have no Rust toolchain and
# cannot fetch anything:
#
#   scripts/bench-gpu.sh --build   on a Rust machine: builds release fnctl, flint-gpu-bench,
#                                  flint-load and the guests, installs the model, and packs them
#                                  into target/gpu-kit/ (see below)
#   scripts/bench-gpu.sh [ARGS]    on the GPU machine: runs bench/gpu_suite.py ARGS with the kit
#   scripts/bench-gpu.sh --tests   on the GPU machine: runs the kit's GPU test binaries
#                                  (flint-gpu's unit tests, cuda_backend, nvrtc, and minilm once
#                                  the model's halves are there) with FLINT_REQUIRE_GPU=1
#
# The kit is three folders, each under one device call's 64 MiB carry limit:
# target/gpu-kit/a (stripped binaries, GPU test binaries, guests and the model's small files, ~50 MiB),
# target/gpu-kit/m0 and target/gpu-kit/m1 (the two halves of model.safetensors, ~44 MiB each).
# (The working tree travels with each carry too: about 6 MiB, so each call stays under 64 MiB.)
# Carried paths stay on a warm machine between calls, so: carry `a` and run the `calls`
# section (it needs no model), then carry `m0` in a second call and `m1` in a third, which runs
# `--only minilm --only overhead --only batching --seconds 3` (about 4-5 minutes; a session has
# 15 minutes of device time in all); the run joins the halves.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIT=$ROOT/target/gpu-kit

if [ "${1:-}" = "--build" ]; then
    ./scripts/setup.sh
    ./scripts/install-model.sh
    echo "== building release binaries and the guests" >&2
    cargo build --release --locked -p flint-runtime --bin fnctl --bin flint-load
    cargo build --release --locked -p flint-gpu --bin flint-gpu-bench
    for manifest in examples/Cargo.toml bench/guests/Cargo.toml; do
        CARGO_TARGET_DIR=$ROOT/target/wasm-guests cargo build --release --locked \
            --target wasm32-wasip2 --workspace --manifest-path "$manifest"
    done
    rm -rf "$KIT" && mkdir -p "$KIT/a/bin" "$KIT/a/guests" "$KIT/a/model" "$KIT/m0" "$KIT/m1"
    for bin in fnctl flint-gpu-bench flint-load; do
        strip -o "$KIT/a/bin/$bin" "target/release/$bin"
    done
    cp target/wasm-guests/wasm32-wasip2/release/*.wasm "$KIT/a/guests/"
    echo "== building the GPU test binaries" >&2
    mkdir -p "$KIT/a/tests" "$KIT/a/shared/golden"
    cargo test --release --locked -p flint-gpu --no-run --message-format=json 2>/dev/null \
        | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])' \
        | while read -r name exe; do
            # The emulation test needs a C++ compiler and this checkout; it is not a GPU test.
            [ "$name" = cuda_emulation ] || strip -o "$KIT/a/tests/$name" "$exe"
        done
    cp ../shared/golden/minilm-l6-v2.json "$KIT/a/shared/golden/"
    MODEL=target/models/all-MiniLM-L6-v2
    (cd "$MODEL" && tar cf - --exclude=model.safetensors .) | tar xf - -C "$KIT/a/model"
    half=$(( ($(stat -c %s "$MODEL/model.safetensors") + 1) / 2 ))
    head -c "$half" "$MODEL/model.safetensors" >"$KIT/m0/model.safetensors.part0"
    tail -c +"$((half + 1))" "$MODEL/model.safetensors" >"$KIT/m1/model.safetensors.part1"
    du -sh "$KIT"/* >&2
    echo "kit ready: carry target/gpu-kit/a, then target/gpu-kit/m0, then target/gpu-kit/m1" >&2
    exit 0
fi

if [ -d "$KIT/a" ]; then
    MODEL_DIR=$KIT/a/model
    if [ ! -f "$MODEL_DIR/model.safetensors" ] && [ -f "$KIT/m0/model.safetensors.part0" ] \
        && [ -f "$KIT/m1/model.safetensors.part1" ]; then
        cat "$KIT/m0/model.safetensors.part0" "$KIT/m1/model.safetensors.part1" >"$MODEL_DIR/model.safetensors"
    fi
    export FLINT_BIN_DIR=$KIT/a/bin FLINT_GUESTS_DIR=$KIT/a/guests FLINT_MINILM_DIR=$MODEL_DIR
fi
# cudarc finds NVRTC and cuBLAS by name on the loader's path; a CUDA toolkit's lib64 is not
# always on it.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
    for dir in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/targets/x86_64-linux/lib; do
        if compgen -G "$dir/libnvrtc.so*" >/dev/null; then
            export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            echo "== NVRTC and cuBLAS from $dir" >&2
            break
        fi
    done
fi
if [ "${1:-}" = "--tests" ]; then
    [ -d "$KIT/a/tests" ] || { echo "no test binaries in $KIT/a/tests: build the kit" >&2; exit 1; }
    export FLINT_REQUIRE_GPU=1 FLINT_SHARED_DIR=$KIT/a/shared
    status=0
    for test in "$KIT"/a/tests/*; do
        name=$(basename "$test")
        if [ "$name" = minilm ] && [ ! -f "$MODEL_DIR/model.safetensors" ]; then
            echo "== $name: skipped until target/gpu-kit/m0 and m1 are carried" >&2
            continue
        fi
        echo "== $name" >&2
        "$test" --nocapture || status=1
    done
    exit $status
fi
exec python3 bench/gpu_suite.py "$@"
