#!/usr/bin/env bash
# Runs every test: unit tests, the end-to-end suite (real `fnctl serve` processes, real
# components, real HTTP) and the guest SDK's own tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The MiniLM tests need the model; they fail (not skip) without it.
./scripts/install-model.sh
echo "==> cargo test --workspace"
cargo test --workspace --locked
echo "==> guest SDK tests (host)"
cargo test --locked --manifest-path guest-sdk/Cargo.toml --target-dir target/sdk-host
