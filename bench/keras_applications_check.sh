#!/usr/bin/env bash
# keras.applications.VGG16 and VGG19 themselves (Keras 3, without their top: 59 and 80 MB, too large
# to commit as test fixtures), saved as .keras and .weights.h5, read by `vgg convert`, and run as
# torchvision's vgg16/vgg19 `features` in PyTorch on the formula input "kapp32": pool5 against
# Keras' own. Uses bench/.venv-torch (torch, torchvision, keras, safetensors).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=bench/.venv-torch/bin/python
[ -x target/release/vgg ] || cargo build --release
W=$(mktemp -d)
KERAS_BACKEND=torch "$PY" - "$W" <<'PY'
import json, sys
sys.path.insert(0, "bench")
import keras
from formula import formula_input
w = sys.argv[1]
keras.utils.set_random_seed(0)
for name, ctor in [("VGG16", keras.applications.VGG16), ("VGG19", keras.applications.VGG19)]:
    m = ctor(weights=None, include_top=False, input_shape=(32, 32, 3))
    m.save(f"{w}/{name}.keras")
    m.save_weights(f"{w}/{name}.weights.h5")
    x = formula_input("kapp32", (1, 3, 32, 32)).transpose(0, 2, 3, 1).astype("float32")
    json.dump(keras.ops.convert_to_numpy(m.predict(x, verbose=0)).flatten().tolist(), open(f"{w}/{name}.json", "w"))
print("keras", keras.__version__)
PY
for n in VGG16 VGG19; do
    for f in keras weights.h5; do target/release/vgg convert "$W/$n.$f" "$W/$n-$f.safetensors" > /dev/null; done
done
"$PY" - "$W" <<'PY'
import json, sys
import numpy as np, torch, torchvision
sys.path.insert(0, "bench")
from formula import formula_input
from safetensors.torch import load_file
w = sys.argv[1]
x = torch.from_numpy(formula_input("kapp32", (1, 3, 32, 32))).float()
for n, ctor in [("VGG16", torchvision.models.vgg16), ("VGG19", torchvision.models.vgg19)]:
    want = np.array(json.load(open(f"{w}/{n}.json")))
    for f in ["keras", "weights.h5"]:
        sd = load_file(f"{w}/{n}-{f}.safetensors")
        m = ctor(weights=None).features.eval()
        m.load_state_dict({k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")})
        with torch.no_grad():
            y = m(x).flatten().numpy()
        print(f"keras.applications.{n} .{f}: pool5 relative error {np.linalg.norm(y - want) / np.linalg.norm(want):.2e}")
PY
rm -rf "$W"
