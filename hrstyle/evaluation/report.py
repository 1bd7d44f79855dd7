"""Run methods on (content, style) pairs, score them with ``StyleMetrics``, write a report.

``evaluate`` writes into ``settings.output`` (an ``EvaluationSettings``; ``scripts/evaluate.py`` builds
it from ``configs/evaluate.yaml``):

* ``report.json``: ``{method: {"mean": {metric: value, "seconds": s}, "images": [{"photo",
  "style", metric: value, ..., "seconds"}]}}`` (top-level keys are exactly the method names;
  ``photo`` and ``style`` name the pair: ``content`` is a metric's key);
* ``report.md``: the means as a table (arrows: which direction is better), then one table per style;
* ``contact_sheet.png``: one row per (content, style) pair; columns content | style | methods,
  each picture captioned with its method and metrics;
* ``sweep_grid.png`` for a multirun folder (``sweep_grid_<style>_<time>.png`` when several):
  rows = pairs, columns = runs, captioned with each run's differing overrides and metrics;
* ``images/<method>/<content>__<style>.png``: every output;
* ``config.yaml``: the settings (laid out as ``configs/evaluate.yaml``) and what was evaluated.

Pairing: ``identity``, ``gatys`` and ``paper`` run on every content photo with every style
(the styles given plus the styles the checkpoints were trained on). A checkpoint ignores the
style image, so it is paired with the style image it was trained on (``meta["style_image"]``)
when that file exists, and with each given style otherwise. Photos are downscaled to ``size``
on the long side (never upscaled), style images to ``style_size`` (the Gram targets of both
the metrics and the gatys/paper loss). Times are per image, model loading excluded.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont

from hrstyle.errors import UserError
from hrstyle.evaluation.methods import Method, MethodOptions, build_methods
from hrstyle.evaluation.metrics import HIGHER_IS_BETTER, METRIC_KEYS, StyleMetrics, lightness_gap
from hrstyle.evaluation.regional import find_label_map, load_label_map, regional_color_distance
from hrstyle.image.io import load_image, resize_long_side, save_image_atomic, tensor_to_pil
from hrstyle.paths import user_path, write_atomic

#: Keys measured against the style image: the regional colour distance (None without masks) and the
#: lightness gap (the output's mean CIELAB L* minus the style's: negative = darker than the style).
STYLE_KEYS = ("regional", "lightness")
#: Report columns: the metrics, then seconds per image.
COLUMNS = (*METRIC_KEYS, *STYLE_KEYS, "seconds")
TITLES = {"ssim": "SSIM", "edge_ssim": "edge SSIM", "photorealism": "photorealism", "gram": "Gram",
          "content": "content", "regional": "regional colour", "lightness": "ΔL* vs style", "seconds": "s / image"}
#: Short names in picture captions.
SHORT = {"ssim": "ssim", "edge_ssim": "edge", "photorealism": "real", "gram": "gram", "content": "cont",
         "regional": "region", "lightness": "dL"}
#: Space around each picture of a sheet (px): a cell is thumb + 2·PAD wide.
PAD = 4
MISSING_CELL = (225, 225, 225)
NEWLINE = "\n"


# ----------------------------------------------------------------------------- evaluation


# The defaults are those of configs/evaluate.yaml (see the note above GatysOptions in methods.py).
@dataclass(frozen=True)
class EvaluationSettings:
    """What an evaluation writes where, at which sizes, on which device.

    Attributes:
        output: the report folder.
        size: photos are downscaled to this long side (never upscaled).
        style_size: long side of the style images (the Gram targets of the metrics and the gatys/paper loss).
        thumb: long side of the pictures in contact_sheet.png / sweep_grid.png (at least 16).
        device: auto | cpu | cuda | cuda:N.
        limit: use only the first N content photos; None: all.
        content_masks, style_masks: folders of label maps named like the images: with both, each pair
            that has both maps gets the regional colour distance.
        method_options: how the methods are built and run; its ``loss`` is also the metric network.
    """

    output: Path
    size: int = 384
    style_size: int = 512
    thumb: int = 256
    device: str = "auto"
    limit: int | None = None
    content_masks: Path | None = None
    style_masks: Path | None = None
    method_options: MethodOptions = field(default_factory=MethodOptions)

    def to_config(self) -> dict[str, Any]:
        """The settings as plain data laid out like ``configs/evaluate.yaml`` (the method options at
        the top level, paths as strings)."""
        top = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method_options"}
        data = {k: str(v) if isinstance(v, Path) else v for k, v in top.items()}
        return {**data, **asdict(self.method_options)}



def _named(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """(unique display name, path) pairs: file stems, de-duplicated with _2, _3, ..."""
    out, seen = [], set()
    for path in paths:
        name, i = path.stem, 1
        while name in seen:
            i += 1
            name = f"{path.stem}_{i}"
        seen.add(name)
        out.append((name, path))
    return out


def _safe(name: str) -> str:
    """A file-name-safe version of a method/image name."""
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", name).lstrip(".") or "_"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate(contents: Sequence[str | Path], styles: Sequence[str | Path], methods: Sequence[str] | str,
             settings: EvaluationSettings) -> dict[str, Any]:
    """Run every method on every (content, style) pair it applies to and write the report.

    Args:
        contents: content photo files (``settings.limit``: use only the first N).
        styles: style image files; may be empty when every method is a checkpoint whose
            training style image exists.
        methods: method strings (see ``hrstyle.evaluation.methods``).
        settings: the output folder, sizes, device, masks and method options.

    Returns the ``report.json`` dict. Raises ``UserError`` for bad input.
    """
    from hrstyle.inference.stylizer import pick_device

    size, style_size = settings.size, settings.style_size
    thumb = int(settings.thumb)
    out_dir = user_path(settings.output)
    limit = settings.limit
    if thumb < 16:
        raise UserError(f"thumb must be at least 16 px, got {thumb}")
    contents = [Path(p) for p in contents]
    if limit is not None:
        if int(limit) < 1:
            raise UserError(f"limit must be >= 1 or null, got {limit}")
        contents = contents[: int(limit)]
    if not contents:
        raise UserError("no content photo to evaluate on (content=<photo or folder>)")
    methods = [methods] if isinstance(methods, str) else list(methods or [])
    device = pick_device(str(settings.device))

    built = build_methods(methods, settings.method_options, device)

    # Styles: those given, plus the checkpoints' own (existing) training style images.
    style_paths = [Path(p) for p in styles]
    for method in built:
        if method.style_image is not None and all(method.style_image.resolve() != p.resolve() for p in style_paths):
            style_paths.append(method.style_image)
    named_styles = _named(style_paths)
    given = {Path(p).resolve() for p in styles}
    pairs_for: dict[str, list[str]] = {}
    for method in built:
        if method.kind == "checkpoint" and method.style_image is not None:
            own = method.style_image.resolve()
            pairs_for[method.name] = [n for n, p in named_styles if p.resolve() == own]
        elif method.kind == "checkpoint":
            pairs_for[method.name] = [n for n, p in named_styles if p.resolve() in given]
        else:
            pairs_for[method.name] = [n for n, _ in named_styles]
        if not pairs_for[method.name]:
            hint = "" if method.kind != "checkpoint" else " (the style image it was trained on is not on this machine)"
            raise UserError(f"no style image to evaluate {method.name} against{hint}: give style=<image or folder>")

    named_contents = _named(contents)
    protect = [*contents, *style_paths]  # outputs never overwrite an input
    content_images = {n: load_image(p, max_size=size).unsqueeze(0) for n, p in named_contents}
    style_images = {n: load_image(p, max_size=style_size).unsqueeze(0) for n, p in named_styles}
    content_labels = _label_maps(settings.content_masks, named_contents)
    style_labels = _label_maps(settings.style_masks, named_styles)

    metrics = StyleMetrics.from_loss_config(settings.method_options.loss or {}).to(device)
    results: dict[str, list[dict[str, Any]]] = {m.name: [] for m in built}
    thumbs: dict[tuple[str, str, str], Image.Image] = {}
    width = max(len(m.name) for m in built)
    for style_name, style in style_images.items():
        runs = [m for m in built if style_name in pairs_for[m.name]]
        if not runs:
            continue
        metrics.set_style(style.to(device))
        for content_name, content in content_images.items():
            content_dev = content.to(device)
            for method in runs:
                if method.prepare is not None:
                    method.prepare(style)
                _sync(device)
                start = time.perf_counter()
                output = method.fn(content_dev, style.to(device))
                _sync(device)
                seconds = time.perf_counter() - start
                output = output.detach().float().cpu().clamp(0, 1)
                if output.shape != content.shape:
                    raise RuntimeError(f"{method.name} returned shape {tuple(output.shape)} for a "
                                       f"{tuple(content.shape)} photo")
                values = {k: float(v[0]) for k, v in metrics(output.to(device), content_dev).items()}
                values["lightness"] = float(lightness_gap(output, style)[0])
                values["regional"] = float("nan")
                if content_name in content_labels and style_name in style_labels:
                    values["regional"] = regional_color_distance(output, style, content_labels[content_name],
                                                                 style_labels[style_name])
                record = {"photo": content_name, "style": style_name,
                          **{k: _finite(values[k]) for k in (*METRIC_KEYS, *STYLE_KEYS)}, "seconds": seconds}
                results[method.name].append(record)
                picture = tensor_to_pil(output[0])
                save_image_atomic(picture, out_dir / "images" / _safe(method.name)
                                  / f"{_safe(content_name)}__{_safe(style_name)}.png", protect=protect)
                thumbs[(method.name, content_name, style_name)] = resize_long_side(picture, thumb)
                print(f"{method.name:<{width}}  {content_name} x {style_name}  " + "  ".join(
                    f"{SHORT[k]} {_fmt(values[k])}" for k in (*METRIC_KEYS, *STYLE_KEYS)
                    if math.isfinite(values[k])) + f"  {seconds:.2f} s", flush=True)

    report = {name: {"mean": _means(records), "images": records} for name, records in results.items()}
    inputs = {"content": {n: resize_long_side(tensor_to_pil(t[0]), thumb) for n, t in content_images.items()},
              "style": {n: resize_long_side(tensor_to_pil(t[0]), thumb) for n, t in style_images.items()}}
    pairs = [(c, s) for s in style_images for c in content_images
             if any(s in pairs_for[m.name] for m in built)]

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / "report.json", _json(report))
    markdown = render_markdown(report, built, settings)
    _write_text(out_dir / "report.md", markdown)
    _write_text(out_dir / "config.yaml", _config_yaml(settings, methods, built, named_contents, named_styles,
                                                      pairs_for))
    sheet = contact_sheet(pairs, built, report, thumbs, inputs, thumb)
    save_image_atomic(sheet, out_dir / "contact_sheet.png", protect=protect)
    written = [out_dir / "report.md", out_dir / "report.json", out_dir / "contact_sheet.png"]
    sweeps = list(dict.fromkeys(m.sweep for m in built if m.sweep is not None))
    for folder in sweeps:
        runs = [m for m in built if m.sweep == folder]
        name = ("sweep_grid.png" if len(sweeps) == 1
                else f"sweep_grid_{_safe(folder.parent.name)}_{_safe(folder.name)}.png")
        save_image_atomic(sweep_grid(pairs, runs, report, thumbs, thumb), out_dir / name, protect=protect)
        written.append(out_dir / name)

    print()
    print(_table(report, [m.name for m in built]))
    print()
    print(f"Report: {', '.join(str(p) for p in written)}; outputs under {out_dir / 'images'}")
    return report


def _label_maps(folder: Path | None, named: Sequence[tuple[str, Path]]) -> dict[str, torch.Tensor]:
    """{image name: its label map} for the images that have one in ``folder`` (None: no masks)."""
    if folder is None:
        return {}
    maps = {}
    for name, path in named:
        found = find_label_map(folder, path)
        if found is not None:
            maps[name] = load_label_map(found)
    return maps


def _means(records: list[dict[str, Any]]) -> dict[str, float | None]:
    means: dict[str, float | None] = {}
    for key in COLUMNS:
        values = [r[key] for r in records if r[key] is not None]
        means[key] = _finite(sum(values) / len(values)) if values else None
    return means


# ----------------------------------------------------------------------------- text outputs


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}"


def _arrow(key: str) -> str:
    if key == "lightness":
        return "→0"
    return "↑" if HIGHER_IS_BETTER.get(key, False) else "↓"


def _header() -> str:
    arrows = [f"{TITLES[k]} {_arrow(k)}" for k in COLUMNS]
    return "| method | " + " | ".join(arrows) + " | images |\n|---|" + "---:|" * (len(COLUMNS) + 1)


def _table(report: dict[str, Any], names: Sequence[str], style: str | None = None) -> str:
    rows = [_header()]
    for name in names:
        records = report[name]["images"]
        if style is not None:
            records = [r for r in records if r["style"] == style]
            if not records:
                continue
        means = _means(records) if style is not None else report[name]["mean"]
        rows.append(f"| {name} | " + " | ".join(_fmt(means[k]) for k in COLUMNS) + f" | {len(records)} |")
    return "\n".join(rows)


def render_markdown(report: dict[str, Any], methods: Sequence[Method], settings: EvaluationSettings) -> str:
    """``report.md``: the mean table, per-style tables, sweep labels and metric definitions."""
    names = [m.name for m in methods]
    styles = list(dict.fromkeys(r["style"] for name in names for r in report[name]["images"]))
    contents = list(dict.fromkeys(r["photo"] for name in names for r in report[name]["images"]))
    loss = settings.method_options.loss or {}
    lines = [
        "# Evaluation",
        "",
        f"{len(contents)} content photo(s) (long side <= {settings.size} px) x {len(styles)} style(s) "
        f"(long side <= {settings.style_size} px); metric network {loss.get('arch') or 'vgg19'} "
        f"(weights: {loss.get('weights') or 'imagenet'}). Means over the images of each method; "
        "↑ higher is better, ↓ lower is better.",
        "",
        _table(report, names),
        "",
    ]
    if len(styles) > 1 or any(m.kind == "checkpoint" for m in methods):
        lines += ["## Per style", ""]
        for style in styles:
            lines += [f"### {style}", "", _table(report, names, style), ""]
    sweeps = [m for m in methods if m.sweep is not None]
    if sweeps:
        lines += ["## Sweep runs", "", "| method | run folder |", "|---|---|"]
        lines += [f"| {m.name} | `{m.source}` |" for m in sweeps]
        lines.append("")
    lines += [
        "## Metrics",
        "",
        "* **SSIM** ↑: structural similarity of the output's and the photo's luminance "
        "(1 = identical light and shade).",
        "* **edge SSIM** ↑: SSIM of the Sobel edge maps of the luminance: blur, lost or invented edges lower it.",
        "* **photorealism** ↓: share of the output's local variance that no local affine colour transform of the "
        "photo explains (Luan et al.; 7x7 windows): 0 = a local recolouring of the photo.",
        "* **Gram** ↓: relative Gram-matrix distance to the style image, mean over relu1_1 … relu5_1 "
        "(0 = the style's feature statistics).",
        "* **content** ↓: relative feature distance to the photo at the content layer.",
        "* **regional colour** ↓: with segmentation masks (content_masks=, style_masks=): for each region "
        "covering at least 2% of both images, the 2-Wasserstein distance between Gaussians fitted to its CIELAB "
        "colours in the output and in the style, averaged weighted by the region's area in the photo "
        "(CIELAB units; 0 = each region has the style's colours).",
        "* **ΔL\\* vs style**: the output's mean CIELAB lightness minus the style image's (negative = darker "
        "than the style).",
        "* **s / image**: seconds per image, model loading excluded (for gatys and paper: the whole per-image "
        "optimization).",
        "",
    ]
    return "\n".join(lines)


def _json(report: dict[str, Any]) -> str:
    import json

    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def _config_yaml(settings: EvaluationSettings, specs: Sequence[str], methods: Sequence[Method],
                 contents: Sequence[tuple[str, Path]], styles: Sequence[tuple[str, Path]],
                 pairs_for: dict[str, list[str]]) -> str:
    data = {"methods": [str(s) for s in specs], **settings.to_config()}
    data["evaluated"] = {
        "contents": {n: str(p) for n, p in contents},
        "styles": {n: str(p) for n, p in styles},
        "methods": {m.name: {"kind": m.kind, "source": m.source, "styles": pairs_for[m.name],
                             **({"overrides": m.label} if m.sweep is not None else {})} for m in methods},
    }
    return OmegaConf.to_yaml(OmegaConf.create(data))


def _write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically (``write_atomic``)."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")), "report")


# ----------------------------------------------------------------------------- pictures


def _font(thumb: int) -> ImageFont.ImageFont:
    size = max(9, min(16, thumb // 18))
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, AttributeError, ImportError):
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, font: Any, title: str, tokens: Sequence[str], width: int) -> list[str]:
    """Caption lines: the title (shortened with … to fit), then the tokens packed greedily
    (``NEWLINE`` starts a new line)."""
    def fits(text: str) -> bool:
        return draw.textlength(text, font=font) <= width

    def shorten(text: str) -> str:
        if fits(text):
            return text
        while len(text) > 1 and not fits(text + "…"):
            text = text[:-1]
        return text + "…"

    lines, line = [shorten(title)], ""
    for token in tokens:
        if token == NEWLINE:
            if line:
                lines.append(line)
            line = ""
            continue
        token = shorten(token)
        candidate = f"{line}  {token}" if line else token
        if line and not fits(candidate):
            lines.append(line)
            line = token
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines


def _metric_tokens(record: dict[str, Any] | None) -> list[str]:
    if record is None:
        return ["not run"]
    return [f"{SHORT[k]} {_fmt(record[k])}" for k in (*METRIC_KEYS, *STYLE_KEYS)
            if k in METRIC_KEYS or record.get(k) is not None]


def _grid(cells: list[list[tuple[Image.Image | None, str, list[str]]]], thumb: int) -> Image.Image:
    """A sheet of captioned pictures: ``cells[row][col] = (picture or None, title, tokens)``."""
    font = _font(thumb)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [[_wrap(scratch, font, title, tokens, thumb) for _, title, tokens in row] for row in cells]
    box = font.getbbox("Agy|")
    line_h = box[3] - min(box[1], 0) + 3
    band = max((len(c) for row in captions for c in row), default=1) * line_h + PAD
    # Each row is as tall as its tallest picture (landscape rows stay compact).
    heights = [max([p.height for p, _, _ in row if p is not None] or [thumb]) for row in cells]
    cell_w = thumb + 2 * PAD
    tops = [sum(h + band + 2 * PAD for h in heights[:r]) for r in range(len(heights))]
    ncols = max((len(row) for row in cells), default=1)
    sheet = Image.new("RGB", (ncols * cell_w, max(sum(heights) + len(heights) * (band + 2 * PAD), 1)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(cells):
        for c, (picture, _, _) in enumerate(row):
            x0, y0 = c * cell_w + PAD, tops[r] + PAD
            if picture is None:
                draw.rectangle([x0, y0, x0 + thumb - 1, y0 + heights[r] - 1], fill=MISSING_CELL)
            else:
                sheet.paste(picture, (x0 + (thumb - picture.width) // 2, y0 + (heights[r] - picture.height) // 2))
            for i, text in enumerate(captions[r][c]):
                draw.text((x0, y0 + heights[r] + 2 + i * line_h), text, fill="black", font=font)
    return sheet


def _fit(picture: Image.Image, thumb: int) -> Image.Image:
    return picture if max(picture.size) == thumb else resize_long_side(picture, thumb)


def _record(report: dict[str, Any], method: str, content: str, style: str) -> dict[str, Any] | None:
    return next((r for r in report[method]["images"] if r["photo"] == content and r["style"] == style), None)


def contact_sheet(pairs: Sequence[tuple[str, str]], methods: Sequence[Method], report: dict[str, Any],
                  thumbs: dict[tuple[str, str, str], Image.Image], inputs: dict[str, dict[str, Image.Image]],
                  thumb: int) -> Image.Image:
    """Rows = (content, style) pairs; columns = content | style | each method, captioned."""
    rows = []
    for content, style in pairs:
        row = [(_fit(inputs["content"][content], thumb), content, ["content"]),
               (_fit(inputs["style"][style], thumb), style, ["style"])]
        for method in methods:
            picture = thumbs.get((method.name, content, style))
            row.append((None if picture is None else _fit(picture, thumb), method.name,
                        _metric_tokens(_record(report, method.name, content, style))))
        rows.append(row)
    return _grid(rows, thumb)


def sweep_grid(pairs: Sequence[tuple[str, str]], runs: Sequence[Method], report: dict[str, Any],
               thumbs: dict[tuple[str, str, str], Image.Image], thumb: int) -> Image.Image:
    """Rows = content photos (one per pair any run was evaluated on); columns = the runs,
    each picture captioned with the run's differing overrides, the photo and its metrics."""
    several_styles = len({s for _, s in pairs}) > 1
    rows = []
    for content, style in pairs:
        if not any((m.name, content, style) in thumbs for m in runs):
            continue
        where = f"{content} x {style}" if several_styles else content
        row = []
        for run in runs:
            picture = thumbs.get((run.name, content, style))
            record = _record(report, run.name, content, style)
            row.append((None if picture is None else _fit(picture, thumb), run.name,
                        [where, NEWLINE, *_metric_tokens(record)]))
        rows.append(row)
    return _grid(rows, thumb)
