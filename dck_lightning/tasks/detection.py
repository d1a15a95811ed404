"""Object detection: torchvision's FCOS, RetinaNet or Faster R-CNN over the shared backbone + FPN.

The detectors compute their own losses (in training mode) and detections (in eval mode); this
task logs every loss term and evaluates with ``torchmetrics``' COCO-style
:class:`~torchmetrics.detection.MeanAveragePrecision` (``faster_coco_eval`` backend), updated
in each step and computed once per epoch. Headline: ``val/map_50`` (AP at IoU 0.5, the VOC
metric), monitored for checkpoints; also ``val/map`` (AP@[.5:.95]), ``val/map_75``,
``val/mar_100``. Torchvision detectors give no loss in eval mode, so there is no ``val/loss``.

VOC's ``difficult`` objects are passed to the metric as ``iscrowd=1``: COCO evaluation then
neither counts them as ground truth to find nor counts detections on them as false positives,
which is what the VOC protocol asks. (COCO matches a detection to a crowd box by
intersection over the detection's area, slightly more lenient than VOC's IoU, and its AP is
101-point interpolated, VOC07's 11-point: numbers are close to, not identical with, the
official VOC devkit.) Boxes are evaluated in the network's input coordinates; IoU is
invariant to the per-axis resize, so this equals evaluating in original coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.utils import draw_bounding_boxes

from ..models.detection import create_detector
from ..models.registry import BackboneFactory, build_backbone
from .base import BaseTask

#: The plain ResNet-18, every argument at its default.
DEFAULT_BACKBONE = {"class_path": "dck_lightning.models.resnet18"}

__all__ = ["DetectionTask", "coco_map", "metric_targets"]

Batch = tuple[Tensor, list[dict[str, Any]]]

#: Distinct class colours (RGB) for the drawn boxes, cycled over class indices.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)


#: COCO's thresholds exactly as pycocotools builds them (float64). torchmetrics' defaults come
#: from a float32 ``torch.linspace`` (0.2 -> 0.20000000298...), which moves a recall or IoU that
#: lands exactly on a threshold (common: recall k/n) to the other side and shifts AP slightly.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_REC_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()


def coco_map(**kwargs: Any) -> MeanAveragePrecision:
    """COCO mAP (``faster_coco_eval`` backend) that reproduces pycocotools' numbers exactly."""
    kwargs.setdefault("iou_thresholds", COCO_IOU_THRESHOLDS)
    kwargs.setdefault("rec_thresholds", COCO_REC_THRESHOLDS)
    return MeanAveragePrecision(
        backend="faster_coco_eval", iou_type="bbox", box_format="xyxy", **kwargs
    )


def metric_targets(targets: Sequence[dict[str, Any]]) -> list[dict[str, Tensor]]:
    """Targets for :class:`MeanAveragePrecision`: ``difficult`` objects become ``iscrowd=1`` (ignored)."""
    out = []
    for target in targets:
        labels = target["labels"].long()
        difficult = target.get("difficult")
        iscrowd = (
            torch.zeros_like(labels)
            if difficult is None
            else difficult.to(labels.device, torch.long)
        )
        out.append(
            {"boxes": target["boxes"].float().reshape(-1, 4), "labels": labels, "iscrowd": iscrowd}
        )
    return out


class DetectionTask(BaseTask):
    """Detect objects with FCOS, RetinaNet or Faster R-CNN over a backbone preset + FPN.

    Batches are ``(images, targets)`` (see :mod:`dck_lightning.data`): images already resized
    and normalised, targets with ``boxes`` (xyxy pixels), 0-based ``labels``, ``difficult``,
    ``orig_size`` and ``image_id``. The detectors' own resize/normalisation is disabled and
    labels are shifted past the background slot inside the model
    (:class:`~dck_lightning.models.detection.Detector`), so everything outside sees 0-based
    labels.

    Args:
        detector (str): ``"fcos"`` (default), ``"retinanet"`` or ``"faster_rcnn"``.
        backbone (BackboneFactory): a backbone preset and its arguments (``dcb_resnet18``,
            ``resnet18``…, see :mod:`dck_lightning.models.registry`), e.g.
            ``{class_path: dcb_resnet18, init_args: {widths: [32, 64, 128, 256]}}``.
            Default: ``resnet18``.
        backbone_weights (str, optional): initialise the backbone from a checkpoint (of any
            task) or a torchvision ResNet state dict, see :class:`BaseTask`.
        fpn_levels (list[str], optional): backbone features fed to the FPN. Default:
            ``["c3", "c4", "c5"]`` (+ P6, P7) for FCOS/RetinaNet, ``["c2", …, "c5"]`` (+ pool)
            for Faster R-CNN.
        fpn_channels (int): FPN and head channels. Default: 256.
        anchor_scale (float, optional): anchor size per unit of stride; default the detector's
            (FCOS 1, RetinaNet 4, Faster R-CNN 8).
        head_convs (int): convs per FCOS/RetinaNet head tower. Default: 4.
        num_classes, in_channels: linked from the DataModule by the CLI (``num_classes``
            counts objects only, no background).
        score_thresh (float): minimum detection score. Default: 0.05.
        nms_thresh (float, optional): NMS IoU threshold; default the detector's own.
        detections_per_img (int): detections kept per image. Default: 100.
        class_names (list[str], optional): class names for per-class AP and drawn labels;
            default the DataModule's ``class_names``.
        optimizer, lr_scheduler, dynamic_lr_factor, lr_scheduler_interval: see :class:`BaseTask`.
    """

    monitor = "val/map_50"
    mode = "max"
    #: Detections drawn by :meth:`prediction_images` score at least this.
    display_score_thresh = 0.3
    #: :meth:`prediction_images` upscales (nearest) images smaller than this side, for legible labels.
    display_min_side = 256

    def __init__(
        self,
        detector: Literal["fcos", "retinanet", "faster_rcnn"] = "fcos",
        backbone: BackboneFactory = DEFAULT_BACKBONE,
        backbone_weights: Optional[str] = None,
        fpn_levels: Optional[list[str]] = None,
        fpn_channels: int = 256,
        anchor_scale: Optional[float] = None,
        head_convs: int = 4,
        num_classes: int = 20,
        in_channels: int = 3,
        score_thresh: float = 0.05,
        nms_thresh: Optional[float] = None,
        detections_per_img: int = 100,
        class_names: Optional[list[str]] = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        dynamic_lr_factor: float = 1.0,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            backbone=backbone,
            backbone_weights=backbone_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dynamic_lr_factor=dynamic_lr_factor,
            lr_scheduler_interval=lr_scheduler_interval,
        )

    def configure_models(self) -> None:
        h = self.hparams
        self.model = create_detector(
            h.detector,
            build_backbone(h.backbone, h.in_channels),
            num_classes=h.num_classes,
            fpn_levels=h.fpn_levels,
            fpn_channels=h.fpn_channels,
            anchor_scale=h.anchor_scale,
            head_convs=h.head_convs,
            score_thresh=h.score_thresh,
            nms_thresh=h.nms_thresh,
            detections_per_img=h.detections_per_img,
        )

    def configure_metrics(self) -> None:
        self.val_map = coco_map()
        self.test_map = coco_map(class_metrics=True)
        # Per-class AP at IoU 0.5 (the VOC per-class table): map_per_class of a 0.5-only metric.
        self.test_map_50 = coco_map(class_metrics=True, iou_thresholds=[0.5])

    # -- steps -------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        batch_size = images.shape[0]
        for key, value in losses.items():
            name = key if key.startswith("loss_") else f"loss_{key}"
            self.log(f"train/{name}", value, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        self.val_map.update(self.model(images), metric_targets(targets))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        detections, gts = self.model(images), metric_targets(targets)
        self.test_map.update(detections, gts)
        self.test_map_50.update(detections, gts)

    def _log_map(self, results: dict[str, Tensor], stage: str) -> None:
        # Plain floats: identical on every rank (compute() gathered), logged on the module's device.
        for key in ("map", "map_50", "map_75", "mar_100"):
            self.log(
                f"{stage}/{key}", float(results[key]), prog_bar=key == "map_50", sync_dist=True
            )

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map.compute(), "val")
        self.val_map.reset()

    def on_test_epoch_end(self) -> None:
        results, results_50 = self.test_map.compute(), self.test_map_50.compute()
        self._log_map(results, "test")
        names = self.class_names()
        for prefix, res in (("ap", results), ("ap50", results_50)):
            classes = res["classes"].reshape(-1).tolist()
            values = res["map_per_class"].reshape(-1).tolist()
            for label, value in zip(classes, values):
                if value >= 0:  # -1: class absent from ground truth and predictions
                    self.log(f"test/{prefix}/{names[int(label)]}", value, sync_dist=True)
        self.test_map.reset()
        self.test_map_50.reset()

    def predict_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        """Detections in ORIGINAL image coordinates, one dict per image.

        Returns:
            ``[{"boxes": Tensor[N, 4], "labels": Tensor[N], "scores": Tensor[N], "image_id": …}]``
            on the CPU: boxes xyxy scaled by ``orig_size / input size`` per axis (the eval
            pipelines are a plain resize) and clipped to the original image, labels 0-based.
            Without targets (images only) boxes stay in input coordinates.
        """
        images, targets = batch if isinstance(batch, (tuple, list)) else (batch, None)
        height, width = images.shape[-2:]
        out = []
        for index, detection in enumerate(self.model(images)):
            boxes = detection["boxes"]
            item: dict[str, Any] = {}
            target = targets[index] if targets is not None else {}
            if "orig_size" in target:
                orig_h, orig_w = (float(v) for v in target["orig_size"])
                boxes = boxes * boxes.new_tensor([orig_w / width, orig_h / height] * 2)
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, orig_w)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, orig_h)
            if "image_id" in target:
                item["image_id"] = target["image_id"]
            item.update(
                boxes=boxes.cpu(),
                labels=detection["labels"].cpu(),
                scores=detection["scores"].cpu(),
            )
            out.append(item)
        return out

    # -- reporting ---------------------------------------------------------------------
    def class_names(self) -> list[str]:
        names = self.hparams.class_names or getattr(
            getattr(self._trainer, "datamodule", None), "class_names", None
        )
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def _statistics(self, channels: int) -> tuple[Tensor, Tensor]:
        datamodule = (
            getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        )
        mean = getattr(datamodule, "mean", None) or (0.0,) * channels
        std = getattr(datamodule, "std", None) or (1.0,) * channels
        return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def _draw(self, pixels: Tensor, boxes: Tensor, labels: Tensor, texts: list[str]) -> Tensor:
        if boxes.shape[0] == 0:
            return pixels
        colors = [PALETTE[int(label) % len(PALETTE)] for label in labels]
        return draw_bounding_boxes(
            pixels,
            boxes,
            labels=texts,
            colors=colors,
            width=2,
            fill_labels=True,
            label_colors="black",
        )

    @torch.no_grad()
    def prediction_images(self, batch: Batch) -> list[tuple[str, np.ndarray]]:
        """Ground truth (left) beside predictions (right) for each image of ``batch``.

        Used by :class:`~dck_lightning.callbacks.image_logging.PredictionImageLogger`.
        Images are un-normalised with the DataModule's ``mean``/``std`` and upscaled (nearest)
        to at least ``display_min_side`` pixels; predictions scoring below
        ``display_score_thresh`` are not drawn.

        Returns:
            ``[(caption, uint8[H, 2W + 4, 3])]``, one per image.
        """
        images, targets = batch
        was_training = self.model.training
        self.model.eval()
        try:
            detections = self.model(images)
        finally:
            self.model.train(was_training)
        names = self.class_names()
        mean, std = self._statistics(images.shape[1])
        pixels_all = (
            ((images.detach().float().cpu() * std + mean) * 255)
            .clamp(0, 255)
            .round()
            .to(torch.uint8)
        )
        if pixels_all.shape[1] == 1:
            pixels_all = pixels_all.expand(-1, 3, -1, -1)
        factor = max(1, math.ceil(self.display_min_side / min(images.shape[-2:])))
        if factor > 1:
            pixels_all = F.interpolate(pixels_all, scale_factor=factor, mode="nearest")

        def name(label: Any) -> str:
            label = int(label)
            return names[label] if 0 <= label < len(names) else str(label)

        panels = []
        for index, (pixels, target, detection) in enumerate(zip(pixels_all, targets, detections)):
            gt_labels = target["labels"].cpu()
            difficult = target.get("difficult", torch.zeros_like(gt_labels, dtype=torch.bool)).cpu()
            gt_texts = [
                name(lab) + (" (difficult)" if d else "") for lab, d in zip(gt_labels, difficult)
            ]
            gt = self._draw(pixels, target["boxes"].float().cpu() * factor, gt_labels, gt_texts)
            keep = detection["scores"] >= self.display_score_thresh
            labels, scores = detection["labels"][keep].cpu(), detection["scores"][keep].cpu()
            texts = [f"{name(lab)} {score:.2f}" for lab, score in zip(labels, scores)]
            pred = self._draw(
                pixels, detection["boxes"][keep].float().cpu() * factor, labels, texts
            )
            separator = torch.full((3, pixels.shape[1], 4), 255, dtype=torch.uint8)
            panel = torch.cat([gt, separator, pred], dim=2).permute(1, 2, 0).contiguous().numpy()
            image_id = target.get("image_id", index)
            caption = (
                f"{image_id}: ground truth ({len(gt_labels)}) | predictions "
                f"({len(labels)} with score >= {self.display_score_thresh:g})"
            )
            panels.append((caption, panel))
        return panels
