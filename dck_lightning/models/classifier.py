"""Classification head over the shared backbone: global pooling → dropout → linear.

Pooling is ``"avg"`` (ResNet's), ``"max"`` or ``"avgmax"`` (both, concatenated, as timm's
``catavgmax``): max pooling keeps small objects on cluttered backgrounds visible, where an
average over the whole map dilutes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor, nn

from ..layers.validation import check_choice
from .backbone import DCBNet


class ImageClassifier(nn.Module):
    """``linear(dropout(pool(backbone(x)[feature])))``.

    Args:
        backbone (DCBNet): any module returning a dict of features with ``out_channels``.
        num_classes (int): classes.
        feature (str or Sequence[str]): feature map(s) to pool; several (or ``"all"``) are
            pooled and concatenated — a multi-scale head that sees the fine, early levels
            as well as the deep ones. Default: the last (``"c5"``).
        dropout (float): dropout before the linear layer. Default: 0.
        pool (str): ``"avg"``, ``"max"`` or ``"avgmax"``. Default: ``"avg"``.
    """

    def __init__(
        self,
        backbone: DCBNet,
        num_classes: int,
        feature: Union[str, Sequence[str]] = "c5",
        dropout: float = 0.0,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        names = (
            list(backbone.out_channels)
            if feature == "all"
            else [feature]
            if isinstance(feature, str)
            else list(feature)
        )
        unknown = [name for name in names if name not in backbone.out_channels]
        if unknown or not names:
            raise ValueError(
                f"feature must be 'all' or among {list(backbone.out_channels)}, got {feature!r}"
            )
        self.backbone = backbone
        self.features = names
        check_choice("pool", pool, ("avg", "max", "avgmax"))
        pools = {"avg": [nn.AdaptiveAvgPool2d(1)], "max": [nn.AdaptiveMaxPool2d(1)]}
        pools["avgmax"] = pools["avg"] + pools["max"]
        self.pools = nn.ModuleList(pools[pool])
        channels = sum(backbone.out_channels[name] for name in names) * len(self.pools)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        pooled = [pool(features[name]) for name in self.features for pool in self.pools]
        return self.head(torch.cat(pooled, dim=1))
