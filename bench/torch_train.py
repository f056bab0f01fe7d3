# PyTorch's training step for the models `vgg bench --train` times, 2 threads, f32: one JSON line.
# usage: torch_train.py ARCH WIDTH IN_CHANNELS DROPOUT BATCH ITERS WARMUP
#   torch_train.py vgg16_bn 1 3 0.5 64 5 2      the CIFAR VGG-16-BN of the peer benchmark
#   torch_train.py vgg13_bn 0.375 1 0 64 30 3   the shipped Fashion-MNIST model
#   torch_train.py vgg11_bn 0.375 1 0 64 30 3   the one shipped before it (2026-11-28)
# Model: torchvision's VGG trunk (Table 1 widths times WIDTH, rounded), BatchNorm after every conv for
# *_bn, flattened 1x1 map, Linear(C, 512)-ReLU-Dropout-Linear(512, 10) (the CIFAR-style head).
# Step: zero_grad + train-mode forward + cross-entropy + backward + SGD(lr .01, momentum .9, wd 5e-4),
# as ../shared/bench/bench_train.py does; input 32x32, random, fixed seed.
import json
import statistics
import sys
import time

import torch
import torch.nn as nn

torch.set_num_threads(2)
CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def make_model(arch, width, cin, dropout):
    bn = arch.endswith("_bn")
    layers, c = [], cin
    for v in CFG[arch.removesuffix("_bn")]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out = max(1, round(v * width))
        layers.append(nn.Conv2d(c, out, 3, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        c = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(512, 10))


def main():
    arch, width, cin, dropout, batch, iters, warmup = sys.argv[1:8]
    width, cin, dropout, batch, iters, warmup = float(width), int(cin), float(dropout), int(batch), int(iters), int(warmup)
    torch.manual_seed(0)
    model = make_model(arch, width, cin, dropout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    lossf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cin, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    print(json.dumps({"runtime": f"torch {torch.__version__}", "arch": arch, "width": width, "batch": batch,
                      "mode": "train", "median_s": med, "img_per_s": batch / med,
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
