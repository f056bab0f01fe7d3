#!/usr/bin/env bash
# Runs Triton's own HTTP client (tritonclient[http]) against `vgg serve`: health, metadata, and
# inference with JSON and binary tensors, FP32 images and encoded files, logits and the
# classification extension; compares every answer with `vgg classify --json` and the library.
# usage: bench/tritonclient_check.sh   (installs tritonclient into bench/.venv-triton on first use)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-triton
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'tritonclient[http]' numpy pillow
fi
cargo build --release -q
LOG=$(mktemp)
./target/release/vgg serve --port 0 > "$LOG" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 100); do grep -q listening "$LOG" && break; sleep 0.1; done
URL=$(sed -n 's|.*http://||p' "$LOG" | head -1)
"$VENV/bin/python" bench/tritonclient_check.py "$URL" assets/fashion-mnist/*.png
