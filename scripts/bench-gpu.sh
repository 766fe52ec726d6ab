#!/usr/bin/env bash
# The GPU benchmark suite, in two halves, because the GPU machines have no Rust toolchain and
# cannot fetch anything:
#
#   scripts/bench-gpu.sh --build   on a Rust machine: builds release fnctl, flint-gpu-bench,
#                                  flint-load and the guests, installs the model, and packs them
#                                  into target/gpu-kit/ (see below)
#   scripts/bench-gpu.sh [ARGS]    on the GPU machine: runs bench/gpu_suite.py ARGS with the kit
#   scripts/bench-gpu.sh --tests   on the GPU machine: runs the kit's GPU test binaries
#                                  (flint-gpu's unit tests, cuda_backend, nvrtc, cuda_fault, and
#                                  minilm once the model's halves are there) and the end-to-end
#                                  GPU tests (real nodes, real HTTP) with FLINT_REQUIRE_GPU=1
#   scripts/bench-gpu.sh --model-tests   the same for the model's tests alone
#
# The kit is two folders, each (with the working tree, about 6 MiB, which travels with every
# call) under one device call's 64 MiB carry limit: target/gpu-kit/m0 holds kit.tgz (stripped
# binaries, GPU test binaries, guests, the model's small files; about 21 MiB packed) and the
# first part of model.safetensors, target/gpu-kit/m1 the rest of it. The script unpacks the kit
# and joins the model's parts where it runs. Carried paths stay on a warm machine (30 s after a
# call), so with the `device` tool, in calls that follow each other at once:
#   1. carry target/gpu-kit/m0: `--tests` then `--only calls` (neither needs the model);
#   2. carry target/gpu-kit/m1: `--model-tests`, then
#      `--only minilm --only overhead --only batching --seconds 3` (about 4-5 minutes).
# A session has 15 minutes of device time in all, the machine's start included.
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
    for manifest in examples/Cargo.toml bench/guests/Cargo.toml tests/guests/Cargo.toml; do
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
    # The end-to-end tests (real nodes over HTTP) run there with FLINT_BIN_DIR and
    # FLINT_GUESTS_DIR pointing at the kit; their GPU and model tests are the ones run there.
    cargo test --locked -p flint-runtime --test e2e --no-run --message-format=json 2>/dev/null \
        | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "e2e":
        print(m["executable"])' \
        | while read -r exe; do strip -o "$KIT/a/e2e" "$exe"; done
    cp ../shared/golden/minilm-l6-v2.json "$KIT/a/shared/golden/"
    MODEL=target/models/all-MiniLM-L6-v2
    (cd "$MODEL" && tar cf - --exclude=model.safetensors .) | tar xf - -C "$KIT/a/model"
    # Two carries of at most 64 MiB each, the working tree's bytes included: the packed kit and
    # as much of the model as fits with it, then the rest of the model.
    tar czf "$KIT/m0/kit.tgz" -C "$KIT/a" .
    tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
    first=$(( (62 << 20) - tree - $(stat -c %s "$KIT/m0/kit.tgz") ))
    head -c "$first" "$MODEL/model.safetensors" >"$KIT/m0/model.safetensors.part0"
    tail -c +"$((first + 1))" "$MODEL/model.safetensors" >"$KIT/m1/model.safetensors.part1"
    rm -rf "$KIT/a"
    du -sh "$KIT"/* >&2
    echo "kit ready: carry target/gpu-kit/m0, then target/gpu-kit/m1" >&2
    exit 0
fi

if [ -f "$KIT/m0/kit.tgz" ] && [ "$KIT/m0/kit.tgz" -nt "$KIT/a/.unpacked" ]; then
    rm -rf "$KIT/a" && mkdir -p "$KIT/a" && tar xzf "$KIT/m0/kit.tgz" -C "$KIT/a" && touch "$KIT/a/.unpacked"
fi
if [ -d "$KIT/a" ]; then
    MODEL_DIR=$KIT/a/model
    if [ ! -f "$MODEL_DIR/model.safetensors" ] && [ -f "$KIT/m0/model.safetensors.part0" ] \
        && [ -f "$KIT/m1/model.safetensors.part1" ]; then
        cat "$KIT/m0/model.safetensors.part0" "$KIT/m1/model.safetensors.part1" >"$MODEL_DIR/model.safetensors"
    fi
    export FLINT_BIN_DIR=$KIT/a/bin FLINT_GUESTS_DIR=$KIT/a/guests FLINT_MINILM_DIR=$MODEL_DIR
fi
# cudarc finds NVRTC and cuBLAS by name on the loader's path; a CUDA toolkit's lib64 (or the
# CUDA wheels under PyTorch's Python) is not always on it.
for lib in libnvrtc.so libcublas.so; do
    ldconfig -p 2>/dev/null | grep -q "$lib" && continue
    found=false
    for dir in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/targets/x86_64-linux/lib \
        $(python3 -c 'import glob, nvidia; print(" ".join(d for p in nvidia.__path__ for d in glob.glob(p + "/*/lib")))' 2>/dev/null); do
        if compgen -G "$dir/$lib*" >/dev/null; then
            case ":${LD_LIBRARY_PATH:-}:" in *":$dir:"*) ;; *) export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
            echo "== $lib from $dir" >&2
            found=true
            break
        fi
    done
    $found || echo "== $lib not found: the GPU backend will say so" >&2
done
if [ "${1:-}" = "--tests" ] || [ "${1:-}" = "--model-tests" ]; then
    # --tests: every GPU test there is (the model's only once its halves are carried);
    # --model-tests: only the model's (a later call, once m0 and m1 have both been carried).
    [ -d "$KIT/a/tests" ] || { echo "no test binaries in $KIT/a/tests: build the kit" >&2; exit 1; }
    export FLINT_REQUIRE_GPU=1 FLINT_SHARED_DIR=$KIT/a/shared
    have_model=false
    [ -f "$MODEL_DIR/model.safetensors" ] && have_model=true
    [ "$1" = --tests ] || $have_model || { echo "no model: carry target/gpu-kit/m0 and m1" >&2; exit 1; }
    status=0
    for test in "$KIT"/a/tests/*; do
        name=$(basename "$test")
        if [ "$name" = minilm ] && ! $have_model; then
            echo "== $name: skipped until target/gpu-kit/m0 and m1 are carried" >&2
            continue
        fi
        [ "$1" = --tests ] || [ "$name" = minilm ] || continue
        echo "== $name" >&2
        "$test" --nocapture || status=1
    done
    # End to end on the device: nodes with the GPU examples deployed, real HTTP.
    filters=()
    [ "$1" = --tests ] && filters+=(gpu)
    if $have_model; then
        filters+=(models::)
    else
        echo "== e2e models::: skipped until target/gpu-kit/m0 and m1 are carried" >&2
    fi
    echo "== e2e ${filters[*]}" >&2
    "$KIT/a/e2e" "${filters[@]}" || status=1
    exit $status
fi
exec python3 bench/gpu_suite.py "$@"
