"""Caffe files for tests/caffe.rs, checked by an independent Caffe reader: OpenCV's
`cv2.dnn.readNetFromCaffe`. Run with bench/.venv-torch (numpy, opencv-python-headless 4.x: OpenCV 5 dropped the Caffe importer):
`bench/.venv-torch/bin/python bench/caffe_vgg.py`.

No Caffe is installed, so the caffemodels are encoded here from caffe.proto's field numbers (a
`NetParameter` of layers with `BlobProto` weights), in both formats the paper's era used:
- `vgg11_tiny_v1.caffemodel`: the V1 `layers` format (field 2, `V1LayerParameter`, type enum,
  legacy num/channels/height/width blob dims) of the paper's own `VGG_ILSVRC_*_layers.caffemodel`;
- `vgg11_tiny_v2.caffemodel`: the V2 `layer` format (field 100, type strings, `BlobShape`);
with `vgg11_tiny.prototxt`, the deploy network OpenCV needs (the paper's layer names: conv1_1 …
fc8, ReLU, MAX pooling, dropout). The network: VGG-11 (A) at 1/16 width on 3x224x224 BGR inputs,
fc6/fc7 of 32, 10 classes, random weights (seed 0). `expected.json`: OpenCV's output (fc8, before
any softmax) for each file on the fixture formula's input "caffe224", and the OpenCV version.
"""
import json
import os
import struct

import cv2
import numpy as np

from formula import formula_input

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "caffe")
CFG = [[4], [8], [16, 16], [32, 32], [32, 32]]
HIDDEN, CLASSES = 32, 10


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def key(field, wire):
    return varint((field << 3) | wire)


def ld(field, payload):
    return key(field, 2) + varint(len(payload)) + payload


def vint(field, v):
    return key(field, 0) + varint(v)


def blob_v1(arr):
    dims = [1] * (4 - arr.ndim) + list(arr.shape)
    return b"".join(vint(i + 1, d) for i, d in enumerate(dims)) + ld(5, arr.astype("<f4").tobytes())


def blob_v2(arr):
    shape = ld(1, b"".join(varint(d) for d in arr.shape))
    return ld(7, shape) + ld(5, arr.astype("<f4").tobytes())


def layers():
    """(name, kind, bottom, top, blobs) of the network, in order."""
    rng = np.random.default_rng(0)
    out, prev, cin = [], "data", 3
    for b, widths in enumerate(CFG, 1):
        for i, w in enumerate(widths, 1):
            name = f"conv{b}_{i}"
            out.append((name, "Convolution", prev, name, [rng.normal(0, (2 / (9 * cin)) ** 0.5, (w, cin, 3, 3)),
                                                          rng.normal(0, 0.05, (w,))]))
            out.append((f"relu{b}_{i}", "ReLU", name, name, []))
            prev, cin = name, w
        out.append((f"pool{b}", "Pooling", prev, f"pool{b}", []))
        prev = f"pool{b}"
    fan = cin * 7 * 7
    for name, n_in, n_out in [("fc6", fan, HIDDEN), ("fc7", HIDDEN, HIDDEN), ("fc8", HIDDEN, CLASSES)]:
        out.append((name, "InnerProduct", prev, name, [rng.normal(0, (2 / n_in) ** 0.5, (n_out, n_in)),
                                                       rng.normal(0, 0.05, (n_out,))]))
        prev = name
        if name != "fc8":
            out.append((f"relu{name[2:]}", "ReLU", name, name, []))
            out.append((f"drop{name[2:]}", "Dropout", name, name, []))
    return out


V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "Dropout": 6}


def caffemodel(net, v1):
    body = ld(1, b"VGG_tiny")
    for name, kind, bottom, top, blobs in net:
        if v1:
            msg = ld(2, bottom.encode()) + ld(3, top.encode()) + ld(4, name.encode()) + vint(5, V1_TYPES[kind])
            msg += b"".join(ld(6, blob_v1(b)) for b in blobs)
            body += ld(2, msg)
        else:
            msg = ld(1, name.encode()) + ld(2, kind.encode()) + ld(3, bottom.encode()) + ld(4, top.encode())
            msg += b"".join(ld(7, blob_v2(b)) for b in blobs)
            body += ld(100, msg)
    return body


def prototxt(net):
    lines = ['name: "VGG_tiny"', 'input: "data"', "input_dim: 1", "input_dim: 3", "input_dim: 224", "input_dim: 224"]
    for name, kind, bottom, top, blobs in net:
        lines.append(f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top}"')
        if kind == "Convolution":
            lines.append(f"  convolution_param {{ num_output: {blobs[0].shape[0]} pad: 1 kernel_size: 3 }}")
        elif kind == "InnerProduct":
            lines.append(f"  inner_product_param {{ num_output: {blobs[0].shape[0]} }}")
        elif kind == "Pooling":
            lines.append("  pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
        elif kind == "Dropout":
            lines.append("  dropout_param { dropout_ratio: 0.5 }")
        lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    os.makedirs(OUT, exist_ok=True)
    net = layers()
    proto = os.path.join(OUT, "vgg11_tiny.prototxt")
    with open(proto, "w") as f:
        f.write(prototxt(net))
    x = formula_input("caffe224", (1, 3, 224, 224)).astype("float32")
    expected = {"opencv": cv2.__version__, "input": "caffe224", "outputs": {}}
    for v1, name in [(True, "vgg11_tiny_v1.caffemodel"), (False, "vgg11_tiny_v2.caffemodel")]:
        path = os.path.join(OUT, name)
        with open(path, "wb") as f:
            f.write(caffemodel(net, v1))
        dnn = cv2.dnn.readNetFromCaffe(proto, path)
        dnn.setInput(x)
        expected["outputs"][name] = dnn.forward().flatten().tolist()
        print(name, os.path.getsize(path), "bytes", expected["outputs"][name][:3])
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
