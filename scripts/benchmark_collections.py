"""Collections of real size: how long a 100,000-file training folder takes to start, and whether a
folder inference over 10,000 photos streams (its peak memory does not grow with the number of photos).

    python scripts/benchmark_collections.py                       # 100k-file scan, 1k vs 10k photos
    python scripts/benchmark_collections.py --files 3000 --photos 100 300   # a quick run

The trees are generated under --root (a temporary folder by default, removed afterwards): small JPEGs in
nested folders, plus non-images, truncated JPEGs, symlinks to files, a symlink to a folder, a symlink
loop and a broken symlink. Figures: the scan of ``ContentDataModule`` (wall time, Python allocations
peak, RSS growth) and its first training batch, the whole ``scripts/train.py`` command to its first
step, and ``scripts/infer.py`` over each photo count (wall, peak RSS of the process).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def jpeg_variants(count: int = 8, size: tuple[int, int] = (160, 120)) -> list[bytes]:
    """A few small random-texture JPEGs (files share their bytes: generating 100k stays fast)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        pixels = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def make_tree(root: Path, files: int, per_folder: int = 1000) -> dict[str, int]:
    """``files`` entries under ``root`` in nested folders: ~94% JPEGs, 4% non-images, 1% truncated JPEGs,
    1% symlinks to JPEGs; plus a symlinked folder, a symlink loop and a broken link. Returns the counts."""
    variants = jpeg_variants()
    counts = {"jpeg": 0, "other": 0, "truncated": 0, "symlink": 0}
    first_jpeg = None
    for i in range(files):
        folder = root / f"set{i // (per_folder * 10):03d}" / f"f{i // per_folder:04d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        kind = i % 100
        if kind < 4:
            (folder / f"notes{i}.txt").write_text("not an image")
            counts["other"] += 1
        elif kind == 4:
            (folder / f"broken{i}.jpg").write_bytes(variants[0][: len(variants[0]) // 3])
            counts["truncated"] += 1
        elif kind == 5 and first_jpeg is not None:
            os.symlink(first_jpeg, folder / f"link{i}.jpg")
            counts["symlink"] += 1
        else:
            (folder / f"img{i}.jpg").write_bytes(variants[i % len(variants)])
            first_jpeg = first_jpeg or folder / f"img{i}.jpg"
            counts["jpeg"] += 1
    os.symlink(root / "set000", root / "linked_folder")  # a symlinked folder (not followed)
    os.symlink(root, root / "set000" / "loop")           # a loop
    os.symlink(root / "missing.jpg", root / "dangling.jpg")  # a broken link
    return counts


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_scan(root: Path) -> dict[str, float]:
    """The training data's scan, bad-file handling for the previews and first batch, in this process."""
    from hrstyle.data.datamodule import ContentDataModule

    rss0 = rss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    dm = ContentDataModule(content=str(root), image_size=128, batch_size=4, num_workers=0)
    dm.setup("fit")
    t_scan = time.perf_counter() - t0
    batch = next(iter(dm.train_dataloader()))
    t_batch = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"images": len(dm.train_set.sources), "scan_s": t_scan, "first_batch_s": t_batch,
            "python_peak_mb": peak / 2**20, "rss_growth_mb": rss_mb() - rss0, "batch": tuple(batch.shape)}


def run_measured(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd``; (wall seconds, the child's peak RSS in MiB, the process). One child at a time: the
    children's maxrss is the largest so far, so each command runs in its own helper process."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode); "
             "sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])")
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, cwd=ROOT)
    wall, rss_kb, rc = proc.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}\n{proc.stderr}")
    return float(wall), int(rss_kb) / 1024, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="entries in the training folder (0: inference only)")
    parser.add_argument("--photos", type=int, nargs="+", default=[1000, 10_000], help="folder inference sizes")
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "winter.pt"))
    parser.add_argument("--root", default=None, help="where to generate the trees (default: a temporary folder)")
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the whole train.py command to its first step")
    args = parser.parse_args()
    base = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="hrstyle_collections_"))
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}")
    try:
        t0 = time.perf_counter()
        if not args.files:  # inference only
            args.train = False
        counts = make_tree(base / "train", max(args.files, 20))
        print(f"generated {args.files} training entries in {time.perf_counter() - t0:.1f} s: {counts}")
        scan = measure_scan(base / "train")
        print(f"scan: {scan['images']} images found in {scan['scan_s']:.1f} s; first batch {tuple(scan['batch'])} "
              f"at {scan['first_batch_s']:.1f} s; Python allocations peak {scan['python_peak_mb']:.0f} MB, "
              f"RSS growth {scan['rss_growth_mb']:.0f} MB")
        if args.train:
            wall, rss, _ = run_measured([
                sys.executable, "scripts/train.py", "experiment=cpu_quick", "style=custom",
                f"style.image={base / 'train' / 'set000' / 'f0000' / 'img10.jpg'}", f"data.content={base / 'train'}",
                "trainer.max_steps=1", "+trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
                "loss.weights=random", "loss.arch=vgg16", "~logger", f"hydra.run.dir={base / 'run'}",
                "trainer.enable_progress_bar=false", "preview_every=1000", "val_metrics=false"])
            print(f"train.py to its first step (scan, skipping, first batch, one step, checkpoint): "
                  f"{wall:.1f} s, peak RSS {rss:.0f} MiB")
        for n in args.photos:
            folder = base / f"photos{n}"
            make_photos(folder, n)
            wall, rss, _ = run_measured([sys.executable, "scripts/infer.py", f"input={folder}",
                                         f"checkpoint={args.checkpoint}", f"output={base / f'out{n}'}"])
            written = sum(1 for _ in (base / f"out{n}").rglob("*.jpg"))
            print(f"infer.py over {n} photos: {written} written in {wall:.1f} s ({1000 * wall / n:.1f} ms/photo), "
                  f"peak RSS {rss:.0f} MiB")
    finally:
        if not args.root:
            shutil.rmtree(base, ignore_errors=True)


def make_photos(folder: Path, n: int) -> None:
    variants = jpeg_variants(size=(64, 48))
    for i in range(n):
        sub = folder / f"day{i // 500:03d}"
        if i % 500 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"IMG_{i:05d}.jpg").write_bytes(variants[i % len(variants)])


if __name__ == "__main__":
    main()
