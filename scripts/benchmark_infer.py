"""Inference speed and memory:  python scripts/benchmark_infer.py [--sizes 512x512 1024x1024 ...]

Prints a markdown table: ms per image, megapixels per second and peak memory (RSS of a
fresh process on CPU, CUDA max allocated on GPU) for each size and precision. Each CPU
measurement runs in its own process so that peak RSS belongs to that size alone.

    python scripts/benchmark_infer.py                       # fp32 (+ bf16/fp16 on GPU)
    python scripts/benchmark_infer.py --sizes 6000x4000 --tile-size 1024   # 24 MP, tiled
    python scripts/benchmark_infer.py --tiling              # tiled vs untiled difference
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from hrstyle.inference import Stylizer

DEFAULT_SIZES = ["512x512", "1024x1024", "2048x2048", "4096x2160"]


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w


def measure(args: argparse.Namespace, size: str, precision: str) -> dict:
    """Time one size in this process; returns the figures as a dict."""
    torch.manual_seed(0)
    stylizer = Stylizer(args.checkpoint, device=args.device, precision=precision, tile_size=args.tile_size,
                        channels_last=args.channels_last, compile=args.compile)
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
            "peak_gb": peak / 2**30, "tiled": stylizer.needs_tiling(h, w),
            "device": torch.cuda.get_device_name() if cuda else "CPU"}


def tiling_report(args: argparse.Namespace) -> None:
    """Max/mean |tiled - untiled| on real photos that fit untiled."""
    from hrstyle.data import load_image

    stylizer = Stylizer(args.checkpoint, device=args.device, tile_size=0)
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
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="WxH")
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 (+ bf16 fp16 on GPU)")
    parser.add_argument("--tile-size", type=int, default=None, help="default: 2048 on CPU, 4096 on GPU")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per size (the best is kept)")
    parser.add_argument("--tiling", action="store_true", help="report tiled vs untiled differences instead")
    parser.add_argument("--photos", nargs="+", default=["../shared/data/content/fps_content1.png"])
    parser.add_argument("--tiling-max-size", type=int, default=1600)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size:precision, print JSON
    args = parser.parse_args()
    gpu = torch.cuda.is_available() and args.device != "cpu"
    if args.tile_size is None:
        args.tile_size = 4096 if gpu else 2048
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

    precisions = args.precisions or (["fp32", "bf16", "fp16"] if gpu else ["fp32"])
    flags = [f"--checkpoint={args.checkpoint}", f"--device={args.device}", f"--tile-size={args.tile_size}",
             f"--repeats={args.repeats}", "--channels-last" if args.channels_last else "--no-channels-last"]
    flags += ["--compile"] if args.compile else []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tile_size {args.tile_size}, "
          f"channels_last {args.channels_last}, compile {args.compile}")
    print("| device | size | precision | ms / image | MP/s | peak memory (GB) | tiled |")
    print("|---|---|---|---|---|---|---|")
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
            print(f"| {r['device']} | {r['size']} | {r['precision']} | {r['ms']:.0f} | {r['mp_s']:.2f} | "
                  f"{r['peak_gb']:.2f} | {'yes' if r['tiled'] else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
