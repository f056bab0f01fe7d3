# Writes VGG-16 / VGG-19 (torchvision's layout, random weights) as ONNX with the `onnx` package
# alone, so that onnxruntime can be benchmarked without installing PyTorch.
# usage: make_vgg_onnx.py vgg16|vgg19 OUT.onnx
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
arch, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
nodes, inits = [], []
x, c = "input", 3


def init(name, arr):
    inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
    return name


for i, v in enumerate(CFG[arch]):
    if v == "M":
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
        x = f"pool{i}"
        continue
    w = init(f"w{i}", rng.normal(0, (2.0 / (v * 9)) ** 0.5, (v, c, 3, 3)))
    b = init(f"b{i}", np.zeros(v))
    nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
    x, c = f"relu{i}", v
# At 224x224 the trunk ends at 7x7, where adaptive average pooling is the identity.
nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
dims = [(512 * 49, 4096), (4096, 4096), (4096, 1000)]
x = "flat"
for j, (fi, fo) in enumerate(dims):
    w = init(f"fc{j}_w", rng.normal(0, 0.01, (fo, fi)))
    b = init(f"fc{j}_b", np.zeros(fo))
    nodes.append(helper.make_node("Gemm", [x, w, b], [f"fc{j}"], transB=1))
    x = f"fc{j}"
    if j < 2:
        nodes.append(helper.make_node("Relu", [x], [f"fcr{j}"]))
        x = f"fcr{j}"
graph = helper.make_graph(
    nodes,
    arch,
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
    [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", 1000])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
onnx.save(model, out, save_as_external_data=False) if model.ByteSize() < 2**31 else onnx.save(
    model, out, save_as_external_data=True
)
print(f"wrote {out}")
