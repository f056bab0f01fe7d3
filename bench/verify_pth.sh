#!/usr/bin/env bash
# Checks this project's .pth files in PyTorch itself: the built-in model written by `vgg convert`
# (f32, bf16, paper keys) is read with torch.load(weights_only=True), compared tensor by tensor with
# the same model written as safetensors, loaded strictly into an nn.Module of the same structure,
# and run on two preprocessed example images (from `vgg features`) against this engine's logits.
# Uses bench/.venv-torch (see bench/compare_train.sh, which installs torch there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=bench/.venv-torch/bin/python
[ -x "$PY" ] || { echo "no $PY: run bench/compare_train.sh once (installs torch)" >&2; exit 1; }
[ -x target/release/vgg ] || cargo build --release
V=${VGG:-target/release/vgg}
W=$(mktemp -d)
$V convert fashion-mnist "$W/m.safetensors" >/dev/null
$V convert fashion-mnist "$W/m.pth" >/dev/null
$V convert fashion-mnist "$W/m-bf16.pth" --dtype bf16 >/dev/null
$V convert fashion-mnist "$W/m-paper.pth" --keys paper >/dev/null
for f in 3-dress 9-ankle-boot; do
    $V features "assets/fashion-mnist/$f.png" --weights fashion-mnist --layers fc7 --out "$W/$f.safetensors" >/dev/null
done
"$PY" bench/verify_pth.py "$W"
