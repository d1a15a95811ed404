"""Log pictures of the model's predictions during validation: W&B images with boxes and masks,
or PNG panels.

The callback is task-agnostic. It asks the LightningModule for the first images of a
validation batch in one of two forms and only decides when to ask and where they go:

* ``prediction_samples(batch) -> list[PredictionSample]``: the image, its ground truth and
  the predictions as data (boxes with labels and scores, or class masks) and the class names.
  With a :class:`~pytorch_lightning.loggers.WandbLogger` they become
  ``wandb.Image(image, boxes=..., masks=...)`` with class labels, which W&B shows with
  toggles per class, per set (ground truth / predictions) and a score slider.
* ``prediction_images(batch) -> list[tuple[str, np.ndarray]]``: caption and an
  ``uint8[H, W, 3]`` picture (the ground truth beside the predictions), written as PNG files
  when the run has no W&B logger (CSV-only runs), or logged as plain images to W&B by a module
  without ``prediction_samples``.

Detection and segmentation provide both
(:meth:`~dck_lightning.tasks.detection.DetectionTask.prediction_samples`, …).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from ..visualization import to_display

__all__ = [
    "BoxSet",
    "PredictionImageLogger",
    "PredictionSample",
    "datamodule_statistics",
    "display_images",
    "take_first",
    "wandb_boxes",
    "wandb_masks",
]


@dataclass
class BoxSet:
    """Boxes on a :class:`PredictionSample`'s image.

    Attributes:
        boxes: ``float[N, 4]`` ``xyxy`` pixels of the image.
        labels: ``int[N]`` class indices.
        scores: ``float[N]`` confidences (predictions), or ``None`` (ground truth).
        notes: ``N`` short texts added to the box captions (e.g. ``"difficult"``), or ``None``.
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: Optional[np.ndarray] = None
    notes: Optional[list[str]] = None


@dataclass
class PredictionSample:
    """One image with its ground truth and the model's predictions, for the loggers.

    Attributes:
        image: ``uint8[H, W, 3]``, as a person sees it (un-normalised).
        caption: one line about the image.
        class_names: the name of each class index.
        boxes: ``{"ground_truth": BoxSet, "predictions": BoxSet}`` (detection).
        masks: ``{"ground_truth": int[H, W], "predictions": int[H, W]}`` class maps
            (segmentation); ``ignore_index`` marks pixels without a class.
        ignore_index: the mask value of ignored pixels, or ``None``.
    """

    image: np.ndarray
    caption: str
    class_names: list[str]
    boxes: dict[str, BoxSet] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    ignore_index: Optional[int] = None


def datamodule_statistics(module: pl.LightningModule) -> tuple[Sequence[float], Sequence[float]]:
    """The ``mean`` and ``std`` the module's DataModule normalises with (empty when unknown)."""
    trainer = module._trainer
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    return tuple(mean or ()), tuple(std or ())


def display_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``float[B, C, H, W]`` -> ``uint8[B, H, W, 3]``: :func:`~dck_lightning.visualization.to_display`
    as arrays in the ``H, W, C`` order W&B and PIL take."""
    return to_display(images, mean, std).permute(0, 2, 3, 1).contiguous().numpy()


def _class_labels(names: Sequence[str], ignore_index: Optional[int] = None) -> dict[int, str]:
    labels = {index: str(name) for index, name in enumerate(names)}
    if ignore_index is not None:
        labels[int(ignore_index)] = "ignore"
    return labels


def wandb_boxes(sample: PredictionSample) -> dict[str, dict[str, Any]]:
    """The sample's boxes in ``wandb.Image(boxes=...)`` form: one box set per key, pixel
    positions, class ids with the class names, scores on predictions."""
    out = {}
    for key, box_set in sample.boxes.items():
        data = []
        for index, (box, label) in enumerate(zip(box_set.boxes.tolist(), box_set.labels.tolist())):
            name = sample.class_names[label] if 0 <= label < len(sample.class_names) else str(label)
            entry: dict[str, Any] = {
                "position": {"minX": box[0], "minY": box[1], "maxX": box[2], "maxY": box[3]},
                "domain": "pixel",
                "class_id": int(label),
                "box_caption": name,
            }
            if box_set.scores is not None:
                score = float(box_set.scores[index])
                entry["scores"] = {"score": score}
                entry["box_caption"] = f"{name} {score:.2f}"
            if box_set.notes is not None and box_set.notes[index]:
                entry["box_caption"] += f" ({box_set.notes[index]})"
            data.append(entry)
        out[key] = {"box_data": data, "class_labels": _class_labels(sample.class_names)}
    return out


def wandb_masks(sample: PredictionSample) -> dict[str, dict[str, Any]]:
    """The sample's class maps in ``wandb.Image(masks=...)`` form, with the class names."""
    labels = _class_labels(sample.class_names, sample.ignore_index)
    return {
        key: {"mask_data": np.asarray(mask).astype(np.int64), "class_labels": labels}
        for key, mask in sample.masks.items()
    }


def take_first(batch: Any, n: int) -> Any:
    """The first ``n`` samples of a batch.

    The top-level tuple, list or dict is the batch's structure (``(images, targets)``), cut
    element-wise; below it, tensors are cut along their first dimension and lists (one item
    per sample, e.g. target dicts) to their first ``n`` items.
    """

    def cut(item: Any) -> Any:
        if isinstance(item, (torch.Tensor, list, tuple)):
            return item[:n]
        return item

    if isinstance(batch, (tuple, list)):
        return type(batch)(cut(item) for item in batch)
    if isinstance(batch, dict):
        return {key: cut(value) for key, value in batch.items()}
    return cut(batch)


class PredictionImageLogger(Callback):
    """Every ``every_n_epochs`` epochs, show the predictions on the first validation batch.

    On the first validation batch of every ``every_n_epochs``-th epoch (epochs counted from 1,
    like ``check_val_every_n_epoch``; never during the sanity check), on global rank 0 only,
    for the first ``max_images`` samples:

    - with a :class:`~pytorch_lightning.loggers.WandbLogger` and a module that has
      ``prediction_samples``: ``WandbLogger.log_image`` under ``key`` with, per image,
      ``boxes={"ground_truth": …, "predictions": …}`` or ``masks={…}`` and the class labels;
      a module with only ``prediction_images`` logs its pictures;
    - without W&B: ``pl_module.prediction_images(batch)`` pictures written to
      ``<trainer.log_dir>/images/epoch_<epoch:03d>_step_<step:07d>_<n:02d>.png``
      (``epoch_004_step_0001280_00.png``), with ``<file name>\\t<caption>`` lines appended to
      ``images/captions.tsv``.

    The module's methods run in eval mode under ``no_grad`` (validation), on rank 0 only — no
    collective operations may happen inside them.

    Args:
        every_n_epochs (int): log every N epochs. Default: 1.
        max_images (int): at most this many images per log. Default: 8.
        key (str): the W&B key. Default: ``"val/predictions"``.
    """

    _log_dir = None  # set in setup()

    def __init__(
        self, every_n_epochs: int = 1, max_images: int = 8, key: str = "val/predictions"
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.key = key
        self._warned = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # ``trainer.log_dir`` is a collective under DDP: read it here, on every rank, not
        # later on rank 0 only (that would hang the other ranks).
        self._log_dir = trainer.log_dir

    def should_log(self, trainer: pl.Trainer, batch_idx: int, dataloader_idx: int) -> bool:
        return (
            batch_idx == 0
            and dataloader_idx == 0
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            and trainer.is_global_zero
        )

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.should_log(trainer, batch_idx, dataloader_idx):
            return
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        first = take_first(batch, self.max_images)
        with torch.no_grad():
            if wandb_loggers and hasattr(pl_module, "prediction_samples"):
                samples = list(pl_module.prediction_samples(first))[: self.max_images]
                if samples:
                    self.log_samples(trainer, wandb_loggers, samples)
                return
            draw = getattr(pl_module, "prediction_images", None)
            if draw is None:
                if not self._warned:
                    rank_zero_warn(
                        f"PredictionImageLogger: {type(pl_module).__name__} has neither "
                        "prediction_samples(batch) nor prediction_images(batch); nothing logged"
                    )
                    self._warned = True
                return
            panels = list(draw(first))[: self.max_images]
        if panels:
            self.log_images(trainer, panels)

    def log_samples(
        self, trainer: pl.Trainer, loggers: list[WandbLogger], samples: list[PredictionSample]
    ) -> None:
        """``wandb.Image`` per sample with its boxes or masks and class labels."""
        kwargs: dict[str, list[Any]] = {"caption": [sample.caption for sample in samples]}
        if any(sample.boxes for sample in samples):
            kwargs["boxes"] = [wandb_boxes(sample) for sample in samples]
        if any(sample.masks for sample in samples):
            kwargs["masks"] = [wandb_masks(sample) for sample in samples]
        images = [np.ascontiguousarray(sample.image) for sample in samples]
        for logger in loggers:
            logger.log_image(key=self.key, images=images, step=trainer.global_step, **kwargs)

    def log_images(self, trainer: pl.Trainer, panels: list[tuple[str, np.ndarray]]) -> None:
        """Send ``[(caption, uint8[H, W, 3])]`` to the W&B loggers, or write PNGs when there is none."""
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        captions = [caption for caption, _ in panels]
        images = [np.ascontiguousarray(image) for _, image in panels]
        if wandb_loggers:
            for logger in wandb_loggers:
                logger.log_image(
                    key=self.key, images=images, caption=captions, step=trainer.global_step
                )
            return
        folder = Path(self._log_dir or trainer.default_root_dir) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"epoch_{trainer.current_epoch:03d}_step_{trainer.global_step:07d}"
        lines = []
        for index, (caption, image) in enumerate(zip(captions, images)):
            filename = f"{prefix}_{index:02d}.png"
            Image.fromarray(image).save(folder / filename)
            lines.append(f"{filename}\t{' '.join(caption.split())}\n")
        with open(folder / "captions.tsv", "a", encoding="utf-8") as handle:
            handle.writelines(lines)
