"""Keras 3 files for tests/keras3.rs, written by Keras 3 itself (torch backend, so no TensorFlow
is needed): `KERAS_BACKEND=torch bench/.venv-torch/bin/python bench/keras3_vgg.py`.

Two VGG-11-with-BatchNorm networks at 1/16 width for 32x32 inputs, random weights (seed 0), their
BatchNorm statistics moved by a few training steps:
- `functional`: keras.applications-style names (block1_conv1, block1_bn1, ..., flatten, fc1, fc2,
  predictions), saved as `functional.keras` (`model.save`) and `functional.weights.h5`
  (`model.save_weights`, the Keras 3 layout), and `functional_legacy.h5` (`model.save("x.h5")`,
  which Keras 3 still writes in Keras 2's layout);
- `sequential`: a Sequential model with Keras' own layer names and a dense head with a
  BatchNormalization between its dense layers (before the ReLU), saved as `sequential.keras`.
`expected.json`: each model's logits on the fixture formula's input "keras32" (NCHW in the formula,
transposed to Keras' NHWC), and the tool versions.
"""
import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from formula import formula_input  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "keras3")
BLOCKS = [(1, 4), (1, 8), (2, 16), (2, 32), (2, 32)]  # VGG-11 (A) at 1/16 width


def functional():
    inp = keras.Input((32, 32, 3))
    x = inp
    for b, (convs, width) in enumerate(BLOCKS, 1):
        for i in range(1, convs + 1):
            x = layers.Conv2D(width, 3, padding="same", name=f"block{b}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{i}")(x)
            x = layers.Activation("relu", name=f"block{b}_relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(32, activation="relu", name="fc1")(x)
    x = layers.Dense(32, activation="relu", name="fc2")(x)
    return keras.Model(inp, layers.Dense(10, name="predictions")(x), name="vgg11_bn_tiny")


def sequential():
    m = keras.Sequential([keras.Input((32, 32, 3))])
    for convs, width in BLOCKS:
        for _ in range(convs):
            m.add(layers.Conv2D(width, 3, padding="same"))
            m.add(layers.BatchNormalization())
            m.add(layers.ReLU())
        m.add(layers.MaxPooling2D(2))
    m.add(layers.Flatten())
    m.add(layers.Dense(24))
    m.add(layers.BatchNormalization())
    m.add(layers.ReLU())
    m.add(layers.Dense(10))
    return m


def trained(m):
    rng = np.random.default_rng(0)
    m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(rng.uniform(-1, 1, (16, 32, 32, 3)).astype("float32"), rng.integers(0, 10, 16), epochs=2, batch_size=8, verbose=0)
    return m


def main():
    os.makedirs(OUT, exist_ok=True)
    keras.utils.set_random_seed(0)
    x = formula_input("keras32", (1, 3, 32, 32)).transpose(0, 2, 3, 1).astype("float32")
    expected = {"keras": keras.__version__, "backend": keras.backend.backend()}
    f = trained(functional())
    f.save(os.path.join(OUT, "functional.keras"))
    f.save_weights(os.path.join(OUT, "functional.weights.h5"))
    f.save(os.path.join(OUT, "functional_legacy.h5"))  # Keras 3 still writes Keras 2's HDF5 layout here
    expected["functional"] = keras.ops.convert_to_numpy(f.predict(x, verbose=0)).flatten().tolist()
    s = trained(sequential())
    s.save(os.path.join(OUT, "sequential.keras"))
    expected["sequential"] = keras.ops.convert_to_numpy(s.predict(x, verbose=0)).flatten().tolist()
    with open(os.path.join(OUT, "expected.json"), "w") as fh:
        json.dump(expected, fh)
    print(expected["keras"], expected["backend"])


if __name__ == "__main__":
    main()
