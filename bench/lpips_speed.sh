#!/usr/bin/env bash
# LPIPS-VGG speed, `vgg lpips` against the lpips package in PyTorch, same cores, same pairs, one
# sitting: PAIRS pairs of SIZE x SIZE (a fixture photo against its blurred version, resized), both
# timing the forward passes only. usage: bench/lpips_speed.sh [SIZE] [PAIRS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-224} PAIRS=${2:-8} BATCH=${3:-4}
PY=bench/.venv-torch/bin/python
[ -x "$PY" ] || { echo "no $PY: run bench/lpips_reference.sh once" >&2; exit 1; }
cargo build --release -q
W=$(mktemp -d)
mkdir -p "$W/a" "$W/b"
"$PY" - "$W" "$SIZE" "$PAIRS" <<'PY'
import sys
from PIL import Image, ImageFilter
w, size, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
photos = ["chelsea.png", "coffee.png", "camera.png", "rocket.jpg"]
for i in range(pairs):
    img = Image.open(f"../shared/fixtures/images/{photos[i % 4]}").convert("RGB").resize((size, size), Image.BILINEAR)
    img.save(f"{w}/a/{i:03}.png")
    img.filter(ImageFilter.GaussianBlur(1 + i % 3)).save(f"{w}/b/{i:03}.png")
PY
echo "CPU: $(lscpu | sed -n 's/Model name: *//p'), $(nproc) cores; $PAIRS pairs of ${SIZE}x${SIZE}, batch $BATCH"
target/release/vgg lpips "$W/a" "$W/b" --weights formula --batch "$BATCH" --size "$SIZE" > /dev/null 2> "$W/warm"
for run in 1 2; do
    echo "vgg lpips (run $run): $(target/release/vgg lpips "$W/a" "$W/b" --weights formula --batch "$BATCH" 2>&1 >/dev/null | tail -1)"
    echo "lpips 0.1.4 (run $run): $("$PY" bench/lpips_speed.py "$W/a" "$W/b" "$BATCH" "$(nproc)" 2>/dev/null)"
done
rm -rf "$W"
