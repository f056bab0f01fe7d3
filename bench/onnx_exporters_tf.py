"""ONNX files written by real TensorFlow-side exporters, for tests/onnx_exporters.rs. Run with
bench/.venv-tf (tensorflow-cpu 2.21, tf2onnx 1.17, Keras 3.15, onnxruntime) by
bench/onnx_exporters.sh.

A Keras 3 functional VGG-11 with BatchNorm at 1/16 width on NHWC 64x64x3 inputs (a 2x2 last map, so that the flatten is computed as real exports do), with a dense head
that has a BatchNormalization (as the issue's MRI classifier) and a final Softmax, random weights
(seed 0), BatchNorm statistics moved by training. Exported:
- `tf2onnx_keras3.onnx`: tf2onnx 1.17 (`from_function` on the model's inference call, opset 13),
  the path the issue's user took;
- `keras_export.onnx`: Keras' own `model.export(path, format="onnx")`.
Each file's output on the fixture formula's input "onnx64" (NCHW in the formula, transposed to
NHWC), computed by onnxruntime, goes to `expected_tf.json`.
"""
import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from keras import layers  # noqa: E402

from formula import formula_input  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "onnx")
BLOCKS = [(1, 4), (1, 8), (2, 16), (2, 32), (2, 32)]


def model():
    inp = keras.Input((64, 64, 3), name="input")
    x = inp
    for b, (convs, width) in enumerate(BLOCKS, 1):
        for i in range(1, convs + 1):
            x = layers.Conv2D(width, 3, padding="same", name=f"block{b}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{i}")(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(24, name="fc1")(x)
    x = layers.BatchNormalization(name="fc1_bn")(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.5)(x)
    out = layers.Dense(10, activation="softmax", name="predictions")(x)
    m = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    m.fit(rng.uniform(-1, 1, (16, 64, 64, 3)).astype("float32"), rng.integers(0, 10, 16), epochs=2, batch_size=8, verbose=0)
    return m


def main():
    os.makedirs(OUT, exist_ok=True)
    keras.utils.set_random_seed(0)
    m = model()
    x = formula_input("onnx64", (1, 3, 64, 64)).transpose(0, 2, 3, 1).astype("float32")
    spec = (tf.TensorSpec((None, 64, 64, 3), tf.float32, name="input"),)
    infer = tf.function(lambda t: m(t, training=False))
    path = os.path.join(OUT, "tf2onnx_keras3.onnx")
    tf2onnx.convert.from_function(infer, input_signature=spec, opset=13, output_path=path)
    files = {"tf2onnx_keras3.onnx": path}
    try:
        path = os.path.join(OUT, "keras_export.onnx")
        m.export(path, format="onnx", verbose=False)
        files["keras_export.onnx"] = path
    except Exception as e:  # noqa: BLE001
        print("model.export(format='onnx') failed:", e)
    expected = {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "keras": keras.__version__,
                "onnxruntime": ort.__version__, "input": "onnx64", "layout": "NHWC", "outputs": {}}
    for name, p in files.items():
        s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        y = s.run(None, {s.get_inputs()[0].name: x})[0]
        expected["outputs"][name] = {"softmax": True, "values": y.flatten().tolist()}
        print(name, os.path.getsize(p), "bytes", [n.op_type for n in __import__("onnx").load(p).graph.node][:40])
    with open(os.path.join(OUT, "expected_tf.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
