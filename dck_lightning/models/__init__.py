"""Backbones, heads and the model registry."""

from .backbone import FEATURE_NAMES, DCBNet, make_stem
from .classifier import ImageClassifier
from .neck import BackboneWithFPN, make_extra_block
from .registry import (
    BACKBONES,
    backbone_config,
    build_backbone,
    create_backbone,
    create_classifier,
    dcb_resnet18,
    dcb_resnet34,
    dcb_small,
    list_backbones,
    resnet18,
    resnet34,
)
from .seednet import SeedNet
from .summary import count_flops, count_parameters
from .weights import load_backbone_weights

__all__ = [
    "BACKBONES",
    "FEATURE_NAMES",
    "BackboneWithFPN",
    "DCBNet",
    "ImageClassifier",
    "SeedNet",
    "backbone_config",
    "build_backbone",
    "count_flops",
    "count_parameters",
    "create_backbone",
    "create_classifier",
    "dcb_resnet18",
    "dcb_resnet34",
    "dcb_small",
    "list_backbones",
    "load_backbone_weights",
    "make_extra_block",
    "make_stem",
    "resnet18",
    "resnet34",
]
