"""Object detection: torchvision's FCOS, RetinaNet or Faster R-CNN over the shared backbone + FPN.

The detectors compute their own losses (in training mode) and detections (in eval mode); this
task logs every loss term and evaluates with ``torchmetrics``' COCO-style
:class:`~torchmetrics.detection.MeanAveragePrecision` (``faster_coco_eval`` backend), updated
in each step and computed once per epoch. Headline: ``val/map_50`` (AP at IoU 0.5, the VOC
metric), monitored for checkpoints; also ``val/map`` (AP@[.5:.95]), ``val/map_75``,
``val/mar_100`` and, by object size, ``val/map_small``, ``val/map_medium``, ``val/map_large``
(COCO's area buckets, or those buckets scaled to the input size with ``area_reference_size``,
see :mod:`dck_lightning.metrics`; a bucket without objects is not logged). The same at test
time under ``test/``. Torchvision detectors give no loss in eval mode, so there is no
``val/loss``.

VOC's ``difficult`` objects are passed to the metric as ``iscrowd=1``: COCO evaluation then
neither counts them as ground truth to find nor counts detections on them as false positives,
which is what the VOC protocol asks. (COCO matches a detection to a crowd box by
intersection over the detection's area, slightly more lenient than VOC's IoU, and its AP is
101-point interpolated, VOC07's 11-point: numbers are close to, not identical with, the
official VOC devkit.) Boxes are evaluated in the network's input coordinates; IoU is
invariant to the per-axis resize, so this equals evaluating in original coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from ..callbacks.image_logging import (
    BoxSet,
    PredictionSample,
    datamodule_statistics,
    display_images,
)
from ..metrics import SIZE_BUCKETS, coco_map, size_area_ranges, size_scale
from ..models.detection import create_detector
from ..models.registry import BackboneFactory, build_backbone
from ..visualization import class_name, draw_boxes, enlarge
from .base import BaseTask

#: The plain ResNet-18, every argument at its default.
DEFAULT_BACKBONE = {"class_path": "dck_lightning.models.resnet18"}

__all__ = ["DetectionTask", "coco_map", "metric_targets", "render_detection_panel"]

Batch = tuple[Tensor, list[dict[str, Any]]]


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
        area_reference_size (int, optional): the image side COCO's size buckets are meant for:
            ``map_small`` / ``map_medium`` / ``map_large`` split boxes at ``(32·s)²`` and
            ``(96·s)²`` px² with ``s = √(H·W) / area_reference_size`` of the input images (512:
            on 128×128 inputs small is under 8² px², large over 24²). Default: COCO's
            ``32²`` / ``96²`` as they are.
        **shared: :class:`BaseTask`'s (``backbone_weights``, optimiser, schedule, ``compile``).
    """

    monitor = "val/map_50"
    mode = "max"
    #: Detections drawn by :meth:`prediction_images` (the PNG panels) score at least this.
    display_score_thresh = 0.3
    #: :meth:`prediction_images` upscales (nearest) images smaller than this side, for legible labels.
    display_min_side = 256

    def __init__(
        self,
        detector: Literal["fcos", "retinanet", "faster_rcnn"] = "fcos",
        backbone: BackboneFactory = DEFAULT_BACKBONE,
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
        area_reference_size: Optional[int] = None,
        **shared: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, backbone=backbone, **shared
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

    def area_ranges(self, images: Tensor) -> dict[str, tuple[float, float]]:
        """The size buckets (px²) for inputs of the size of ``images``, see ``area_reference_size``."""
        return size_area_ranges(size_scale(images.shape[-2:], self.hparams.area_reference_size))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        self.val_map.area_ranges = self.area_ranges(images)
        self.val_map.update(self.model(images), metric_targets(targets))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        detections, gts = self.model(images), metric_targets(targets)
        self.test_map.area_ranges = self.area_ranges(images)
        self.test_map.update(detections, gts)
        self.test_map_50.update(detections, gts)

    def _log_map(self, results: dict[str, Tensor], stage: str) -> None:
        # Plain floats: identical on every rank (compute() gathered), logged on the module's device.
        for key in ("map", "map_50", "map_75", "mar_100"):
            self.log(
                f"{stage}/{key}", float(results[key]), prog_bar=key == "map_50", sync_dist=True
            )
        for bucket in SIZE_BUCKETS:  # -1: no object of that size in the targets
            if float(results[f"map_{bucket}"]) >= 0:
                self.log(f"{stage}/map_{bucket}", float(results[f"map_{bucket}"]), sync_dist=True)

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

    @torch.no_grad()
    def prediction_samples(self, batch: Batch) -> list[PredictionSample]:
        """Each image of ``batch`` with its ground truth and every detection, as data.

        Used by :class:`~dck_lightning.callbacks.image_logging.PredictionImageLogger`: on W&B
        they become ``wandb.Image(boxes=...)`` with the class names, ground truth and
        predictions as two box sets and a score slider. Images are un-normalised with the
        DataModule's ``mean``/``std``; boxes are in their pixels; ground-truth boxes of
        ``difficult`` objects are noted as such.
        """
        images, targets = batch
        was_training = self.model.training
        self.model.eval()
        try:
            detections = self.model(images)
        finally:
            self.model.train(was_training)
        names = self.class_names()
        pixels = display_images(images, *datamodule_statistics(self))
        samples = []
        for index, (image, target, detection) in enumerate(zip(pixels, targets, detections)):
            labels = target["labels"].cpu()
            difficult = target.get("difficult", torch.zeros_like(labels, dtype=torch.bool))
            truth = BoxSet(
                target["boxes"].float().cpu().numpy().reshape(-1, 4),
                labels.numpy(),
                notes=["difficult" if d else "" for d in difficult.tolist()],
            )
            predicted = BoxSet(
                detection["boxes"].float().cpu().numpy().reshape(-1, 4),
                detection["labels"].cpu().numpy(),
                detection["scores"].float().cpu().numpy(),
            )
            shown = int((predicted.scores >= self.display_score_thresh).sum())
            caption = (
                f"{target.get('image_id', index)}: ground truth ({len(labels)}) | predictions "
                f"({shown} with score >= {self.display_score_thresh:g})"
            )
            boxes = {"ground_truth": truth, "predictions": predicted}
            samples.append(PredictionSample(image, caption, names, boxes=boxes))
        return samples

    def prediction_images(self, batch: Batch) -> list[tuple[str, np.ndarray]]:
        """Ground truth (left) beside predictions (right) for each image of ``batch``.

        The PNG form of :meth:`prediction_samples` (runs without W&B): see
        :func:`render_detection_panel`, with ``display_score_thresh`` and
        ``display_min_side``.

        Returns:
            ``[(caption, uint8[H, 2W + 4, 3])]``, one per image.
        """
        return [
            (
                sample.caption,
                render_detection_panel(sample, self.display_score_thresh, self.display_min_side),
            )
            for sample in self.prediction_samples(batch)
        ]


def render_detection_panel(
    sample: PredictionSample, score_thresh: float = 0.3, min_side: int = 256
) -> np.ndarray:
    """``ground truth | predictions`` side by side, boxes drawn in class colours.

    Boxes are drawn with :func:`~dck_lightning.visualization.draw_boxes`, labelled with the class
    name (``(difficult)``, or the score for predictions); predictions scoring below
    ``score_thresh`` are left out. Images with a side below ``min_side`` are enlarged
    (nearest) so that the labels stay legible.

    Returns:
        ``uint8[H', 2W' + 4, 3]``.
    """
    image, factor = enlarge(
        torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1), min_side
    )

    def draw(box_set: BoxSet, keep: np.ndarray) -> Tensor:
        labels = box_set.labels[keep].tolist()
        names = [class_name(sample.class_names, label) for label in labels]
        if box_set.scores is not None:
            texts = [f"{name} {score:.2f}" for name, score in zip(names, box_set.scores[keep])]
        else:
            notes = np.asarray(box_set.notes or [""] * len(box_set.labels))[keep]
            texts = [name + (f" ({note})" if note else "") for name, note in zip(names, notes)]
        return draw_boxes(image, torch.from_numpy(box_set.boxes[keep]) * factor, labels, texts)

    truth, predicted = sample.boxes["ground_truth"], sample.boxes["predictions"]
    left = draw(truth, np.ones(len(truth.labels), dtype=bool))
    right = draw(predicted, predicted.scores >= score_thresh)
    separator = torch.full((3, image.shape[1], 4), 255, dtype=torch.uint8)
    return torch.cat([left, separator, right], dim=2).permute(1, 2, 0).contiguous().numpy()
