"""Backbone interface, presets, SeedNet, the FPN neck and model summaries."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dck_lightning.layers import DeformConv2d, DynamicConv2d, GlobalContextModule, ResidualDCB
from dck_lightning.models import (
    BackboneWithFPN,
    DCBNet,
    SeedNet,
    count_flops,
    count_parameters,
    create_backbone,
    create_classifier,
    list_backbones,
)

TINY = {"widths": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "dck_kernel_size": 3}


def test_presets_listed():
    assert list_backbones() == ["dcb_resnet18", "dcb_resnet34", "dcb_small", "resnet18", "resnet34"]
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*dcb_small"):
        create_backbone("vgg")


@pytest.mark.parametrize("stem_stride", [1, 2, 4])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_features_at_declared_strides_and_channels(stem_stride, in_channels):
    net = DCBNet(in_channels=in_channels, stem_stride=stem_stride, **TINY)
    features = net(torch.randn(2, in_channels, 64, 64))
    assert list(features) == ["c2", "c3", "c4", "c5"]
    for name, feature in features.items():
        assert feature.shape[1] == net.out_channels[name]
        assert feature.shape[-1] == 64 // net.strides[name]
    assert net.strides == {
        "c2": stem_stride,
        "c3": 2 * stem_stride,
        "c4": 4 * stem_stride,
        "c5": 8 * stem_stride,
    }


def test_dcb_stages_and_switches_reach_the_blocks():
    net = DCBNet(dcb_stages=(2, 4), dck="static", deform=False, gcm=True, **TINY)
    stage_kinds = [type(stage[0]).__name__ for stage in net.stages]
    assert stage_kinds == ["BasicBlock", "ResidualDCB", "BasicBlock", "ResidualDCB"]
    dynamic = [m for m in net.modules() if isinstance(m, DynamicConv2d)]
    assert dynamic and all(not m.adaptive for m in dynamic)
    assert not any(isinstance(m, DeformConv2d) for m in net.modules())
    assert sum(isinstance(m, GlobalContextModule) for m in net.modules()) == 2


def test_default_dcb_backbone_has_dcbs_in_later_stages():
    net = create_backbone("dcb_resnet18", widths=(8, 16, 24, 32))
    assert [isinstance(stage[0], ResidualDCB) for stage in net.stages] == [False, False, True, True]


def test_resnet18_baseline_matches_torchvision_layout():
    ours = create_classifier("resnet18", num_classes=10)
    theirs = torchvision.models.resnet18(num_classes=10)
    assert count_parameters(ours) == count_parameters(theirs)


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="dcb_stages must be stage numbers"):
        DCBNet(dcb_stages=(5,))
    with pytest.raises(ValueError, match="dck must be one of"):
        DCBNet(dck="dynamic")
    with pytest.raises(ValueError, match="stem_stride must be one of"):
        DCBNet(stem_stride=3)


def test_seednet_matches_the_design_document():
    net = SeedNet()
    conv1, pool1, conv2, pool2 = net.features
    assert (
        isinstance(conv1, DynamicConv2d)
        and conv1.out_channels == 32
        and conv1.kernel_size == (7, 7)
    )
    assert conv1.padding == (0, 0) and conv1.center_constraint == (2.0, 2.0)
    assert (
        isinstance(conv2, DynamicConv2d)
        and conv2.out_channels == 64
        and conv2.kernel_size == (3, 3)
    )
    assert conv2.padding == (1, 1)
    assert isinstance(pool1, nn.MaxPool2d) and isinstance(pool2, nn.MaxPool2d)
    flatten, dense1, relu, dropout, dense2 = net.classifier
    assert dense1.in_features == 5 * 5 * 64 and dense1.out_features == 256
    assert isinstance(relu, nn.ReLU) and dropout.p == 0.5 and dense2.out_features == 10
    x = torch.randn(3, 1, 28, 28)
    assert net.features[:2](x).shape == (3, 32, 11, 11)
    assert net.features(x).shape == (3, 64, 5, 5)
    assert net(x).shape == (3, 10)


def test_fpn_neck_levels_and_strides():
    neck = BackboneWithFPN(
        create_backbone("resnet18", **TINY), levels=("c3", "c4", "c5"), out_channels=16
    )
    out = neck(torch.randn(1, 3, 128, 128))
    assert list(out) == ["c3", "c4", "c5", "p6", "p7"]
    assert [v.shape[-1] for v in out.values()] == [128 // s for s in neck.strides]
    assert all(v.shape[1] == 16 for v in out.values())


def test_flops_and_parameters_are_counted():
    net = create_classifier("dcb_small", 6)
    flops = count_flops(net, torch.randn(1, 3, 32, 32))
    assert flops > 1e6
    assert count_parameters(net) > count_parameters(net, trainable_only=True) - 1
