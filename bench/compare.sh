#!/usr/bin/env bash
# Runs `vgg bench` and onnxruntime alternately on the same machine and prints the ratios.
# usage: bench/compare.sh [ROUNDS]   (installs onnxruntime and onnx into bench/.venv on first use)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
VENV=bench/.venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q onnxruntime onnx numpy
fi
WORK=${PEERS_DIR:-/tmp/vgg-peers}
mkdir -p "$WORK"
[ -f "$WORK/vgg16-rand.onnx" ] || "$VENV/bin/python" bench/make_vgg_onnx.py vgg16 "$WORK/vgg16-rand.onnx"
cargo build --release -q
for r in $(seq "$ROUNDS"); do
    for b in 1 8; do
        ours=$(./target/release/vgg bench --arch vgg16 --batch "$b" --iters 10 --warmup 3 --json)
        half=$(./target/release/vgg bench --arch vgg16 --batch "$b" --iters 10 --warmup 3 --half bf16 --json)
        peer=$("$VENV/bin/python" bench/ort_infer.py "$WORK/vgg16-rand.onnx" "$b" 10 3)
        echo "round $r batch $b vgg: $ours"
        echo "round $r batch $b vgg --half bf16: $half"
        echo "round $r batch $b ort: $peer"
        python3 - "$ours" "$peer" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"  vgg/ort latency ratio {a['median_s'] / b['median_s']:.2f}, throughput ratio {a['img_per_s'] / b['img_per_s']:.2f}, RSS {a['peak_rss_mb']:.0f} vs {b['peak_rss_mb']:.0f} MiB")
PY
    done
done
