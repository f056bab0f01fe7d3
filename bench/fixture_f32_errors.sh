#!/usr/bin/env bash
# PyTorch's own float32 error on the reference fixtures (bench/fixture_f32_errors.py), with 1 and 2
# threads, written to bench/fixture_f32_errors.json: for each quantity the larger of the two runs,
# and both runs in full. The fixture tests read that file: each tolerance is a stated multiple of
# PyTorch's error on the same quantity (tests/common/mod.rs).
# Installs torch into bench/.venv-torch on first use (the registry's wheel pulls the CUDA
# libraries, several GB, though only the CPU is used).
# usage: bench/fixture_f32_errors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-torch
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch numpy
fi
runs=()
for threads in 1 2; do
    runs+=("$("$VENV/bin/python" bench/fixture_f32_errors.py --threads "$threads" --json)")
done
python3 - "${runs[@]}" >bench/fixture_f32_errors.json <<'PY'
import json, sys
runs = [json.loads(a) for a in sys.argv[1:]]
keys = [k for k, v in runs[0].items() if isinstance(v, float)]
print(json.dumps({
    "about": "PyTorch float32 relative error against the float64 fixtures; max over the runs (bench/fixture_f32_errors.sh)",
    "cpu": runs[0]["cpu"], "torch": runs[0]["torch"], "cpu_capability": runs[0]["cpu_capability"],
    "max": {k: max(r[k] for r in runs) for k in keys},
    "runs": runs,
}, indent=1))
PY
python3 -c "import json; d=json.load(open('bench/fixture_f32_errors.json')); print(d['cpu'], d['torch'], d['cpu_capability']); [print(f'{k:48} {v:.3e}') for k, v in d['max'].items()]"
