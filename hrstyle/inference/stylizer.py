"""The Python inference API: a trained style applied to images in one forward pass."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from PIL import Image

from hrstyle.checkpoint import load_generator, resolve_checkpoint, style_color_statistics, style_strip_statistics
from hrstyle.errors import UserError
from hrstyle.image.color import (
    BAND_WIDTH,
    MAX_GAIN,
    aligned_band_statistics,
    apply_strength,
    layout_weight,
    match_color,
    match_color_banded,
    preserve_color,
)
from hrstyle.image.guided import guided_filter
from hrstyle.image.io import pil_to_tensor, tensor_to_pil
from hrstyle.image.lift import downscale, lift, upsample, working_shape
from hrstyle.image.tiles import RECEPTIVE_RADIUS, min_tile_size
from hrstyle.inference.onnx.memory import TilingPlan, memory_turn, plan_tiling, process_budget
from hrstyle.inference.tiling import stylize_tiled

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ("auto", "onnx", "eager")

#: Long side (px) at which the network runs by default: about the scale the CPU-preset styles train at
#: (128 px crops of photos at a 128-256 px short side, a 512 px style image) and the size their quality is
#: measured at; the network's time grows with the pixels, the lift's with the photo's (docs/benchmarks.md).
DEFAULT_WORK_SIZE = 512
#: Smallest working resolution accepted: below it the network (trained on 128 px crops) and the
#: guided filter's windows see almost nothing of the scene.
MIN_WORK_SIZE = 16
#: Photos larger than the working resolution share one call only up to this many full-resolution
#: pixels: each holds its float32 photo and result (24 bytes per pixel) until it is written.
LIFT_BATCH_PIXELS = 8_000_000
#: Above this many full-resolution pixels, ONNX Runtime's memory arena (~0.4 GiB after a 512 px forward) is
#: given back before the lift: the photo, its result and their encoding then hold the memory, and a new
#: arena for the next photo costs ~0.15 s (24 MP: 1.65 → ~1.25 GiB peak for the whole command).
RELEASE_ARENA_PIXELS = 4_000_000


def pick_device(device: str = "auto") -> torch.device:
    """"auto" → CUDA if available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda requested but CUDA is not available (use device=cpu)")
    return dev


@dataclass(frozen=True)
class Look:
    """What the result looks like: the controls a user turns. Fields:

    work_size: the long side (px) at which the network runs; larger photos are downscaled
        (antialiased) to it, smaller ones run at their size (never upscaled). A photo style
        (``guided_radius`` > 0) is then lifted to full resolution (``image.lift.lift``: the guided
        filter's local colour transforms, fitted at the working resolution with radius
        ``guided_radius`` in working-resolution pixels, applied to the full-resolution photo),
        so the result keeps every pixel of the photo's detail; a painterly style
        (``guided_radius`` 0) is upsampled bilinearly (its strokes at the scale the network
        paints them at the working resolution). None: the network runs at full resolution
        (tiled when large); the guided filter then runs there too.
    strength: 1 = full style, 0 = the original photo.
    preserve_color: keep the photo's colours, take only the stylized luminance.
    guided_radius, guided_eps: the photorealism control (``image.guided.guided_filter``):
        with a radius > 0 the output is rewritten as local affine colour transforms of
        the photo, which removes ripples and streaks and restores the photo's edges.
        0 leaves the network's output as it is; None (default) takes the radius the
        checkpoint recommends (its style's ``guided_radius``; 0 when it has none).
    color_match: move the output's colour distribution (mean and covariance) onto the style
        image's by one global affine colour map (``color.match_color``), applied after the
        guided filter: 1 = the style's palette, 0 = the network's own colours. It keeps every
        edge (a global map) and fixes what a style network trained on few photos misses on
        unusual ones (a photo far more saturated or darker than any it was trained on).
        None (default): the checkpoint's recommendation (its style's ``color_match``; 0 when
        it has none). Needs the style's colour statistics, stored in the checkpoint (or taken
        from its style image when that file exists).
    color_bands: 1 = ``color_match`` is one global map; K > 1 = the graduated match
        (``color.match_color_banded``): K horizontal bands of the output, each moved onto the same
        band of the style image, so the photo's sky takes the style's sky colours and its ground
        the style's ground (a layout most photos and photo styles share). None (default): the
        checkpoint's recommendation (its style's ``color_bands``; 1 when it has none).
    layout_guard: with the graduated match, a photo without a sky-above-ground layout of its own (a
        portrait, a close-up) gets it faded out (``color.layout_weight``): it would take the style's
        sky colours at its top and ground colours at its bottom. False: every photo gets the full match.
    align_horizon: with the graduated match, move the style's horizon onto the photo's before pairing their
        bands (``color.find_horizon``, ``color.bands_from_strips``), so that a sea under a horizon at 30% of the
        photo takes the style's sea, not the sky above the style's horizon at 60%; with ``layout_guard``, a
        photo of an unclear layout gets the horizons moved only part of the way (its ``layout_weight``).
        False: rows are paired by height alone. Needs the style's strip statistics (checkpoints store
        them; older ones take them from their style image, else the rows are paired by height).
    color_max_gain: the colour match never stretches the output's contrast in a colour direction more
        than this (``color.color_transfer_map``'s ``max_gain``): a band with little colour under a style
        band with much would otherwise turn faint gradients and grass into streaks and speckle. None:
        uncapped (the exact Monge–Kantorovich map).
    """

    work_size: int | None = DEFAULT_WORK_SIZE
    strength: float = 1.0
    preserve_color: bool = False
    guided_radius: int | None = None
    guided_eps: float = 1e-3
    color_match: float | None = None
    color_bands: int | None = None
    layout_guard: bool = True
    align_horizon: bool = True
    color_max_gain: float | None = MAX_GAIN


@dataclass(frozen=True)
class Runtime:
    """How the network runs (the same result on every setting, up to float rounding). Fields:

    device: "auto", "cpu", "cuda", "cuda:1", ...
    precision: "fp32", or "bf16"/"fp16" (autocast; GPU. bf16 also runs on CPU).
    tile_size: images with more than tile_size² pixels are processed in tiles of
        this side (memory stays bounded, the result is the same); 0 disables tiling;
        None: chosen from ``memory_gb`` on the onnx backend (``memory.plan_tiling``:
        untiled while that fits, else 1024/768/512 px tiles and a stage cache), 2048 on
        the CPU with eager PyTorch, 4096 on a GPU. The exact statistics cost about 1.5-3
        forward passes on the onnx backend when the stage cache holds them, up to ~10 when
        memory is tight; ~7 eager.
    tile_margin: context pixels around each tile (>= the 13 px receptive field).
    channels_last: NHWC memory layout; None: on GPU only (on this CPU it was slower).
    compile: ``torch.compile`` the generator (slow first call, faster after); tiled
        images run eagerly (their statistics passes hook into the norm layers).
    backend: "auto" (default): on the CPU in fp32 without ``compile``, "onnx"; otherwise
        "eager". "onnx": the generator exported once to ONNX (dynamic height and width,
        cached on disk per checkpoint, see ``onnx.backend``) and run by ONNX Runtime, tiled
        images included (``onnx.tiling``): several times faster than eager on the CPU, equal
        to it within 1e-4 (tested within 1e-3). "eager": PyTorch (any device and precision, ``compile``). When "auto" cannot
        use ONNX Runtime (not installed, export failed) it warns in one line and runs eager.
    cache_dir: where exported graphs are kept (None: ``$HRSTYLE_CACHE_DIR``, else
        ``~/.cache/hrstyle``).
    tile_cache_mb: memory for the stage cache of tiled ONNX inference (None: what
        ``memory_gb`` leaves after the image and the tile); 0 recomputes instead (slower).
    memory_gb: about how much memory (resident, GiB) the onnx backend may use: it decides
        between untiled and tiled, the tile size, the stage cache and how many same-size
        images share one forward. It is the process's one budget (``memory.process_budget``):
        every Stylizer in the process plans within it, and their forwards take turns. None: the
        budget already set, else three quarters of the memory available when first asked.
    """

    device: str = "auto"
    precision: str = "fp32"
    backend: str = "auto"
    compile: bool = False
    channels_last: bool | None = None
    tile_size: int | None = None
    tile_margin: int = 32
    tile_cache_mb: int | None = None
    memory_gb: float | None = None
    cache_dir: str | os.PathLike | None = None


LOOK_FIELDS = tuple(f.name for f in fields(Look))
RUNTIME_FIELDS = tuple(f.name for f in fields(Runtime))


class Stylizer:
    """Stylize images with a trained checkpoint.

    Args:
        checkpoint: a ``.ckpt`` from ``scripts/train.py`` or a compact ``.pt``.
        look: what the result looks like (``Look``: working resolution, strength, colour, photorealism).
        runtime: how it runs (``Runtime``: device, precision, backend, tiling, memory).
        **settings: any field of ``Look`` or ``Runtime`` by name, over ``look`` and ``runtime``:
            ``Stylizer("winter.pt", strength=0.8, device="cpu")``.


    ``__call__`` takes an (N, 3, H, W) or (3, H, W) tensor in [0, 1] (any device) or a
    PIL image and returns the same kind: float32 on the CPU for tensors, RGB for PIL.
    """

    def __init__(self, checkpoint: str | os.PathLike, look: Look | None = None, runtime: Runtime | None = None,
                 **settings: Any) -> None:
        unknown = sorted(set(settings) - set(LOOK_FIELDS) - set(RUNTIME_FIELDS))
        if unknown:
            raise TypeError(f"Stylizer got unknown settings {unknown}; a Look has {list(LOOK_FIELDS)}, "
                            f"a Runtime {list(RUNTIME_FIELDS)}")
        look = dataclasses.replace(look or Look(), **{k: v for k, v in settings.items() if k in LOOK_FIELDS})
        runtime = dataclasses.replace(runtime or Runtime(),
                                      **{k: v for k, v in settings.items() if k in RUNTIME_FIELDS})
        #: The settings as given (``None`` fields: the checkpoint's recommendation, resolved below).
        self.look, self.runtime = look, runtime
        work_size, strength, preserve_color = look.work_size, look.strength, look.preserve_color
        guided_radius, guided_eps, color_match = look.guided_radius, look.guided_eps, look.color_match
        device, precision, backend, compile = runtime.device, runtime.precision, runtime.backend, runtime.compile
        channels_last, tile_size, tile_margin = runtime.channels_last, runtime.tile_size, runtime.tile_margin
        tile_cache_mb, memory_gb, cache_dir = runtime.tile_cache_mb, runtime.memory_gb, runtime.cache_dir
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if not 0.0 <= strength <= 1.0:
            raise UserError(f"strength must be in [0, 1], got {strength}")
        if tile_margin < RECEPTIVE_RADIUS + 4:
            raise UserError(f"tile_margin must be at least {RECEPTIVE_RADIUS + 4} (the receptive field), got {tile_margin}")
        if backend not in BACKENDS:
            raise UserError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if (guided_radius is not None and guided_radius < 0) or guided_eps <= 0:
            raise UserError(f"guided_radius must be >= 0 and guided_eps > 0, got {guided_radius} and {guided_eps}")
        if color_match is not None and not 0.0 <= color_match <= 1.0:
            raise UserError(f"color_match must be in [0, 1], got {color_match}")
        color_bands = look.color_bands
        if color_bands is not None and (isinstance(color_bands, bool) or not isinstance(color_bands, int)
                                        or color_bands < 1):
            raise UserError(f"color_bands must be an integer >= 1 (1: one global colour map), got {color_bands!r}")
        max_gain = look.color_max_gain
        if max_gain is not None and (isinstance(max_gain, bool) or not isinstance(max_gain, (int, float))
                                     or not max_gain >= 1.0):
            raise UserError(f"color_max_gain must be a number >= 1 (or null: uncapped), got {max_gain!r}")
        if work_size is not None and (isinstance(work_size, bool) or not isinstance(work_size, int)
                                      or work_size < MIN_WORK_SIZE):
            raise UserError(f"work_size must be an integer >= {MIN_WORK_SIZE} (the long side in pixels at which "
                            f"the network runs) or null for full resolution, got {work_size!r}")
        #: Long side at which the network runs (None: full resolution).
        self.work_size = work_size
        if memory_gb is not None and not memory_gb > 0:
            raise UserError(f"memory_gb must be > 0 (or null for three quarters of the available memory), got {memory_gb}")
        self.device = pick_device(device)
        if tile_size and tile_size < min_tile_size(tile_margin):
            raise UserError(f"tile_size {tile_size} is too small for tile_margin {tile_margin} "
                            f"(min {min_tile_size(tile_margin)})")
        self.dtype = PRECISIONS[precision]
        if self.dtype == torch.float16 and self.device.type == "cpu":
            raise UserError("precision=fp16 needs a GPU; use fp32 or bf16 on the CPU")
        self.model, self.meta = load_generator(checkpoint, map_location="cpu")
        if guided_radius is None:
            guided_radius = int(self.meta.get("guided_radius") or 0)
        self.guided_radius, self.guided_eps = int(guided_radius), float(guided_eps)
        if color_match is None:
            color_match = float(self.meta.get("color_match") or 0.0)
        self.color_match = float(color_match)
        if color_bands is None:
            color_bands = int(self.meta.get("color_bands") or 1)
        self.color_bands = int(color_bands)
        self.layout_guard = bool(look.layout_guard)
        self.color_max_gain = None if max_gain is None else float(max_gain)
        self.style_color = (style_color_statistics(self.meta, checkpoint, self.color_bands)
                            if self.color_match else None)
        self.style_strips = (style_strip_statistics(self.meta)
                             if self.color_match and self.color_bands > 1 and look.align_horizon else None)
        self.model.to(self.device)
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._net: Callable[[torch.Tensor], torch.Tensor] = self.model
        if compile:
            # dynamic=True: one graph for every image and tile size.
            self._net = torch.compile(self.model, dynamic=True)
        self.tile_margin = tile_margin
        self.strength, self.preserve_color = strength, preserve_color
        self.tile_cache_bytes = None if tile_cache_mb is None else int(tile_cache_mb) << 20
        self._ort = self._onnx_backend(backend, checkpoint, compile, cache_dir)
        #: The backend in use: "onnx" or "eager".
        self.backend = "eager" if self._ort is None else "onnx"
        if self._ort is not None:
            process_budget(memory_gb)  # memory_gb sets the process's one budget; None keeps (or makes) it
        if tile_size is None and self._ort is None:
            tile_size = 4096 if self.device.type == "cuda" else 2048
        #: None: planned per image size from the memory budget (onnx backend).
        self.tile_size = tile_size

    def _onnx_backend(self, backend: str, checkpoint: str | os.PathLike, compile: bool,
                      cache_dir: str | os.PathLike | None):
        """The ONNX Runtime generator, or None for eager PyTorch."""
        if backend == "eager":
            return None
        reasons = [why for why, bad in (
            (f"device {self.device}", self.device.type != "cpu"),
            (f"precision {next(k for k, v in PRECISIONS.items() if v == self.dtype)}", self.dtype != torch.float32),
            ("compile=true", compile),
        ) if bad]
        if reasons:
            if backend == "onnx":
                raise UserError(f"backend=onnx runs fp32 on the CPU without compile; not with {', '.join(reasons)}")
            return None
        from hrstyle.inference.onnx.backend import BackendUnavailable, load_ort_generator

        try:
            return load_ort_generator(resolve_checkpoint(checkpoint), self.model, cache_dir,
                                      log=lambda msg: print(msg, file=sys.stderr))
        except BackendUnavailable as exc:
            if backend == "onnx":
                raise UserError(f"backend=onnx is not available: {exc}") from exc
            print(f"warning: fast ONNX Runtime backend unavailable ({exc}); running eager PyTorch", file=sys.stderr)
            return None

    @property
    def memory_bytes(self) -> int | None:
        """The memory budget in bytes (onnx backend): the process's one budget, shared by every Stylizer
        (``memory.process_budget``); None for eager."""
        return None if self._ort is None else process_budget()

    @property
    def style_name(self) -> str:
        return str(self.meta.get("style_name", "style"))

    def _forward(self, x: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """The generator (compiled unless ``eager``) on a batch, with the chosen layout/precision."""
        net = self.model if eager else self._net
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )
        with autocast:
            return net(x)

    def working_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) at which the network runs for an (H, W) photo (``work_size``)."""
        return working_shape(height, width, self.work_size)

    def plan(self, height: int, width: int) -> TilingPlan:
        """How the network runs for an (H, W) photo, at its working shape: untiled (and how many per
        forward) or the tile size and stage cache."""
        height, width = self.working_shape(height, width)
        if self.memory_bytes is None:  # eager: tile_size alone decides, batches as given
            tiled = bool(self.tile_size) and height * width > self.tile_size * self.tile_size
            return TilingPlan(self.tile_size if tiled else 0, 1 if tiled else 1 << 30, 0, 0)
        plan = plan_tiling(height, width, self.memory_bytes, self.tile_margin, self.tile_size)
        if plan.tile_size and self.tile_cache_bytes is not None:
            plan = dataclasses.replace(plan, cache_bytes=self.tile_cache_bytes)
        return plan

    def needs_tiling(self, height: int, width: int) -> bool:
        return self.plan(height, width).tile_size > 0

    def batch_limit(self, height: int, width: int) -> int:
        """How many same-size (H, W) photos may share one call (the memory budget's limit; for photos
        above the working resolution also ``LIFT_BATCH_PIXELS`` of full-resolution images)."""
        batch = self.plan(height, width).batch
        if self.working_shape(height, width) != (height, width):
            batch = min(batch, max(1, LIFT_BATCH_PIXELS // (height * width)))
        return batch

    @torch.inference_mode()
    def stylize_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] → stylized (N, 3, H, W) float32 on the CPU."""
        if images.dim() == 3:
            return self.stylize_tensor(images.unsqueeze(0))[0]
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        images = images.float()
        h, w = images.shape[-2:]
        size = self.working_shape(h, w)
        if size == (h, w):  # full resolution: the network, then the guided filter there
            return self.postprocess(self._network(images), images.cpu())
        photo = images.cpu()
        small = downscale(photo, size)
        stylized = self._network(small).clamp_(0, 1)
        if self._ort is not None and h * w > RELEASE_ARENA_PIXELS:
            self._ort._release_arena()
        if self.guided_radius:  # a photo style: its local colour transforms, applied to the full photo
            out = lift(photo, small, stylized, self.guided_radius, self.guided_eps)
        else:  # a painterly style: its strokes as painted at the working resolution
            out = upsample(stylized, (h, w)).clamp_(0, 1)
        return self.finish(out, photo)

    def _network(self, images: torch.Tensor) -> torch.Tensor:
        """The generator on (N, 3, H, W) float images in [0, 1], tiled as planned → float32 on the CPU."""
        h, w = images.shape[-2:]
        plan = self.plan(h, w) if self._ort is not None else None
        if self._ort is not None and plan is not None:
            with memory_turn(self._ort):  # one forward in the process at a time, within the one budget
                if plan.tile_size:
                    out = torch.cat([self._ort.tiled(img[None], plan.tile_size, self.tile_margin, plan.cache_bytes)
                                     for img in images])
                else:  # in chunks that fit the memory budget
                    out = torch.cat([self._ort(images[i:i + plan.batch], arena=plan.arena)
                                     for i in range(0, len(images), plan.batch)])
        elif self.needs_tiling(h, w):
            outs = [
                stylize_tiled(self.model, img[None].cpu(), lambda t: self._forward(t, eager=True), self.tile_size,
                              self.tile_margin, self.device)
                for img in images
            ]
            out = torch.cat(outs)
        else:
            out = self._forward(images).float().cpu()
        return out

    def postprocess(self, stylized: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """The network's full-resolution output → the result: the guided filter, then ``finish``."""
        out = stylized.clamp_(0, 1)
        if self.guided_radius:
            out = guided_filter(out, original, self.guided_radius, self.guided_eps)
        return self.finish(out, original)

    def finish(self, stylized: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """Apply the style's colour statistics, colour preservation and strength to a full-resolution
        result in [0, 1] (both (N, 3, H, W) on the CPU). Works in place on ``stylized`` (a fresh output)
        where it can: a 24 MP image is 288 MB per float copy."""
        out = stylized
        if self.style_color is not None:
            for i in range(out.shape[0]):  # each image from its own statistics; `out` is a fresh tensor
                if self.color_bands > 1:
                    weight = layout_weight(original[i]) if self.layout_guard else 1.0
                    if weight > 0:  # a portrait or close-up: nothing to do (0.3 s saved at 24 MP)
                        match_color_banded(out[i:i + 1], self._band_target(original[i], weight),
                                           self.color_match * weight, inplace=True, max_gain=self.color_max_gain)
                else:
                    match_color(out[i:i + 1], self.style_color, self.color_match, inplace=True,
                                max_gain=self.color_max_gain)
        if self.preserve_color:
            out = preserve_color(out, original)
        return apply_strength(out, original, self.strength)

    def _band_target(self, photo: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The graduated match's band statistics for one (3, H, W) photo: the style's bands with its horizon
        moved ``weight`` of the way onto the photo's (all of it for a clear sky-above-ground layout; at most a
        stretch of 2, ``color.move_horizon``)."""
        if self.style_strips is None:
            return self.style_color
        strips, style_horizon = self.style_strips
        return aligned_band_statistics(strips, style_horizon, photo, self.color_bands, BAND_WIDTH, weight)

    def __call__(self, image: torch.Tensor | Image.Image) -> torch.Tensor | Image.Image:
        if isinstance(image, Image.Image):
            return tensor_to_pil(self.stylize_tensor(pil_to_tensor(image)))
        return self.stylize_tensor(image)

