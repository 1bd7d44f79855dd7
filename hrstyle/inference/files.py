"""Stylize files: a photo, a folder (mirrored), or a glob, with decoding and encoding in
background threads so the model never waits for disk or codecs."""

from __future__ import annotations

import glob
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hrstyle.errors import UserError
from hrstyle.image.io import (
    DEFAULT_MAX_PIXELS,
    is_image_file,
    open_rgb,
    pil_to_tensor,
    read_size,
    resize_long_side,
    save_image_atomic,
    tensor_to_pil,
)
from hrstyle.inference.stylizer import Stylizer
from hrstyle.paths import user_path

OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp"}


@dataclass(frozen=True)
class Job:
    """One image to stylize: where it comes from and where the result goes."""

    src: Path
    dst: Path


@dataclass
class Summary:
    done: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    megapixels: float = 0.0
    seconds: float = 0.0


def _suffix(src: Path, fmt: str | None) -> str:
    if fmt:
        if fmt.lower() not in OUTPUT_FORMATS:
            raise UserError(f"format must be one of {sorted(set(OUTPUT_FORMATS))}, got {fmt!r}")
        return OUTPUT_FORMATS[fmt.lower()]
    return src.suffix.lower() if src.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") else ".png"


def plan_jobs(input: str, output: str | None, fmt: str | None = None, style: str = "style") -> tuple[list[Job], list[Path]]:
    """Map ``input`` (a file, a folder searched recursively, or a glob) to output paths.

    Returns ``(jobs, skipped)``: skipped are files that are not images. A folder or glob
    is mirrored under ``output`` (default ``outputs/stylized/<name>``); a single file goes
    to ``output`` if it has an image suffix, else into that folder
    (default ``outputs/stylized/<stem>_<style>.<ext>``).
    """
    src = user_path(input)
    magic = is_glob(input)
    if not magic and src.is_file():
        if output and Path(output).suffix:
            return [Job(src, user_path(output))], []
        folder = user_path(output) if output else Path("outputs/stylized")
        name = src.stem if output else f"{src.stem}_{style}"
        return [Job(src, folder / f"{name}{_suffix(src, fmt)}")], []

    if magic:
        base = _glob_base(input)
        # The existing folder before the wildcards is taken literally (a folder may be named `[2024]`).
        pattern = os.path.join(glob.escape(str(base)), str(user_path(input).relative_to(base)))
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"no file matches the pattern {input} (and no file or folder has that name)")
        default_out = Path("outputs/stylized") / (base.name or "glob")
    elif src.is_dir():
        base = src
        files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
        default_out = Path("outputs/stylized") / src.resolve().name
    else:
        raise UserError(f"input not found: {input}")
    out_dir = user_path(output) if output else default_out
    if out_dir.suffix and is_image_file(out_dir):
        raise UserError(f"input {input} has several images: output must be a folder, not {out_dir}")
    if out_dir.resolve() == base.resolve():
        raise UserError(f"output folder {out_dir} is the input folder: results would overwrite the photos")
    # Never read our own outputs back as inputs (output folder inside the input folder).
    files = [p for p in files if out_dir.resolve() not in p.resolve().parents]
    images = [p for p in files if is_image_file(p)]
    skipped = [p for p in files if not is_image_file(p)]
    jobs = [Job(p, out_dir / p.relative_to(base).with_suffix(_suffix(p, fmt))) for p in images]
    return jobs, skipped


def plan_many(
    inputs: list[str], output: str | None, fmt: str | None = None, style: str = "style", overwrite: bool = True
) -> tuple[list[Job], list[Path], list[Job]]:
    """``plan_jobs`` for several inputs → ``(jobs, skipped, existing)``.

    A folder or glob run resumes: with ``overwrite=False`` its jobs whose output already
    exists (written atomically, so complete) move to ``existing``. A single photo is always
    redone. Two inputs that would write the same output are refused.
    """
    if len(inputs) > 1 and output and Path(output).suffix and is_image_file(output):
        raise UserError(f"{len(inputs)} inputs given: output must be a folder, not {output}")
    jobs, skipped, existing, seen = [], [], [], {}
    for item in inputs:
        planned, rest = plan_jobs(str(item), output, fmt, style)
        many = is_glob(str(item)) or user_path(str(item)).is_dir()
        for job in planned:
            key = job.dst.resolve()
            if key in seen and seen[key] != job.src.resolve():
                raise UserError(f"{seen[key]} and {job.src} would both be written to {job.dst}: give them separate runs or outputs")
            seen[key] = job.src.resolve()
            (existing if many and not overwrite and job.dst.exists() else jobs).append(job)
        skipped += rest
    return jobs, skipped, existing


def is_glob(input: str) -> bool:
    """Whether ``input`` is read as a glob pattern: it has ``*?[`` and no file or folder has that exact
    name (``photo[1].jpg`` that exists is that file)."""
    return glob.has_magic(input) and not user_path(input).exists()


def _glob_base(pattern: str) -> Path:
    """The longest leading part of a glob that is an existing folder, taken literally (outputs mirror
    below it); else the folder part before its first wildcard."""
    parts = user_path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if not Path(*fixed, part).is_dir():
            break
        fixed.append(part)
    if not fixed:
        for part in parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _decode(job: Job, max_size: int | None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, bytes | None]:
    img = open_rgb(job.src, max_pixels)
    icc = img.info.get("icc_profile")
    if max_size and max(img.size) > max_size:
        img = resize_long_side(img, max_size)
    return pil_to_tensor(img), icc


def _encode(image: torch.Tensor, job: Job, quality: int, icc: bytes | None, protect: frozenset[Path]) -> Path:
    kwargs: dict = {"quality": quality} if job.dst.suffix in (".jpg", ".webp") else {"compress_level": 4}
    if icc:
        kwargs["icc_profile"] = icc
    return save_image_atomic(tensor_to_pil(image), job.dst, protect=protect, **kwargs)


def stylize_files(
    stylizer: Stylizer,
    jobs: list[Job],
    quality: int = 95,
    max_size: int | None = None,
    batch_size: int = 4,
    workers: int = 2,
    log: Callable[[str], None] = print,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Summary:
    """Stylize every job; a bad file is reported and skipped, the others go on.

    Images of the same size that need no tiling are stacked into batches of up to
    ``batch_size``. Decoding runs ahead in ``workers`` threads; encoding and atomic
    writes happen in the background too. Images over ``max_pixels`` are refused (skipped).
    """
    summary = Summary()
    protect = frozenset(j.src.resolve() for j in jobs)  # resolved once (save_image_atomic)
    clashes = [j.dst for j in jobs if j.dst.resolve() in protect]
    if clashes:
        raise UserError(f"output would overwrite the input {clashes[0]}: choose another output")
    n = len(jobs)
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode") as decoder, \
            ThreadPoolExecutor(max(1, workers), thread_name_prefix="encode") as encoder:
        pending_writes: list[tuple[int, Job, Future]] = []
        for batch in _batches(jobs, decoder, max_size, batch_size, stylizer, summary, log, max_pixels):
            t0 = time.perf_counter()
            # One photo needs no stacked copy (a 24 MP photo is 288 MB of float32).
            stacked = batch[0][2][None] if len(batch) == 1 else torch.stack([x for _, _, x, _ in batch])
            outputs = stylizer.stylize_tensor(stacked)
            per_image = (time.perf_counter() - t0) / len(batch)
            h, w = stacked.shape[-2:]
            done = [(index, job, icc) for index, job, _, icc in batch]
            # Free the photos before their results are encoded (the reader holds this list too).
            del stacked
            batch.clear()
            for (index, job, icc), out in zip(done, outputs):
                summary.megapixels += h * w / 1e6
                log(f"[{index + 1}/{n}] {job.src} ({w}x{h}) -> {job.dst}  {per_image * 1000:.0f} ms"
                    + ("  (tiled)" if stylizer.needs_tiling(h, w) else ""))
                pending_writes.append((index, job, encoder.submit(_encode, out, job, quality, icc, protect)))
            # Stream: at most a few results wait for their encoder (they are full-resolution images),
            # so memory does not grow with the number of photos when encoding is the slower stage.
            while len(pending_writes) > 2 * max(1, workers):
                _finish_write(*pending_writes.pop(0), n, summary, log)
        for write in pending_writes:
            _finish_write(*write, n, summary, log)
    summary.seconds = time.perf_counter() - start
    return summary


def _finish_write(index: int, job: Job, future: Future, n: int, summary: Summary, log: Callable[[str], None]) -> None:
    """Wait for one result's encoding and count it as done or failed (disk full, no permission, ...)."""
    try:
        future.result()
        summary.done += 1
    except (UserError, OSError, ValueError) as exc:
        why = str(exc) if isinstance(exc, UserError) else f"cannot write {job.dst}: {exc}"
        summary.failed.append(f"{job.src}: {why}")
        log(f"[{index + 1}/{n}] error: {why}")


def _batches(jobs, decoder, max_size, batch_size, stylizer, summary, log, max_pixels) -> Iterator[list]:
    """Decoded images in order, grouped into same-size batches; decoding runs ahead.

    Up to ``2 * batch_size`` images are decoded ahead, but an image that runs alone (the memory
    budget tiles it, or it is too large to share a call: its size read from the header, before
    decoding) is large: the read-ahead then holds one image, never several large ones at once.
    """
    queue: deque[tuple[int, Job, Future, bool]] = deque()
    todo = deque((index, job, None) for index, job in enumerate(jobs))
    ahead = 2 * max(1, batch_size)

    def refill() -> None:
        while todo and len(queue) < ahead:
            index, job, large = todo[0]
            if large is None:  # header read once per file
                size = read_size(job.src, max_size)
                large = size is not None and (stylizer.needs_tiling(size[1], size[0])
                                              or stylizer.batch_limit(size[1], size[0]) <= 1)
                todo[0] = (index, job, large)
            if queue and (large or any(item[3] for item in queue)):
                return
            todo.popleft()
            queue.append((index, job, decoder.submit(_decode, job, max_size, max_pixels), large))

    batch: list = []
    refill()
    while queue:
        index, job, future, _ = queue.popleft()
        refill()
        try:
            image, icc = future.result()
            del future  # it holds the photo too: let the batch's owner free it
        except UserError as exc:
            summary.failed.append(str(exc))
            log(f"[{index + 1}/{len(jobs)}] skipped: {exc}")
            continue
        h, w = image.shape[-2:]
        limit = min(batch_size, stylizer.batch_limit(h, w))  # same-size images that fit one forward
        if batch and batch[0][2].shape != image.shape:
            yield batch
            batch = []
        batch.append((index, job, image, icc))
        del image
        if stylizer.needs_tiling(h, w) or len(batch) >= limit:  # full: run it now
            yield batch
            batch = []
    if batch:
        yield batch
