"""Classification head over the shared backbone: global pooling → dropout → linear.

Pooling is ``"avg"`` (ResNet's), ``"max"`` or ``"avgmax"`` (both, concatenated, as timm's
``catavgmax``): max pooling keeps small objects on cluttered backgrounds visible, where an
average over the whole map dilutes them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.validation import check_choice

from .backbone import DCBNet


class ImageClassifier(nn.Module):
    """``linear(dropout(pool(backbone(x)[feature])))``.

    Args:
        backbone (DCBNet): any module returning a dict of features with ``out_channels``.
        num_classes (int): classes.
        feature (str): which feature map to pool. Default: the last (``"c5"``).
        dropout (float): dropout before the linear layer. Default: 0.
        pool (str): ``"avg"``, ``"max"`` or ``"avgmax"``. Default: ``"avg"``.
    """

    def __init__(
        self, backbone: DCBNet, num_classes: int, feature: str = "c5", dropout: float = 0.0, pool: str = "avg"
    ) -> None:
        super().__init__()
        if feature not in backbone.out_channels:
            raise ValueError(f"feature must be one of {list(backbone.out_channels)}, got {feature!r}")
        self.backbone = backbone
        self.feature = feature
        check_choice("pool", pool, ("avg", "max", "avgmax"))
        pools = {"avg": [nn.AdaptiveAvgPool2d(1)], "max": [nn.AdaptiveMaxPool2d(1)]}
        pools["avgmax"] = pools["avg"] + pools["max"]
        self.pools = nn.ModuleList(pools[pool])
        channels = backbone.out_channels[feature] * len(self.pools)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)[self.feature]
        return self.head(torch.cat([pool(features) for pool in self.pools], dim=1))
