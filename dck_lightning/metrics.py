"""Metrics by object size: COCO's small / medium / large buckets, for boxes and for masks.

COCO splits objects by area at ``32²`` and ``96²`` pixels, thresholds chosen for its images
(640 × 480 at most; about 512 px on a side). On other image sizes the same split is the COCO
one *scaled*: with ``reference_size`` ``R`` and images of ``H × W`` pixels the side thresholds
become ``32 · s`` and ``96 · s`` with ``s = √(H·W) / R`` — on 128 × 128 images and ``R = 512``,
small objects are under ``8²`` px² and large ones over ``24²``, as COCO's are under ``32²`` and
over ``96²`` in a 512-px image (:func:`size_area_ranges`).

* :func:`coco_map` — torchmetrics' :class:`~torchmetrics.detection.MeanAveragePrecision`
  (``faster_coco_eval`` backend, pycocotools' thresholds) whose ``map_small`` / ``map_medium``
  / ``map_large`` use given area ranges: torchmetrics has no option for them (its issue
  #3231), faster-coco-eval's ``COCOeval`` has (``ranges``), so the metric's COCO backend
  hands them to it (:class:`AreaRangedMeanAveragePrecision`).
* :class:`InstanceSizeIoU` — the IoU of every ground-truth instance of a semantic
  segmentation, averaged per size bucket (``iou_small``, ``iou_medium``, ``iou_large``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision
from torchmetrics.detection.helpers import CocoBackend

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "COCO_REC_THRESHOLDS",
    "COCO_SIDE_THRESHOLDS",
    "SIZE_BUCKETS",
    "AreaRangedMeanAveragePrecision",
    "InstanceSizeIoU",
    "coco_map",
    "instance_ious",
    "size_area_ranges",
    "size_scale",
]

#: COCO's thresholds exactly as pycocotools builds them (float64). torchmetrics' defaults come
#: from a float32 ``torch.linspace`` (0.2 -> 0.20000000298...), which moves a recall or IoU that
#: lands exactly on a threshold (common: recall k/n) to the other side and shifts AP slightly.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_REC_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()

#: The size buckets, in order, and COCO's side thresholds between them (pixels).
SIZE_BUCKETS: tuple[str, ...] = ("small", "medium", "large")
COCO_SIDE_THRESHOLDS: tuple[float, float] = (32.0, 96.0)
#: COCO's "no upper bound" (pycocotools' ``1e5 ** 2``).
_MAX_AREA = 1e5**2

AreaRanges = dict[str, tuple[float, float]]


def size_scale(image_size: Union[int, Sequence[int]], reference_size: Optional[float]) -> float:
    """``s = √(H·W) / reference_size`` (1 when ``reference_size`` is ``None``: COCO's buckets)."""
    if reference_size is None:
        return 1.0
    if reference_size <= 0:
        raise ValueError(f"reference_size must be > 0 pixels, got {reference_size}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return math.sqrt(float(height) * float(width)) / float(reference_size)


def size_area_ranges(scale: float = 1.0) -> AreaRanges:
    """COCO's area buckets with their side thresholds times ``scale``, in px²:
    ``small [0, (32 s)²]``, ``medium [(32 s)², (96 s)²]``, ``large [(96 s)², 10¹⁰]``."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    low, high = ((scale * side) ** 2 for side in COCO_SIDE_THRESHOLDS)
    return {"small": (0.0, low), "medium": (low, high), "large": (high, _MAX_AREA)}


class _RangedCocoBackend(CocoBackend):
    """torchmetrics' COCO backend whose ``COCOeval`` gets the area ranges (faster-coco-eval)."""

    def __init__(self, area_ranges: AreaRanges) -> None:
        super().__init__("faster_coco_eval")
        self.area_ranges = area_ranges

    @property
    def cocoeval(self) -> object:
        ranges = {name: list(bounds) for name, bounds in self.area_ranges.items()}
        return functools.partial(super().cocoeval, ranges=ranges)


class AreaRangedMeanAveragePrecision(MeanAveragePrecision):
    """:class:`~torchmetrics.detection.MeanAveragePrecision` with settable size buckets.

    ``map_small`` / ``map_medium`` / ``map_large`` (and ``mar_*``) are COCO's, computed over
    the area ranges of :attr:`area_ranges` (px², COCO's own by default) — set them before
    :meth:`compute`, e.g. to :func:`size_area_ranges` of the evaluated images.

    Args:
        area_ranges: ``{"small": (lo, hi), "medium": …, "large": …}`` in px².
        **kwargs: :class:`~torchmetrics.detection.MeanAveragePrecision` arguments
            (``backend`` is ``"faster_coco_eval"``).
    """

    def __init__(self, area_ranges: Optional[Mapping[str, tuple[float, float]]] = None, **kwargs):
        kwargs["backend"] = "faster_coco_eval"
        super().__init__(**kwargs)
        self._coco_backend = _RangedCocoBackend(size_area_ranges())
        if area_ranges is not None:
            self.area_ranges = area_ranges

    @property
    def area_ranges(self) -> AreaRanges:
        return dict(self._coco_backend.area_ranges)

    @area_ranges.setter
    def area_ranges(self, ranges: Mapping[str, tuple[float, float]]) -> None:
        if list(ranges) != list(SIZE_BUCKETS):
            raise ValueError(
                f"area_ranges needs the buckets {SIZE_BUCKETS} in order, got {list(ranges)}"
            )
        self._coco_backend.area_ranges = {
            k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()
        }


def coco_map(**kwargs: Any) -> AreaRangedMeanAveragePrecision:
    """COCO mAP (``faster_coco_eval`` backend, xyxy boxes) that reproduces pycocotools' numbers
    exactly, with settable size buckets (:class:`AreaRangedMeanAveragePrecision`)."""
    kwargs.setdefault("iou_thresholds", COCO_IOU_THRESHOLDS)
    kwargs.setdefault("rec_thresholds", COCO_REC_THRESHOLDS)
    kwargs.setdefault("iou_type", "bbox")
    kwargs.setdefault("box_format", "xyxy")
    return AreaRangedMeanAveragePrecision(**kwargs)


# -- per-instance IoU of a semantic segmentation -----------------------------------------------
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def _component_instances(target: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Instance ids: the 8-connected components of every class in ``classes``, numbered from 1."""
    instances = np.zeros(target.shape, dtype=np.int64)
    count = 0
    for c in classes:
        labels, n = ndimage.label(target == c, structure=_EIGHT_NEIGHBOURS)
        instances[labels > 0] = labels[labels > 0] + count
        count += n
    return instances


def instance_ious(
    pred: np.ndarray,
    target: np.ndarray,
    instances: Optional[np.ndarray] = None,
    ignore_index: Optional[int] = 255,
    background_index: Optional[int] = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Area and IoU of every ground-truth instance of one image.

    An instance ``I`` of class ``c`` is matched with ``P``: the pixels of the predicted
    8-connected components of class ``c`` that overlap ``I``, less the pixels of the *other*
    ground-truth instances of class ``c`` (two touching objects of one class predicted as one
    blob are not each other's false positives)::

        IoU(I) = |I ∩ P| / |I ∪ P|

    A missed instance scores 0. Pixels whose target is ``ignore_index`` count nowhere.

    Args:
        pred: ``int[H, W]`` predicted classes.
        target: ``int[H, W]`` target classes (``ignore_index`` where nothing counts).
        instances: ``int[H, W]`` instance ids (0: none), e.g. a generator's; default the
            8-connected components of each class in ``target``.
        background_index: the class that has no instances (``None``: every class has).

    Returns:
        ``(areas, ious)``: ``int64[N]`` pixel counts and ``float64[N]`` IoUs of the ``N``
        instances with at least one counted pixel.
    """
    valid = target != ignore_index if ignore_index is not None else np.ones(target.shape, bool)
    objects = valid if background_index is None else valid & (target != background_index)
    if instances is None:
        instances = _component_instances(target, np.unique(target[objects]))
    instances = np.where(objects, instances, 0).astype(np.int64)
    if not instances.any():
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    ids, dense = np.unique(instances, return_inverse=True)  # ids[0] == 0: no instance
    dense = dense.reshape(instances.shape)
    n_ids = len(ids)
    area = np.bincount(dense.ravel(), minlength=n_ids)
    instance_class = np.zeros(n_ids, dtype=np.int64)
    instance_class[dense[dense > 0]] = target[dense > 0]
    areas, ious = [], []
    for c in np.unique(instance_class[1:]):
        predicted = (pred == c) & valid
        components, n_components = ndimage.label(predicted, structure=_EIGHT_NEIGHBOURS)
        # overlap[i, k]: pixels of instance id i (0: none of class c) in component k (0: none)
        of_class = np.where(instance_class[dense] == c, dense, 0)
        overlap = np.bincount(
            (of_class * (n_components + 1) + components).ravel(),
            minlength=n_ids * (n_components + 1),
        ).reshape(n_ids, n_components + 1)
        size = overlap.sum(0)  # component sizes (every pixel has an id or 0)
        of_other = overlap[1:].sum(0)  # pixels of class-c instances per component
        members = np.flatnonzero(instance_class == c)
        touching = overlap[members, 1:] > 0
        claimed = (size - of_other)[None, 1:] + overlap[members, 1:]  # P per component
        predicted_area = (touching * claimed).sum(1)
        intersection = overlap[members, 1:].sum(1)
        union = area[members] + predicted_area - intersection
        areas.append(area[members])
        ious.append(intersection / union)
    return np.concatenate(areas).astype(np.int64), np.concatenate(ious).astype(np.float64)


class InstanceSizeIoU(Metric):
    """Mean IoU of the ground-truth instances in each size bucket (:func:`instance_ious`).

    ``compute()`` returns ``{"small": …, "medium": …, "large": …}``: the mean IoU over the
    instances whose area (pixels) falls in ``[lo, hi)`` of the bucket (:func:`size_area_ranges`
    of each image's size and ``reference_size``), NaN for a bucket without instances. Summed
    over processes under DDP.

    Args:
        reference_size: the image side COCO's buckets are meant for (see
            :func:`size_scale`); ``None``: COCO's ``32²`` / ``96²`` px² as they are.
        ignore_index: target value of pixels that count nowhere.
        background_index: the class without instances (``None``: every class has them).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        reference_size: Optional[float] = None,
        ignore_index: Optional[int] = 255,
        background_index: Optional[int] = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        size_scale(1, reference_size)  # validates
        self.reference_size = reference_size
        self.ignore_index = ignore_index
        self.background_index = background_index
        buckets = len(SIZE_BUCKETS)
        self.add_state("iou_sum", torch.zeros(buckets, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(buckets, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, instances: Optional[Tensor] = None) -> None:
        """Add the instances of a batch.

        Args:
            preds, target: ``int[B, H, W]`` (or ``[H, W]``) predicted and target classes.
            instances: ``int[B, H, W]`` instance ids of the targets, or ``None`` (connected
                components of each class).
        """
        if preds.shape != target.shape or (
            instances is not None and instances.shape != target.shape
        ):
            raise ValueError(
                f"preds {tuple(preds.shape)}, target {tuple(target.shape)} and instances "
                f"{None if instances is None else tuple(instances.shape)} must have one shape"
            )
        size = tuple(target.shape[-2:])
        preds_np = preds.detach().cpu().reshape(-1, *size).numpy()
        target_np = target.detach().cpu().reshape(-1, *size).numpy()
        inst_np = None if instances is None else instances.detach().cpu().reshape(-1, *size).numpy()
        ranges = size_area_ranges(size_scale(size, self.reference_size))
        bounds = np.asarray([ranges[name] for name in SIZE_BUCKETS], dtype=np.float64)
        sums, counts = np.zeros(len(bounds)), np.zeros(len(bounds), dtype=np.int64)
        for index in range(len(preds_np)):
            areas, ious = instance_ious(
                preds_np[index],
                target_np[index],
                None if inst_np is None else inst_np[index],
                self.ignore_index,
                self.background_index,
            )
            inside = (areas[None, :] >= bounds[:, :1]) & (areas[None, :] < bounds[:, 1:])
            sums += inside @ ious
            counts += inside.sum(1)
        self.iou_sum += torch.as_tensor(sums, dtype=self.iou_sum.dtype, device=self.iou_sum.device)
        self.count += torch.as_tensor(counts, device=self.count.device)

    def compute(self) -> dict[str, Tensor]:
        means = self.iou_sum / self.count.clamp(min=1)
        means = torch.where(self.count > 0, means, torch.full_like(means, float("nan")))
        return {name: means[i].float() for i, name in enumerate(SIZE_BUCKETS)}
