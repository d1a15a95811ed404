"""Watch the DCK layers learn: receptive-field extents as scalars, offset fields as pictures.

Every ``every_n_epochs`` training epochs (counted from 1) the callback

- logs ``kernels/<layer>/sigma_y``, ``kernels/<layer>/sigma_x`` (``σ`` in taps, the mean over
  channels when the extent is per channel) and ``kernels/<layer>/size`` (the effective kernel
  size that runs after cropping) for every :class:`~dck_lightning.layers.DynamicConv2d`,
  through ``pl_module.log`` — so they reach every logger (W&B, and ``metrics.csv`` where
  :func:`~dck_lightning.analysis.load_history` finds them);
- on global rank 0 renders the receptive fields (:func:`~dck_lightning.analysis.plot_receptive_fields`)
  and the centre shifts/scales and deformable offsets over the first image of the epoch's
  first validation batch (:func:`~dck_lightning.analysis.plot_position_fields`; the first
  training batch when there is no validation) and logs them as W&B images
  (``kernels/receptive_fields``, ``kernels/offsets``) when a
  :class:`~pytorch_lightning.loggers.WandbLogger` is attached, or writes
  ``<trainer.log_dir>/kernels/epoch_<epoch:03d>_{receptive_fields,offsets}.png`` otherwise
  (``epoch_004_offsets.png``).

Rendering runs the model on one image in eval mode under ``no_grad``, on rank 0 only (no
collective operations happen there). A model without DCK or deformable layers logs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

__all__ = ["KernelVisualizationCallback"]


def first_image(batch: Any) -> Tensor | None:
    """The first image ``[1, C, H, W]`` of a batch (``(images, targets)``, a dict or a tensor)."""
    if isinstance(batch, Tensor):
        return batch[:1].detach() if batch.dim() == 4 else None
    items = (
        batch.values()
        if isinstance(batch, dict)
        else batch
        if isinstance(batch, (tuple, list))
        else ()
    )
    for item in items:
        if isinstance(item, Tensor) and item.dim() == 4:
            return item[:1].detach()
    return None


class KernelVisualizationCallback(Callback):
    """Log DCK extents (scalars) and offset fields (pictures) every ``every_n_epochs`` epochs.

    Args:
        every_n_epochs (int): log after every N-th training epoch. Default: 1.
        images (bool): also render the pictures (scalars only when ``False``). Default: ``True``.
        exaggerate (float): multiply the drawn shift/offset arrows (early in training shifts
            are a fraction of a pixel). Default: 1.
        max_layers (int): at most this many layers per picture. Default: 8.

    Example (config)::

        trainer:
          callbacks:
            - class_path: dck_lightning.callbacks.kernel_visualization.KernelVisualizationCallback
              init_args: {every_n_epochs: 5}
    """

    _log_dir = None  # set in setup()

    def __init__(
        self,
        every_n_epochs: int = 1,
        images: bool = True,
        exaggerate: float = 1.0,
        max_layers: int = 8,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.images = images
        self.exaggerate = exaggerate
        self.max_layers = max_layers
        self._image: Tensor | None = None
        self._warned = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # ``trainer.log_dir`` is a collective under DDP: read it here, on every rank, not
        # later on rank 0 only (that would hang the other ranks).
        self._log_dir = trainer.log_dir

    def _due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # -- remember one input image ------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._image = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx == 0 and self._image is None and self.images and trainer.is_global_zero:
            self._image = first_image(batch)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Validation images are not augmented: prefer them over the training image.
        if (
            batch_idx == 0
            and dataloader_idx == 0
            and not trainer.sanity_checking
            and self.images
            and trainer.is_global_zero
        ):
            image = first_image(batch)
            if image is not None:
                self._image = image

    # -- log ----------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer):
            return
        from ..analysis import dck_layers, deform_layers

        layers = dck_layers(pl_module)
        for name, layer in layers.items():
            sigma = layer.sigma.detach().float()
            pl_module.log(f"kernels/{name}/sigma_y", float(sigma[:, 0].mean()), on_epoch=True)
            pl_module.log(f"kernels/{name}/sigma_x", float(sigma[:, 1].mean()), on_epoch=True)
            pl_module.log(
                f"kernels/{name}/size", float(layer.effective_kernel_size[0]), on_epoch=True
            )
        if not self.images or not trainer.is_global_zero:
            return
        if not layers and not deform_layers(pl_module):
            if not self._warned:
                network = type(getattr(pl_module, "model", pl_module)).__name__
                rank_zero_warn(
                    f"KernelVisualizationCallback: {network} has no DCK or deformable layers; nothing to draw"
                )
                self._warned = True
            return
        self.log_pictures(trainer, pl_module)

    def render(self, pl_module: pl.LightningModule, datamodule: Any = None) -> dict[str, Any]:
        """``{"receptive_fields": uint8[H, W, 3], "offsets": uint8[H, W, 3]}`` (offsets only with an image)."""
        import matplotlib.pyplot as plt

        from ..analysis import figure_to_array, plot_position_fields, plot_receptive_fields

        pictures = {}
        figures = [
            ("receptive_fields", plot_receptive_fields(pl_module, max_layers=self.max_layers))
        ]
        if self._image is not None:
            image = self._image.to(pl_module.device)
            with torch.no_grad():
                figures.append(
                    (
                        "offsets",
                        plot_position_fields(
                            pl_module,
                            image,
                            datamodule,
                            max_layers=self.max_layers,
                            exaggerate=self.exaggerate,
                        ),
                    )
                )
        for key, fig in figures:
            try:
                pictures[key] = figure_to_array(fig)
            finally:
                plt.close(fig)
        return pictures

    def log_pictures(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pictures = self.render(pl_module, getattr(trainer, "datamodule", None))
        epoch = trainer.current_epoch
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            for logger in wandb_loggers:
                for key, picture in pictures.items():
                    logger.log_image(
                        key=f"kernels/{key}",
                        images=[picture],
                        caption=[f"epoch {epoch}"],
                        step=trainer.global_step,
                    )
            return
        from PIL import Image

        folder = Path(self._log_dir or trainer.default_root_dir) / "kernels"
        folder.mkdir(parents=True, exist_ok=True)
        for key, picture in pictures.items():
            Image.fromarray(picture).save(folder / f"epoch_{epoch:03d}_{key}.png")
