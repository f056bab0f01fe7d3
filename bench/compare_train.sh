#!/usr/bin/env bash
# Runs `vgg bench --train` and PyTorch's training step alternately on the same machine and prints
# the ratios, for the CIFAR VGG-16-BN of the issue's target, the shipped Fashion-MNIST model
# (VGG-13-BN x0.375) and the VGG-11-BN x0.375 shipped before it.
# usage: bench/compare_train.sh [ROUNDS]
# (installs torch into bench/.venv-torch on first use: the registry's wheel pulls the CUDA
# libraries, several GB, though only the CPU is used)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
VENV=bench/.venv-torch
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch numpy
fi
cargo build --release -q
# name | vgg bench arguments | torch_train.py arguments (arch width in-channels dropout batch iters warmup)
CASES=(
    "cifar-vgg16_bn-b64|--batch 64 --size 32 --iters 5 --warmup 2|vgg16_bn 1 3 0.5 64 5 2"
    "fmnist-vgg13_bn-x0.375-b64|--arch vgg13_bn --width 0.375 --in-channels 1 --head cifar --num-classes 10 --dropout 0 --batch 64 --size 32 --iters 30 --warmup 3|vgg13_bn 0.375 1 0 64 30 3"
    "fmnist-vgg11_bn-x0.375-b64|--arch vgg11_bn --width 0.375 --in-channels 1 --head cifar --num-classes 10 --dropout 0 --batch 64 --size 32 --iters 30 --warmup 3|vgg11_bn 0.375 1 0 64 30 3"
)
for r in $(seq "$ROUNDS"); do
    for case in "${CASES[@]}"; do
        IFS='|' read -r name ours_args peer_args <<<"$case"
        # shellcheck disable=SC2086
        ours=$(./target/release/vgg bench --train $ours_args --json)
        # shellcheck disable=SC2086
        peer=$("$VENV/bin/python" bench/torch_train.py $peer_args)
        echo "round $r $name vgg: $ours"
        echo "round $r $name torch: $peer"
        python3 - "$ours" "$peer" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"  vgg/torch step time ratio {a['median_s'] / b['median_s']:.2f} ({a['median_s']:.3f} s vs {b['median_s']:.3f} s)")
PY
    done
done
