"""Segmentation heads: shapes at the input resolution, torchvision parts reused, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import FeaturePyramidNetwork

from dck_lightning.models import BackboneWithFPN, DCBNet
from dck_lightning.models.segmentation import (
    SegmentationModel,
    SemanticFPNHead,
    create_segmentation_model,
    deeplab_rates,
)

TINY = {"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}
HEAD_KWARGS = {"fpn": {"fpn_channels": 16, "channels": 16}, "deeplabv3": {}}


def tiny_model(head: str, aux: bool, num_classes: int = 5, **kwargs) -> SegmentationModel:
    torch.manual_seed(0)
    return create_segmentation_model(
        "dcb_resnet18",
        head,
        num_classes,
        aux=aux,
        backbone_kwargs=TINY,
        head_kwargs={**HEAD_KWARGS[head], **kwargs},
    )


@pytest.mark.parametrize("aux", [False, True])
@pytest.mark.parametrize("head", ["fpn", "deeplabv3"])
@pytest.mark.parametrize("size", [(64, 64), (72, 56)])
def test_output_at_input_resolution(head: str, aux: bool, size: tuple[int, int]) -> None:
    model = tiny_model(head, aux)
    out = model(torch.rand(2, 3, *size))
    assert set(out) == ({"out", "aux"} if aux else {"out"})
    for logits in out.values():
        assert logits.shape == (2, 5, *size)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("aux", [False, True])
@pytest.mark.parametrize("head", ["fpn", "deeplabv3"])
def test_gradients_reach_the_backbone(head: str, aux: bool) -> None:
    model = tiny_model(head, aux)
    out = model(torch.rand(2, 3, 64, 64))
    target = torch.randint(0, 5, (2, 64, 64))
    loss = sum(F.cross_entropy(logits, target) for logits in out.values())
    loss.backward()
    stem = model.body.stem[0].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    if aux:  # the auxiliary head trains too
        assert model.aux_classifier[0].weight.grad.abs().sum() > 0


def test_fpn_head_is_torchvision_fpn_over_c2_to_c5_without_extra_levels() -> None:
    model = tiny_model("fpn", aux=False)
    assert isinstance(model.backbone, BackboneWithFPN)
    assert isinstance(model.backbone.fpn, FeaturePyramidNetwork)
    assert model.backbone.fpn.extra_blocks is None
    assert model.backbone.levels == ("c2", "c3", "c4", "c5")
    assert isinstance(model.classifier, SemanticFPNHead)
    # c2 (stride 4): one conv, no upsampling; c5 (stride 32): three conv + 2× up stages.
    convs = {
        k: sum(isinstance(m, torch.nn.Conv2d) for m in v.modules())
        for k, v in model.classifier.scale_heads.items()
    }
    assert convs == {"c2": 1, "c3": 1, "c4": 2, "c5": 3}


def test_deeplab_head_is_torchvision_aspp_with_aux_fcn() -> None:
    model = tiny_model("deeplabv3", aux=True)
    assert isinstance(model.classifier, DeepLabHead)
    assert isinstance(model.classifier[0], ASPP)
    assert isinstance(model.aux_classifier, FCNHead)
    assert model.aux_classifier[0].in_channels == TINY["widths"][2]  # c4
    rates = [m[0].dilation[0] for m in model.classifier[0].convs[1:4]]
    assert rates == [3, 6, 9]  # c5 has stride 32


def test_deeplab_rates_scale_with_stride() -> None:
    assert deeplab_rates(8) == (12, 24, 36)
    assert deeplab_rates(16) == (6, 12, 18)
    assert deeplab_rates(32) == (3, 6, 9)


def test_semantic_fpn_head_merges_at_finest_stride() -> None:
    head = SemanticFPNHead(8, {"p3": 8, "p4": 16}, num_classes=3, channels=8, norm="bn")
    features = {"p3": torch.rand(2, 8, 16, 16), "p4": torch.rand(2, 8, 8, 8)}
    assert head(features).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="powers of two"):
        SemanticFPNHead(8, {"p3": 8, "p4": 24}, num_classes=3)


def test_invalid_arguments() -> None:
    backbone = DCBNet(**TINY)
    with pytest.raises(ValueError, match="head"):
        SegmentationModel(backbone, "unet", 3)
    with pytest.raises(ValueError, match="not a backbone feature"):
        SegmentationModel(backbone, "deeplabv3", 3, feature="c6")
