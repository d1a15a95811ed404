"""Object detectors over the shared backbone: torchvision's FCOS, RetinaNet and Faster R-CNN.

:func:`create_detector` builds ``backbone → BackboneWithFPN → torchvision detector`` and wraps
it in :class:`Detector`, which speaks the project's conventions:

- **0-based labels in and out.** torchvision's detectors reserve class 0 for the background
  (Faster R-CNN's softmax; FCOS and RetinaNet simply never train it as a positive), so every
  detector is built with ``num_classes + 1`` outputs, target labels are shifted by ``+1`` on the
  way in and predicted labels by ``-1`` on the way out — the same for all three detectors.
- **No second normalisation or resize.** Our DataModules already resize and normalise the
  images; the detectors' :class:`~torchvision.models.detection.transform.GeneralizedRCNNTransform`
  is replaced by :class:`PassthroughTransform`, whose ``normalize`` and ``resize`` are the
  identity (it still pads the batch to a multiple of ``size_divisible`` and maps boxes between
  identical sizes in ``postprocess``, i.e. not at all).
- **Anchors from the pyramid's strides** (``torchvision.models.detection.anchor_utils.AnchorGenerator``):
  FCOS one point per location of size = stride (what FCOS's scale ranges assume); RetinaNet
  three scales ``4·stride·2^{0,⅓,⅔}`` × ratios ``(0.5, 1, 2)``; Faster R-CNN ``8·stride`` ×
  ratios ``(0.5, 1, 2)`` — torchvision's own defaults expressed per stride, scaled by
  ``anchor_scale`` for small images. Matching, box coding, losses and NMS are torchvision's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal, Optional, Union

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import (
    FCOSClassificationHead,
    FCOSHead,
    FCOSRegressionHead,
)
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .backbone import DCBNet
from .neck import BackboneWithFPN
from .registry import create_backbone

__all__ = [
    "DETECTORS",
    "Detector",
    "PassthroughTransform",
    "create_detector",
    "default_fpn_levels",
    "make_anchor_generator",
]

DetectorName = Literal["fcos", "retinanet", "faster_rcnn"]
DETECTORS: tuple[str, ...] = ("fcos", "retinanet", "faster_rcnn")

#: Anchor size per unit of stride (torchvision's defaults: FCOS 8 @ stride 8, RetinaNet 32 @ 8,
#: Faster R-CNN 32 @ 4).
DEFAULT_ANCHOR_SCALE = {"fcos": 1.0, "retinanet": 4.0, "faster_rcnn": 8.0}
#: FPN extra levels per detector (see :func:`~dck_lightning.models.neck.make_extra_block`).
EXTRA_BLOCKS = {"fcos": "p6p7", "retinanet": "p6p7", "faster_rcnn": "pool"}


def default_fpn_levels(detector: str) -> tuple[str, ...]:
    """Backbone features fed to the FPN: ``c3..c5`` (+ P6, P7) for FCOS/RetinaNet, as in their
    papers; ``c2..c5`` (+ pool) for Faster R-CNN."""
    return ("c2", "c3", "c4", "c5") if detector == "faster_rcnn" else ("c3", "c4", "c5")


class PassthroughTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` without its normalisation and resize.

    The images reaching the detector are already resized and normalised by the DataModule,
    so ``normalize`` and ``resize`` return their inputs; what remains is batching (zero
    padding to a multiple of ``size_divisible``) and a ``postprocess`` that maps boxes from
    the input size to the same size. Equivalent to ``image_mean=[0, 0, 0]``,
    ``image_std=[1, 1, 1]`` and ``min_size = max_size = `` the input side for square inputs,
    but exact and free for any input size and never resizing at training time.

    Args:
        size_divisible (int): the padded batch's height and width are multiples of it.
    """

    def __init__(self, size_divisible: int = 32) -> None:
        super().__init__(
            min_size=1, max_size=1, image_mean=[0.0], image_std=[1.0], size_divisible=size_divisible
        )

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"expected float images (already normalised), got {image.dtype}")
        return image

    def resize(
        self, image: Tensor, target: Optional[dict[str, Tensor]] = None
    ) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size_divisible={self.size_divisible})"


def make_anchor_generator(
    detector: str, strides: Sequence[int], anchor_scale: float
) -> AnchorGenerator:
    """Anchors sized for the pyramid levels' ``strides`` (see the module docstring)."""
    if detector == "fcos":
        sizes = tuple((anchor_scale * s,) for s in strides)
        ratios: tuple[float, ...] = (1.0,)
    elif detector == "retinanet":
        sizes = tuple(tuple(anchor_scale * s * 2 ** (i / 3) for i in range(3)) for s in strides)
        ratios = (0.5, 1.0, 2.0)
    elif detector == "faster_rcnn":
        sizes = tuple((anchor_scale * s,) for s in strides)
        ratios = (0.5, 1.0, 2.0)
    else:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


def _group_norm(channels: int) -> Any:
    """torchvision's FCOS head uses ``GroupNorm(32, C)``; keep 32 groups but at least two
    channels per group (same as torchvision for ``C >= 64``; a one-channel group on a 1×1
    P7 map of a single image cannot be normalised)."""
    return partial(nn.GroupNorm, math.gcd(32, max(channels // 2, 1)))


class Detector(nn.Module):
    """A torchvision detector that takes and returns 0-based labels.

    ``forward(images, targets)`` in training mode returns the detector's loss dict; in eval
    mode it returns one dict per image with ``boxes`` ``Tensor[N, 4]`` (xyxy, input pixels),
    ``labels`` ``Tensor[N]`` (0-based) and ``scores`` ``Tensor[N]``.

    Args:
        detector (nn.Module): an FCOS, RetinaNet or FasterRCNN built with ``num_classes + 1``
            classes (0 = background) and a :class:`PassthroughTransform`.
        name (str): ``"fcos"``, ``"retinanet"`` or ``"faster_rcnn"`` (for ``repr`` and reports).
    """

    def __init__(self, detector: nn.Module, name: str) -> None:
        super().__init__()
        self.detector = detector
        self.name = name

    @property
    def backbone(self) -> BackboneWithFPN:
        """The ``BackboneWithFPN`` (its ``body`` is the shared backbone)."""
        return self.detector.backbone

    @staticmethod
    def _shift(targets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        shifted = []
        for target in targets:
            boxes = target["boxes"].float().reshape(-1, 4)
            labels = target["labels"].long()
            keep = (boxes[:, 2] > boxes[:, 0]) & (
                boxes[:, 3] > boxes[:, 1]
            )  # torchvision rejects degenerate boxes
            shifted.append({"boxes": boxes[keep], "labels": labels[keep] + 1})
        return shifted

    def forward(
        self,
        images: Union[Tensor, Sequence[Tensor]],
        targets: Optional[Sequence[dict[str, Tensor]]] = None,
    ) -> Union[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Args:
        images: ``Tensor[B, C, H, W]`` (or a list of ``Tensor[C, H, W]``), normalised.
        targets: training only: dicts with ``boxes`` ``Tensor[N, 4]`` xyxy and ``labels`` (0-based).
        """
        images = list(images)
        if self.training:
            if targets is None:
                raise ValueError("Detector needs targets in training mode")
            return self.detector(images, self._shift(targets))
        detections = self.detector(images)
        out = []
        for detection in detections:
            keep = (
                detection["labels"] > 0
            )  # FCOS/RetinaNet could in principle score the unused slot 0
            out.append(
                {
                    "boxes": detection["boxes"][keep],
                    "labels": detection["labels"][keep] - 1,
                    "scores": detection["scores"][keep],
                }
            )
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def create_detector(
    detector: DetectorName = "fcos",
    backbone: Union[str, DCBNet] = "resnet18",
    num_classes: int = 20,
    in_channels: int = 3,
    backbone_kwargs: Optional[dict[str, Any]] = None,
    fpn_levels: Optional[Sequence[str]] = None,
    fpn_channels: int = 256,
    anchor_scale: Optional[float] = None,
    head_convs: int = 4,
    score_thresh: float = 0.05,
    nms_thresh: Optional[float] = None,
    detections_per_img: int = 100,
) -> Detector:
    """Build ``backbone + FPN + torchvision detector`` with 0-based labels (see the module docstring).

    Args:
        detector (str): ``"fcos"`` (default), ``"retinanet"`` or ``"faster_rcnn"``.
        backbone (str or DCBNet): a preset name for :func:`create_backbone` or a backbone.
        num_classes (int): foreground classes (the background slot is added here).
        in_channels (int): image channels (preset backbones only).
        backbone_kwargs (dict, optional): overrides of the preset, e.g. ``{"widths": [32, 64, 96, 128]}``.
        fpn_levels (Sequence[str], optional): backbone features fed to the FPN; default
            :func:`default_fpn_levels`.
        fpn_channels (int): FPN (and head) channels. Default: 256.
        anchor_scale (float, optional): anchor size per unit of stride; default
            ``DEFAULT_ANCHOR_SCALE[detector]`` (FCOS 1, RetinaNet 4, Faster R-CNN 8).
        head_convs (int): convs in the classification and box towers of FCOS/RetinaNet
            (torchvision: 4); Faster R-CNN ignores it.
        score_thresh (float): drop detections scoring below it. Default: 0.05 (for mAP).
        nms_thresh (float, optional): NMS IoU threshold; default the detector's own
            (FCOS 0.6, RetinaNet and Faster R-CNN 0.5).
        detections_per_img (int): detections kept per image. Default: 100 (COCO's maxDets).

    Example::
        >>> model = create_detector("fcos", "resnet18", num_classes=6, fpn_channels=32,
        ...                         backbone_kwargs={"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1]})
        >>> model.eval()(torch.rand(2, 3, 64, 64))[0].keys()
        dict_keys(['boxes', 'labels', 'scores'])
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if head_convs < 0:
        raise ValueError(f"head_convs must be >= 0, got {head_convs}")
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, in_channels=in_channels, **dict(backbone_kwargs or {}))
    elif backbone_kwargs:
        raise ValueError("backbone_kwargs only apply to a backbone preset name")
    levels = tuple(fpn_levels) if fpn_levels else default_fpn_levels(detector)
    body = BackboneWithFPN(backbone, levels, fpn_channels, extra_blocks=EXTRA_BLOCKS[detector])
    scale = DEFAULT_ANCHOR_SCALE[detector] if anchor_scale is None else float(anchor_scale)
    anchors = make_anchor_generator(detector, body.strides, scale)
    n_out = num_classes + 1  # slot 0 = background
    common: dict[str, Any] = {
        "min_size": 1,
        "max_size": 1,
    }  # replaced by PassthroughTransform below
    if detector == "fcos":
        # FCOSHead hard-codes GroupNorm(32, C): build its towers with a norm that fits any C (see _group_norm).
        head = FCOSHead(fpn_channels, 1, n_out, num_convs=0)
        norm = _group_norm(fpn_channels)
        head.classification_head = FCOSClassificationHead(
            fpn_channels, 1, n_out, head_convs, norm_layer=norm
        )
        head.regression_head = FCOSRegressionHead(fpn_channels, 1, head_convs, norm_layer=norm)
        model: nn.Module = FCOS(
            body,
            n_out,
            anchor_generator=anchors,
            head=head,
            score_thresh=score_thresh,
            nms_thresh=0.6 if nms_thresh is None else nms_thresh,
            detections_per_img=detections_per_img,
            **common,
        )
    elif detector == "retinanet":
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], n_out)
        head.classification_head.conv = head.classification_head.conv[:head_convs]
        head.regression_head.conv = head.regression_head.conv[:head_convs]
        model = RetinaNet(
            body,
            n_out,
            anchor_generator=anchors,
            head=head,
            score_thresh=score_thresh,
            nms_thresh=0.5 if nms_thresh is None else nms_thresh,
            detections_per_img=detections_per_img,
            **common,
        )
    else:
        roi_pool = MultiScaleRoIAlign(featmap_names=list(levels), output_size=7, sampling_ratio=2)
        model = FasterRCNN(
            body,
            n_out,
            rpn_anchor_generator=anchors,
            box_roi_pool=roi_pool,
            box_score_thresh=score_thresh,
            box_nms_thresh=0.5 if nms_thresh is None else nms_thresh,
            box_detections_per_img=detections_per_img,
            **common,
        )
    model.transform = PassthroughTransform()
    return Detector(model, detector)
