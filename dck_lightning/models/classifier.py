"""Classification head over the shared backbone: global average pool → dropout → linear."""

from __future__ import annotations

from torch import Tensor, nn

from .backbone import DCBNet


class ImageClassifier(nn.Module):
    """``linear(dropout(avgpool(backbone(x)[feature])))``.

    Args:
        backbone (DCBNet): any module returning a dict of features with ``out_channels``.
        num_classes (int): classes.
        feature (str): which feature map to pool. Default: the last (``"c5"``).
        dropout (float): dropout before the linear layer. Default: 0.
    """

    def __init__(self, backbone: DCBNet, num_classes: int, feature: str = "c5", dropout: float = 0.0) -> None:
        super().__init__()
        if feature not in backbone.out_channels:
            raise ValueError(f"feature must be one of {list(backbone.out_channels)}, got {feature!r}")
        self.backbone = backbone
        self.feature = feature
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(backbone.out_channels[feature], num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x)[self.feature])
