"""Checks this project's files in the runtimes they are meant for (issue #5).

- ONNX exports (BatchNorm kept and folded) run in onnxruntime on the very tensor `vgg features`
  fed the network (its `input` entry), and give its logits.
- Keras files go both ways, with Keras 3 itself (JAX backend): a Keras VGG16 saved with
  `model.save("x.h5")` gives in `vgg` the outputs Keras gives (and `vgg`'s Caffe preprocessing is
  Keras' `preprocess_input`); what `vgg convert` writes as `.h5` loads with Keras'
  `load_weights` (keras.applications.VGG16, and a hand-built VGG-13-BN for the built-in
  Fashion-MNIST model) and gives `vgg`'s outputs.

Run it through bench/verify_interop.sh, which makes the venv; it prints one line per check and
exits non-zero if any relative error exceeds 1e-5.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

os.environ.setdefault("KERAS_BACKEND", "jax")
import numpy as np  # noqa: E402

VGG = os.environ.get("VGG", "target/release/vgg")
TOL = 1e-5
failures = []


def run(*args):
    r = subprocess.run([VGG, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"vgg {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(body[a:b], dtype=np.float32).reshape(v["shape"])
    return out


def write_png(path, rgb):
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def check(what, got, want):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    ok = err <= TOL
    print(f"{'ok  ' if ok else 'FAIL'} {what}: relative error {err:.2e}")
    if not ok:
        failures.append(what)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def features(image, weights, layer, out, *extra):
    run("features", image, "--weights", weights, "--layers", layer, "--out", out, *extra)
    t = read_safetensors(out)
    return t["input"], t[layer]


def check_onnx(tmp):
    import onnxruntime as ort

    dress = "assets/fashion-mnist/3-dress.png"
    cases = [
        ("built-in Fashion-MNIST VGG-13-BN", ["--weights", "fashion-mnist"], dress, "fc7"),
        ("VGG-16 (formula weights) 224x224", ["--arch", "vgg16", "--weights", "formula"], None, "fc8"),
    ]
    for name, wargs, image, layer in cases:
        if image is None:
            image = os.path.join(tmp, "rand224.png")
            write_png(image, np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8))
        x, logits = features(image, wargs[-1], layer, os.path.join(tmp, "f.safetensors"), *wargs[:-2])
        for fold in [False, True]:
            path = os.path.join(tmp, "m.onnx")
            run("export", *wargs, "--format", "onnx", "--out", path, *(["--fold-bn"] if fold else []))
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            check(f"onnxruntime {ort.__version__}: {name}{', BN folded' if fold else ''}", got, logits)


def check_keras(tmp):
    import keras
    from keras.applications.vgg16 import preprocess_input

    keras.utils.set_random_seed(0)
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = os.path.join(tmp, "rand64.png")
    write_png(png, img)
    keras_x = preprocess_input(img[None].astype(np.float32))
    rng = np.random.default_rng(4)

    # Keras → vgg: a whole saved model (legacy HDF5, the applications' layout).
    model = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=5)
    # Non-zero biases, so that a bias mix-up shows.
    for layer in model.layers:
        if layer.weights:
            k, b = layer.get_weights()
            layer.set_weights([k, np.random.default_rng(3).normal(0, 0.05, b.shape).astype(np.float32)])
    k_path = os.path.join(tmp, "keras_vgg16.h5")
    model.save(k_path)
    want = np.asarray(model.predict(keras_x, verbose=0))
    x, logits = features(png, k_path, "fc8", os.path.join(tmp, "k.safetensors"), "--resize", "0", "--crop", "0")
    check("vgg's Caffe preprocessing vs keras preprocess_input", x.transpose(0, 2, 3, 1), keras_x)
    check(f"Keras {keras.__version__} VGG16 .h5 (model.save) read by vgg", softmax(logits), want)

    # vgg → Keras: convert writes the weights back; Keras' load_weights takes them.
    back = os.path.join(tmp, "back.h5")
    run("convert", k_path, back)
    fresh = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=5)
    fresh.load_weights(back)
    check("vgg convert .h5 → keras.applications.VGG16.load_weights", fresh.predict(keras_x, verbose=0), want)

    # vgg → Keras with BatchNorm, one channel and the CIFAR-style head: the built-in model.
    fm = os.path.join(tmp, "fmnist.h5")
    run("convert", "fashion-mnist", fm)
    x, logits = features("assets/fashion-mnist/3-dress.png", "fashion-mnist", "fc7", os.path.join(tmp, "fm.safetensors"))
    def vgg13_bn(eps):
        layers = [keras.Input((32, 32, 1))]
        for b, (n, c) in enumerate(zip([2, 2, 2, 2, 2], [24, 48, 96, 192, 192]), start=1):
            for i in range(1, n + 1):
                layers += [
                    keras.layers.Conv2D(c, 3, padding="same", name=f"block{b}_conv{i}"),
                    keras.layers.BatchNormalization(epsilon=eps, name=f"block{b}_bn{i}"),
                    keras.layers.ReLU(),
                ]
            layers.append(keras.layers.MaxPooling2D(name=f"block{b}_pool"))
        layers += [
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(512, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="predictions"),
        ]
        return keras.Sequential(layers)

    net = vgg13_bn(1e-5)
    net.load_weights(fm)
    got = net.predict(x.transpose(0, 2, 3, 1), verbose=0)
    check("vgg convert fashion-mnist .h5 (BatchNorm, gray, CIFAR head) → Keras Sequential", got, logits)

    # Keras → vgg with BatchNorm at Keras' default epsilon (1e-3, read from the saved JSON).
    net = vgg13_bn(1e-3)  # Keras' default epsilon
    net.load_weights(fm)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, be, m, v = layer.get_weights()
            layer.set_weights([g, be, m + rng.normal(0, 0.1, m.shape), v * rng.uniform(0.5, 2.0, v.shape)])
    bn_path = os.path.join(tmp, "keras_bn.h5")
    net.save(bn_path)
    gray = os.path.join(tmp, "gray32.png")
    write_png(gray, np.repeat(np.random.default_rng(5).integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=2))
    x, got = features(gray, bn_path, "fc7", os.path.join(tmp, "bn.safetensors"),
                      "--normalize", "gray", "--resize", "0", "--crop", "0")
    want = net.predict(x.transpose(0, 2, 3, 1), verbose=0)
    check("Keras Sequential VGG-13-BN (epsilon 1e-3) .h5 read by vgg", got, want)

    # Keras → vgg: a fine-tuning head of any depth with BatchNorm between the dense layers
    # (2048 → 64 → 128 → 256 → 4 on the 2x2x512 map of a 64x64 input), folded on import.
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
    h = keras.layers.Flatten()(base.output)
    for width in [64, 128, 256]:
        h = keras.layers.Dense(width, activation="relu")(h)
        h = keras.layers.BatchNormalization()(h)
    out = keras.layers.Dense(4, activation="softmax")(h)
    tuned = keras.Model(base.input, out)
    for layer in tuned.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, be, m, v = layer.get_weights()
            layer.set_weights([g * rng.uniform(0.5, 1.5, g.shape), be + rng.normal(0, 0.1, be.shape),
                               m + rng.normal(0, 0.1, m.shape), v * rng.uniform(0.5, 2.0, v.shape)])
    t_path = os.path.join(tmp, "keras_tuned.h5")
    tuned.save(t_path)
    want = np.asarray(tuned.predict(keras_x, verbose=0))
    x, logits = features(png, t_path, "fc9", os.path.join(tmp, "t.safetensors"), "--resize", "0", "--crop", "0")
    check("Keras VGG16 + Dense/BatchNorm head (2048-64-128-256-4) .h5 read by vgg", softmax(logits), want)
    import onnxruntime as ort

    t_onnx = os.path.join(tmp, "tuned.onnx")
    run("convert", t_path, t_onnx, "--size", "64")
    sess = ort.InferenceSession(t_onnx, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    check("that model converted to ONNX (pooled MLP head) in onnxruntime", softmax(got), want)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        check_onnx(tmp)
        check_keras(tmp)
    if failures:
        sys.exit(f"{len(failures)} check(s) failed: {', '.join(failures)}")
    print("all checks passed")


if __name__ == "__main__":
    main()
