"""Backbones, heads and the model registry."""

from .backbone import FEATURE_NAMES, DCBNet, make_stem
from .classifier import ImageClassifier
from .neck import BackboneWithFPN, make_extra_block
from .registry import create_backbone, create_classifier, list_backbones
from .seednet import SeedNet
from .summary import count_flops, count_parameters

__all__ = [
    "FEATURE_NAMES",
    "BackboneWithFPN",
    "DCBNet",
    "ImageClassifier",
    "SeedNet",
    "count_flops",
    "count_parameters",
    "create_backbone",
    "create_classifier",
    "list_backbones",
    "make_extra_block",
    "make_stem",
]
