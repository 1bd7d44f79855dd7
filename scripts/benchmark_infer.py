"""Inference speed:  python scripts/benchmark_infer.py

By default, three tables:

0. The whole ``scripts/infer.py`` command (fresh process: start-up, decoding, stylizing, encoding) on
   generated 1, 12 and 24 MP JPEGs (``capvst_01.jpg`` resized), a photo style (``winter.pt``) and a
   painterly one (``starry.pt``): wall time and peak RSS of the child process, the default
   (``work_size`` 512: the network at 512 px, lifted to full resolution) against today's full-resolution
   path (``work_size=null``) with the ratio; then the lift's own seconds per megapixel (in this process).
   The full-resolution 12 and 24 MP runs take minutes and up to ~16 GiB: ``--no-baseline`` skips them,
   ``--command-sizes 1`` keeps it quick, ``--command-sizes`` (nothing) skips the table.
1. hrstyle's default path (``Stylizer`` with its defaults, which is what ``scripts/infer.py`` runs:
   ONNX Runtime on the CPU) against pytorch/examples' fast-neural-style ``TransformerNet`` (Johnson
   et al.; written below from its published description, eager fp32, random weights: its speed does
   not depend on them), in one process, on the same images, at 512², 1024² and 2048², best of
   ``--repeats`` (interleaved), with the ratio. "first call" is the first image of that size (no
   per-size compilation: it should be close to the best).
2. The cost of exact tiling against an untiled forward of the same backend, with the difference.

The machine's load average is printed first: timings on a busy machine are slower.

    python scripts/benchmark_infer.py                            # the three tables
    python scripts/benchmark_infer.py --command-sizes 24 --no-baseline --no-peer --tile-cost   # 24 MP, new path only
    python scripts/benchmark_infer.py --memory [--backend eager] [--precisions fp32 bf16]
                                                                 # ms, MP/s, peak memory per size (fresh processes)
    python scripts/benchmark_infer.py --memory --sizes 6000x4000 --tile-size 1024   # 24 MP, tiled
    python scripts/benchmark_infer.py --tiling                   # tiled vs untiled difference on photos
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from hrstyle.image.lift import downscale, lift, working_shape
from hrstyle.inference import Stylizer
from hrstyle.inference.stylizer import DEFAULT_WORK_SIZE

ROOT = Path(__file__).resolve().parents[1]
#: Generated test photos: megapixels → (width, height), 4:3 like most cameras.
COMMAND_SIZES = {1: (1152, 864), 12: (4000, 3000), 24: (6000, 4000)}
COMMAND_STYLES = ["checkpoints/winter.pt", "checkpoints/starry.pt"]
COMMAND_SOURCE = ROOT.parent / "shared" / "data" / "content" / "capvst_01.jpg"

DEFAULT_SIZES = ["512x512", "1024x1024", "2048x2048", "4096x2160"]
PEER_SIZES = ["512x512", "1024x1024", "2048x2048"]
TILE_COSTS = ["1024x685:512", "2048x2048:1024"]


class _ConvLayer(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, upsample: int | None = None) -> None:
        layers: list[nn.Module] = [nn.Upsample(scale_factor=upsample, mode="nearest")] if upsample else []
        layers += [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride)]
        super().__init__(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _ConvLayer(channels, channels, 3), nn.InstanceNorm2d(channels, affine=True), nn.ReLU(),
            _ConvLayer(channels, channels, 3), nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TransformerNet(nn.Sequential):
    """pytorch/examples' fast-neural-style network (Johnson et al. 2016 with instance norm and
    upsample-convolutions): 9×9 conv 32, two stride-2 3×3 convs (64, 128), five residual blocks of
    128, two nearest-upsample 3×3 convs (64, 32), 9×9 conv to RGB; reflection padding, instance norm
    and ReLU after every conv but the last. 1.68 M parameters."""

    def __init__(self) -> None:
        def block(cin: int, cout: int, kernel: int, stride: int = 1, upsample: int | None = None) -> list[nn.Module]:
            return [_ConvLayer(cin, cout, kernel, stride, upsample), nn.InstanceNorm2d(cout, affine=True), nn.ReLU()]

        super().__init__(
            *block(3, 32, 9), *block(32, 64, 3, 2), *block(64, 128, 3, 2),
            *[_Residual(128) for _ in range(5)],
            *block(128, 64, 3, upsample=2), *block(64, 32, 3, upsample=2),
            _ConvLayer(32, 3, 9),
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn, *args) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time (all threads) is the steadier figure on a busy machine."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, _cpu_seconds() - c0


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, h // 16 + 1, w // 16 + 1), size=(h, w), mode="bilinear")


def machine_line() -> str:
    load = os.getloadavg()
    try:
        import onnxruntime

        ort = f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort = ""
    return (f"torch {torch.__version__}{ort}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
            f"({torch.backends.cpu.get_cpu_capability()}), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def peer_report(args: argparse.Namespace) -> None:
    """hrstyle's default path against TransformerNet, same process and images."""
    stylizer = Stylizer(args.checkpoint)
    torch.manual_seed(0)
    peer = TransformerNet().eval()
    print(f"\nhrstyle default path ({args.checkpoint}, work_size {stylizer.work_size}): backend {stylizer.backend} "
          f"on {stylizer.device}; TransformerNet: eager fp32 at full resolution")
    stylizer.stylize_tensor(_smooth_image(256, 256))  # one warm-up at another size: no size is pre-compiled
    with torch.inference_mode():
        peer(_smooth_image(256, 256))
    print("Wall-clock seconds per image (best), and CPU seconds of all threads (best) in brackets.")
    print("| size | hrstyle default | its first call | TransformerNet | hrstyle speed-up (wall) | (CPU) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes or PEER_SIZES:
        h, w = parse_size(size)
        image = _smooth_image(h, w)
        first = _timed(stylizer.stylize_tensor, image)
        ours, theirs = [first], []
        for _ in range(args.repeats):
            with torch.inference_mode():
                theirs.append(_timed(peer, image))
            ours.append(_timed(stylizer.stylize_tensor, image))
        (ow, oc), (tw, tc) = [(min(t[0] for t in x), min(t[1] for t in x)) for x in (ours, theirs)]
        print(f"| {w}×{h} | {ow:.2f} s ({oc:.2f}) | {first[0]:.2f} s ({first[1]:.2f}) | {tw:.2f} s ({tc:.2f}) | "
              f"{tw / ow:.2f}× | {tc / oc:.2f}× |", flush=True)


def make_photo(size: tuple[int, int], folder: Path) -> Path:
    """A camera-sized JPEG (quality 92): ``COMMAND_SOURCE`` resized to ``size`` = (width, height)."""
    from PIL import Image

    path = folder / f"photo_{size[0]}x{size[1]}.jpg"
    if not path.is_file():
        with Image.open(COMMAND_SOURCE) as img:
            img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    return path


def run_command(photo: Path, checkpoint: str, work_size: int | None, folder: Path) -> tuple[float, float, str]:
    """``scripts/infer.py`` on ``photo`` in a fresh process → (wall seconds, peak RSS GiB, error or "")."""
    out = folder / f"out_{photo.stem}_{Path(checkpoint).stem}_{work_size}.jpg"
    cmd = [sys.executable, str(ROOT / "scripts" / "infer.py"), str(photo), f"checkpoint={checkpoint}", f"output={out}",
           f"work_size={'null' if work_size is None else work_size}", f"hydra.run.dir={folder / 'hydra'}"]
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        # wait4: this child's own peak RSS.
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        error = (err.read().strip().splitlines() or ["failed"])[-1] if child.returncode else ""
    return wall, usage.ru_maxrss / 2**20, error


def command_report(args: argparse.Namespace) -> None:
    """The whole infer.py command: new default against today's full-resolution path, per size and style."""
    folder = Path(tempfile.mkdtemp(prefix="hrstyle_bench_"))
    print(f"\nThe whole scripts/infer.py command (fresh process, JPEG in and out; peak RSS of the child); "
          f"default work_size {DEFAULT_WORK_SIZE} against work_size=null (today's full-resolution path).")
    for checkpoint in args.command_styles:  # the ONNX export (once per checkpoint) before anything is timed
        run_command(make_photo((64, 48), folder), checkpoint, None, folder)
    print("| photo | style | default: wall | peak RSS | work_size=null: wall | peak RSS | speed-up | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for mp in args.command_sizes:
        size = COMMAND_SIZES.get(mp) or (round((mp * 1e6 * 4 / 3) ** 0.5), round((mp * 1e6 * 3 / 4) ** 0.5))
        photo = make_photo(size, folder)
        for checkpoint in args.command_styles:
            new = run_command(photo, checkpoint, DEFAULT_WORK_SIZE, folder)
            old = run_command(photo, checkpoint, None, folder) if args.baseline else None
            row = f"| {size[0]}×{size[1]} ({mp} MP) | {Path(checkpoint).stem} | {_cell(new)} | "
            row += f"{_cell(old)} | " if old else "skipped | | "
            ok = old and not new[2] and not old[2]
            row += f"{old[0] / new[0]:.1f}× | {old[1] / new[1]:.1f}× |" if ok else " | |"
            print(row, flush=True)
    lift_report(args)


def _cell(result: tuple[float, float, str]) -> str:
    wall, peak, error = result
    return f"failed: {error} | " if error else f"{wall:.1f} s | {peak:.2f} GiB"


def lift_report(args: argparse.Namespace) -> None:
    """The lift alone (fit at the working resolution, upsample, apply) on the generated photos' sizes."""
    print(f"\nThe lift alone (winter.pt's radius 8; fit at {DEFAULT_WORK_SIZE} px, applied at full resolution), "
          f"best of {args.repeats}, {torch.get_num_threads()} threads:")
    print("| photo | lift | per megapixel |")
    print("|---|---|---|")
    for mp in args.command_sizes:
        width, height = COMMAND_SIZES.get(mp) or (round((mp * 1e6 * 4 / 3) ** 0.5), round((mp * 1e6 * 3 / 4) ** 0.5))
        photo = _smooth_image(height, width)
        small = downscale(photo, working_shape(height, width, DEFAULT_WORK_SIZE))
        stylized = small.flip(1)  # any output: the cost does not depend on it
        out = torch.empty_like(photo)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            lift(photo, small, stylized, 8, out=out)
            times.append(time.perf_counter() - t0)
        print(f"| {width}×{height} | {min(times):.2f} s | {min(times) / (height * width / 1e6):.3f} s/MP |", flush=True)
        del photo, out


def tile_cost_report(args: argparse.Namespace) -> None:
    """Exact tiling against an untiled forward, default backend, best of --repeats."""
    untiled = Stylizer(args.checkpoint, tile_size=0, work_size=None)  # the network at full resolution
    print(f"\nExact tiling, backend {untiled.backend}: tiled against untiled, wall (CPU) seconds, best of {args.repeats}")
    print("| image | tile | tiles | untiled | tiled | cost | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    from hrstyle.image.tiles import make_tiles

    for spec in args.tile_cost:
        size, tile = spec.split(":")
        h, w = parse_size(size)
        image = _smooth_image(h, w, seed=1)
        tiled = Stylizer(args.checkpoint, tile_size=int(tile), work_size=None)
        tiled.stylize_tensor(_smooth_image(int(tile) + 64, int(tile) + 64))  # sessions of the tiled passes
        a_times, b_times, cpu_a, cpu_b = [], [], [], []
        for _ in range(args.repeats):
            c0, t0 = _cpu_seconds(), time.perf_counter()
            a = untiled.stylize_tensor(image)
            a_times.append(time.perf_counter() - t0)
            cpu_a.append(_cpu_seconds() - c0)
            c0, t0 = _cpu_seconds(), time.perf_counter()
            b = tiled.stylize_tensor(image)
            b_times.append(time.perf_counter() - t0)
            cpu_b.append(_cpu_seconds() - c0)
        n = len(make_tiles(h, w, int(tile), tiled.tile_margin))
        print(f"| {w}×{h} | {tile} | {n} | {min(a_times):.2f} ({min(cpu_a):.2f}) | {min(b_times):.2f} "
              f"({min(cpu_b):.2f}) | {min(b_times) / min(a_times):.2f}× ({min(cpu_b) / min(cpu_a):.2f}×) | "
              f"{(a - b).abs().max():.1e} |", flush=True)


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w


def measure(args: argparse.Namespace, size: str, precision: str) -> dict:
    """Time one size in this process; returns the figures as a dict."""
    torch.manual_seed(0)
    stylizer = Stylizer(args.checkpoint, device=args.device, precision=precision, tile_size=args.tile_size,
                        channels_last=args.channels_last, compile=args.compile, backend=args.backend,
                        work_size=None)  # the network's own cost at each size
    h, w = parse_size(size)
    # A smooth random image: realistic enough for timing (the cost does not depend on content).
    image = torch.nn.functional.interpolate(torch.rand(1, 3, h // 16 + 1, w // 16 + 1), size=(h, w), mode="bilinear")
    cuda = stylizer.device.type == "cuda"
    # Warm-up: torch.compile compiles for this very size; eager only needs a small crop.
    stylizer.stylize_tensor(image if args.compile else image[..., :256, :256])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        stylizer.stylize_tensor(image)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "precision": precision, "ms": best * 1000, "mp_s": h * w / 1e6 / best,
            "peak_gb": peak / 2**30, "tiled": stylizer.needs_tiling(h, w), "backend": stylizer.backend,
            "device": torch.cuda.get_device_name() if cuda else "CPU"}


def tiling_report(args: argparse.Namespace) -> None:
    """Max/mean |tiled - untiled| on real photos that fit untiled."""
    from hrstyle.image.io import load_image

    stylizer = Stylizer(args.checkpoint, device=args.device, tile_size=0, work_size=None)
    for path in args.photos:
        image = load_image(path, max_size=args.tiling_max_size).unsqueeze(0)
        untiled = stylizer.stylize_tensor(image)
        tile = args.tile_size or 512
        stylizer.tile_size = tile
        t0 = time.perf_counter()
        tiled = stylizer.stylize_tensor(image)
        seconds = time.perf_counter() - t0
        stylizer.tile_size = 0
        diff = (tiled - untiled).abs()
        h, w = image.shape[-2:]
        print(f"| {path} | {w}x{h} | {tile} | {diff.max():.2e} | "
              f"{diff.mean():.2e} | {(diff * 255).round().max():.0f} | {seconds:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/starry.pt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", nargs="+", default=None, help="WxH (default: 512², 1024², 2048²; with --memory "
                        "also 4096x2160)")
    parser.add_argument("--memory", action="store_true", help="the per-size table with peak memory (fresh processes)")
    parser.add_argument("--backend", default="auto", help="for --memory: auto | onnx | eager")
    parser.add_argument("--tile-cost", nargs="*", default=TILE_COSTS, help="WxH:TILE pairs for the tiling-cost table")
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 (+ bf16 fp16 on GPU)")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="default: as Stylizer (planned from the memory budget on the CPU, 4096 on GPU)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (the best is kept)")
    parser.add_argument("--tiling", action="store_true", help="report tiled vs untiled differences instead")
    parser.add_argument("--photos", nargs="+", default=["../shared/data/content/fps_content1.png"])
    parser.add_argument("--tiling-max-size", type=int, default=1600)
    parser.add_argument("--command-sizes", type=int, nargs="*", default=[1, 12, 24],
                        help="megapixels of the generated JPEGs for the whole-command table (nothing: skip it)")
    parser.add_argument("--command-styles", nargs="+", default=COMMAND_STYLES, help="checkpoints for that table")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run today's full-resolution path (work_size=null; minutes and GiBs at 12/24 MP)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                        help="the TransformerNet peer table")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size:precision, print JSON
    args = parser.parse_args()
    gpu = torch.cuda.is_available() and args.device != "cpu"
    if args.channels_last is None:
        args.channels_last = gpu
    if args.tiling:
        print("| photo | size | tile | max abs diff | mean abs diff | max diff (8-bit levels) | tiled time |")
        print("|---|---|---|---|---|---|---|")
        tiling_report(args)
        return
    if args.one:
        size, precision = args.one.split(":")
        print(json.dumps(measure(args, size, precision)))
        return
    print(machine_line())
    if not args.memory:
        if args.command_sizes:
            command_report(args)
        if args.peer:
            peer_report(args)
        if args.tile_cost:
            tile_cost_report(args)
        return
    args.sizes = args.sizes or DEFAULT_SIZES

    precisions = args.precisions or (["fp32", "bf16", "fp16"] if gpu else ["fp32"])
    flags = [f"--checkpoint={args.checkpoint}", f"--device={args.device}",
             *([f"--tile-size={args.tile_size}"] if args.tile_size is not None else []), f"--repeats={args.repeats}",
             "--channels-last" if args.channels_last else "--no-channels-last",
             f"--backend={args.backend}"]
    flags += ["--compile"] if args.compile else []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tile_size {args.tile_size or 'default'}, "
          f"channels_last {args.channels_last}, compile {args.compile}")
    print("| device | backend | size | precision | ms / image | MP/s | peak memory (GB) | tiled |")
    print("|---|---|---|---|---|---|---|---|")
    for precision in precisions:
        for size in args.sizes:
            if gpu:
                r = measure(args, size, precision)
            else:  # a fresh process per size: ru_maxrss is a lifetime maximum
                out = subprocess.run([sys.executable, __file__, *flags, f"--one={size}:{precision}"],
                                     capture_output=True, text=True)
                if out.returncode:
                    print(f"| CPU | {size} | {precision} | failed: {out.stderr.strip().splitlines()[-1]} |||")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['device']} | {r['backend']} | {r['size']} | {r['precision']} | {r['ms']:.0f} | {r['mp_s']:.2f} | "
                  f"{r['peak_gb']:.2f} | {'yes' if r['tiled'] else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
