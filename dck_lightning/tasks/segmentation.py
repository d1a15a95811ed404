"""Semantic segmentation: cross-entropy (+ auxiliary head, + soft Dice), mIoU and pixel accuracy.

Batches follow :mod:`dck_lightning.data`: ``(images, targets)`` with ``images``
``float32[B, C, H, W]`` and ``targets`` a list of dicts holding ``mask`` ``int64[H, W]``
(``ignore_index`` = 255 on pixels that do not count), ``orig_size`` ``int64[2]`` (H, W of the
image before resizing) and ``image_id``.

Metrics (torchmetrics, one object per stage, ``update`` per step, ``compute`` per epoch):

- ``miou``: ``MulticlassJaccardIndex(average="macro", ignore_index=255)`` over the confusion
  matrix accumulated over the whole epoch (dataset-level IoU, as the VOC devkit computes it).
  Ignored pixels are dropped before counting. A class that never appears — neither in the
  targets nor in the predictions of the epoch — has no IoU (0/0) and is left out of the mean
  (torchmetrics gives it weight 0); a class predicted but absent from the targets has IoU 0
  and counts. The VOC devkit also computes each class's IoU from the dataset-wide counts, and
  every class is present in VOC val, so there the convention does not matter; on small or
  synthetic splits it is mmsegmentation's ``nanmean`` rather than scoring a missing class 0
  (which would cap mIoU below 1) or 1 (which would inflate it).
- ``pixel_acc``: ``MulticlassAccuracy(average="micro", ignore_index=255)``.
- at test time, the IoU of every class, logged as ``test/iou/<class name>`` (NaN for a class
  absent from targets and predictions).
- by object size, ``val/iou_small``, ``val/iou_medium``, ``val/iou_large`` (and ``test/…``):
  the mean IoU of the ground-truth instances (the targets' ``instances`` ids when every target
  has them, else the connected components of each class) whose area falls in COCO's size
  bucket, or in that bucket scaled to the image size with ``area_reference_size``
  (:class:`~dck_lightning.metrics.InstanceSizeIoU`); a bucket without instances is not logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..callbacks.image_logging import PredictionSample, datamodule_statistics, display_images
from ..metrics import InstanceSizeIoU
from ..models.registry import BackboneFactory, build_backbone
from ..models.segmentation import HEADS, create_segmentation_model
from ..visualization import (
    IGNORE_COLOUR,
    class_colour,
    class_name,
    draw_class_map,
    drawn_classes,
    enlarge,
    titled_row,
)
from .base import BaseTask

#: The plain ResNet-18, every argument at its default.
DEFAULT_BACKBONE = {"class_path": "dck_lightning.models.resnet18"}

IGNORE_INDEX = 255

SegmentationBatch = tuple[Tensor, list[dict[str, Any]]]


def soft_dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0
) -> Tensor:
    """Multi-class soft Dice loss, ``1 − mean_c (2 |P_c ∩ T_c| + s) / (|P_c| + |T_c| + s)``.

    ``P`` are the softmax probabilities, ``T`` the one-hot targets; sums run over the batch and
    all pixels whose target is not ``ignore_index``. The smoothing ``s`` makes a class absent
    from both the targets and the predictions score 1 (no penalty). torchmetrics'
    ``DiceScore``/``dice_score`` are metrics (documented non-differentiable, no
    ``ignore_index``), and torchvision has no Dice loss, hence these few lines.

    Args:
        logits: ``Tensor[B, C, H, W]``.
        target: ``int64[B, H, W]``, class ids or ``ignore_index``.
    """
    num_classes = logits.shape[1]
    valid = target != ignore_index
    probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)
    one_hot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2)
    one_hot = one_hot.to(probs.dtype) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2.0 * intersection + smooth) / (cardinality + smooth)).mean()


class SegmentationTask(BaseTask):
    """Semantic segmentation with a backbone preset + ``"fpn"`` or ``"deeplabv3"`` head.

    Args:
        head (str): ``"fpn"`` (Panoptic-FPN semantic head) or ``"deeplabv3"`` (ASPP), see
            :mod:`dck_lightning.models.segmentation`.
        backbone (BackboneFactory): a backbone preset and its arguments (``dcb_resnet18``,
            ``resnet18``…, see :mod:`dck_lightning.models.registry`). Default: ``resnet18``.
        head_kwargs (dict, optional): further :class:`~dck_lightning.models.segmentation.SegmentationModel`
            arguments: ``fpn_channels``, ``channels``, ``norm``, ``feature``, ``atrous_rates``.
        aux_loss (bool): add torchvision's ``FCNHead`` on ``c4`` and its cross-entropy.
        aux_weight (float): weight of the auxiliary loss. Default: 0.4 (torchvision's reference).
        dice_weight (float): weight of a soft Dice term added to the cross-entropy (0: off).
        num_classes, in_channels: linked from the DataModule by the CLI (background included).
        ignore_index (int): target value of pixels left out of loss and metrics. Default: 255.
        class_names (list[str], optional): names for per-class metrics and image legends
            (default: the DataModule's).
        area_reference_size (int, optional): the image side COCO's size buckets are meant for:
            ``iou_small`` / ``iou_medium`` / ``iou_large`` split instances at ``(32·s)²`` and
            ``(96·s)²`` pixels with ``s = √(H·W) / area_reference_size`` of the evaluated masks
            (512: on 128×128 masks small is under 8² px², large over 24²). Default: COCO's
            ``32²`` / ``96²`` as they are.
        **shared: :class:`BaseTask`'s (``backbone_weights``, optimiser, schedule, ``compile``).
    """

    monitor = "val/miou"
    mode = "max"

    def __init__(
        self,
        head: Literal["fpn", "deeplabv3"] = "fpn",
        backbone: BackboneFactory = DEFAULT_BACKBONE,
        head_kwargs: Optional[dict[str, Any]] = None,
        aux_loss: bool = False,
        aux_weight: float = 0.4,
        dice_weight: float = 0.0,
        num_classes: int = 21,
        in_channels: int = 3,
        ignore_index: int = IGNORE_INDEX,
        class_names: Optional[list[str]] = None,
        area_reference_size: Optional[int] = None,
        **shared: Any,
    ) -> None:
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if aux_weight < 0 or dice_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got aux_weight={aux_weight}, dice_weight={dice_weight}"
            )
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, backbone=backbone, **shared
        )

    # -- model, loss, metrics ----------------------------------------------------------------
    def configure_models(self) -> None:
        hp = self.hparams
        self.model = create_segmentation_model(
            build_backbone(hp.backbone, hp.in_channels),
            hp.head,
            hp.num_classes,
            aux=hp.aux_loss,
            head_kwargs=hp.head_kwargs,
        )

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(
            ignore_index=self.hparams.ignore_index, reduction="sum"
        )

    def configure_metrics(self) -> None:
        n, ignore = self.hparams.num_classes, self.hparams.ignore_index

        def collection(prefix: str, validate_args: bool = True) -> MetricCollection:
            metrics = {
                "miou": MulticlassJaccardIndex(
                    n, average="macro", ignore_index=ignore, validate_args=validate_args
                ),
                "pixel_acc": MulticlassAccuracy(
                    n, average="micro", ignore_index=ignore, validate_args=validate_args
                ),
            }
            return MetricCollection(metrics, prefix=prefix)

        # Training batches skip torchmetrics' input checks: they sort every mask (25 ms of a
        # 0.3 s step at 128x128, batch 8), and the DataModules already reject class ids
        # outside 0..C-1 and the ignore value; validation and test keep them.
        self.train_metrics = collection("train/", validate_args=False)
        self.val_metrics = collection("val/")
        self.test_metrics = collection("test/")
        # NaN (not 0) for a class absent from both targets and predictions.
        self.test_per_class = MulticlassJaccardIndex(
            n, average=None, ignore_index=ignore, zero_division=float("nan")
        )
        self.val_size_iou, self.test_size_iou = (
            InstanceSizeIoU(self.hparams.area_reference_size, ignore_index=ignore) for _ in range(2)
        )

    # -- steps -------------------------------------------------------------------------------
    @staticmethod
    def masks(targets: list[dict[str, Any]], device: torch.device) -> Tensor:
        """The targets' masks stacked: ``int64[B, H, W]``."""
        return torch.stack([t["mask"] for t in targets]).to(device=device, dtype=torch.long)

    def _cross_entropy(self, logits: Tensor, masks: Tensor) -> Tensor:
        # The mean over the non-ignored pixels, written as sum / count so that a batch whose
        # pixels are all ignored gives 0 instead of NaN, without a host-device sync.
        count = (masks != self.hparams.ignore_index).sum().clamp(min=1)
        return self.criterion(logits, masks) / count

    def compute_losses(self, outputs: dict[str, Tensor], masks: Tensor) -> dict[str, Tensor]:
        """``{"loss": total, "ce": ..., "aux": ..., "dice": ...}`` (terms that are on)."""
        hp = self.hparams
        losses = {"ce": self._cross_entropy(outputs["out"], masks)}
        total = losses["ce"]
        if "aux" in outputs:
            losses["aux"] = self._cross_entropy(outputs["aux"], masks)
            total = total + hp.aux_weight * losses["aux"]
        if hp.dice_weight > 0:
            losses["dice"] = soft_dice_loss(outputs["out"], masks, hp.ignore_index)
            total = total + hp.dice_weight * losses["dice"]
        losses["loss"] = total
        return losses

    def _shared_step(self, batch: SegmentationBatch, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        images, targets = batch
        masks = self.masks(targets, images.device)
        if masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"masks {tuple(masks.shape[-2:])} and images {tuple(images.shape[-2:])} differ in size"
            )
        outputs = self(images)
        losses = self.compute_losses(outputs, masks)
        train = stage == "train"
        batch_size = images.shape[0]
        self.log(
            f"{stage}/loss",
            losses["loss"],
            on_step=train,
            on_epoch=True,
            prog_bar=True,
            sync_dist=not train,
            batch_size=batch_size,
        )
        if len(losses) > 2:  # the terms, when there is more than one
            self.log_dict(
                {f"{stage}/loss_{k}": v for k, v in losses.items() if k != "loss"},
                on_step=False,
                on_epoch=True,
                sync_dist=not train,
                batch_size=batch_size,
            )
        return losses["loss"], outputs["out"].detach(), masks

    @staticmethod
    def update_metrics(
        metrics: Sequence[Metric], logits: Tensor, masks: Tensor, targets: list[dict[str, Any]]
    ) -> None:
        """Score the class maps of ``logits`` against the masks.

        When every target carries ``orig_mask`` (VOC evaluation), each image is scored at its
        original resolution: its logits resized bilinearly to the original size, then the
        argmax, as in :meth:`predict_step` — the VOC protocol. Otherwise the batch's (resized)
        ``masks`` are used, and :class:`~dck_lightning.metrics.InstanceSizeIoU` metrics get the
        targets' ``instances`` when every target has them.
        """
        if targets and all("orig_mask" in target for target in targets):
            for logit, target in zip(logits, targets):
                mask = target["orig_mask"].to(device=logit.device, dtype=torch.long)[None]
                if mask.shape[-2:] != logit.shape[-2:]:
                    logit = F.interpolate(
                        logit[None], size=mask.shape[-2:], mode="bilinear", align_corners=False
                    )[0]
                for metric in metrics:
                    metric.update(logit.argmax(dim=0)[None], mask)
            return
        preds = logits.argmax(dim=1)
        instances = None
        if targets and all("instances" in target for target in targets):
            instances = torch.stack([target["instances"] for target in targets])
        for metric in metrics:
            if isinstance(metric, InstanceSizeIoU):
                metric.update(preds, masks, instances)
            else:
                metric.update(preds, masks)

    def training_step(self, batch: SegmentationBatch, batch_idx: int) -> Tensor:
        loss, logits, masks = self._shared_step(batch, "train")
        self.update_metrics([self.train_metrics], logits, masks, batch[1])
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: SegmentationBatch, batch_idx: int) -> None:
        _, logits, masks = self._shared_step(batch, "val")
        self.update_metrics([self.val_metrics, self.val_size_iou], logits, masks, batch[1])
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)

    def test_step(self, batch: SegmentationBatch, batch_idx: int) -> None:
        _, logits, masks = self._shared_step(batch, "test")
        metrics = [self.test_metrics, self.test_per_class, self.test_size_iou]
        self.update_metrics(metrics, logits, masks, batch[1])
        self.log_dict(self.test_metrics, on_epoch=True)

    def _log_size_iou(self, metric: InstanceSizeIoU, stage: str) -> None:
        for bucket, value in metric.compute().items():
            if not torch.isnan(value):  # NaN: no instance of that size
                self.log(f"{stage}/iou_{bucket}", value)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_size_iou(self.val_size_iou, "val")

    def class_names(self) -> list[str]:
        names = self.hparams.class_names or getattr(
            getattr(self._trainer, "datamodule", None), "class_names", None
        )
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def on_test_epoch_end(self) -> None:
        #: ``Tensor[num_classes]`` IoU per class of the last test (NaN: class absent); for notebooks.
        self.per_class_iou = self.test_per_class.compute().cpu()
        for name, value in zip(self.class_names(), self.per_class_iou):
            self.log(f"test/iou/{name}", value)
        self.test_per_class.reset()
        self._log_size_iou(self.test_size_iou, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[Tensor]:
        """Class maps at each image's original size.

        Logits are resized bilinearly to ``orig_size`` (from the targets, when the batch is
        ``(images, targets)``; else the batch size) before the argmax. Returns a list of ``B``
        CPU tensors ``[H_i, W_i]``, ``uint8`` (``int64`` with more than 256 classes).
        """
        images, targets = (
            (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        )
        logits = self(images)["out"]
        dtype = torch.uint8 if self.hparams.num_classes <= 256 else torch.long
        maps = []
        for index, logit in enumerate(logits):
            size = tuple(logit.shape[-2:])
            if targets is not None and "orig_size" in targets[index]:
                size = tuple(int(s) for s in targets[index]["orig_size"])
            if size != tuple(logit.shape[-2:]):
                logit = F.interpolate(logit[None], size=size, mode="bilinear", align_corners=False)[
                    0
                ]
            maps.append(logit.argmax(dim=0).to(dtype).cpu())
        return maps

    # -- images for the loggers --------------------------------------------------------------
    @torch.no_grad()
    def prediction_samples(
        self, batch: SegmentationBatch, max_images: Optional[int] = None
    ) -> list[PredictionSample]:
        """Each image of ``batch`` with its ground-truth and predicted class maps, as data.

        Used by :class:`~dck_lightning.callbacks.image_logging.PredictionImageLogger`: on W&B
        they become ``wandb.Image(masks=...)`` with the class names (``ignore_index`` shown as
        ``ignore``). Images are un-normalised with the DataModule's ``mean``/``std``.

        Args:
            batch: a ``(images, targets)`` batch as the steps see it (normalised images).
            max_images: at most this many images (default: all).
        """
        images, targets = batch
        if max_images is not None:
            images, targets = images[:max_images], list(targets)[:max_images]
        was_training = self.training
        self.eval()
        try:
            predictions = self(images)["out"].argmax(dim=1).cpu()
        finally:
            self.train(was_training)
        pixels = display_images(images, *datamodule_statistics(self))
        names = self.class_names()
        samples = []
        for index, (image, prediction, target) in enumerate(zip(pixels, predictions, targets)):
            masks = {
                "ground_truth": target["mask"].cpu().numpy(),
                "predictions": prediction.numpy(),
            }
            caption = f"{target.get('image_id', index)}: image | ground truth | prediction"
            samples.append(
                PredictionSample(
                    image, caption, names, masks=masks, ignore_index=self.hparams.ignore_index
                )
            )
        return samples

    def prediction_images(
        self, batch: SegmentationBatch, max_images: Optional[int] = None
    ) -> list[tuple[str, np.ndarray]]:
        """Image | ground truth | prediction panels with a colour legend, one per image.

        The PNG form of :meth:`prediction_samples` (runs without W&B); masks are drawn with
        class colours, see :func:`render_segmentation_panel`.

        Returns:
            ``[(caption, uint8[H', W', 3]), ...]``, one per image.
        """
        return [
            (
                sample.caption,
                render_segmentation_panel(
                    torch.from_numpy(sample.image).permute(2, 0, 1),
                    torch.from_numpy(sample.masks["ground_truth"]).long(),
                    torch.from_numpy(sample.masks["predictions"]).long(),
                    sample.class_names,
                    self.hparams.ignore_index,
                ),
            )
            for sample in self.prediction_samples(batch, max_images)
        ]


# -- rendering ---------------------------------------------------------------------------------
def render_segmentation_panel(
    image: Tensor,
    target: Tensor,
    prediction: Tensor,
    class_names: list[str],
    ignore_index: int = IGNORE_INDEX,
    min_side: int = 160,
) -> np.ndarray:
    """``image | ground truth | prediction`` side by side with titles and a colour legend.

    Class maps are drawn with :func:`~dck_lightning.visualization.draw_class_map` (a class
    named ``"background"`` is not drawn, ignored pixels are). Small images are enlarged
    (nearest) so the shorter side is at least ``min_side`` pixels.

    Args:
        image: ``uint8[3, H, W]``.
        target, prediction: ``int64[H, W]`` class maps (``target`` may hold ``ignore_index``).
        class_names: name of each class id.

    Returns:
        ``uint8[H', W', 3]``.
    """
    image, _ = enlarge(image, min_side)
    maps = (target, prediction)
    views = [image, *(draw_class_map(image, m, class_names, ignore_index) for m in maps)]
    classes = set().union(*(drawn_classes(m, class_names, ignore_index) for m in maps))
    legend = [
        (class_name(class_names, c), class_colour(c)) for c in sorted(classes - {ignore_index})
    ]
    if ignore_index in classes:
        legend.append(("ignore", IGNORE_COLOUR))
    return titled_row(views, ("image", "ground truth", "prediction"), legend)


__all__ = ["SegmentationTask", "render_segmentation_panel", "soft_dice_loss"]
