"""JPEG files and PIL's decoding of them, for tests/jpeg.rs: run with bench/.venv-torch (Pillow):
`bench/.venv-torch/bin/python bench/jpeg_pil.py`.

From a 96x80 crop of the fixture photo chelsea.png, PIL writes JPEGs in the forms photos come in:
4:2:0, 4:2:2 and 4:4:4 chroma subsampling, progressive, grayscale, CMYK (Adobe-inverted, as PIL
and Photoshop write it) and one with an EXIF orientation tag (6: rotate 90°), plus an odd size
(77x53) to exercise the upsampling's edges. For each `NAME.jpg`, `NAME.pil.png` holds
`Image.open("NAME.jpg").convert("RGB")` — what torchvision's PIL loader gives — losslessly.
"""
import os

import PIL
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "jpeg")


def main():
    os.makedirs(OUT, exist_ok=True)
    photo = Image.open(os.path.join(ROOT, "..", "shared", "fixtures", "images", "chelsea.png")).convert("RGB")
    img = photo.crop((120, 40, 216, 120))
    odd = photo.crop((10, 10, 87, 63))
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "s420": (img, dict(quality=85, subsampling=2)),
        "s422": (img, dict(quality=85, subsampling=1)),
        "s444": (img, dict(quality=85, subsampling=0)),
        "progressive": (img, dict(quality=80, progressive=True)),
        "gray": (img.convert("L"), dict(quality=85)),
        "cmyk": (img.convert("CMYK"), dict(quality=90)),
        "exif_rotated": (img, dict(quality=85, exif=exif.tobytes())),
        "odd_size": (odd, dict(quality=75, subsampling=2)),
    }
    for name, (im, opts) in files.items():
        path = os.path.join(OUT, f"{name}.jpg")
        im.save(path, "JPEG", **opts)
        Image.open(path).convert("RGB").save(os.path.join(OUT, f"{name}.pil.png"))
    with open(os.path.join(OUT, "VERSION"), "w") as f:
        f.write(f"Pillow {PIL.__version__}\n")
    print("Pillow", PIL.__version__, len(files), "files")


if __name__ == "__main__":
    main()
