"""How much memory CPU inference may use, and the tiling that keeps it there.

The fast CPU backend (ONNX Runtime) needs about 2.5 GB per megapixel for an untiled forward, so a
photo that fits on a 16 GB laptop at 2 MP does not at 8 MP, and neither does a batch of four 4 MP
photos. ``plan_tiling`` turns a memory budget into the fastest settings that stay within it:

* untiled, with as many same-size images per forward as fit (``TilingPlan.batch``), keeping ONNX
  Runtime's memory arena for the next image when that fits too (``TilingPlan.arena``: a third more
  memory above 1.6 MP, no page faults on the next forward: 2048² 11.3 s against 19.9 s);
* else exact tiles (``ort_tiling``) of 1024, 768 or 512 px, the largest whose passes take at most
  40% of what the image leaves of the budget, and the rest for the stage cache, which is what
  makes tiling cheap (at 2048² in 1024 px tiles: 1.5× an untiled forward with the whole cache, 11×
  without it; on a 24 MP photo 2.76 GiB of cache took 15.4 min, 7.1 GiB 6.0 min, 12.3 GiB 3.3 min).

The per-pixel costs are peak-RSS measurements of ``Stylizer`` on this project's 2-core CPU machine
(ONNX Runtime 1.32, fp32, glibc huge pages; docs/benchmarks.md). They are estimates, not
limits: the allocator's fragmentation and other threads' buffers come on top, hence the margins.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hrstyle.image.tiles import min_tile_size

GIB = 1 << 30

#: Batches up to this many pixels run on a session with ONNX Runtime's memory arena: 1.6× faster at
#: 1024² (no page faults: without it a third of the CPU time was the kernel's), but twice the peak
#: memory (5.1 against 2.6 GB at 1024²), held by the session between images (shrinking the arena after
#: each run gave the page faults back: 5.5 s). Larger batches keep an arena only when asked to
#: (``arena=True``: the memory budget allows its ~3.4 KB/px, ``memory.plan_tiling``), and only for
#: one shape at a time; else they run on a session without one. No arena is held during an arena-less
#: or tiled run: the budget plans those as if they were alone.
ARENA_MAX_PIXELS = 1_600_000

#: Resident before the first image: the interpreter, torch, ONNX Runtime and the model's sessions.
RUNTIME_BYTES = int(0.6 * GIB)
#: The image itself, held across the forward: decoded 8-bit, the float input and output, the 8-bit result.
IMAGE_BYTES_PER_PIXEL = 40
#: One untiled forward (ONNX Runtime, fp32): 1024² 2.5 KB/px (with its arena), 2048² 2.1 KB/px (without).
UNTILED_BYTES_PER_PIXEL = 2_500
#: One untiled forward of a batch over ``ARENA_MAX_PIXELS`` that keeps ONNX Runtime's memory arena
#: (fragmentation: 1536² 3.3 KB/px, 2048×1536 3.0, 2048² 3.3). The arena is held for the next image
#: of that shape, which then runs without page faults: 2048² 11.3 s against 19.9 s without it.
ARENA_BYTES_PER_PIXEL = 3_400
#: One tile's passes, per pixel of the tile with its margins, plus its sessions
#: (measured at 2048²: 576² tiles 0.86 GB, 832² 1.2 GB, 1088² 1.66 GB above the runtime).
TILE_BYTES, TILE_BYTES_PER_PIXEL = int(0.3 * GIB), 1_200
#: With a stage cache, the run that stores a tile's cut holds it next to the stored ones, and freed cuts
#: leave holes: about this much more, plus ``CACHE_OVERHEAD`` resident bytes per byte of cache. Fitted to
#: three measured peaks (24 MP: 512 px tiles, 0.28 GiB cache: 3.00 GiB; 1024 px, 2.76 GiB: 6.49 GiB;
#: 2048² in 1024 px tiles, 0.5 GiB: 3.72 GiB) within 5%.
STORE_BYTES = int(0.6 * GIB)
CACHE_OVERHEAD = 1.1
#: Tile sides tried, largest first; the smallest is used when even it exceeds the budget.
TILE_SIZES = (1024, 768, 512)
#: Fraction of what the image leaves of the budget that the tile itself may take; the rest is cache.
TILE_SHARE = 0.4


def available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux ``MemAvailable``); None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget() -> int:
    """Three quarters of the available memory (4 GiB when it cannot be read).

    ``MemAvailable`` already leaves out what other programs hold; the last quarter is headroom for
    them and for the estimates' error. (Half made a 2048² photo run without its arena on a 24 GB
    machine: 20 s instead of 11.6 s.)
    """
    available = available_memory()
    return available * 3 // 4 if available else 4 * GIB


_process_budget: int | None = None
_turn_lock = threading.RLock()
_last_runner: weakref.ReferenceType | None = None


def process_budget(memory_gb: float | None = None) -> int:
    """The one memory budget of this process, in bytes, shared by every ``Stylizer`` in it.

    ``memory_gb`` sets it (the latest explicit value holds for all); otherwise it is ``default_budget()``
    when first asked. Two styles in one process (an app serving several) then plan within one budget
    instead of each planning as if it were alone.
    """
    global _process_budget
    if memory_gb is not None:
        _process_budget = int(memory_gb * GIB)
    elif _process_budget is None:
        _process_budget = default_budget()
    return _process_budget


@contextmanager
def memory_turn(runner: Any) -> Iterator[None]:
    """Run one forward of ``runner`` (an ONNX Runtime generator) as the only one in the process: forwards of
    all stylizers take turns (on the CPU each already uses every core), and the memory arena another
    runner kept from its last forward is released first, so each forward has the whole budget."""
    global _last_runner
    with _turn_lock:
        previous = _last_runner() if _last_runner is not None else None
        if previous is not None and previous is not runner:
            previous.release_memory()
        _last_runner = weakref.ref(runner)
        yield


@dataclass(frozen=True)
class TilingPlan:
    """How to run one (H, W) image size within a budget.

    tile_size: 0 = untiled, else the tile side for ``ort_tiling``.
    batch: same-size images per untiled forward that fit (at least 1; 1 when tiled).
    cache_bytes: the stage cache for tiled runs (0 when untiled).
    estimate: the expected peak resident bytes of the process for one forward.
    arena: the untiled forward keeps ONNX Runtime's memory arena (always up to ``ARENA_MAX_PIXELS``
        per batch; above, when ``arena_bytes`` fits the budget).
    """

    tile_size: int
    batch: int
    cache_bytes: int
    estimate: int
    arena: bool = False


def untiled_bytes(pixels: int) -> int:
    """Expected peak for an untiled forward over ``pixels`` (all images of the batch together)."""
    return RUNTIME_BYTES + (IMAGE_BYTES_PER_PIXEL + UNTILED_BYTES_PER_PIXEL) * pixels


def arena_bytes(pixels: int) -> int:
    """Expected peak for an untiled forward over ``pixels`` (over ``ARENA_MAX_PIXELS``) that keeps the arena."""
    return RUNTIME_BYTES + (IMAGE_BYTES_PER_PIXEL + ARENA_BYTES_PER_PIXEL) * pixels


def _images_that_fit(budget: int, pixels: int, bytes_per_pixel: int, max_batch: int) -> int:
    """How many images of ``pixels`` one untiled forward at ``bytes_per_pixel`` holds within ``budget`` (may be 0)."""
    return int(min(max_batch, (budget - RUNTIME_BYTES) // ((IMAGE_BYTES_PER_PIXEL + bytes_per_pixel) * pixels)))


def tile_bytes(tile_size: int, margin: int) -> int:
    """Working memory of one tile's passes (a ``tile_size`` tile with ``margin`` context on each side)."""
    return TILE_BYTES + TILE_BYTES_PER_PIXEL * (tile_size + 2 * margin) ** 2


def plan_tiling(height: int, width: int, budget: int, margin: int = 32, tile_size: int | None = None,
                max_batch: int = 64) -> TilingPlan:
    """The fastest way to run (height, width) images within ``budget`` bytes of resident memory.

    ``tile_size`` forces tiling with that side when the image is larger than ``tile_size²``
    (0: never tile); only the stage cache is then planned.
    """
    if height <= 0 or width <= 0 or budget <= 0:
        raise ValueError(f"need a positive image size and budget, got {height}x{width} and {budget}")
    pixels = height * width
    if tile_size == 0 or (tile_size is None and untiled_bytes(pixels) <= budget) \
            or (tile_size and pixels <= tile_size * tile_size):
        batch = max(1, _images_that_fit(budget, pixels, UNTILED_BYTES_PER_PIXEL, max_batch))
        if batch * pixels <= ARENA_MAX_PIXELS:
            return TilingPlan(0, batch, 0, untiled_bytes(pixels * batch), arena=True)
        # Large batches: keeping the arena costs a third more memory and saves a third of the time.
        arena_batch = _images_that_fit(budget, pixels, ARENA_BYTES_PER_PIXEL, max_batch)
        if arena_batch >= 1:
            return TilingPlan(0, arena_batch, 0, arena_bytes(pixels * arena_batch), arena=True)
        return TilingPlan(0, batch, 0, untiled_bytes(pixels * batch))
    fixed = RUNTIME_BYTES + IMAGE_BYTES_PER_PIXEL * pixels
    room = budget - fixed
    if tile_size is None:
        sizes = [t for t in TILE_SIZES if t >= min_tile_size(margin)] or [min_tile_size(margin)]
        tile_size = next((t for t in sizes if tile_bytes(t, margin) + STORE_BYTES <= TILE_SHARE * room), sizes[-1])
        if tile_size * tile_size >= pixels:  # a budget below even one small tile: one untiled forward is no worse
            return TilingPlan(0, 1, 0, untiled_bytes(pixels))
    work = tile_bytes(tile_size, margin)
    cache = int(max(0, (room - work - STORE_BYTES) / CACHE_OVERHEAD))
    store = STORE_BYTES + CACHE_OVERHEAD * cache if cache else 0
    return TilingPlan(tile_size, 1, cache, int(fixed + work + store))
