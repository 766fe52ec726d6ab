#!/usr/bin/env bash
# The CPU benchmark suite, one command: builds Flint (release) and the guests, installs the
# peers it is compared with (all under target/, built once), then runs bench/cpu_suite.py,
# which prints a table and writes target/bench/cpu.json. Arguments go to cpu_suite.py
# (e.g. `--only hello --runs 5`).
#
# Peers: `wasmtime serve` from wasmtime-cli 48.0.8 (the wasmtime Flint embeds; ~15 minutes to
# build on 2 cores, once), wrk (Debian package), PyTorch + sentence-transformers (PyPI, in
# target/bench-tools/venv), componentize-py (PyPI) for the heavy interpreter component.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/target/bench-tools

./scripts/setup.sh
./scripts/install-model.sh

echo "== building Flint (release) and the guests" >&2
cargo build --release --locked -p flint-runtime --bin fnctl --bin flint-load
cargo bench --locked -p flint-runtime --bench sandbox --no-run
CARGO_TARGET_DIR=$ROOT/target/wasm-guests cargo build --release --locked --target wasm32-wasip2 \
    --workspace --manifest-path examples/Cargo.toml

if [ ! -x "$TOOLS/bin/wasmtime" ]; then
    echo "== installing wasmtime-cli 48.0.8 into $TOOLS (once; about 15 minutes on 2 cores)" >&2
    cargo install wasmtime-cli --version 48.0.8 --locked --root "$TOOLS"
fi
if ! command -v wrk >/dev/null; then
    echo "== installing wrk" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi
fi
if [ ! -x "$TOOLS/venv/bin/python" ] || ! "$TOOLS/venv/bin/python" -c "import torch, sentence_transformers, componentize_py" 2>/dev/null; then
    echo "== installing PyTorch, sentence-transformers and componentize-py into $TOOLS/venv" >&2
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet torch sentence-transformers componentize-py
fi
if [ ! -f target/bench/heavy-hello.wasm ]; then
    echo "== building the componentize-py hello world" >&2
    ./bench/heavy/build.sh "$TOOLS/venv/bin/componentize-py" target/bench/heavy-hello.wasm
fi

exec python3 bench/cpu_suite.py "$@"
