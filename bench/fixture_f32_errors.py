"""PyTorch's own float32 error on the reference fixtures: the yardstick for every fixture tolerance.

The fixtures in ../shared/fixtures were computed by PyTorch in float64 from formula weights
(FORMULA.md). This script rebuilds the same models and inputs, runs them in float32 as a user of
PyTorch would, and prints how far float32 lands from the float64 references for each quantity the
Rust tests check (`tests/train.rs`, `tests/engine.rs`, `tests/model.rs`). A test tolerance is a
stated small multiple of the number printed here (see `tests/common/mod.rs`), never a number that
one machine's run happened to meet.

The models are written out layer by layer (same `state_dict` keys as torchvision), so the script
needs only torch and numpy:

    bench/fixture_f32_errors.sh            # installs torch into bench/.venv-torch on first use
    bench/.venv-torch/bin/python bench/fixture_f32_errors.py [--threads N] [--json]
"""
import argparse
import json
import math
import os
import platform

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MASK = (1 << 64) - 1
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.environ.get("VGG_FIXTURES", os.path.join(HERE, "..", "..", "shared", "fixtures"))

# Table 1 of the paper; "M" is a 2x2 max-pool.
CFG = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
ARCHS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def uniform(name, n):
    """u(name, i) of FORMULA.md for i in 0..n, float64 in [0, 1)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    with np.errstate(over="ignore"):
        z = np.uint64(h) + np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def signed(name, n):
    return 2.0 * uniform(name, n) - 1.0


def features(cfg, bn):
    layers, c = [], 3
    for v in CFG[cfg]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(c, v, 3, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        c = v
    return nn.Sequential(*layers)


class TorchvisionVgg(nn.Module):
    def __init__(self, cfg, bn):
        super().__init__()
        self.features = features(cfg, bn)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Dropout(), nn.Linear(4096, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class CifarVgg(nn.Module):
    """The training fixture's model: vgg11_bn features, Linear(512,512)-ReLU-Linear(512,10)."""

    def __init__(self):
        super().__init__()
        self.features = features("A", True)
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Linear(512, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def fill(model, dtype):
    """Every parameter and buffer per FORMULA.md, computed in float64, then cast to `dtype`."""
    bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    new = {}
    for key, t in model.state_dict().items():
        mod, _, leaf = key.rpartition(".")
        n = t.numel()
        if leaf == "num_batches_tracked":
            new[key] = torch.zeros_like(t)
            continue
        if mod in bn:
            v = {"weight": lambda: 1 + 0.2 * signed(key, n), "bias": lambda: 0.1 * signed(key, n),
                 "running_mean": lambda: 0.1 * signed(key, n), "running_var": lambda: 1 + 0.5 * uniform(key, n)}[leaf]()
        elif leaf == "weight":
            v = math.sqrt(6.0 / int(np.prod(t.shape[1:]))) * signed(key, n)
        else:
            v = 0.05 * signed(key, n)
        new[key] = torch.from_numpy(v.reshape(tuple(t.shape))).to(dtype)
    model.to(dtype)
    model.load_state_dict(new)
    return model


def formula_input(tag, shape, dtype):
    return torch.from_numpy(signed("input:" + tag, int(np.prod(shape))).reshape(shape)).to(dtype)


def ref(rel):
    return np.load(os.path.join(FIXTURES, rel)).astype(np.float64)


def rel_err(got, want):
    """‖got − want‖ / ‖want‖, as `rel_err` in tests/common/mod.rs."""
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def rel(a, b):
    return abs(a - b) / abs(b)


def train_errors(manifest, dtype):
    out = {}
    model = fill(CifarVgg(), dtype).train()
    x = formula_input("cifar_train", (8, 3, 32, 32), dtype)
    labels = torch.tensor(manifest["train"]["labels"])
    logits = model(x)
    out["train.logits"] = rel_err(logits.detach().double().numpy(), ref("train/logits.npy"))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    out["train.loss"] = rel(loss.item(), manifest["train"]["loss"])
    grads = {k: p.grad.double().numpy() for k, p in model.named_parameters()}
    for k in ["features.0.weight", "features.1.weight", "classifier.2.weight", "classifier.2.bias"]:
        out[f"train.grad.{k}"] = rel_err(grads[k], ref(f"train/grad.{k}.npy"))
    norms = manifest["train"]["grad_l2"]
    # A conv bias before BatchNorm has a zero gradient; PyTorch's float64 run records ~1e-17 there.
    per_key = {k: rel(float(np.linalg.norm(g)), norms[k]) for k, g in grads.items() if norms[k] >= 1e-12}
    out["train.grad_l2.worst"] = max(per_key.values())
    out["train.grad_l2.worst_key"] = max(per_key, key=per_key.get)
    out["train.grad_l2.zero_bias_max"] = max(float(np.linalg.norm(g)) for k, g in grads.items() if norms[k] < 1e-12)
    sd = model.state_dict()
    before = fill(CifarVgg(), torch.float64).state_dict()
    for k in ["features.1.running_mean", "features.1.running_var", "features.26.running_mean", "features.26.running_var"]:
        got, want = sd[k].double().numpy(), ref(f"train/after_forward.{k}.npy")
        out[f"train.after_forward.{k}"] = rel_err(got, want)
        # The batch statistic itself, recovered from `running = 0.9 * before + 0.1 * batch` as
        # tests/engine.rs does for update_bn (the subtraction amplifies the error).
        b = before[k].float().double().numpy()
        out[f"train.batch_stat.{k}"] = rel_err((got - 0.9 * b) / 0.1, (want - 0.9 * b) / 0.1)

    model = fill(CifarVgg(), dtype).train()
    sgd = manifest["train"]["sgd"]
    opt = torch.optim.SGD(model.parameters(), lr=sgd["lr"], momentum=sgd["momentum"], weight_decay=sgd["weight_decay"])
    for step, want in enumerate(sgd["losses"]):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        out[f"train.sgd.loss{step}"] = rel(loss.item(), want)
    for k in ["classifier.2.weight", "features.0.weight"]:
        out[f"train.after_sgd3.{k}"] = rel_err(model.state_dict()[k].double().numpy(), ref(f"train/after_sgd3.{k}.npy"))
    return out


def forward_errors(manifest, dtype):
    out = {}
    for entry in manifest["forward"]:
        arch = entry["arch"]
        bn = arch.endswith("_bn")
        model = fill(TorchvisionVgg(ARCHS[arch.removesuffix("_bn")], bn), dtype).eval()
        with torch.no_grad():
            y = model(formula_input(entry["input"], tuple(entry["shape"]), dtype))
        out[f"forward.{arch}.{entry['input']}"] = rel_err(y.double().numpy(), ref(entry["logits"]))
        if arch == "vgg16" and entry["input"] == "imagenet224":
            with torch.no_grad():
                f = model.features(formula_input(entry["input"], tuple(entry["shape"]), dtype))
            out["forward.vgg16.imagenet224.features"] = rel_err(f.double().numpy(), ref("forward/vgg16_224_features.npy"))
    return out


def half_weight_errors(manifest, dtype):
    """vgg16 on imagenet32x32 with every weight rounded to bf16/f16, arithmetic in float32: what
    `Engine::load(.., Some(HalfKind))` computes (tests/engine.rs)."""
    out = {}
    entry = next(e for e in manifest["forward"] if e["arch"] == "vgg16" and e["input"] == "imagenet32x32")
    for name, half in [("bf16", torch.bfloat16), ("f16", torch.float16)]:
        model = fill(TorchvisionVgg("D", False), torch.float64).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(half).double())
        model.to(dtype)
        with torch.no_grad():
            y = model(formula_input(entry["input"], tuple(entry["shape"]), dtype))
        out[f"forward.vgg16.imagenet32x32.{name}_weights"] = rel_err(y.double().numpy(), ref(entry["logits"]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.add_argument("--skip-forward", action="store_true", help="only the training fixture (seconds, not minutes)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        manifest = json.load(f)
    info = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    cpu = f"{info.get('model name', platform.processor())} (family {info.get('cpu family')} model {info.get('model')}, "
    cpu += "AVX-512)" if "avx512f" in info.get("flags", "").split() else "AVX2 only)"
    result = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "dtype": "float32"}
    result.update(train_errors(manifest, torch.float32))
    if not args.skip_forward:
        result.update(forward_errors(manifest, torch.float32))
        result.update(half_weight_errors(manifest, torch.float32))
    if args.json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        print(f"{k:48} {v:.3e}" if isinstance(v, float) else f"{k:48} {v}")


if __name__ == "__main__":
    main()
