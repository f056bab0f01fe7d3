"""Golden LPIPS values from the real `lpips` 0.1.4 package and torchmetrics, for tests/lpips.rs.

Run by bench/lpips_reference.sh (which makes the venv). The VGG-16 trunk carries the fixture formula
weights (../shared/fixtures/FORMULA.md), so nothing is downloaded: `lpips.LPIPS(net="vgg",
version="0.1", pnet_rand=True)` builds torchvision's vgg16 without weights, the formula fills
`features.*`, and the linear heads are the wheel's own `lpips/weights/v0.1/vgg.pth`.

Writes, under tests/fixtures/lpips/:
- `<photo>.png` and `<photo>-<distortion>.png`: 64x64 crops of the fixture photos and their blurred,
  noisy, JPEG-compressed and shifted versions, as PNG (lossless: Rust reads the same pixels);
- `golden.json`: for each pair, LPIPS (float64 and float32), each layer's share, the `lpips=False`
  value, torchmetrics' LearnedPerceptualImagePatchSimilarity value; tool versions;
- `spatial.npy`: `spatial=True` map of the first pair `[H, W]` (float64);
- `grad.npy`: d LPIPS / d in0 of the first pair `[3, H, W]` (float64);
and assets/lpips/vgg-v0.1.safetensors: the linear heads, converted from the wheel.
"""
import io
import json
import os
import struct
import sys

import numpy as np
import torch
from formula import formula
import lpips
import torchmetrics
from PIL import Image, ImageFilter
import torchmetrics.image.lpip as tm_lpip
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SHARED = os.path.join(ROOT, "..", "shared", "fixtures")
OUT = os.path.join(ROOT, "tests", "fixtures", "lpips")
def formula_trunk(model):
    """The formula's torchvision `features.{i}` tensors into lpips's `net.slice{k}.{i}`."""
    sd = model.state_dict()
    for key in sd:
        if key.startswith("net.slice"):
            index, what = key.split(".")[2:4]
            tv_key = f"features.{index}.{what}"
            sd[key] = torch.from_numpy(formula(tv_key, tuple(sd[key].shape)))
    model.load_state_dict(sd)


def photos():
    """64x64 centre crops (after a shorter-side resize to 64) of the fixture photos."""
    out = {}
    for name in ["chelsea.png", "coffee.png", "rocket.jpg"]:
        img = Image.open(os.path.join(SHARED, "images", name)).convert("RGB")
        w, h = img.size
        k = 64 / min(w, h)
        img = img.resize((max(64, round(w * k)), max(64, round(h * k))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - 64) // 2, (h - 64) // 2
        out[name.split(".")[0]] = img.crop((left, top, left + 64, top + 64))
    return out


def distort(img, how, seed):
    if how == "blur":
        return img.filter(ImageFilter.GaussianBlur(1.5))
    if how == "noise":
        a = np.asarray(img).astype(np.float64)
        a += np.random.default_rng(seed).normal(0, 20, a.shape)
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if how == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=20)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if how == "shift":
        return Image.fromarray(np.roll(np.asarray(img), (2, 3), axis=(0, 1)))
    raise ValueError(how)


def tensor(img, dtype):
    """lpips.im2tensor: [0, 255] to [-1, 1], NCHW."""
    a = np.asarray(img).astype(np.float64) / 127.5 - 1.0
    return torch.from_numpy(a.transpose(2, 0, 1)[None].copy()).to(dtype)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for key, t in tensors.items():
        b = t.astype("<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def perceptual_loss(pairs):
    """Johnson et al.'s loss on torchvision's vgg16 features (formula weights), on chelsea vs its blur:

    x, t in [0, 1], normalised by ImageNet's mean and std; relu1_2 = features[:4], relu2_2 =
    features[:9], relu3_3 = features[:16];
    loss = 1.0 * dist(relu2_2) + 0.5 * dist(relu3_3)
         + 1e3 * mse(G(relu1_2)) + 1e3 * mse(G(relu2_2)),  G = F F^T / (c h w) per image,
    dist = F.mse_loss (l2) or F.l1_loss (l1); the gradient with respect to x for l2 (grad_perceptual.npy).
    """
    import torchvision
    vgg = torchvision.models.vgg16(weights=None).double().eval()
    sd = vgg.state_dict()
    for key in sd:
        if key.startswith("features."):
            sd[key] = torch.from_numpy(formula(key, tuple(sd[key].shape)))
    vgg.load_state_dict(sd)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[None, :, None, None]
    # One photo: on the others a pre-activation lies within float32 rounding of zero (coffee's
    # conv2_2: -5.8e-7 against a maximum of 8.4), so a float32 ReLU may flip and the float32
    # gradient differs locally from float64's (torch's own float32 by 9e-5 on rocket).
    names = [(p["a"], p["b"]) for p in pairs if p["b"].endswith("-blur.png")][:1]

    def load(name):
        a = np.asarray(Image.open(os.path.join(OUT, name)).convert("RGB")).astype(np.float64) / 255.0
        return torch.from_numpy(a.transpose(2, 0, 1).copy())

    x = torch.stack([load(a) for a, _ in names]).requires_grad_(True)
    t = torch.stack([load(b) for _, b in names])

    def taps(img):
        h = (img - mean) / std
        out = {}
        for i, layer in enumerate(vgg.features[:16]):
            h = layer(h)
            out[{3: "relu1_2", 8: "relu2_2", 15: "relu3_3"}.get(i)] = h
        return out

    def gram(f):
        n, c, hh, ww = f.shape
        m = f.reshape(n, c, hh * ww)
        return m @ m.transpose(1, 2) / (c * hh * ww)

    F = torch.nn.functional
    result = {"images": [a for a, _ in names], "targets": [b for _, b in names]}
    for norm, dist in [("l2", F.mse_loss), ("l1", F.l1_loss)]:
        fx, ft = taps(x), taps(t)
        loss = (1.0 * dist(fx["relu2_2"], ft["relu2_2"]) + 0.5 * dist(fx["relu3_3"], ft["relu3_3"])
                + 1e3 * F.mse_loss(gram(fx["relu1_2"]), gram(ft["relu1_2"]))
                + 1e3 * F.mse_loss(gram(fx["relu2_2"]), gram(ft["relu2_2"])))
        result[norm] = loss.item()
        if norm == "l2":
            (g,) = torch.autograd.grad(loss, x)
            np.save(os.path.join(OUT, "grad_perceptual.npy"), g.numpy())
    return result


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
    formula_trunk(model)
    model = model.double().eval()
    baseline = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, lpips=False, verbose=False)
    formula_trunk(baseline)
    baseline = baseline.double().eval()
    spatial = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, spatial=True, verbose=False)
    formula_trunk(spatial)
    spatial = spatial.double().eval()
    f32 = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
    formula_trunk(f32)
    f32 = f32.float().eval()

    # torchmetrics' own LPIPS module (its copy of lpips's code and heads), trunk replaced likewise.
    # Its constructor would download torchvision's ImageNet trunk: build it without (pnet_rand).
    no_train = tm_lpip._NoTrainLpips
    tm_lpip._NoTrainLpips = lambda net: no_train(net=net, pnet_rand=True)
    metric = LearnedPerceptualImagePatchSimilarity(net_type="vgg", normalize=False)
    tm_lpip._NoTrainLpips = no_train
    tm_net = metric.net
    tm_sd = tm_net.state_dict()
    for key in tm_sd:
        if ".slice" in key:
            parts = key.split(".")
            at = [i for i, p in enumerate(parts) if p.startswith("slice")][0]
            tm_sd[key] = torch.from_numpy(formula(f"features.{parts[at + 1]}.{parts[at + 2]}", tuple(tm_sd[key].shape)))
    tm_net.load_state_dict(tm_sd)
    metric.net.double()

    heads = {k: v.detach().float().numpy() for k, v in model.state_dict().items() if k.startswith("lin")}
    write_safetensors(os.path.join(ROOT, "assets", "lpips", "vgg-v0.1.safetensors"), heads)

    pairs = []
    for pi, (name, img) in enumerate(photos().items()):
        img.save(os.path.join(OUT, f"{name}.png"))
        for di, how in enumerate(["blur", "noise", "jpeg", "shift"]):
            other = distort(img, how, seed=10 * pi + di)
            other.save(os.path.join(OUT, f"{name}-{how}.png"))
            a64, b64 = tensor(img, torch.float64), tensor(other, torch.float64)
            with torch.no_grad():
                value, layers = model(a64, b64, retPerLayer=True)
                metric.reset()
                metric.update(a64, b64)
                tm = metric.compute().item()
                entry = {
                    "a": f"{name}.png",
                    "b": f"{name}-{how}.png",
                    "lpips": value.item(),
                    "per_layer": [l.item() for l in layers],
                    "lpips_f32": f32(a64.float(), b64.float()).item(),
                    "baseline": baseline(a64, b64).item(),
                    "torchmetrics": tm,
                }
            pairs.append(entry)
            if not os.path.exists(os.path.join(OUT, "grad.npy")):
                with torch.no_grad():
                    np.save(os.path.join(OUT, "spatial.npy"), spatial(a64, b64)[0, 0].numpy())
                a = a64.clone().requires_grad_(True)
                model(a, b64).sum().backward()
                np.save(os.path.join(OUT, "grad.npy"), a.grad[0].numpy())
                entry["reference_of"] = ["spatial.npy", "grad.npy"]
    perceptual = perceptual_loss(pairs)
    versions = {"lpips": lpips.__version__ if hasattr(lpips, "__version__") else "0.1.4",
                "torch": torch.__version__, "torchmetrics": torchmetrics.__version__}
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump({"versions": versions, "pairs": pairs, "perceptual": perceptual}, f, indent=1)
    print(json.dumps(versions), len(pairs), "pairs")


if __name__ == "__main__":
    sys.exit(main())
