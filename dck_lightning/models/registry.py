"""Named backbone presets and the classification model factory.

``create_backbone("dcb_resnet18", in_channels=1, dck="static")`` builds a preset with any
:class:`~dck_lightning.models.backbone.DCBNet` argument overridden; :func:`list_backbones`
lists the names. ``resnet18``/``resnet34`` are the plain baselines with the same stage
layout (torchvision's BasicBlock in every stage) for ablations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

from torch import nn

from .backbone import DCBNet
from .classifier import ImageClassifier
from .seednet import SeedNet

_PRESETS: dict[str, dict[str, Any]] = {
    # For 28×28 / 32×32 inputs: narrow, one block per stage, light stem.
    "dcb_small": {
        "widths": (32, 64, 96, 128),
        "depths": (1, 1, 1, 1),
        "dcb_stages": (3, 4),
        "stem": "small",
        "stem_stride": 2,
        "dck_kernel_size": 5,
    },
    "dcb_resnet18": {"widths": (64, 128, 256, 512), "depths": (2, 2, 2, 2), "dcb_stages": (3, 4)},
    "dcb_resnet34": {"widths": (64, 128, 256, 512), "depths": (3, 4, 6, 3), "dcb_stages": (3, 4)},
    "resnet18": {"widths": (64, 128, 256, 512), "depths": (2, 2, 2, 2), "dcb_stages": ()},
    "resnet34": {"widths": (64, 128, 256, 512), "depths": (3, 4, 6, 3), "dcb_stages": ()},
}

CLASSIFIERS = ("seednet",)


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(_PRESETS)


def create_backbone(name: str, **kwargs: Any) -> DCBNet:
    """Build the backbone preset ``name`` with ``kwargs`` overriding its arguments."""
    if name not in _PRESETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}")
    return DCBNet(**{**_PRESETS[name], **kwargs})


def create_classifier(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    dropout: float = 0.0,
    pool: str = "avg",
    feature: Union[str, Sequence[str]] = "c5",
    **kwargs: Any,
) -> nn.Module:
    """A classifier: ``"seednet"`` (the design document's model) or a backbone preset + head."""
    if name == "seednet":
        return SeedNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
    if name not in _PRESETS:
        raise ValueError(
            f"unknown model {name!r}; choose one of {[*CLASSIFIERS, *list_backbones()]}"
        )
    return ImageClassifier(
        create_backbone(name, in_channels=in_channels, **kwargs),
        num_classes,
        feature=feature,
        dropout=dropout,
        pool=pool,
    )
