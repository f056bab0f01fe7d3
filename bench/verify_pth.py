# See verify_pth.sh. usage: verify_pth.py DIR
import json
import struct
import sys

import numpy as np
import torch
import torch.nn as nn

W = sys.argv[1]


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header, base = json.loads(b[8:8 + n]), 8 + n
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        out[k] = np.frombuffer(b[base + s:base + e], dtype=dt).reshape(v["shape"])
    return out


ref = read_st(f"{W}/m.safetensors")
for name, tol in [("m.pth", 0.0), ("m-bf16.pth", 8e-3)]:
    sd = torch.load(f"{W}/{name}", weights_only=True)
    assert set(sd) == set(ref), set(sd) ^ set(ref)
    worst = 0.0
    for k, t in sd.items():
        a, r = t.float().numpy(), ref[k]
        assert a.shape == r.shape, (k, a.shape, r.shape)
        worst = max(worst, float(np.abs(a - r).max() / (np.abs(r).max() + 1e-30)))
    dtypes = sorted({str(t.dtype) for t in sd.values()})
    print(f"{name}: torch.load(weights_only=True) read {len(sd)} tensors ({', '.join(dtypes)}), "
          f"worst relative difference to the safetensors file {worst:.2e}")
    assert worst <= tol, name
sd = torch.load(f"{W}/m-paper.pth", weights_only=True)
assert len(sd) == len(ref) and "conv1_1.weight" in sd
print(f"m-paper.pth: {len(sd)} tensors under paper keys ({', '.join(list(sd)[:3])}, ...)")

# The built-in model's structure (VGG-13-BN x0.375, one input channel, CIFAR-style head).
layers, c = [], 1
for v in [24, 24, "M", 48, 48, "M", 96, 96, "M", 192, 192, "M", 192, 192, "M"]:
    if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
        continue
    layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(True)]
    c = v
m = nn.Module()
m.features = nn.Sequential(*layers)
m.classifier = nn.Sequential(nn.Linear(192, 512), nn.ReLU(True), nn.Linear(512, 10))
m.load_state_dict(torch.load(f"{W}/m.pth", weights_only=True), strict=True)
m.eval()
worst = 0.0
for f in ["3-dress", "9-ankle-boot"]:
    d = read_st(f"{W}/{f}.safetensors")
    with torch.no_grad():
        y = m.classifier(torch.flatten(m.features(torch.from_numpy(d["input"].copy())), 1)).numpy()
    worst = max(worst, float(np.abs(y - d["fc7"]).max() / np.abs(d["fc7"]).max()))
print(f"strict load_state_dict into nn.Module, logits of 2 images against vgg's: worst relative "
      f"difference {worst:.2e} (torch {torch.__version__})")
assert worst < 1e-5
print("ok")
