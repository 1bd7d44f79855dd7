"""The stylization methods an evaluation compares, built from method strings.

A method string is one of:

* ``identity``: the photo itself (the reference: structure perfect, no style);
* ``gatys``: Gatys et al.'s per-image pixel optimization (``hrstyle.optimization.optimize_image``);
* ``paper``: the paper's recipe, a fresh HRNet fitted to each photo (``fit_generator``);
* a checkpoint, ``.pt`` or ``.ckpt`` (``scripts/train.py`` output or a compact export);
* a folder: a training run (``<run>/checkpoints/last.ckpt``), or a Hydra multirun folder
  (``<folder>/<N>/checkpoints/last.ckpt`` + ``<folder>/<N>/.hydra/overrides.yaml``, as
  ``python scripts/train.py -m ...`` writes) expanded into one method per run, labelled with
  the overrides that differ between the runs;
* a checkpoint or run folder with ``+default`` appended (``checkpoints/winter.pt+default``): the
  checkpoint with the inference defaults it recommends (its guided filter and colour match), i.e.
  what ``scripts/infer.py`` gives with no options;
* any of these with ``+guided`` appended (``checkpoints/starry.pt+guided``): the same method
  followed by the photorealism control, the guided filter of ``hrstyle.image.guided``
  with the photo as guide (``MethodOptions.guided``: radius, eps);
* any of these with ``+color`` appended (``<run>+guided+color``): the same method followed by
  the match to the style's colour statistics (``hrstyle.image.color.match_color``, strength
  ``MethodOptions.color.strength``), taken from the style image of the pair; ``+color@S`` sets
  the strength S in [0, 1] for that method alone (``identity+color@1``: the global colour transfer
  of the photo, the baseline every photo style must beat);
* any of these with ``+graded`` appended (``+graded@S`` likewise): the graduated colour match of inference
  (``match_color_banded``, 8 horizontal bands, the style's horizon moved onto the photo's) towards the style
  image of the pair, on every photo (no layout guard) and uncapped like ``+color`` (``identity+graded@1``: the
  graduated transfer of the photo).

Every method is a ``Method`` whose ``fn(content, style)`` maps (1, 3, H, W) tensors in [0, 1]
to a (1, 3, H, W) float32 CPU tensor in [0, 1]. ``gatys`` and ``paper`` share one
``ContentStyleLoss`` built once from the loss config (the training loss, one VGG).

The options of the methods are a ``MethodOptions``; ``scripts/evaluate.py`` builds it from
``configs/evaluate.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hrstyle.checkpoint import PROJECT_ROOT
from hrstyle.errors import UserError
from hrstyle.image.guided import DEFAULT_RADIUS
from hrstyle.paths import user_path

BUILTIN = ("identity", "gatys", "paper")
GUIDED_SUFFIX = "+guided"
DEFAULT_SUFFIX = "+default"
COLOR_SUFFIX = "+color"
GRADED_SUFFIX = "+graded"
CHECKPOINT_SUFFIXES = (".pt", ".ckpt")
METHOD_KINDS = (
    "identity, gatys, paper, a checkpoint file (.pt/.ckpt), a training run folder "
    "(<run>/checkpoints/last.ckpt) or a multirun folder (outputs/multirun/<style>/<time>)"
)

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# The library's defaults are these dataclass defaults: configs/evaluate.yaml repeats them for the
# command line (scripts/evaluate.py passes every value it holds), and
# tests/test_evaluation_report.py::test_settings_defaults_equal_the_yaml keeps the two equal.
@dataclass(frozen=True)
class GatysOptions:
    """Gatys et al.'s pixel optimization (``hrstyle.optimization.gatys.optimize_image``)."""

    steps: int = 300
    method: str = "lbfgs"  # lbfgs | adam
    lr: float | None = None  # None: 1.0 for lbfgs, 0.02 for adam
    init: str = "content"  # content | noise
    log_every: int = 50


@dataclass(frozen=True)
class PaperOptions:
    """The paper's recipe, a fresh HRNet fitted to each photo (``hrstyle.optimization.paper.fit_generator``)."""

    steps: int = 500
    lr: float = 5e-3
    step_size: int = 200
    gamma: float = 0.9
    log_every: int = 50
    generator: dict[str, Any] = field(default_factory=lambda: {"width": 1.0, "padding_mode": "zeros"})


@dataclass(frozen=True)
class GuidedOptions:
    """The guided filter of methods written ``<method>+guided`` (``hrstyle.image.guided``)."""

    radius: int = DEFAULT_RADIUS
    eps: float = 1e-3


@dataclass(frozen=True)
class ColorOptions:
    """The colour match of methods written ``<method>+color`` (``hrstyle.image.color.match_color``)."""

    strength: float = 0.5


@dataclass(frozen=True)
class MethodOptions:
    """How the methods are built and run.

    Attributes:
        loss: a ``configs/loss/*`` node as a plain dict (instantiated through its ``_target_``): the
            loss of gatys and paper, and (``EvaluationSettings``) the metric network. None: gatys and
            paper are unavailable, the metrics use VGG19 with ImageNet weights.
        seed: seed of the gatys/paper optimizations.
        progress: print the optimizers' progress.
        gatys, paper, guided, color: the options of those methods and suffixes.
    """

    loss: dict[str, Any] | None = None
    seed: int = 0
    progress: bool = True
    gatys: GatysOptions = field(default_factory=GatysOptions)
    paper: PaperOptions = field(default_factory=PaperOptions)
    guided: GuidedOptions = field(default_factory=GuidedOptions)
    color: ColorOptions = field(default_factory=ColorOptions)


@dataclass
class Method:
    """One column of the evaluation.

    Attributes:
        name: display name, unique within an evaluation (also the images/ sub-folder).
        kind: "identity", "gatys", "paper" or "checkpoint".
        fn: ``fn(content, style) -> output``, (1, 3, H, W) in [0, 1]; output float32 on the CPU.
        source: what the user gave (a path for checkpoints).
        prepare: called with the style tensor before ``fn`` (outside the timing): sets the
            Gram targets of the shared loss.
        style_image: for a checkpoint, the style image it was trained on when that file
            exists (the evaluation pairs it with that style only), else None.
        sweep: for a run of a multirun folder, the folder; ``label`` is then its differing
            overrides (``{"style_weight": "5"}``).
    """

    name: str
    kind: str
    fn: Fn
    source: str = ""
    prepare: Callable[[torch.Tensor], None] | None = None
    style_image: Path | None = None
    sweep: Path | None = None
    label: dict[str, str] = field(default_factory=dict)

    @property
    def uses_style(self) -> bool:
        """Whether the output depends on the style image given (False for checkpoints)."""
        return self.kind != "checkpoint"


class SharedLoss:
    """One ``ContentStyleLoss`` for gatys and paper, built lazily from the loss config, with
    its Gram targets switched only when the style changes."""

    def __init__(self, loss_cfg: dict[str, Any] | None, device: torch.device) -> None:
        self.loss_cfg, self.device = loss_cfg, device
        self._loss = None
        self._style: torch.Tensor | None = None  # kept alive so that `is` is a safe identity test

    @property
    def loss(self):  # noqa: ANN201 - ContentStyleLoss, imported lazily with Hydra
        if self._loss is None:
            from hydra.utils import instantiate

            if self.loss_cfg is None:
                raise UserError("gatys/paper need a loss config (defaults: - loss: vgg19)")
            self._loss = instantiate(self.loss_cfg, _convert_="all").to(self.device)
        return self._loss

    def set_style(self, style: torch.Tensor) -> None:
        if style is not self._style:
            self.loss.set_style(style.to(self.device))
            self._style = style


def checkpoint_name(path: Path) -> str:
    """A display name: the file stem, or the run folder's name for ``<run>/checkpoints/last.ckpt``
    (``<run>-<stem>`` for another checkpoint of a run)."""
    path = Path(path)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        run = path.parent.parent.name
        return run if path.stem == "last" else f"{run}-{path.stem}"
    return path.stem


def own_style_image(meta: dict[str, Any]) -> Path | None:
    """The style image a checkpoint was trained on (``meta["style_image"]``) if that file exists:
    as written (relative to the working directory), else relative to the project root. A
    trailing ``(path)`` in the entry (hand-written metadata) is tried too."""
    raw = meta.get("style_image")
    if not raw:
        return None
    candidates = [str(raw)]
    match = re.search(r"\(([^()]+)\)\s*$", str(raw))
    if match:
        candidates.append(match.group(1).strip())
    for text in candidates:
        path = user_path(text)
        for candidate in (path, None if path.is_absolute() else PROJECT_ROOT / path):
            if candidate is not None and candidate.is_file():
                return candidate
    return None


def _checkpoint_method(path: Path, device: torch.device, name: str | None = None, defaults: bool = False) -> Method:
    from hrstyle.inference import Stylizer

    # Untiled. By default the network's own output at the evaluation size, none of the checkpoint's
    # post-processing (append +guided for the photorealism control, +color for the colour match);
    # with ``defaults`` exactly what inference does with the checkpoint's recommendations.
    off = {} if defaults else {"guided_radius": 0, "color_match": 0.0, "work_size": None}
    stylizer = Stylizer(path, device=str(device), tile_size=0, **off)

    def fn(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return stylizer.stylize_tensor(content)

    name = name or checkpoint_name(path)
    suffix = DEFAULT_SUFFIX if defaults else ""
    return Method(f"{name}{suffix}", "checkpoint", fn, source=f"{path}{suffix}", style_image=own_style_image(stylizer.meta))


def read_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of one Hydra run (``.hydra/overrides.yaml``), [] if none."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    return [str(x) for x in data] if isinstance(data, list) else []


def _split_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    return (key.strip(), value.strip()) if sep else (text.strip(), "")


def differing_overrides(runs: list[list[str]]) -> list[dict[str, str]]:
    """Per run, the overrides whose value is not the same in every run (keys shortened to their
    last component, ``loss.style_weight`` → ``style_weight``, where that stays unambiguous)."""
    parsed = [dict(_split_override(o) for o in overrides) for overrides in runs]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    short = {k: k.rsplit(".", 1)[-1].lstrip("+~") for k in varying}
    if len(set(short.values())) < len(short):
        short = {k: k.lstrip("+~") for k in varying}
    return [{short[k]: p[k] for k in varying if k in p} for p in parsed]


def sweep_runs(folder: Path) -> list[Path]:
    """The runs of a Hydra multirun folder that have ``checkpoints/last.ckpt``, in job order."""
    runs = [d for d in folder.iterdir() if d.is_dir() and (d / "checkpoints" / "last.ckpt").is_file()]
    return sorted(runs, key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))


def _folder_methods(folder: Path, device: torch.device, defaults: bool = False) -> list[Method]:
    if (folder / "checkpoints" / "last.ckpt").is_file():  # one training run
        return [_checkpoint_method(folder / "checkpoints" / "last.ckpt", device, name=folder.name, defaults=defaults)]
    runs = sweep_runs(folder)
    if not runs:
        raise UserError(f"{folder} holds no training run: expected a multirun folder with "
                        f"<N>/checkpoints/last.ckpt (python scripts/train.py -m ...) or a run folder")
    labels = differing_overrides([read_overrides(r) for r in runs])
    methods = []
    for run, label in zip(runs, labels):
        text = ",".join(f"{k}={v}" for k, v in label.items()) or f"run{run.name}"
        method = _checkpoint_method(run / "checkpoints" / "last.ckpt", device, name=text, defaults=defaults)
        method.source, method.sweep, method.label = str(run), folder, label or {"run": run.name}
        methods.append(method)
    return methods


def _identity(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    return content.detach().float().cpu().clone()


def build_methods(specs: Iterable[str], options: MethodOptions, device: torch.device) -> list[Method]:
    """Turn method strings into ``Method`` objects (models loaded here, not in the timed calls).

    ``options`` gives the loss of gatys and paper, their optimization settings, the seed, the progress
    output and the ``+guided`` / ``+color`` settings.
    Raises ``UserError`` for an unknown method string or a missing checkpoint.
    """
    return _build(specs, options, SharedLoss(options.loss, device), device)


def _build(specs: Iterable[str], options: MethodOptions, shared: SharedLoss, device: torch.device) -> list[Method]:
    specs = [str(s) for s in specs or []]
    if not specs:
        raise UserError(f"no method given: methods=[...] takes {METHOD_KINDS}")
    methods: list[Method] = []
    for spec in specs:
        if spec.endswith(GUIDED_SUFFIX):
            base = _build([spec[: -len(GUIDED_SUFFIX)]], options, shared, device)
            methods.extend(_with_guided_filter(m, options.guided) for m in base)
            continue
        color = re.fullmatch(rf"(.+)({re.escape(COLOR_SUFFIX)}|{re.escape(GRADED_SUFFIX)})(?:@([^+@]*))?", spec)
        if color:
            strength = options.color.strength if color.group(3) is None else _strength(spec, color.group(3))
            base = _build([color.group(1)], options, shared, device)
            graded = color.group(2) == GRADED_SUFFIX
            methods.extend(_with_color_match(m, strength, color.group(3), graded) for m in base)
            continue
        defaults = spec.endswith(DEFAULT_SUFFIX)
        if defaults:
            spec = spec[: -len(DEFAULT_SUFFIX)]
        path = user_path(spec)
        if defaults and not (path.suffix.lower() in CHECKPOINT_SUFFIXES or path.is_dir()):
            raise UserError(f"{spec}{DEFAULT_SUFFIX}: +default applies to a checkpoint or a training run folder")
        if spec == "identity":
            methods.append(Method("identity", "identity", _identity, source=spec))
        elif spec == "gatys":
            methods.append(_gatys_method(shared, options.gatys, options.seed, options.progress))
        elif spec == "paper":
            methods.append(_paper_method(shared, options.paper, options.seed, options.progress))
        elif path.suffix.lower() in CHECKPOINT_SUFFIXES:
            from hrstyle.checkpoint import resolve_checkpoint

            methods.append(_checkpoint_method(resolve_checkpoint(path), device, defaults=defaults))
        elif path.is_dir():
            methods.extend(_folder_methods(path, device, defaults=defaults))
        else:
            raise UserError(f"unknown method {spec!r}: use {METHOD_KINDS}")
    return _unique_names(methods)


def _with_guided_filter(method: Method, opts: GuidedOptions) -> Method:
    from hrstyle.image.guided import guided_filter

    radius, eps = int(opts.radius), float(opts.eps)
    inner = method.fn

    def fn(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return guided_filter(inner(content, style), content.float().cpu(), radius, eps)

    method.fn, method.name = fn, f"{method.name}{GUIDED_SUFFIX}"
    method.source = f"{method.source}{GUIDED_SUFFIX}"
    return method


def _strength(spec: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"method {spec!r}: +color@S / +graded@S take a strength S in [0, 1], got {text!r}") from None


def _with_color_match(method: Method, strength: float, label: str | None = None, graded: bool = False) -> Method:
    from hrstyle.image.color import (
        aligned_band_statistics,
        color_statistics,
        match_color,
        match_color_banded,
        style_strips,
    )

    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"color.strength must be in [0, 1], got {strength}")
    inner = method.fn

    def fn(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if graded:  # what inference's graduated match does, horizons aligned, on every photo (no layout guard)
            strips, horizon = style_strips(style.float().cpu())
            target = aligned_band_statistics(strips, horizon, content.float().cpu())
            return match_color_banded(inner(content, style), target, strength)
        return match_color(inner(content, style), color_statistics(style.float().cpu()), strength)

    suffix = GRADED_SUFFIX if graded else COLOR_SUFFIX
    suffix = suffix if label is None else f"{suffix}@{label}"
    method.fn, method.name = fn, f"{method.name}{suffix}"
    method.source = f"{method.source}{suffix}"
    return method


def _gatys_method(shared: SharedLoss, opts: GatysOptions, seed: int, progress: bool) -> Method:
    from hrstyle.optimization.gatys import optimize_image

    def fn(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        result = optimize_image(
            content, shared.loss, steps=int(opts.steps), method=opts.method, lr=opts.lr, init=opts.init,
            log_every=int(opts.log_every), progress=bool(progress), seed=int(seed or 0),
        )
        return result.image.float().cpu()

    return Method("gatys", "gatys", fn, source="gatys", prepare=shared.set_style)


def _paper_method(shared: SharedLoss, opts: PaperOptions, seed: int, progress: bool) -> Method:
    from hrstyle.optimization.paper import fit_generator

    def fn(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        result = fit_generator(
            content, shared.loss, steps=int(opts.steps), lr=float(opts.lr), step_size=int(opts.step_size),
            gamma=float(opts.gamma), generator_config=dict(opts.generator or {}), seed=seed,
            log_every=int(opts.log_every), progress=bool(progress),
        )
        return result.image.float().cpu()

    return Method("paper", "paper", fn, source="paper", prepare=shared.set_style)


def _unique_names(methods: list[Method]) -> list[Method]:
    seen: dict[str, int] = {}
    for method in methods:
        base = method.name
        if base in seen:
            seen[base] += 1
            method.name = f"{base}_{seen[base]}"
            while method.name in seen:
                seen[base] += 1
                method.name = f"{base}_{seen[base]}"
        seen.setdefault(method.name, 1)
    return methods
