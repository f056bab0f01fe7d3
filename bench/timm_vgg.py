"""timm VGG checkpoints for tests/timm.rs. Run with bench/.venv-torch (torch, timm, safetensors):
`bench/.venv-torch/bin/python bench/timm_vgg.py`.

timm's own VGG class (`timm.models.vgg.VGG`) over VGG-11's configuration at 1/16 width with
BatchNorm, its head made small (`ConvMlp(32, 32, kernel_size=7)` as `pre_logits`, a
`ClassifierHead(32, 10)` as `head`: the full 4096-wide head would be 70 MB), random weights (seed 0)
and BatchNorm statistics moved by a few training-mode passes. Writes into tests/fixtures/timm/:
- `vgg11_bn_tiny.safetensors` (timm's `save_file`) and `vgg11_bn_tiny.pth` (`torch.save(state_dict)`);
- `expected.json`: timm's eval-mode logits at 224x224 and 32x32 on the formula inputs "timm224" and
  "timm32", the state dict's keys and
  shapes, and the keys and shapes of `timm.create_model("vgg16")` and `("vgg11_bn")` (no weights
  kept) for the writer's check; tool versions.
"""
import json
import os

import safetensors.torch
import timm
import torch
from timm.layers import ClassifierHead
from timm.models.vgg import VGG, ConvMlp

from formula import formula_input

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "timm")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    cfg = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
    model = VGG(cfg, num_classes=10, norm_layer=torch.nn.BatchNorm2d)
    model.pre_logits = ConvMlp(32, 32, kernel_size=7)
    model.head = ClassifierHead(32, 10, pool_type="avg")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64))
    model.eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(sd, os.path.join(OUT, "vgg11_bn_tiny.safetensors"))
    torch.save(sd, os.path.join(OUT, "vgg11_bn_tiny.pth"))
    expected = {"timm": timm.__version__, "torch": torch.__version__,
                "keys": [[k, list(v.shape)] for k, v in sd.items()]}
    for side in [224, 32]:
        # The fixture formula's input "timm<side>" (FORMULA.md), so the JSON need not carry it.
        x = torch.from_numpy(formula_input(f"timm{side}", (1, 3, side, side))).float()
        with torch.no_grad():
            expected[f"logits_{side}"] = model(x).flatten().tolist()
    for name in ["vgg16", "vgg11_bn"]:
        full = timm.create_model(name, pretrained=False)
        expected[f"keys_{name}"] = [[k, list(v.shape)] for k, v in full.state_dict().items()]
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(timm.__version__, len(sd), "tensors")


if __name__ == "__main__":
    main()
