#!/usr/bin/env bash
# Quick start: builds fnctl and the example functions, starts a node with the examples
# deployed, sends a request that shows it working, and keeps the node running (ctrl-c stops it).
#
#   FLINT_DATA    data directory            (default: ./flint-data)
#   FLINT_LISTEN  public listener           (default: 127.0.0.1:8080)
#   FLINT_ADMIN   admin listener            (default: 127.0.0.1:8081)
#   --once        stop the node after the demo request (for scripts and CI)
set -euo pipefail
cd "$(dirname "$0")/.."
ONCE=0
[[ "${1:-}" == "--once" ]] && ONCE=1
DATA="${FLINT_DATA:-$PWD/flint-data}"
LISTEN="${FLINT_LISTEN:-127.0.0.1:8080}"
ADMIN="${FLINT_ADMIN:-127.0.0.1:8081}"

./scripts/setup.sh
./scripts/install-model.sh
echo "==> building fnctl (release)"
cargo build --release --locked -p flint-runtime
echo "==> building the example functions for wasm32-wasip2"
cargo build --release --locked --target wasm32-wasip2 --manifest-path examples/Cargo.toml --workspace
FNCTL="$PWD/target/release/fnctl"
EXAMPLES="$PWD/examples/target/wasm32-wasip2/release"
export FLINT_DATA="$DATA"
unset FNCTL_SERVER FNCTL_TOKEN

echo "==> starting the node: fnctl serve --listen $LISTEN --admin $ADMIN --data $DATA"
mkdir -p "$DATA"
rm -f "$DATA/node.json"
"$FNCTL" serve --listen "$LISTEN" --admin "$ADMIN" --data "$DATA" &
NODE=$!
trap 'kill -TERM $NODE 2>/dev/null || true; wait $NODE 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
    [[ -f "$DATA/node.json" ]] && break
    kill -0 $NODE 2>/dev/null || { echo "error: the node exited; see its log above" >&2; exit 1; }
    sleep 0.05
done

echo "==> deploying the examples"
"$FNCTL" deploy "$EXAMPLES/hello.wasm" --name hello --route /hello
"$FNCTL" deploy "$EXAMPLES/matmul.wasm" --name matmul
"$FNCTL" deploy "$EXAMPLES/vector_add.wasm" --name vector-add --allow-kernels
"$FNCTL" deploy "$EXAMPLES/embed.wasm" --name embed
# The data dir outlives the node: on a second run the model is still registered.
if "$FNCTL" model ls | awk '{print $1}' | grep -qx minilm; then
    echo "(model minilm is already registered in $DATA)"
else
    "$FNCTL" model add minilm target/models/all-MiniLM-L6-v2
fi
"$FNCTL" ls
"$FNCTL" model ls
"$FNCTL" gpu

request() { # METHOD PATH [BODY]
    echo "==> curl -X $1 'http://$LISTEN$2' ${3:+-d '$3'}"
    if command -v curl >/dev/null; then
        curl -sS -i -X "$1" "http://$LISTEN$2" ${3:+-d "$3"}
    else
        local name=${2#/fn/}; name=${name%%/*}
        "$FNCTL" invoke "$name" -X "$1" --path "${2#/fn/$name}" ${3:+--data "$3"} -i || true
    fi
    echo
}
request GET "/fn/hello/greet?name=Flint"
request POST /fn/matmul/ '{"a": [[1, 2], [3, 4]], "b": [[5], [6]]}'
echo "(vector-add runs a custom CUDA kernel: on a node without a GPU it answers 501 unsupported)"
request POST /fn/vector-add/ '{"a": [1, 2, 3], "b": [10, 20, 30]}'
echo "(embed returns 384-dimensional vectors; showing the start of the answer)"
echo "==> curl -X POST 'http://$LISTEN/fn/embed/' -d '{\"texts\": [\"Flint runs functions on a pooled GPU\"]}'"
if command -v curl >/dev/null; then
    curl -sS -X POST "http://$LISTEN/fn/embed/" -d '{"texts": ["Flint runs functions on a pooled GPU"]}' | cut -c1-160
else
    "$FNCTL" invoke embed --data '{"texts": ["Flint runs functions on a pooled GPU"]}' | cut -c1-160
fi
echo

if [[ $ONCE == 1 ]]; then
    echo "==> stopping the node (SIGTERM)"
    kill -TERM $NODE
    wait $NODE
    trap - EXIT
    exit 0
fi
echo "==> the node is running: functions on http://$LISTEN/fn/NAME/, admin API on http://$ADMIN/v1/"
echo "    try: $FNCTL invoke hello --path '/greet?name=you'   (ctrl-c stops the node)"
wait $NODE
