#!/usr/bin/env bash
# Golden LPIPS values from the real packages (lpips 0.1.4, torchmetrics) for tests/lpips.rs, and the
# linear heads converted from the lpips wheel (assets/lpips/vgg-v0.1.safetensors). Installs lpips,
# torchvision and torchmetrics into bench/.venv-torch (torch: see bench/compare_train.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=bench/.venv-torch/bin/python
[ -x "$PY" ] || { echo "no $PY: run bench/compare_train.sh once (installs torch)" >&2; exit 1; }
"$PY" -m pip install -q "lpips==0.1.4" torchvision torchmetrics pillow scipy
mkdir -p assets/lpips tests/fixtures/lpips
"$PY" bench/lpips_reference.py
# The heads' licence travels with them.
cp "$("$PY" -c 'import lpips, os; print(os.path.dirname(lpips.__file__))')"/../lpips-0.1.4.dist-info/LICENSE assets/lpips/LICENSE 2>/dev/null ||
    echo "note: the lpips wheel has no LICENSE file; keep assets/lpips/LICENSE as written" >&2
