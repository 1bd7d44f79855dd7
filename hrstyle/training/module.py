"""The LightningModule that fits one style: generator + frozen loss network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torchvision
from torch import nn

from hrstyle.checkpoint import CHECKPOINT_KEY, style_color_entry
from hrstyle.errors import UserError
from hrstyle.evaluation.metrics import StyleMetrics, lightness_gap
from hrstyle.evaluation.regional import load_label_map, regional_color_distance
from hrstyle.image.color import color_statistics, recommended_color_match
from hrstyle.image.io import DEFAULT_MAX_PIXELS, load_image
from hrstyle.losses import ContentStyleLoss
from hrstyle.models.color import GlobalColorTransfer
from hrstyle.paths import user_path

#: Long side of the ``regional`` photo at validation (the evaluation's default size).
REGIONAL_SIZE = 384


class StyleTransferModule(pl.LightningModule):
    """Trains ``generator`` so that its output keeps the content of the input photo and
    takes the style (Gram statistics) of one style image.

    Args:
        generator: the network to train, e.g. ``hrstyle.models.HRNet``.
        loss: a ``ContentStyleLoss``; its style targets are computed here, once.
        style_image: path to the style image.
        style_size: the style image is resized so its long side is this many pixels
            (the scale of the brush strokes the generator learns).
        optimizer, scheduler: partially-applied constructors (Hydra ``_partial_: true``):
            ``optimizer(params)``, ``scheduler(optimizer)`` stepped every training step.
        style_name: a label stored in checkpoints.
        preview_every: log a content|stylized preview grid every N training steps.
        val_metrics: also log the evaluation's quality metrics on the validation photos
            (``val/edge_ssim``, ``val/gram``, ``val/photorealism``, ``val/ssim``; see
            ``hrstyle.evaluation``), measured by the same loss network: a run that collapses
            into flat fields or stripes shows it in these curves within minutes, where the
            loss alone does not.
        guided_radius: the photorealism control this style should get at inference by
            default (``hrstyle.image.guided``; 0 = none), stored in checkpoints.
        color_match: likewise, the strength of the match to the style's colour statistics at
            inference (``hrstyle.image.color.match_color``; 0 = none). The statistics
            themselves (taken from the style image as loaded here) are stored too.
        color_bands: likewise, the colour match's bands (1 = one global map, K > 1 = the
            graduated match, ``hrstyle.image.color.match_color_banded``). ``"auto"`` for either:
            ``recommended_color_match`` of the style image (the graduated match at full strength
            for a style with a sky-above-ground layout, none otherwise).
        max_pixels: a larger style image is refused (see ``hrstyle.image.io.open_rgb``).
        regional: optional ``{"content", "content_mask", "style_mask"}`` paths: a segmented photo
            (never trained on, ideally) and label maps of it and of the style image. Validation then
            also logs ``val/regional``, the evaluation's regional colour distance of the network's
            output for that photo (``hrstyle.evaluation.regional``): whether each region moves towards
            the matching region of the style. Masks are only measured, never trained on.
    """

    def __init__(
        self,
        generator: nn.Module,
        loss: ContentStyleLoss,
        style_image: str,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        style_size: int = 512,
        style_name: str = "style",
        preview_every: int = 100,
        val_metrics: bool = True,
        guided_radius: int = 0,
        color_match: float | str = 0.0,
        color_bands: int | str = 1,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        regional: dict[str, str | None] | None = None,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.loss_fn = loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.style_name, self.preview_every = style_name, preview_every
        self.guided_radius = int(guided_radius)
        if color_match != "auto" and (isinstance(color_match, (bool, str)) or not 0.0 <= color_match <= 1.0):
            raise UserError(f"style.color_match must be in [0, 1] or auto, got {color_match!r}")
        if color_bands != "auto" and (isinstance(color_bands, bool) or not isinstance(color_bands, int) or color_bands < 1):
            raise UserError(f"style.color_bands must be an integer >= 1 or auto, got {color_bands!r}")
        self.style_path = str(style_image)
        if not user_path(style_image).is_file():
            raise UserError(f"style image not found: {style_image} (set style.image=/path/to/style.jpg)")
        # Style Gram targets: computed once here, then non-persistent buffers of loss_fn.
        self.style = load_image(user_path(style_image), max_size=style_size, max_pixels=max_pixels).unsqueeze(0)
        self.loss_fn.set_style(self.style)
        self.color_bands = recommended_color_match(self.style)[1] if color_bands == "auto" else int(color_bands)
        self.color_match = (1.0 if self.color_bands > 1 else 0.0) if color_match == "auto" else float(color_match)
        color = getattr(generator, "color", None)
        if isinstance(color, GlobalColorTransfer):  # the colour branch starts at the style's statistics
            color.set_target(*color_statistics(self.style))  # the ones the checkpoint stores for the colour match
        self._preview_batch: torch.Tensor | None = None
        self.metrics: StyleMetrics | None = None
        if val_metrics:
            encoder = self.loss_fn.encoder
            self.metrics = StyleMetrics(encoder.arch, encoder.weights, self.loss_fn.content_layer)
            self.metrics.set_style(self.style)
        self.regional = self._load_regional(regional or {}, max_pixels)

    def _load_regional(self, paths: dict[str, str | None], max_pixels: int | None) -> tuple | None:
        """(photo (1, 3, H, W), its labels, the style's labels) when all three paths are given."""
        given = {k: paths.get(k) for k in ("content", "content_mask", "style_mask")}
        if not any(given.values()):
            return None
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise UserError(f"regional needs content, content_mask and style_mask; missing: {', '.join(missing)}")
        for key, value in given.items():
            if not user_path(str(value)).is_file():
                raise UserError(f"regional.{key} not found: {value}")
        photo = load_image(user_path(str(given["content"])), max_size=REGIONAL_SIZE, max_pixels=max_pixels)
        return (photo.unsqueeze(0), load_label_map(user_path(str(given["content_mask"]))),
                load_label_map(user_path(str(given["style_mask"]))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)

    def _losses(self, content: torch.Tensor, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        output = self.generator(content)
        return self.loss_fn(output, content, seed=seed), output

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # The step seeds the loss's random projections: a resumed run draws the same ones.
        losses, _ = self._losses(batch, seed=self.global_step)
        if not torch.isfinite(losses["loss"]):
            self._diverged("the loss is " + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False, batch_size=batch.shape[0])
        self.log("loss", losses["loss"], prog_bar=True, logger=False, batch_size=batch.shape[0])
        if self.preview_every > 0 and self.global_step % self.preview_every == 0:
            self._log_preview()
        return losses["loss"]

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        losses, output = self._losses(batch, seed=batch_idx)  # the same projections at every validation
        if self.metrics is not None:
            quality = self.metrics(output.float(), batch.float())
            losses.update({k: v.mean() for k, v in quality.items() if k != "content"})
            losses["lightness"] = lightness_gap(output.float(), self.style).mean()  # < 0: darker than the style
        if self.regional is not None and batch_idx == 0:
            photo, content_labels, style_labels = self.regional
            regional_output = self.generator(photo.to(self.device)).float().cpu()
            losses["regional"] = torch.tensor(regional_color_distance(regional_output, self.style, content_labels,
                                                                      style_labels), device=self.device)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=batch.shape[0], sync_dist=True)
        if batch_idx == 0:
            self._preview_batch = batch[:8].detach().cpu()

    def on_train_start(self) -> None:
        if self._preview_batch is None:  # no sanity-check validation ran: fetch the preview images
            self._preview_batch = next(iter(self.trainer.datamodule.val_dataloader()))[:8]

    def on_train_end(self) -> None:
        self._log_preview()  # the final state, whatever preview_every is

    @torch.no_grad()
    def _log_preview(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self._preview_batch is None or not hasattr(experiment, "add_image") or not self.trainer.is_global_zero:
            return
        was_training = self.generator.training
        self.generator.eval()
        content = self._preview_batch.to(self.device)
        stylized = self.generator(content).float()
        self.generator.train(was_training)
        # One row per image: content | stylized.
        pairs = torch.stack((content.float(), stylized), dim=1).flatten(0, 1)
        grid = torchvision.utils.make_grid(pairs.clamp(0, 1), nrow=2, padding=2, pad_value=1.0)
        experiment.add_image("preview/content_stylized", grid, self.global_step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # A finite loss can still have an infinite gradient; one such step ruins the weights.
        grads = [p.grad for p in self.generator.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.float().norm() for g in grads]).sum()):
            self._diverged("the gradient is not finite")

    def _diverged(self, what: str) -> None:
        """Stop before a NaN/Inf update reaches the weights (or a checkpoint)."""
        callback = self.trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        keep = (f"The last good checkpoint is {last}; resume from it with ckpt_path={last} after changing "
                if last else "No checkpoint was written yet; restart with ")
        raise UserError(
            f"training diverged at step {self.global_step}: {what}. {keep}a lower optimizer.lr "
            "or gradient clipping (trainer.gradient_clip_val=1.0)."
        )

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.generator.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything inference needs: how to rebuild the generator. The loss network's
        # weights are non-persistent buffers, so the state_dict holds only the generator.
        checkpoint[CHECKPOINT_KEY] = {
            "generator_class": f"{type(self.generator).__module__}.{type(self.generator).__qualname__}",
            "generator_config": dict(getattr(self.generator, "config", {})),
            "style_name": self.style_name,
            "style_image": self.style_path,
            "guided_radius": self.guided_radius,
            "color_match": self.color_match,
            "color_bands": self.color_bands,
            "style_color": style_color_entry(self.style),
        }
