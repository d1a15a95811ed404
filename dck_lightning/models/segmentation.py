"""Semantic segmentation heads over the shared backbone, and the model that joins them.

Two heads, both returning logits at the input resolution:

- ``"fpn"`` — the semantic FPN branch of Kirillov et al., *Panoptic Feature Pyramid Networks*
  (CVPR 2019): a ``torchvision.ops.FeaturePyramidNetwork`` over ``c2``…``c5`` (through
  :class:`~dck_lightning.models.neck.BackboneWithFPN`, no extra levels), then per level as many
  ``3×3 conv → norm → ReLU → 2× bilinear upsampling`` stages as it takes to reach the finest
  stride (one conv and no upsampling for the finest level), a sum, a ``1×1`` classifier and a
  bilinear upsampling to the input size. :class:`SemanticFPNHead` is that merge-and-classify part.
- ``"deeplabv3"`` — torchvision's :class:`~torchvision.models.segmentation.deeplabv3.DeepLabHead`
  (ASPP + 3×3 conv + classifier, Chen et al., *Rethinking Atrous Convolution*, 2017) over the
  last stage ``c5``.

An optional auxiliary head (torchvision's :class:`~torchvision.models.segmentation.fcn.FCNHead`,
on ``c4``) gives the deep supervision of torchvision's segmentation models; the task weighs its
loss. :class:`SegmentationModel` returns ``{"out": logits, "aux": logits}`` like
``torchvision.models.segmentation.deeplabv3_resnet50``.

Example::

    >>> model = create_segmentation_model(
    ...     "resnet18", "fpn", num_classes=7, backbone_kwargs={"widths": [8, 16, 32, 64]},
    ...     head_kwargs={"fpn_channels": 32, "channels": 32})
    >>> model(torch.rand(2, 3, 64, 64))["out"].shape
    torch.Size([2, 7, 64, 64])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Literal, Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops.misc import Conv2dNormActivation

from ..layers.validation import check_choice
from .backbone import DCBNet
from .neck import BackboneWithFPN
from .registry import create_backbone

HEADS = ("fpn", "deeplabv3")
FPN_LEVELS = ("c2", "c3", "c4", "c5")
#: DeepLabV3's atrous rates at output stride 8 (torchvision's default); other strides scale them.
DEEPLAB_RATES_AT_STRIDE_8 = (12, 24, 36)

Norm = Literal["gn", "bn"]


def norm_layer(kind: Norm) -> Callable[[int], nn.Module]:
    """``"gn"``: ``GroupNorm`` with 32 groups as in the paper, fewer for narrow layers so that
    every group keeps at least 4 channels (``gcd(32, channels // 4)`` groups; 32 channels in
    32 groups would be an instance norm); ``"bn"``: ``BatchNorm2d``."""
    check_choice("norm", kind, ("gn", "bn"))
    if kind == "bn":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)


def deeplab_rates(stride: int) -> tuple[int, ...]:
    """Atrous rates for features of ``stride``: torchvision's ``(12, 24, 36)`` at stride 8,
    ``(6, 12, 18)`` at 16 (the paper's), ``(3, 6, 9)`` at 32 (our undilated backbone)."""
    return tuple(max(1, round(rate * 8 / stride)) for rate in DEEPLAB_RATES_AT_STRIDE_8)


class SemanticFPNHead(nn.Module):
    """Merge FPN levels at the finest stride and classify (Panoptic FPN's semantic branch).

    Args:
        in_channels (int): channels of every pyramid level (the FPN's ``out_channels``).
        strides (Mapping[str, int]): stride of each level the head reads, e.g.
            ``{"c2": 4, "c3": 8, "c4": 16, "c5": 32}``; strides must be powers of two apart.
        num_classes (int): output classes.
        channels (int): channels of the conv stages. Default: 128 (the paper's).
        norm (str): ``"gn"`` (default, the paper's GroupNorm) or ``"bn"``.

    Shape:
        - Input: ``dict[str, Tensor[B, in_channels, H / s, W / s]]`` (``s`` = stride of the level).
        - Output: ``Tensor[B, num_classes, H / s_min, W / s_min]`` at the finest stride ``s_min``.
    """

    def __init__(
        self,
        in_channels: int,
        strides: Mapping[str, int],
        num_classes: int,
        channels: int = 128,
        norm: Norm = "gn",
    ) -> None:
        super().__init__()
        if not strides:
            raise ValueError("strides must name at least one level")
        make_norm = norm_layer(norm)
        levels = sorted(strides, key=strides.__getitem__)
        self.finest = levels[0]
        self.scale_heads = nn.ModuleDict()
        for level in levels:
            ratio = strides[level] / strides[self.finest]
            steps = round(math.log2(ratio))
            if 2**steps != ratio:
                raise ValueError(f"strides must be powers of two apart, got {dict(strides)}")
            stages: list[nn.Module] = []
            for i in range(max(steps, 1)):
                stages.append(
                    Conv2dNormActivation(
                        in_channels if i == 0 else channels, channels, 3, norm_layer=make_norm
                    )
                )
                if steps > 0:
                    stages.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads[level] = nn.Sequential(*stages)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        size = features[self.finest].shape[-2:]
        merged: Optional[Tensor] = None
        for level, head in self.scale_heads.items():
            x = head(features[level])
            if x.shape[-2:] != size:  # inputs whose side is not a multiple of the largest stride
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            merged = x if merged is None else merged + x
        return self.classifier(merged)


class SegmentationModel(nn.Module):
    """Backbone + segmentation head (+ auxiliary FCN head), logits at the input resolution.

    Args:
        backbone (DCBNet): returns a dict of features ``c2``…``c5`` with ``out_channels`` and
            ``strides``.
        head (str): ``"fpn"`` (semantic FPN) or ``"deeplabv3"`` (ASPP). Default: ``"fpn"``.
        num_classes (int): classes, background included.
        aux (bool): add torchvision's ``FCNHead`` on ``aux_feature``. Default: ``False``.
        fpn_channels (int): FPN channels (``"fpn"``). Default: 256.
        channels (int): channels of the semantic FPN conv stages (``"fpn"``). Default: 128.
        norm (str): norm of the semantic FPN stages, ``"gn"`` or ``"bn"`` (``"fpn"``).
        feature (str): the feature the ASPP reads (``"deeplabv3"``). Default: ``"c5"``.
        atrous_rates (Sequence[int], optional): ASPP rates (``"deeplabv3"``). Default: scaled
            to the stride of ``feature``, see :func:`deeplab_rates`.
        aux_feature (str): the feature the auxiliary head reads. Default: ``"c4"``.

    Attributes:
        backbone: :class:`BackboneWithFPN` (``"fpn"``; its ``body`` is the DCBNet, the same
            state-dict layout as the detectors) or the DCBNet itself (``"deeplabv3"``).
        classifier: the head. aux_classifier: the auxiliary head or ``None``.

    Shape:
        - Input: ``Tensor[B, C, H, W]``.
        - Output: ``{"out": Tensor[B, num_classes, H, W]}`` and, with ``aux``,
          ``"aux": Tensor[B, num_classes, H, W]``.
    """

    def __init__(
        self,
        backbone: DCBNet,
        head: Literal["fpn", "deeplabv3"] = "fpn",
        num_classes: int = 21,
        aux: bool = False,
        fpn_channels: int = 256,
        channels: int = 128,
        norm: Norm = "gn",
        feature: str = "c5",
        atrous_rates: Optional[Sequence[int]] = None,
        aux_feature: str = "c4",
    ) -> None:
        super().__init__()
        check_choice("head", head, HEADS)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        for name in (feature, aux_feature):
            if name not in backbone.out_channels:
                raise ValueError(
                    f"{name!r} is not a backbone feature; choose from {list(backbone.out_channels)}"
                )
        self.head = head
        self.num_classes = num_classes
        self.feature = feature
        self.aux_feature = aux_feature
        if head == "fpn":
            self.backbone: nn.Module = BackboneWithFPN(
                backbone, levels=FPN_LEVELS, out_channels=fpn_channels, extra_blocks=None
            )
            strides = dict(zip(FPN_LEVELS, self.backbone.strides))
            self.classifier: nn.Module = SemanticFPNHead(
                fpn_channels, strides, num_classes, channels=channels, norm=norm
            )
        else:
            self.backbone = backbone
            rates = (
                tuple(atrous_rates) if atrous_rates else deeplab_rates(backbone.strides[feature])
            )
            self.classifier = DeepLabHead(backbone.out_channels[feature], num_classes, rates)
        self.aux_classifier: Optional[nn.Module] = (
            FCNHead(backbone.out_channels[aux_feature], num_classes) if aux else None
        )

    @property
    def body(self) -> DCBNet:
        """The backbone network (inside the FPN wrapper for ``"fpn"``)."""
        return self.backbone.body if isinstance(self.backbone, BackboneWithFPN) else self.backbone

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.body(x)
        if isinstance(self.backbone, BackboneWithFPN):
            # BackboneWithFPN.forward in two steps, so the auxiliary head can read the raw features.
            pyramid = self.backbone.fpn(OrderedDict((k, features[k]) for k in self.backbone.levels))
            logits = self.classifier(pyramid)
        else:
            logits = self.classifier(features[self.feature])
        result = OrderedDict(
            out=F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        )
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features[self.aux_feature])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result


def create_segmentation_model(
    backbone: Union[str, DCBNet] = "resnet18",
    head: Literal["fpn", "deeplabv3"] = "fpn",
    num_classes: int = 21,
    in_channels: int = 3,
    aux: bool = False,
    backbone_kwargs: Optional[dict[str, Any]] = None,
    head_kwargs: Optional[dict[str, Any]] = None,
) -> SegmentationModel:
    """A :class:`SegmentationModel` over a backbone (or the preset named ``backbone``).

    Args:
        backbone: a :class:`DCBNet`, or a preset of
            :func:`~dck_lightning.models.registry.create_backbone`.
        head: ``"fpn"`` or ``"deeplabv3"``.
        num_classes: classes, background included.
        in_channels: image channels (preset names only).
        aux: add the auxiliary FCN head.
        backbone_kwargs: :class:`DCBNet` arguments overriding the preset's (preset names only).
        head_kwargs: further :class:`SegmentationModel` arguments (``fpn_channels``,
            ``channels``, ``norm``, ``feature``, ``atrous_rates``, ``aux_feature``).
    """
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, in_channels=in_channels, **dict(backbone_kwargs or {}))
    elif backbone_kwargs:
        raise ValueError("backbone_kwargs only apply to a backbone preset name")
    return SegmentationModel(backbone, head, num_classes, aux, **dict(head_kwargs or {}))


__all__ = [
    "DEEPLAB_RATES_AT_STRIDE_8",
    "HEADS",
    "SegmentationModel",
    "SemanticFPNHead",
    "create_segmentation_model",
    "deeplab_rates",
    "norm_layer",
]
