"""Write what ``dck predict`` computes, as files a user opens without the framework.

:class:`PredictionWriter` is a Lightning :class:`~pytorch_lightning.callbacks.BasePredictionWriter`;
``dck predict`` adds one (``<run folder>/predictions/``) unless the config has its own. What it
writes depends on what the task's ``predict_step`` returns:

* classification (``Tensor[B, num_classes]`` probabilities): ``predictions.csv``, one row per
  image — ``index`` (position in the prediction set), ``file`` (path relative to
  ``predict_dir``, else the image id, else empty), ``label`` (class index), ``class`` (its name)
  and ``probability``;
* detection (one ``{"boxes", "labels", "scores"}`` dict per image, boxes in original image
  coordinates): ``detections.json``, one COCO-style file — ``images`` (``id``, ``file_name``,
  ``width``, ``height`` of the original image), ``categories`` (``id`` = label + 1, ``name``)
  and ``annotations`` (``image_id``, ``category_id``, ``bbox`` ``[x, y, width, height]`` in
  original pixels, ``area``, ``score``);
* segmentation (one ``[H, W]`` class map per image, at the original size): ``masks/<file>.png``,
  palette PNGs whose pixel values are class ids, coloured with the VOC palette (16-bit
  greyscale when there are more than 256 classes).

An image of ``predict_dir`` that does not decode is skipped, not fatal
(:mod:`~dck_lightning.data.predict_set`): a one-line warning names it, ``skipped.csv`` lists it
(``index``, ``file``, ``reason``) and the other images are predicted.

Under DDP every rank writes its masks; rows and detections are gathered and rank 0 writes the
file. An existing ``predictions`` folder is never overwritten: the next is ``predictions_1``.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from ..data.voc_common import voc_palette

__all__ = ["PredictionWriter"]


def _targets(batch: Any) -> list[dict[str, Any]]:
    """The per-image target dicts of an ``(images, targets)`` batch; empty dicts otherwise."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], list):
        return [t if isinstance(t, dict) else {} for t in batch[1]]
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return [{} for _ in range(len(images))]


def _class_names(pl_module: pl.LightningModule, count: int) -> list[str]:
    names = pl_module.class_names() if hasattr(pl_module, "class_names") else None
    names = list(names or [])
    return names + [str(i) for i in range(len(names), count)]


def _next_free(folder: Path) -> Path:
    """``folder`` when it does not exist or is empty, else ``folder_1``, ``folder_2``, …"""
    candidate, n = folder, 0
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = folder.with_name(f"{folder.name}_{n}")
    return candidate


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


class PredictionWriter(BasePredictionWriter):
    """Write classification, detection or segmentation predictions (see the module docstring).

    Args:
        output_dir (str, optional): folder for the files. Default: ``predictions`` in the
            trainer's ``default_root_dir`` (``dck``: the run folder); an existing, non-empty
            folder is kept and ``predictions_1``, … used instead.
    """

    def __init__(self, output_dir: Optional[str] = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.folder: Optional[Path] = None
        self._rows: list[dict[str, Any]] = []
        self._images: list[dict[str, Any]] = []
        self._detections: list[dict[str, Any]] = []
        self._skipped: list[dict[str, Any]] = []
        self._names: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        folder = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        chosen = _next_free(folder) if trainer.is_global_zero else None
        self.folder = Path(trainer.strategy.broadcast(chosen, src=0))
        self._names = _class_names(pl_module, int(pl_module.hparams.get("num_classes", 0)))

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows, self._images, self._detections, self._skipped = [], [], [], []

    # -- per batch ---------------------------------------------------------------------------
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        targets = _targets(batch)
        first = batch_idx * len(targets)
        indices = list(batch_indices) if batch_indices else range(first, first + len(targets))
        kept = self._skip_unreadable(indices, targets)
        if len(kept) < len(targets):
            indices, targets = [indices[i] for i in kept], [targets[i] for i in kept]
            if isinstance(prediction, Tensor):
                prediction = prediction[torch.as_tensor(kept, dtype=torch.long)]
            else:
                prediction = [prediction[i] for i in kept]
            if not targets:
                return
        if isinstance(prediction, Tensor):
            self._classification(pl_module, prediction, indices, targets)
        elif prediction and isinstance(prediction[0], dict):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._detection(prediction, indices, targets, tuple(images.shape[-2:]))
        else:
            self._segmentation(prediction, indices, targets)

    def _skip_unreadable(self, indices: Sequence[int], targets: list[dict[str, Any]]) -> list[int]:
        """Record (and warn about) the images the prediction set could not decode (targets
        with ``skipped``); the positions of the others in the batch."""
        kept = []
        for position, (index, target) in enumerate(zip(indices, targets)):
            reason = target.get("skipped")
            if not reason:
                kept.append(position)
                continue
            self._skipped.append(
                {"index": int(index), "file": self._file(target), "reason": reason}
            )
            warnings.warn(f"skipped, not predicted: {reason}", UserWarning, stacklevel=2)
        return kept

    @staticmethod
    def _file(target: dict[str, Any]) -> str:
        """The file (relative to ``predict_dir``), else the image id, else ``""``."""
        return str(target.get("file") or target.get("image_id") or "")

    def _classification(
        self, pl_module: pl.LightningModule, probabilities: Tensor, indices, targets
    ) -> None:
        if len(self._names) < probabilities.shape[-1]:
            self._names = _class_names(pl_module, probabilities.shape[-1])
        values, labels = probabilities.float().max(dim=-1)
        for index, target, label, value in zip(indices, targets, labels.tolist(), values.tolist()):
            self._rows.append(
                {
                    "index": int(index),
                    "file": self._file(target),
                    "label": label,
                    "class": self._names[label],
                    "probability": round(value, 6),
                }
            )

    def _detection(self, detections, indices, targets, input_size) -> None:
        for index, target, detection in zip(indices, targets, detections):
            labels = detection["labels"].long().tolist()
            height, width = (int(v) for v in target.get("orig_size", input_size))
            image_id = int(index) + 1
            self._images.append(
                {
                    "id": image_id,
                    "file_name": self._file(target) or str(index),
                    "width": width,
                    "height": height,
                }
            )
            boxes, scores = detection["boxes"].float().tolist(), detection["scores"].tolist()
            for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores):
                w, h = x2 - x1, y2 - y1
                self._detections.append(
                    {
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                        "area": round(w * h, 2),
                        "score": round(float(score), 5),
                        "iscrowd": 0,
                    }
                )

    def _segmentation(self, masks: Sequence[Tensor], indices, targets) -> None:
        for index, target, mask in zip(indices, targets, masks):
            name = self._file(target) or f"{int(index):06d}"
            path = (self.folder / "masks" / name).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            values = mask.cpu().numpy()
            if values.max(initial=0) < 256:
                image = Image.fromarray(values.astype(np.uint8), mode="P")
                image.putpalette(voc_palette())
            else:
                image = Image.fromarray(values.astype(np.uint16))
            image.save(path)

    # -- at the end --------------------------------------------------------------------------
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = (self._rows, self._images, self._detections, self._names, self._skipped)
        parts = self._gather(trainer, local)
        if not trainer.is_global_zero:
            return
        rows = sorted((r for part in parts for r in part[0]), key=lambda r: r["index"])
        images = sorted((i for part in parts for i in part[1]), key=lambda i: i["id"])
        detections = [d for part in parts for d in part[2]]
        names = max((part[3] for part in parts), key=len)
        skipped = sorted((s for part in parts for s in part[4]), key=lambda s: s["index"])
        self.folder.mkdir(parents=True, exist_ok=True)
        if rows:
            path = self.folder / "predictions.csv"
            _write_csv(path, rows)
            rank_zero_info(f"Predictions of {len(rows)} images written to {path}")
        if skipped:
            path = self.folder / "skipped.csv"
            _write_csv(path, skipped)
            count = f"{len(skipped)} image{'s' if len(skipped) > 1 else ''}"
            rank_zero_info(f"Not predicted, could not be read: {count}, listed in {path}")
        if images:
            detections.sort(key=lambda d: (d["image_id"], -d["score"]))
            for number, detection in enumerate(detections, 1):
                detection["id"] = number
            categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
            coco = {"images": images, "categories": categories, "annotations": detections}
            path = self.folder / "detections.json"
            path.write_text(json.dumps(coco, indent=1))
            rank_zero_info(
                f"{len(detections)} detections in {len(images)} images written to {path}"
            )
        masks = self.folder / "masks"
        if not rows and not images and masks.is_dir():
            rank_zero_info(f"Predicted masks written to {masks}")

    @staticmethod
    def _gather(trainer: pl.Trainer, local: tuple) -> list[tuple]:
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return [local]
        parts: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, local)
        return parts
