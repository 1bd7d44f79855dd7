"""The browser app for photographers (Gradio): a style gallery, photos in, the controls, before/after, downloads.

The photos go through the same ``Stylizer`` and the same file runner (``inference.files.stylize_files``) as
``scripts/infer.py``, so a result equals the command line's with the same settings, and a bad file is reported
with the same line. Everything the app writes (uploads, results, previews, Gradio's cache) stays in one temporary
folder that it owns (``Workspace``) and removes when it stops. Gradio is an optional dependency (``pip install -e
".[app]"``): it is imported only when the app is built.
"""

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from hrstyle.checkpoint import PROJECT_ROOT, load_generator
from hrstyle.errors import UserError
from hrstyle.image.color import BANDS
from hrstyle.image.guided import DEFAULT_RADIUS
from hrstyle.image.io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, open_rgb, resize_long_side
from hrstyle.inference.files import Job, plan_jobs, stylize_files
from hrstyle.inference.stylizer import DEFAULT_WORK_SIZE, Look, Runtime, Stylizer
from hrstyle.paths import user_path

#: The repository (a source checkout or editable install): the shipped styles are in its checkpoints/, always in
#: the gallery, and the shipped checkpoints record their style images relative to it.
SHIPPED_CHECKPOINTS = PROJECT_ROOT / "checkpoints"
#: Working resolutions offered (label → ``work_size``); the CLI takes any.
WORK_SIZES = {"512 px (fast)": DEFAULT_WORK_SIZE, "1024 px": 1024, "2048 px": 2048, "full resolution (slow)": None}
#: Long side of the before/after view and of the result thumbnails (the downloads are full resolution).
PREVIEW_SIZE, THUMB_SIZE = 1600, 256
#: Results kept per app (older runs' files are deleted; Gradio keeps its own copies of what a page shows).
KEPT_RUNS = 8
TRAIN_COMMAND = ("python scripts/train.py experiment=cpu_quick style=custom style.name=mine "
                 "style.image=my_style.jpg data.content=my_photos/")


@dataclass(frozen=True)
class Style:
    """A style in the gallery: a checkpoint and what the app needs of its metadata."""

    name: str
    checkpoint: Path
    guided_radius: int = 0
    color_match: float = 0.0
    color_bands: int = 1  # the recommended colour match per horizontal band (8: graduated)
    has_color: bool = False  # the checkpoint stores its style's colour statistics (colour match works anywhere)
    style_image: Path | None = None  # the style image, when that file is here
    mean_color: tuple[int, int, int] = (128, 128, 128)

    @property
    def photo_style(self) -> bool:
        return self.guided_radius > 0


@dataclass(frozen=True)
class Controls:
    """The app's controls; ``look`` turns them into the ``Look`` the CLI builds from the same settings."""

    strength: float = 1.0
    color_match: float | None = None  # None: the style's recommendation
    graduated: bool | None = None  # the colour match per horizontal band; None: the style's recommendation
    photorealism: bool | None = None  # the guided filter; None: the style's recommendation
    preserve_color: bool = False
    work_size: int | None = DEFAULT_WORK_SIZE

    def look(self, style: Style) -> Look:
        photoreal = style.photo_style if self.photorealism is None else self.photorealism
        graduated = style.color_bands > 1 if self.graduated is None else self.graduated
        return Look(work_size=self.work_size, strength=float(self.strength), preserve_color=bool(self.preserve_color),
                    guided_radius=(style.guided_radius or DEFAULT_RADIUS) if photoreal else 0,
                    color_match=style.color_match if self.color_match is None else float(self.color_match),
                    color_bands=(style.color_bands if style.color_bands > 1 else BANDS) if graduated else 1)

    def overrides(self, style: Style) -> list[str]:
        """The ``scripts/infer.py`` settings that give the same result."""
        look = self.look(style)
        work = "null" if look.work_size is None else look.work_size
        return [f"checkpoint={style.checkpoint}", f"strength={look.strength:g}", f"color_match={look.color_match:g}",
                f"color_bands={look.color_bands}", f"guided_radius={look.guided_radius}",
                f"preserve_color={str(look.preserve_color).lower()}", f"work_size={work}"]


@dataclass
class Outcome:
    """What one run gives: (photo, result) pairs, the failed photos' lines, the file to download."""

    results: list[tuple[Path, Path]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    download: Path | None = None
    seconds: float = 0.0


class Workspace:
    """The one temporary folder the app writes to; ``cleanup`` removes it (and everything uploaded)."""

    def __init__(self, parent: str | os.PathLike | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hrstyle-app-", dir=parent)).resolve()
        self.uploads = self.root / "uploads"  # Gradio's upload folder and cache (GRADIO_TEMP_DIR)
        self.tmp = self.root / "tmp"  # the process's other temporary files (tempfile.tempdir)
        self.results = self.root / "results"
        for folder in (self.uploads, self.tmp, self.results):
            folder.mkdir()
        self._runs = 0
        self._lock = threading.Lock()

    def new_run(self) -> Path:
        """A fresh folder for one run's results; runs older than the last ``KEPT_RUNS`` are deleted."""
        with self._lock:
            self._runs += 1
            run = self.results / f"{self._runs:06d}"
            run.mkdir()
            for old in sorted(self.results.iterdir())[:-KEPT_RUNS]:
                shutil.rmtree(old, ignore_errors=True)
        return run

    def contains(self, path: str | os.PathLike) -> bool:
        return self.root in Path(path).resolve().parents

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class StylizerCache:
    """One ``Stylizer`` per (checkpoint, look), the most recently used few kept (loading one takes a second)."""

    def __init__(self, runtime: Runtime | None = None, size: int = 6) -> None:
        self.runtime = runtime or Runtime()
        self.size = size
        self._cache: OrderedDict[tuple[Path, Look], Stylizer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, checkpoint: Path, look: Look) -> Stylizer:
        key = (Path(checkpoint).resolve(), look)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        stylizer = Stylizer(checkpoint, look, self.runtime)
        with self._lock:
            self._cache[key] = stylizer
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return stylizer


def _find_style_image(path: str | None) -> Path | None:
    """A checkpoint's recorded style image, as given or relative to the project root (where the shipped
    checkpoints record it); None when the file is not here."""
    if not path:
        return None
    for candidate in (user_path(path), PROJECT_ROOT / path):
        if candidate.is_file():
            return candidate
    return None


def find_styles(checkpoints: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> list[Style]:
    """The shipped styles and every checkpoint (``.pt``, ``.ckpt``) under ``checkpoints``: photo styles first,
    then by name; a file that is not a readable checkpoint is reported and left out."""
    folders = [SHIPPED_CHECKPOINTS]
    if checkpoints is not None:
        folder = user_path(checkpoints)
        if not folder.is_dir() and not folder.is_absolute() and (PROJECT_ROOT / folder).is_dir():
            folder = PROJECT_ROOT / folder
        if not folder.is_dir():
            raise UserError(f"checkpoints folder not found: {checkpoints}")
        folders.append(folder)
    files: dict[Path, None] = {}
    for folder in folders:
        for path in sorted([*folder.rglob("*.pt"), *folder.rglob("*.ckpt")]):
            files.setdefault(path.resolve())
    styles = []
    for path in files:
        try:
            _, meta = load_generator(path)
        except UserError as exc:
            log(f"warning: {exc}")
            continue
        stats = meta.get("style_color")
        mean = tuple(int(round(255 * min(max(v, 0.0), 1.0))) for v in stats["mean"]) if stats else (128, 128, 128)
        styles.append(Style(name=str(meta.get("style_name") or path.stem), checkpoint=path,
                            guided_radius=int(meta.get("guided_radius") or 0),
                            color_match=float(meta.get("color_match") or 0.0),
                            color_bands=int(meta.get("color_bands") or 1), has_color=bool(stats),
                            style_image=_find_style_image(meta.get("style_image")), mean_color=mean))
    names = [s.name for s in styles]  # two checkpoints of one style (training runs): told apart by their file
    styles = [s if names.count(s.name) == 1 else Style(**{**s.__dict__, "name": f"{s.name} ({_short(s.checkpoint)})"})
              for s in styles]
    return sorted(styles, key=lambda s: (not s.photo_style, s.name))


def _short(path: Path) -> str:
    for root in (Path.cwd(), PROJECT_ROOT):
        if root in path.parents:
            return str(path.relative_to(root))
    return str(path)


def thumbnail(style: Style, size: int = THUMB_SIZE) -> Image.Image:
    """The style image as a square thumbnail; where that file is missing (or unreadable), a tile in the style's
    mean colour with its name."""
    if style.style_image is not None:
        try:
            return ImageOps.fit(open_rgb(style.style_image), (size, size), Image.Resampling.LANCZOS)
        except UserError:
            pass
    tile = Image.new("RGB", (size, size), style.mean_color)
    draw = ImageDraw.Draw(tile)
    ink = (0, 0, 0) if sum(style.mean_color) > 384 else (255, 255, 255)
    draw.text((size // 2, size // 2), style.name, fill=ink, anchor="mm", font_size=max(12, size // 8))
    return tile


def stylize_photos(photos: Sequence[str | os.PathLike], style: Style, controls: Controls, workspace: Workspace,
                   stylizers: StylizerCache, progress: Callable[[float, str], None] | None = None,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS, quality: int = 95, batch_size: int = 4,
                   workers: int = 2) -> Outcome:
    """Stylize uploaded photos as ``scripts/infer.py`` does (same ``Stylizer``, file runner, output names and
    encoding) into a fresh folder of ``workspace``. A bad file gives the CLI's line in ``messages`` (with the
    file's name instead of its temporary path) and the others go on; several results are also zipped."""
    start = time.perf_counter()
    run = workspace.new_run()
    jobs, used = [], set()
    for photo in photos:
        name = plan_jobs(str(photo), None, None, style.name)[0][0].dst.name  # the CLI's <stem>_<style>.<ext>
        stem, suffix, n = Path(name).stem, Path(name).suffix, 1
        while name in used:  # two uploads of one name
            n += 1
            name = f"{stem}-{n}{suffix}"
        used.add(name)
        jobs.append(Job(Path(photo), run / name))
    outcome = Outcome()
    if progress:
        progress(0.0, f"loading the style {style.name}")
    stylizer = stylizers.get(style.checkpoint, controls.look(style))
    counter = re.compile(r"^\[(\d+)/(\d+)\] ")

    def log(line: str) -> None:
        for job in jobs:  # the file's name, as the user knows it, not where the upload was put
            line = line.replace(str(job.src), job.src.name).replace(str(job.dst), job.dst.name)
        match = counter.match(line)
        if " skipped: " in line or " error: " in line:
            outcome.messages.append(line)
        elif match and progress:
            progress(int(match.group(1)) / len(jobs), f"{match.group(1)} of {len(jobs)} photos")

    stylize_files(stylizer, jobs, quality, None, batch_size, workers, log=log, max_pixels=max_pixels)
    outcome.results = [(job.src, job.dst) for job in jobs if job.dst.is_file()]
    if len(outcome.results) == 1:
        outcome.download = outcome.results[0][1]
    elif outcome.results:
        outcome.download = run / f"hrstyle_{style.name}_{len(outcome.results)}_photos.zip"
        with zipfile.ZipFile(outcome.download, "w", zipfile.ZIP_STORED) as archive:  # JPEGs do not compress
            for _, result in outcome.results:
                archive.write(result, result.name)
    outcome.seconds = time.perf_counter() - start
    return outcome


def preview(path: str | os.PathLike, size: int = PREVIEW_SIZE) -> Image.Image:
    """An image downscaled for the page (its EXIF orientation applied, as the result has it)."""
    img = open_rgb(path, None)
    return resize_long_side(img, size) if max(img.size) > size else img


HELP = f"""
**Styles.** Click a style in the gallery. Photo styles (first) keep the photo's detail; painterly ones paint it.
Your own styles: train one, then start the app with `checkpoints=<folder>` (every `.pt`/`.ckpt` under it appears):

```
{TRAIN_COMMAND}
python scripts/app.py checkpoints=outputs/train/mine
```

**Photos.** JPEG, PNG, WebP or TIFF, one or many, any size; each result keeps the photo's full resolution and
format (PNG for TIFF). A file that cannot be read is reported below the result and the others go on.

**Controls.** *Strength*: 0 = the photo, 1 = full style. *Colour match*: how far the colours move to the style
image's palette. *Graduated*: the colours move band by band down the picture (sky to sky, ground to ground);
photos without such a layout (portraits, close-ups) get it faded out. *Photorealism*: the result is rewritten as
smooth local colour changes of your photo (no painted texture, every edge kept). *Preserve colour*: keep your colours, take only the style's light and
contrast. *Working resolution*: the size the network sees; larger catches finer structure and is slower.

**Compare and download.** Drag the line across the before/after view; click a result below it to compare
another photo. *Download* gives the full-resolution file (a zip for several photos). The status line gives the
command that does the same for a folder: `python scripts/infer.py photos/ ...`.
"""


def build_app(styles: list[Style], workspace: Workspace, stylizers: StylizerCache, max_pixels: int | None = None,
              quality: int = 95, batch_size: int = 4, workers: int = 2) -> Any:
    """The app's page (a ``gradio.Blocks``) for ``styles``; runs write into ``workspace``."""
    import gradio as gr

    if not styles:
        raise UserError("no styles found: the checkpoints/ folder of the repository is missing")
    first = styles[0]

    def style_controls(index: int):
        style = styles[index]
        return (index, f"**Style:** {style.name} ({'photo' if style.photo_style else 'painterly'} style)",
                gr.update(value=style.color_match, interactive=style.has_color or style.style_image is not None),
                gr.update(value=style.color_bands > 1), gr.update(value=style.photo_style))

    def on_style(evt: gr.SelectData):
        return style_controls(evt.index)

    def run(files, index, strength, color_match, graduated, photoreal, keep_color, work_label,
            progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a progress bar
        if not files:
            return None, gr.update(value=[], visible=False), "Drop one or more photos to start.", None, []
        style = styles[int(index)]
        controls = Controls(strength=strength, color_match=color_match, graduated=graduated, photorealism=photoreal,
                            preserve_color=keep_color, work_size=WORK_SIZES[work_label])
        paths = [Path(f if isinstance(f, str) else f.name) for f in files]
        try:
            outcome = stylize_photos(paths, style, controls, workspace, stylizers,
                                     lambda fraction, desc: progress(fraction, desc=desc),
                                     max_pixels, quality, batch_size, workers)
        except UserError as exc:
            return None, gr.update(value=[], visible=False), f"`error: {exc}`", None, []
        look = controls.look(style)
        lines = [f"**Done:** {len(outcome.results)} of {len(paths)} photo(s) with **{style.name}** "
                 f"(strength {look.strength:g}, colour match {look.color_match:g}"
                 f"{' graduated' if look.color_bands > 1 else ''}, "
                 f"photorealism {'on' if look.guided_radius else 'off'}, preserve colour "
                 f"{'on' if look.preserve_color else 'off'}, working resolution {work_label}) "
                 f"in {outcome.seconds:.1f} s."]
        lines += [f"`{message}`" for message in outcome.messages]
        same = [f"checkpoint={_short(style.checkpoint)}", *controls.overrides(style)[1:]]
        lines.append(f"Same as: `python scripts/infer.py <photos> {' '.join(same)}`")
        pairs = [(str(photo), str(result)) for photo, result in outcome.results]
        compare = (preview(pairs[0][0]), preview(pairs[0][1])) if pairs else None
        thumbs = [(preview(result, THUMB_SIZE), Path(result).name) for _, result in pairs] if len(pairs) > 1 else []
        download = str(outcome.download) if outcome.download else None
        return compare, gr.update(value=thumbs, visible=bool(thumbs)), "\n\n".join(lines), download, pairs

    def on_result(pairs, evt: gr.SelectData):
        photo, result = pairs[evt.index]
        return preview(photo), preview(result)

    with gr.Blocks(title="hrstyle: photo styles", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("## hrstyle: photorealistic style transfer\nPick a style, drop photos, adjust, compare, download.")
        style_index = gr.State(0)
        pairs = gr.State([])
        with gr.Row():
            with gr.Column(scale=2):
                gallery = gr.Gallery([(thumbnail(s), s.name) for s in styles], label="Styles", columns=3, height=360,
                                     allow_preview=False, selected_index=0, elem_id="styles", interactive=False)
                style_label = gr.Markdown(style_controls(0)[1], elem_id="style-name")
                photos = gr.File(file_count="multiple", file_types=list(IMAGE_EXTENSIONS),
                                 label="Photos (JPEG, PNG, WebP, TIFF)", elem_id="photos")
                strength = gr.Slider(0, 1, 1.0, step=0.05, label="Strength", elem_id="strength")
                color = gr.Slider(0, 1, first.color_match, step=0.05, label="Colour match", elem_id="color-match",
                                  interactive=first.has_color or first.style_image is not None)
                graduated = gr.Checkbox(first.color_bands > 1, label="Graduated colour match (the photo's sky takes the "
                                        "style's sky colours, its ground the ground's; off: one global map)",
                                        elem_id="graduated")
                photoreal = gr.Checkbox(first.photo_style, label="Photorealism (guided filter)", elem_id="photoreal")
                keep_color = gr.Checkbox(False, label="Preserve colour", elem_id="preserve-color")
                work = gr.Dropdown(list(WORK_SIZES), value=next(iter(WORK_SIZES)), label="Working resolution",
                                   elem_id="work-size")
                button = gr.Button("Stylize", variant="primary", elem_id="stylize")
            with gr.Column(scale=3):
                compare = gr.ImageSlider(label="Before / after", type="pil", elem_id="compare", max_height=640)
                results = gr.Gallery(label="Results (click one to compare it)", columns=6, height=180, fit_columns=False,
                                     allow_preview=False, elem_id="results", interactive=False, visible=False)
                status = gr.Markdown("Drop one or more photos to start.", elem_id="status")
                download = gr.File(label="Download (full resolution)", elem_id="download", interactive=False)
        with gr.Accordion("Help", open=False):
            gr.Markdown(HELP)

        inputs = [photos, style_index, strength, color, graduated, photoreal, keep_color, work]
        outputs = [compare, results, status, download, pairs]
        options = dict(fn=run, inputs=inputs, outputs=outputs, concurrency_limit=1, concurrency_id="stylize",
                       trigger_mode="always_last", show_progress="full")
        gallery.select(on_style, None, [style_index, style_label, color, graduated, photoreal]).then(**options)
        gr.on([photos.upload, strength.release, color.release, graduated.input, photoreal.input, keep_color.input,
               work.input, button.click], **options)
        results.select(on_result, pairs, compare)
    return demo


@dataclass(frozen=True)
class AppSettings:
    """How the app is served and runs (``configs/app.yaml``)."""

    checkpoints: str | None = None  # None: the shipped styles only
    host: str = "127.0.0.1"
    port: int | None = 7860
    share: bool = False
    runtime: Runtime = field(default_factory=Runtime)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    quality: int = 95
    batch_size: int = 4
    workers: int = 2


def serve(settings: AppSettings) -> None:
    """Start the app and block until it is stopped (Ctrl-C, SIGTERM); its temporary folder is removed then."""
    workspace = Workspace()
    # Gradio keeps uploads and its cache in GRADIO_TEMP_DIR (read when gradio is imported); everything else that
    # asks for a temporary file in this process (uploads being received included) gets the workspace's.
    os.environ["GRADIO_TEMP_DIR"] = str(workspace.uploads)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    tempfile.tempdir = str(workspace.tmp)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        try:
            import gradio  # noqa: F401
        except ImportError as exc:
            raise UserError('the app needs Gradio: pip install -e ".[app]"') from exc
        styles = find_styles(settings.checkpoints)
        print(f"{len(styles)} styles: {', '.join(s.name for s in styles)}. Temporary folder: {workspace.root}",
              flush=True)
        demo = build_app(styles, workspace, StylizerCache(settings.runtime), settings.max_pixels, settings.quality,
                         settings.batch_size, settings.workers)
        demo.queue(default_concurrency_limit=1)
        demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share,
                    allowed_paths=[str(workspace.root)], footer_links=[])
    finally:
        workspace.cleanup()
