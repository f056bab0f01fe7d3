"""ONNX files written by torch's exporters and onnx-simplifier, for tests/onnx_exporters.rs. Run
with bench/.venv-torch (torch 2.15, torchvision, onnx, onnxscript, onnxsim, onnxruntime) by
bench/onnx_exporters.sh.

torchvision's own VGG class over VGG-11's configuration at 1/16 width with BatchNorm, its
classifier made small (hidden 32, 10 classes), random weights (seed 0), BatchNorm statistics moved
by a few training-mode passes, exported with a dynamic batch dimension as
- `torch_script.onnx`: `torch.onnx.export(..., dynamo=False)` (the TorchScript exporter), opset 17;
- `torch_dynamo.onnx`: `torch.onnx.export(..., dynamo=True)` (the torch.export-based exporter);
- `torch_script_sim.onnx`: the first through onnx-simplifier (`onnxsim.simplify`).
Each file's output on the fixture formula's input "onnx224" (NCHW), computed by onnxruntime, goes
to `expected_torch.json`.
"""
import json
import os

import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torchvision
from torchvision.models.vgg import VGG, make_layers

from formula import formula_input

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "onnx")


def model():
    torch.manual_seed(0)
    m = VGG(make_layers([4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"], batch_norm=True), num_classes=10)
    m.classifier = nn.Sequential(
        nn.Linear(32 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, 10))
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(4, 3, 224, 224))
    return m.eval()


def main():
    os.makedirs(OUT, exist_ok=True)
    m = model()
    x = torch.from_numpy(formula_input("onnx224", (1, 3, 224, 224))).float()
    files = {}
    path = os.path.join(OUT, "torch_script.onnx")
    torch.onnx.export(m, (x,), path, dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    files["torch_script.onnx"] = path
    path = os.path.join(OUT, "torch_dynamo.onnx")
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(m, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes=({0: batch},))
    program.save(path, external_data=False)
    files["torch_dynamo.onnx"] = path
    import onnxsim
    simplified, ok = onnxsim.simplify(onnx.load(files["torch_script.onnx"]))
    assert ok
    path = os.path.join(OUT, "torch_script_sim.onnx")
    onnx.save(simplified, path)
    files["torch_script_sim.onnx"] = path
    expected = {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                "onnxsim": onnxsim.__version__, "onnxruntime": ort.__version__, "input": "onnx224",
                "layout": "NCHW", "outputs": {}}
    with torch.no_grad():
        expected["torch_logits"] = m(x).flatten().tolist()
    for name, p in files.items():
        s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        y = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
        expected["outputs"][name] = {"softmax": False, "values": y.flatten().tolist()}
        print(name, os.path.getsize(p), "bytes", [n.op_type for n in onnx.load(p).graph.node][-14:])
    with open(os.path.join(OUT, "expected_torch.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
