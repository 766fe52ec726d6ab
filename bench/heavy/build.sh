#!/usr/bin/env bash
# Builds bench/heavy/app.py into a wasi:http component with componentize-py.
# Usage: bench/heavy/build.sh COMPONENTIZE_PY OUT.wasm
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(realpath -m "$2")
mkdir -p "$(dirname "$out")"
cd "$here"
"$1" -d "$root/wit" -w wasi:http/proxy@0.2.12 componentize app -o "$out"
ls -l "$out" >&2
