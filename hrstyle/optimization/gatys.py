"""Gatys et al.'s baseline: optimize the pixels of one image against the training loss.

No network is trained: the image itself is the parameter, and the objective is the very
``ContentStyleLoss`` object that training uses (same loss network, layers, Gram matrices,
weights and normalization), so a feed-forward result and this baseline are scored by the
same function.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hrstyle.errors import UserError
from hrstyle.losses import ContentStyleLoss

METHODS = ("lbfgs", "adam")
INITS = ("content", "noise")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
LOSS_KEYS = ("loss", "content_loss", "style_loss", "tv_loss")

# The image is sigmoid(logit). Pixels are clamped to [EPS, 1 - EPS] before the logit so that
# black and white stay finite; EPS is half an 8-bit level, so the content initialisation
# saves to exactly the content photo's 8-bit values.
EPS = 0.5 / 255


@dataclass
class OptimizationResult:
    """What ``optimize_image`` returns.

    Attributes:
        image: the optimized image, (1, 3, H, W) float32 in [0, 1], detached, on the loss's device.
        history: ``(step, {"loss", "content_loss", "style_loss", "tv_loss"})`` pairs, where
            ``step`` is the number of updates applied to the image that was scored: step 0
            (the initial image), every ``log_every`` steps, and ``steps`` (the returned image).
        seconds: wall-clock time of the whole optimization.
    """

    image: torch.Tensor
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seconds: float = 0.0


def optimize_image(
    content: torch.Tensor,
    loss: ContentStyleLoss,
    steps: int = 300,
    method: str = "lbfgs",
    lr: float | None = None,
    init: str | torch.Tensor = "content",
    log_every: int = 50,
    progress: bool = True,
    seed: int = 0,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> OptimizationResult:
    """Optimize an image's pixels to minimize ``loss(image, content)``.

    Args:
        content: the content photo, (1, 3, H, W) in [0, 1] (values outside are clamped).
            Moved to the loss network's device.
        loss: the training loss; ``loss.set_style(style)`` must already have been called.
        steps: number of optimizer steps, >= 1. One step is exactly one loss + gradient
            evaluation for both methods, so equal ``steps`` mean equal compute. For LBFGS this
            is ``torch.optim.LBFGS(max_iter=1)`` called once per step (its curvature history
            carries over between calls; no line search, which would evaluate the loss
            several times per step).
        method: "lbfgs" (Gatys et al.'s choice) or "adam".
        lr: step size; None gives 1.0 for LBFGS and 0.02 for Adam. Both act on the logits
            of the image (see below), not on the pixels.
        init: "content" (start from the photo: content loss 0 at step 0), "noise" (uniform
            white noise drawn with ``seed``), or a start image: a tensor of ``content``'s shape
            in [0, 1] (clamped like ``content``).
        log_every: record the losses in ``history`` (and print the progress line, and call
            ``callback``) every ``log_every`` steps; <= 0 logs only the first and last.
        progress: print a progress line to stderr at each log step.
        seed: seed of the noise initialisation.
        callback: called as ``callback(step, losses)`` at each log step, with the same
            floats as ``history``.

    Returns:
        An ``OptimizationResult``; ``history[-1]`` scores the returned image (one extra
        forward pass without gradients, not counted in ``steps``).

    Raises:
        UserError: bad arguments, or a loss that became NaN/inf.

    The image is parameterised as ``sigmoid(logit)``: it is in (0, 1) by construction and
    the parameter is unconstrained. Clamping the pixels in place after each step would
    change the parameter behind LBFGS's back: its stored steps ``s_k = x_{k+1} - x_k``
    would no longer match the gradient differences, and the curvature model goes wrong
    for exactly the pixels that hit 0 or 1 (steps overshoot, the loss oscillates). The
    sigmoid keeps the objective smooth, so LBFGS's model stays consistent.
    """
    if method not in METHODS:
        raise UserError(f"unknown optimization method {method!r}: use one of {', '.join(METHODS)}")
    if isinstance(init, torch.Tensor):
        if init.shape != content.shape:
            raise UserError(f"the start image has shape {tuple(init.shape)}, the content {tuple(content.shape)}")
    elif init not in INITS:
        raise UserError(f"unknown init {init!r}: use one of {', '.join(INITS)}")
    if lr is None:
        lr = DEFAULT_LR[method]
    check_arguments(content, steps, lr)

    start = time.perf_counter()
    device = loss.encoder.mean.device
    # contiguous: an image decoded from HWC has permuted strides, which its gradient would
    # inherit, and LBFGS needs to .view() the gradient flat.
    content = content.detach().to(device=device, dtype=torch.float32).clamp(0, 1).contiguous()
    if isinstance(init, torch.Tensor):
        start_image = init.detach().to(device=device, dtype=torch.float32)
    elif init == "content":
        start_image = content
    else:
        gen = torch.Generator().manual_seed(seed)
        start_image = torch.rand(content.shape, generator=gen).to(device)
    logit = torch.logit(start_image.clamp(EPS, 1 - EPS)).contiguous().requires_grad_(True)

    if method == "lbfgs":
        # history_size=100 (torch's default) keeps 2 x 100 image-sized float32 vectors:
        # 0.5 GB for a 512 x 384 image.
        optimizer = torch.optim.LBFGS([logit], lr=lr, max_iter=1, history_size=100)
    else:
        optimizer = torch.optim.Adam([logit], lr=lr)

    history: list[tuple[int, dict[str, float]]] = []
    line = _ProgressLine(progress)

    def record(step: int, terms: dict[str, torch.Tensor]) -> None:
        values = {k: float(terms[k].detach()) for k in LOSS_KEYS}
        history.append((step, values))
        line.show(step, steps, values, time.perf_counter() - start)
        if callback is not None:
            callback(step, values)

    step = 0  # updates applied so far == loss evaluations done so far

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        terms = loss(torch.sigmoid(logit), content)
        total = terms["loss"]
        if not torch.isfinite(total):
            raise UserError(
                f"the loss became {float(total.detach())} at step {step} of {method} (lr={lr:g}); "
                f"try a smaller lr or method={'adam' if method == 'lbfgs' else 'lbfgs'}"
            )
        if step == 0 or (log_every > 0 and step % log_every == 0):
            record(step, terms)
        total.backward()
        return total

    try:
        with torch.enable_grad():
            for step in range(steps):  # noqa: B007 - `step` says where an interrupt stopped (below)
                optimizer.step(closure)  # exactly one closure call for Adam and for LBFGS(max_iter=1)
            step = steps
            with torch.no_grad():
                image = torch.sigmoid(logit).detach()
                final = loss(image, content)
            if not torch.isfinite(final["loss"]):
                raise UserError(f"the loss became {float(final['loss'])} after step {steps} of {method} (lr={lr:g}); "
                                f"try a smaller lr")
            record(steps, final)
    finally:
        line.close()
    return OptimizationResult(image=image, history=history, seconds=time.perf_counter() - start)


def check_arguments(content: torch.Tensor, steps: int, lr: float) -> None:
    """``UserError`` unless steps is an integer >= 1, lr a positive number and content one
    (1, 3, H, W) image: the arguments every per-image optimization takes."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"lr must be a positive number, got {lr!r}")
    if content.dim() != 4 or content.shape[0] != 1 or content.shape[1] != 3:
        raise UserError(f"expected one (1, 3, H, W) content image, got shape {tuple(content.shape)}")


class _ProgressLine:
    """One status line on stderr: rewritten in place (``\\r``) on a terminal, one line per update otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.open = False

    def show(self, step: int, steps: int, values: dict[str, float], seconds: float) -> None:
        if not self.enabled:
            return
        text = (f"step {step:>{len(str(steps))}}/{steps}  loss {values['loss']:.4g}  "
                f"(content {values['content_loss']:.4g}, style {values['style_loss']:.4g}, "
                f"tv {values['tv_loss']:.4g})  {seconds:.1f} s")
        if self.tty:
            sys.stderr.write("\r" + text + "\x1b[K")
            self.open = True
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open = False
