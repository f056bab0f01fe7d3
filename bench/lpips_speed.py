"""LPIPS-VGG speed of the lpips package in PyTorch on CPU, for BENCHMARKS.md side by side with
`vgg lpips` (bench/lpips_speed.sh). Reads the same folders of PNG pairs; times the forward passes
only (images already decoded), after one warm-up batch.
usage: lpips_speed.py DIR_A DIR_B BATCH THREADS"""
import os
import sys
import time

import numpy as np
import torch
import lpips
from PIL import Image


def main():
    dir_a, dir_b, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    names = sorted(os.listdir(dir_a))
    load = lambda p: torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1)
    a = torch.stack([load(os.path.join(dir_a, n)) for n in names])
    b = torch.stack([load(os.path.join(dir_b, n)) for n in names])
    model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    with torch.no_grad():
        model(a[:batch], b[:batch])
        start = time.perf_counter()
        for i in range(0, len(names), batch):
            model(a[i:i + batch], b[i:i + batch])
        secs = time.perf_counter() - start
    print(f"{len(names) / secs:.3f} pairs/s ({len(names)} pairs in {secs:.2f} s, torch {torch.__version__}, {threads} threads)")


main()
