"""What the working resolution does to the pictures: one Markdown table over several ``work_size`` values.

    python scripts/work_size_table.py --photos <photos> --segmented <photos> --segmentation <segmentation> \
        --styles <styles> --vgg16 <vgg16 weights> [--sizes 256 512 1024 0] [--crops out.png]

For each shipped photo style (``checkpoints/{winter,porcelain,faded,overcast,vivid}.pt``) and each working
resolution (0 = ``work_size=null``, the network at full resolution): the regional colour distance on the style's
segmented pair (photo ``fps_inN`` of ``--segmented``, at its own size), and on every photo of ``--photos`` (at most
``--max-size`` px long, 2048 by default, so that the full-resolution rows take minutes on a CPU, not hours) the
edge-SSIM and photorealism of the default output against the photo and its Gram distance to the style image,
measured at a 1024 px long side (the look at viewing size). ``--crops`` draws 1:1 crops of the largest photo through ``winter.pt`` for the fine detail.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from hrstyle.evaluation import StyleMetrics
from hrstyle.evaluation.regional import load_label_map, regional_color_distance
from hrstyle.image.io import find_images, load_image, tensor_to_pil
from hrstyle.image.lift import downscale, working_shape
from hrstyle.inference import Stylizer

ROOT = Path(__file__).resolve().parents[1]
STYLES = {"winter": 81, "porcelain": 86, "faded": 87, "overcast": 90, "vivid": 120}
METRIC_SIZE = 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="photos for edge-SSIM and photorealism")
    parser.add_argument("--segmented", type=Path, required=True, help="folder with the fps_inN photos")
    parser.add_argument("--segmentation", type=Path, required=True)
    parser.add_argument("--styles", type=Path, required=True)
    parser.add_argument("--vgg16", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 0])
    parser.add_argument("--max-size", type=int, default=2048)
    parser.add_argument("--crops", type=Path, default=None, help="write 1:1 crops of the largest photo here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    photos = find_images(args.photos)
    metrics = StyleMetrics(arch="vgg16", weights=str(args.vgg16))
    rows = {}
    for size in args.sizes:
        work = size or None
        regional, edge, real, gram = [], [], [], []
        for name, pair in STYLES.items():
            stylizer = Stylizer(ROOT / "checkpoints" / f"{name}.pt", work_size=work)
            style = load_image(args.styles / f"fps_in{pair}.png", 512)[None]
            photo = load_image(args.segmented / f"fps_in{pair}.png")[None]
            labels = (load_label_map(args.segmentation / "content" / f"fps_in{pair}.png"),
                      load_label_map(args.segmentation / "styles" / f"fps_in{pair}.png"))
            regional.append(regional_color_distance(stylizer(photo), style, *labels))
            metrics.set_style(style)
            for path in photos:
                photo = load_image(path, args.max_size)[None]
                out = stylizer(photo)
                small = working_shape(*photo.shape[-2:], METRIC_SIZE)
                scores = metrics(downscale(out, small), downscale(photo, small))
                edge.append(scores["edge_ssim"].item())
                real.append(scores["photorealism"].item())
                gram.append(scores["gram"].item())
        rows[size] = tuple(sum(v) / len(v) for v in (regional, edge, real, gram))
        label = size or "full"
        print(f"work_size {label}: regional {rows[size][0]:.1f}  edge-SSIM {rows[size][1]:.3f}  "
              f"photorealism {rows[size][2]:.4f}  Gram {rows[size][3]:.3f}", flush=True)
    print("\n| `work_size` | regional colour ↓ (five pairs) | edge-SSIM ↑ | photorealism ↓ | Gram ↓ |\n|---|---:|---:|---:|---:|")
    for size, (regional, edge, real, gram) in rows.items():
        print(f"| {size or 'null (full)'} | {regional:.1f} | {edge:.3f} | {real:.4f} | {gram:.3f} |")
    if args.crops:
        draw_crops(max(photos, key=lambda p: Image.open(p).width * Image.open(p).height), args.sizes, args.crops,
                   args.max_size)


def draw_crops(path: Path, sizes: list[int], out: Path, max_size: int, crop: int = 384) -> None:
    """1:1 crops (the centre of ``path``, at most ``max_size`` px long) of the photo and of ``winter.pt`` at each
    working resolution."""
    photo = load_image(path, max_size)[None]
    h, w = photo.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    cells = [("photo", photo)] + [(f"work_size={s or 'null'}", Stylizer(ROOT / "checkpoints" / "winter.pt",
                                                                       work_size=s or None)(photo)) for s in sizes]
    sheet = Image.new("RGB", (len(cells) * (crop + 6), crop + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(cells):
        sheet.paste(tensor_to_pil(image[0, :, top:top + crop, left:left + crop]), (i * (crop + 6), 0))
        draw.text((i * (crop + 6) + 2, crop + 3), label, fill="black")
    sheet.save(out)
    print(f"1:1 crops of {path.name} ({w}x{h}): {out}")


if __name__ == "__main__":
    main()
