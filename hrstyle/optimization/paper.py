"""The paper's recipe (arXiv 1904.11617, ``experiment=paper``) for one photo, as a plain loop.

A fresh HRNet generator is fitted to a single content photo with Adam + StepLR on the same
``ContentStyleLoss`` as training, and its output on that photo is the result. It is what
``python scripts/train.py experiment=paper data.content=photo.jpg`` does, without Lightning,
checkpoints or logging, so that the evaluation can run it per image.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from hrstyle.errors import UserError
from hrstyle.losses import ContentStyleLoss
from hrstyle.models import HRNet
from hrstyle.optimization.gatys import LOSS_KEYS, OptimizationResult, check_arguments


def fit_generator(
    content: torch.Tensor,
    loss: ContentStyleLoss,
    steps: int = 500,
    lr: float = 5e-3,
    step_size: int = 200,
    gamma: float = 0.9,
    generator_config: dict[str, Any] | None = None,
    seed: int | None = 0,
    log_every: int = 50,
    progress: bool = True,
) -> OptimizationResult:
    """Fit a fresh ``HRNet(**generator_config)`` to one photo; return its output on that photo.

    Args:
        content: the photo, (1, 3, H, W) in [0, 1]; moved to the loss network's device.
        loss: the training loss; ``loss.set_style(style)`` must already have been called.
        steps: Adam steps, >= 1 (the paper: 5000, ``experiment=paper``).
        lr, step_size, gamma: Adam's learning rate and the StepLR schedule, stepped every
            step (the paper's values, as in ``configs/train.yaml``).
        generator_config: ``HRNet`` arguments (``width``, ``padding_mode``); None: the defaults.
        seed: seeds the generator's initialization (the global RNG state is restored
            afterwards); None: not seeded.
        log_every: record the losses (and print a progress line to stderr with ``progress``)
            every N steps; <= 0: only the first and last.

    Returns:
        An ``OptimizationResult`` like ``optimize_image``'s: ``image`` (1, 3, H, W) float32 in
        [0, 1] on the loss's device (the fitted generator's output on the photo), ``history``
        ``(step, {"loss", "content_loss", "style_loss", "tv_loss"})`` pairs where step 0 scores
        the untrained generator and ``history[-1]`` (step ``steps``) the returned image,
        ``seconds`` the whole fit.
    """
    check_arguments(content, steps, lr)

    start = time.perf_counter()
    device = loss.encoder.mean.device
    content = content.detach().to(device=device, dtype=torch.float32).clamp(0, 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        generator = HRNet(**(generator_config or {})).to(device)
    generator.train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    history: list[tuple[int, dict[str, float]]] = []

    def record(step: int, terms: dict[str, torch.Tensor]) -> None:
        values = {k: float(terms[k].detach()) for k in LOSS_KEYS}
        history.append((step, values))
        if progress:
            print(f"paper step {step:>{len(str(steps))}}/{steps}  loss {values['loss']:.4g}  "
                  f"(content {values['content_loss']:.4g}, style {values['style_loss']:.4g})  "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    with torch.enable_grad():
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            terms = loss(generator(content), content)
            if not torch.isfinite(terms["loss"]):
                raise UserError(f"the loss became {float(terms['loss'])} at step {step} (lr={lr:g}); try a smaller lr")
            if step == 0 or (log_every > 0 and step % log_every == 0):
                record(step, terms)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
    generator.eval()
    with torch.no_grad():
        image = generator(content).float().clamp(0, 1)
        record(steps, loss(image, content))
    return OptimizationResult(image=image.detach(), history=history, seconds=time.perf_counter() - start)
