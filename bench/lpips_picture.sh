#!/usr/bin/env bash
# docs/lpips-spatial.png for the README: a fixture photo (224x224), its JPEG (quality 10) and
# blurred versions, and `vgg lpips --spatial` maps of each against the photo (VGG-16 trunk: the
# fixture formula weights, as ImageNet weights cannot be downloaded here; lpips 0.1.4's heads).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=bench/.venv-torch/bin/python
cargo build --release -q
W=$(mktemp -d)
"$PY" - "$W" <<'PY'
import io, sys
from PIL import Image, ImageFilter
w = sys.argv[1]
img = Image.open("../shared/fixtures/images/chelsea.png").convert("RGB")
side = min(img.size)
img = img.crop(((img.width - side) // 2, 0, (img.width - side) // 2 + side, side)).resize((224, 224), Image.BILINEAR)
img.save(f"{w}/photo.png")
buf = io.BytesIO(); img.save(buf, "JPEG", quality=10)
Image.open(io.BytesIO(buf.getvalue())).convert("RGB").save(f"{w}/jpeg.png")
img.filter(ImageFilter.GaussianBlur(2)).save(f"{w}/blur.png")
PY
for d in jpeg blur; do
    target/release/vgg lpips "$W/photo.png" "$W/$d.png" --weights formula --spatial "$W/$d-map.png" --json > "$W/$d.json"
done
"$PY" - "$W" <<'PY'
import json, sys
from PIL import Image, ImageDraw
w = sys.argv[1]
tiles = [("photo", "photo.png"), ("JPEG q10", "jpeg.png"), ("LPIPS map %.3f" % json.load(open(f"{w}/jpeg.json"))["lpips"], "jpeg-map.png"),
         ("blur r2", "blur.png"), ("LPIPS map %.3f" % json.load(open(f"{w}/blur.json"))["lpips"], "blur-map.png")]
sheet = Image.new("RGB", (len(tiles) * 230 + 6, 250), "white")
draw = ImageDraw.Draw(sheet)
for i, (caption, name) in enumerate(tiles):
    sheet.paste(Image.open(f"{w}/{name}").convert("RGB"), (6 + 230 * i, 6))
    draw.text((6 + 230 * i + 4, 233), caption, fill="black")
sheet.save("docs/lpips-spatial.png")
PY
rm -rf "$W"
