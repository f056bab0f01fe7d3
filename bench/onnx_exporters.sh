#!/usr/bin/env bash
# ONNX test fixtures from the real exporters (tests/fixtures/onnx/, checked by tests/onnx_exporters.rs):
# tf2onnx 1.17 and Keras 3's own export on the TensorFlow side (bench/.venv-tf, made here), torch's
# TorchScript and dynamo exporters and onnx-simplifier on the PyTorch side (bench/.venv-torch; see
# bench/compare_train.sh), each with onnxruntime's outputs recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x bench/.venv-tf/bin/python ] || python3 -m venv bench/.venv-tf
bench/.venv-tf/bin/pip install -q tensorflow-cpu "tf2onnx==1.17.0" keras onnx onnxruntime
bench/.venv-torch/bin/pip install -q torchvision onnx onnxscript onnxsim onnxruntime
bench/.venv-tf/bin/python bench/onnx_exporters_tf.py
bench/.venv-torch/bin/python bench/onnx_exporters_torch.py
