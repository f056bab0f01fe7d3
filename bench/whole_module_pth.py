"""Whole-module `.pth` files as tutorials write them (`torch.save(model)`, not a state dict), for
tests/weights_whole_module.rs. Run with bench/.venv-torch (torch, torchvision):
`bench/.venv-torch/bin/python bench/whole_module_pth.py`.

The network: torchvision's own `VGG` class over `make_layers` of VGG-11's configuration at 1/16
width with BatchNorm (4..32 channels), its classifier replaced by a small one (hidden 32, 10
classes), random weights (seed 0) and BatchNorm statistics moved off their defaults by a few
training-mode passes. Written three ways, into tests/fixtures/pth/:
- `whole_vgg.pth`: `torch.save(model)` (pickles torchvision.models.vgg.VGG and its module tree);
- `whole_tutorial.pth`: the same weights in a class defined in the script (`__main__.Net`), as a
  tutorial's notebook would save it;
- `whole_in_checkpoint.pth`: `torch.save({"epoch": 3, "model": nn.DataParallel(model)})`;
and `whole_expected.json`: the input (`[1, 3, 32, 32]`, flattened) and torch's eval-mode logits.
PyTorch >= 2.6 refuses all three with `torch.load` unless `weights_only=False` (which executes the
pickle); the reader in src/weights/pth.rs recovers the tensors without executing anything.
"""
import json
import os

import torch
import torch.nn as nn
import torchvision
from torchvision.models.vgg import VGG, make_layers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "pth")


class Net(nn.Module):
    """A tutorial's VGG: torchvision's attribute names, its own class."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(32 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
            nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    cfg = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
    model = VGG(make_layers(cfg, batch_norm=True), num_classes=10, init_weights=True)
    model.classifier = nn.Sequential(
        nn.Linear(32 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, 10))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32))
    model.eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits = model(x)
    torch.save(model, os.path.join(OUT, "whole_vgg.pth"))
    tutorial = Net(make_layers(cfg, batch_norm=True))
    tutorial.load_state_dict(model.state_dict())
    tutorial.eval()
    torch.save(tutorial, os.path.join(OUT, "whole_tutorial.pth"))
    torch.save({"epoch": 3, "model": nn.DataParallel(model)}, os.path.join(OUT, "whole_in_checkpoint.pth"))
    with open(os.path.join(OUT, "whole_expected.json"), "w") as f:
        json.dump({"torch": torch.__version__, "torchvision": torchvision.__version__, "input": x.flatten().tolist(),
                   "logits": logits.flatten().tolist(), "keys": list(model.state_dict().keys())}, f)
    try:
        torch.load(os.path.join(OUT, "whole_vgg.pth"))
        print("torch.load accepted the whole module with its defaults")
    except Exception as e:  # PyTorch >= 2.6: weights_only=True by default
        print("torch.load refuses it by default:", str(e).splitlines()[0])


if __name__ == "__main__":
    main()
