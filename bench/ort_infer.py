# onnxruntime inference timing, same protocol as `vgg bench`: 2 threads, median and p90 of N runs
# after warm-ups, one JSON object. usage: ort_infer.py MODEL.onnx BATCH [ITERS] [WARMUP]
import json, resource, statistics, sys, time

import numpy as np
import onnxruntime as ort

path, batch = sys.argv[1], int(sys.argv[2])
iters = int(sys.argv[3]) if len(sys.argv) > 3 else 10
warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 3
so = ort.SessionOptions()
so.intra_op_num_threads = 2
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(123).standard_normal((batch, 3, 224, 224), dtype=np.float32)
name = sess.get_inputs()[0].name
for _ in range(warmup):
    sess.run(None, {name: x})
times = []
for _ in range(iters):
    t = time.perf_counter()
    sess.run(None, {name: x})
    times.append(time.perf_counter() - t)
times.sort()
med = times[len(times) // 2]
print(json.dumps({"runtime": "onnxruntime " + ort.__version__, "batch": batch, "median_s": med,
                  "p90_s": times[min(len(times) - 1, int(len(times) * 0.9 + 0.999) - 1)],
                  "img_per_s": batch / med,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
