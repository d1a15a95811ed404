"""FPN neck over the shared backbone (``torchvision.ops.FeaturePyramidNetwork``).

:class:`BackboneWithFPN` is the adapter torchvision's detectors expect: ``forward(x)`` returns
an ``OrderedDict`` of pyramid levels and ``out_channels`` is one int. It plays the role of
``torchvision.models.detection.backbone_utils.BackboneWithFPN`` for a backbone that already
returns a dict of features (ours) instead of named children.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal, Optional

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from .backbone import DCBNet


def make_extra_block(kind: Optional[str], channels: int) -> Optional[ExtraFPNBlock]:
    """``"p6p7"`` (RetinaNet/FCOS: two strided 3×3 convs on P5), ``"pool"`` (Faster R-CNN: max-pool P5) or ``None``."""
    if kind is None:
        return None
    if kind == "p6p7":
        return LastLevelP6P7(channels, channels)
    if kind == "pool":
        return LastLevelMaxPool()
    raise ValueError(f"extra_blocks must be 'p6p7', 'pool' or None, got {kind!r}")


class BackboneWithFPN(nn.Module):
    """Shared backbone + ``torchvision.ops.FeaturePyramidNetwork`` over chosen levels.

    Args:
        backbone (DCBNet): returns a dict of features with ``out_channels`` and ``strides``.
        levels (Sequence[str]): backbone features fed to the FPN. Default: ``("c3", "c4", "c5")``.
        out_channels (int): FPN channels. Default: 256.
        extra_blocks (str, optional): ``"p6p7"``, ``"pool"`` or ``None``, see :func:`make_extra_block`.

    Attributes:
        out_channels (int): channels of every returned level.
        strides (list[int]): stride of every returned level, in order.
    """

    def __init__(
        self,
        backbone: DCBNet,
        levels: Sequence[str] = ("c3", "c4", "c5"),
        out_channels: int = 256,
        extra_blocks: Optional[Literal["p6p7", "pool"]] = "p6p7",
    ) -> None:
        super().__init__()
        unknown = [level for level in levels if level not in backbone.out_channels]
        if unknown:
            raise ValueError(
                f"levels {unknown} are not backbone features; choose from {list(backbone.out_channels)}"
            )
        self.body = backbone
        self.levels = tuple(levels)
        self.fpn = FeaturePyramidNetwork(
            [backbone.out_channels[level] for level in self.levels],
            out_channels,
            extra_blocks=make_extra_block(extra_blocks, out_channels),
        )
        self.out_channels = out_channels
        strides = [backbone.strides[level] for level in self.levels]
        n_extra = {"p6p7": 2, "pool": 1, None: 0}[extra_blocks]
        self.strides = strides + [strides[-1] * 2 ** (i + 1) for i in range(n_extra)]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((level, features[level]) for level in self.levels))
