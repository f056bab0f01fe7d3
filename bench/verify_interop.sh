#!/usr/bin/env bash
# Runs bench/verify_interop.py: this project's ONNX files in onnxruntime, its Keras .h5 files in
# Keras 3 (JAX backend) and Keras' files in this project. Makes bench/.venv-interop on first use
# (PyPI: onnxruntime, keras, jax, h5py, numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-interop
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q onnxruntime keras jax h5py numpy
fi
[ -x target/release/vgg ] || cargo build --release
VGG=${VGG:-target/release/vgg} "$VENV/bin/python" bench/verify_interop.py
