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
    dcb_small,
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


# -- presets as typed classes, and weights from files --------------------------------------------


def test_presets_are_dcbnet_classes_with_their_values_as_defaults():
    from dck_lightning.models import BACKBONES, backbone_config, dcb_small

    assert set(BACKBONES) == set(list_backbones()) and BACKBONES["dcb_small"] is dcb_small
    config = backbone_config("dcb_small")
    assert config["class_path"] == "dck_lightning.models.dcb_small"
    assert config["init_args"] == {
        "widths": [32, 64, 96, 128],
        "depths": [1, 1, 1, 1],
        "dcb_stages": [3, 4],
        "dck": "adaptive",
        "deform": True,
        "gcm": True,
        "dck_kernel_size": 5,
        "center_constraint": [2.0, 2.0],
        "dck_init_extent": None,
        "stem": "small",
        "stem_width": None,
        "stem_stride": 2,
        "backend": None,
        "downsample": "conv",
    }
    net = dcb_small(in_channels=1, dck="static")
    assert isinstance(net, DCBNet) and net.out_channels["c5"] == 128
    assert not any(m.adaptive for m in net.modules() if isinstance(m, DynamicConv2d))
    assert backbone_config("resnet18")["init_args"]["dcb_stages"] == []
    with pytest.raises(ValueError, match=r"has no argument\(s\) \['dkc'\]"):
        backbone_config({"class_path": "dcb_small", "init_args": {"dkc": "static"}})


def _torchvision_file(tmp_path, arch: str) -> tuple:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)().eval()
    for module in reference.modules():  # non-trivial batch-norm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_plain_presets_reproduce_torchvision_features_from_its_weights(tmp_path, arch):
    from dck_lightning.models import load_backbone_weights

    reference, path = _torchvision_file(tmp_path, arch)
    ours = create_backbone(arch).eval()
    report = load_backbone_weights(ours, path)
    assert not report.missing and not report.other_shape
    assert report.unused == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = ours(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        for name, layer in zip(("c2", "c3", "c4", "c5"), ("layer1", "layer2", "layer3", "layer4")):
            y = getattr(reference, layer)(y)
            torch.testing.assert_close(features[name], y, rtol=0, atol=0)


def test_dcb_preset_loads_what_maps_from_torchvision_and_reports_the_rest(tmp_path, capsys):
    from dck_lightning.models import load_backbone_weights

    reference, path = _torchvision_file(tmp_path, "resnet18")
    net = create_backbone("dcb_resnet18", dck_kernel_size=3)
    report = load_backbone_weights(net, path)
    state = reference.state_dict()
    own = net.state_dict()
    # Stem and the plain stages 1-2: every tensor; DCB stages: the BasicBlock's 3×3 convs,
    # norms and shortcuts in the DCK conv block, the second conv block and the shortcut.
    torch.testing.assert_close(own["stem.0.weight"], state["conv1.weight"])
    torch.testing.assert_close(own["stages.1.1.conv2.weight"], state["layer2.1.conv2.weight"])
    torch.testing.assert_close(own["stages.2.0.dck.conv.weight"], state["layer3.0.conv1.weight"])
    torch.testing.assert_close(
        own["stages.3.1.conv.norm.running_var"], state["layer4.1.bn2.running_var"]
    )
    torch.testing.assert_close(
        own["stages.2.0.shortcut.0.weight"], state["layer3.0.downsample.0.weight"]
    )
    assert (
        "stages.2.0.deform.weight" in report.missing
        and "stages.2.0.gcm.gef.0.weight" in report.missing
    )
    assert len(report.loaded) == len([k for k in state if not k.startswith("fc.")])
    text = str(report)
    assert text.startswith(
        f"backbone_weights {path} (torchvision ResNet): loaded 120 of the backbone's 252"
    )
    assert "stages.2.0.dck.conv.extent" in text.split("not in the file:")[1]
    # A 5×5 DCK cannot take the 3×3 kernel: reported as another shape, not loaded.
    wide = load_backbone_weights(create_backbone("dcb_resnet18"), path)
    assert "stages.2.0.dck.conv.weight (256, 128, 5, 5) vs (256, 128, 3, 3)" in wide.other_shape


def test_backbone_weights_errors_name_the_file(tmp_path):
    from dck_lightning.models import load_backbone_weights

    net = create_backbone("resnet18", **TINY)
    with pytest.raises(FileNotFoundError, match="no such file .*nothing.pth"):
        load_backbone_weights(net, tmp_path / "nothing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth is not a readable torch file"):
        load_backbone_weights(net, tmp_path / "junk.pth")
    torch.save({"state_dict": {"model.head.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="other.ckpt has no 'backbone.\\*' tensors"):
        load_backbone_weights(net, tmp_path / "other.ckpt")


def test_seednet_plain_twin_has_the_same_shapes_with_plain_convolutions():
    plain, dck = SeedNet(plain=True), SeedNet(adaptive=False)
    assert [type(m) for m in plain.features] == [nn.Conv2d, nn.MaxPool2d, nn.Conv2d, nn.MaxPool2d]
    assert plain.features[0].padding == "valid" and plain.features[2].padding == "same"
    x = torch.randn(2, 1, 28, 28)
    assert plain.features(x).shape == dck.features(x).shape == (2, 64, 5, 5)
    assert plain(x).shape == (2, 10)


@pytest.mark.parametrize("dck", ["adaptive", "static"])
def test_dck_init_extent_reaches_every_dck(dck):
    """SeedNet(init_extent) and DCBNet(dck_init_extent) start every DCK at that σ; left out,
    each DCK starts at its kernel size (DynamicConv2d's default)."""
    seed = SeedNet(adaptive=dck == "adaptive", init_extent=30.0)
    dcb = dcb_small(dck=dck, dck_init_extent=30.0, **TINY)
    for net in (seed, dcb):
        layers = [m for m in net.modules() if isinstance(m, DynamicConv2d)]
        assert layers and all(torch.allclose(m.sigma, torch.tensor(30.0)) for m in layers)
        assert all(m.receptive_field_mask().min() > 0.99 for m in layers)  # the flat window
    for net in (SeedNet(adaptive=dck == "adaptive"), dcb_small(dck=dck, **TINY)):
        for m in (m for m in net.modules() if isinstance(m, DynamicConv2d)):
            assert torch.allclose(m.sigma, torch.tensor(float(max(m.kernel_size))))
    assert not any(isinstance(m, DynamicConv2d) for m in dcb_small(dck="off", **TINY).modules())


def test_avg_downsample_reads_every_pixel_with_the_same_parameters(tmp_path):
    """ResNet-D shortcuts: 2×2 average then 1×1 conv, in plain and DCB stages alike."""
    from dck_lightning.models.backbone import AvgDownConv2d

    conv, avg = create_backbone("dcb_small"), create_backbone("dcb_small", downsample="avg")
    assert conv.state_dict().keys() == avg.state_dict().keys()
    shortcuts = [avg.stages[1][0].downsample[0], avg.stages[2][0].shortcut[0]]
    assert all(isinstance(m, AvgDownConv2d) for m in shortcuts)
    avg.load_state_dict(conv.state_dict())
    x = torch.randn(2, 32, 9, 9)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True), shortcuts[0].weight
    )
    torch.testing.assert_close(shortcuts[0](x), expected)
    assert shortcuts[0](x).shape == conv.stages[1][0].downsample[0](x).shape == (2, 64, 5, 5)
    features = avg(torch.randn(2, 3, 33, 33))
    assert [f.shape[-1] for f in features.values()] == [17, 9, 5, 3]
    with pytest.raises(ValueError, match="downsample must be one of"):
        DCBNet(downsample="max")
