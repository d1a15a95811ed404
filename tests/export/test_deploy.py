"""freeze(): static DCKs become cropped Conv2d, adaptive ones FrozenDynamicConv2d, batch norms
fold into the convolutions before them — and the frozen model computes what the original does."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dck_lightning.deploy import FrozenDynamicConv2d, fold_batch_norms, freeze
from dck_lightning.layers import DCB, DeformConv2d, DynamicConv2d, ResidualDCB
from dck_lightning.models import SeedNet, create_classifier

TINY = {"widths": (8, 16, 16, 16), "depths": (1, 1, 1, 1)}


def trained_looking(model: nn.Module, sigma: float = 0.6, scale: float = 0.03) -> nn.Module:
    """Non-trivial state, as after training: perturbed weights (non-zero offsets and shifts),
    batch-norm statistics away from (0, 1), DCK extents that crop 5×5 and 7×7 kernels to 3×3."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
            if isinstance(module, DynamicConv2d) and max(module.kernel_size) > 3:
                module.extent.fill_(math.log(math.expm1(sigma)))
    for module in model.modules():
        if isinstance(module, DynamicConv2d):
            module.prune()
    return model.eval()


MODELS = {
    "seednet adaptive": (lambda: SeedNet(), (1, 28, 28)),
    "seednet static": (lambda: SeedNet(adaptive=False), (1, 28, 28)),
    "dcb_small": (lambda: create_classifier("dcb_small", 6, in_channels=3), (3, 32, 32)),
    "dcb_small static": (
        lambda: create_classifier("dcb_small", 6, in_channels=3, dck="static"),
        (3, 32, 32),
    ),
    "dcb_resnet18": (lambda: create_classifier("dcb_resnet18", 6, **TINY), (3, 64, 64)),
    "dcb blocks": (
        lambda: nn.Sequential(DCB(3, 8, dck_kernel_size=5), ResidualDCB(8, 8, stride=2)),
        (3, 16, 16),
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    "dtype, scale, tolerance",
    # float32: the 1e-5. float64, with larger weights: the folding is exact algebra.
    [(torch.float32, 0.03, 1e-5), (torch.float64, 0.1, 1e-10)],
)
def test_frozen_model_equals_the_original(name, dtype, scale, tolerance):
    make, shape = MODELS[name]
    model = trained_looking(make(), scale=scale).to(dtype)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        expected = model(x)
    frozen = freeze(model)
    assert not any(isinstance(m, DynamicConv2d) for m in frozen.modules())
    assert any(isinstance(m, DynamicConv2d) for m in model.modules())  # the original is kept
    with torch.no_grad():
        out = frozen(x)
    assert expected.abs().max() > 0.1  # outputs of a size where 1e-5 means something
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=0)


def test_static_dcks_become_cropped_conv2d_with_the_mask_folded_in():
    model = trained_looking(SeedNet(adaptive=False))  # 7×7 cropped to 3×3
    first = model.features[0]
    assert first.kernel_size == (7, 7) and first.effective_kernel_size == (3, 3)
    frozen = freeze(model)
    pad, conv = frozen.features[0]  # "valid" DCK cropped: crop the input, then the 3×3 conv
    assert isinstance(pad, nn.ZeroPad2d) and pad.padding == (-2, -2, -2, -2)
    assert type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.padding == (0, 0)
    torch.testing.assert_close(conv.weight, first.effective_weight().detach())
    second = frozen.features[2]
    assert type(second) is nn.Conv2d and second.kernel_size == (3, 3)


def test_adaptive_dcks_keep_their_localisation_and_a_fixed_cropped_kernel():
    model = trained_looking(SeedNet())
    frozen = freeze(model)
    layer = frozen.features[0]
    assert isinstance(layer, FrozenDynamicConv2d)
    assert layer.weight.shape == (32, 1, 3, 3) and layer.radius == (1, 1)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_batch_norms_after_convolutions_are_folded():
    model = trained_looking(create_classifier("dcb_small", 6, in_channels=3))
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    frozen = freeze(model)
    left = [m for m in frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms > 10 and left == []
    deform = [m for m in frozen.modules() if isinstance(m, DeformConv2d)]
    assert deform and all(m.bias is not None for m in deform)  # the norm's shift landed here


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(SeedNet().train())
