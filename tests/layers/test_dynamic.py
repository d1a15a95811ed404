"""DynamicConv2d (the DCK): equivalences with plain convolutions, shapes, cropping, Keras alias."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dck_lightning.layers import DynamicConv2D, DynamicConv2d
from dck_lightning.layers import dynamic as dynamic_module

BACKENDS = ["torch", "torchvision"]


def set_position(layer: DynamicConv2d, shift=(0.0, 0.0), scale=(1.0, 1.0)) -> None:
    """Make the localisation net predict a constant shift and scale everywhere."""
    c = layer.center_constraint
    raw_shift = [math.atanh(t / c_i) if c_i else 0.0 for t, c_i in zip(shift, c)]
    raw_scale = [math.atanh(math.log(s) / math.log(layer.max_scale)) for s in scale]
    with torch.no_grad():
        layer.localization.conv.weight.zero_()
        layer.localization.conv.bias.copy_(torch.tensor(raw_shift + raw_scale))


def set_sigma(layer: DynamicConv2d, sigma: float) -> None:
    with torch.no_grad():
        layer.extent.fill_(math.log(math.expm1(sigma)))


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_localisation_equals_conv2d_with_masked_weights(x, backend):
    layer = DynamicConv2d(3, 4, 5, backend=backend, init_extent=1.5)
    expected = F.conv2d(
        x, layer.weight * layer.receptive_field_mask((2, 2)).unsqueeze(1), layer.bias, padding=2
    )
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_two_equals_dilation_two(x, backend):
    layer = DynamicConv2d(3, 4, 3, backend=backend, max_scale=3.0)
    set_position(layer, scale=(2.0, 2.0))
    expected = F.conv2d(x, layer.effective_weight(), layer.bias, padding=2, dilation=2)
    torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shift", [(1.0, -2.0), (-1.0, 0.0)])
def test_integer_shift_equals_shifted_conv(x, backend, shift):
    layer = DynamicConv2d(3, 4, 3, backend=backend, center_constraint=(3, 3))
    set_position(layer, shift=shift)
    margin = 4
    full = F.conv2d(F.pad(x, [margin] * 4), layer.effective_weight(), layer.bias, padding=1)
    ty, tx = int(shift[0]), int(shift[1])
    h, w = x.shape[-2:]
    expected = full[..., margin + ty : margin + ty + h, margin + tx : margin + tx + w]
    torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("adaptive", [True, False])
def test_very_wide_mask_equals_plain_conv(x, adaptive):
    layer = DynamicConv2d(3, 4, 5, adaptive=adaptive, init_extent=1e4)
    torch.testing.assert_close(
        layer(x), F.conv2d(x, layer.weight, layer.bias, padding=2), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("adaptive", [True, False])
def test_cropped_kernel_runs_the_smaller_conv(x, adaptive):
    layer = DynamicConv2d(3, 4, 7, adaptive=adaptive, backend="torch")
    set_sigma(layer, 0.6)  # taps at distance 2 get exp(-0.5·(2/0.6)²) < 0.05
    assert layer.effective_kernel_size == (3, 3)
    small = layer.weight[:, :, 2:5, 2:5] * layer.receptive_field_mask((1, 1)).unsqueeze(1)
    expected = F.conv2d(x, small, layer.bias, padding=1)
    seen = []
    conv2d, sampled_conv2d = F.conv2d, dynamic_module.affine_sampled_conv2d

    def spy_conv(input, weight, *args, **kwargs):
        seen.append(("conv2d", tuple(weight.shape[-2:])))
        return conv2d(input, weight, *args, **kwargs)

    def spy_sampled(input, base, step, taps, weight, *args, **kwargs):
        seen.append(("sampled_conv2d", tuple(weight.shape[-2:]), taps.shape[0]))  # taps sampled
        return sampled_conv2d(input, base, step, taps, weight, *args, **kwargs)

    with (
        mock.patch.object(dynamic_module.F, "conv2d", spy_conv),
        mock.patch.object(dynamic_module, "affine_sampled_conv2d", spy_sampled),
    ):
        out = layer(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (("sampled_conv2d", (3, 3), 9) if adaptive else ("conv2d", (3, 3))) in seen


def test_crop_is_exact_truncation_and_per_channel_union(x):
    layer = DynamicConv2d(3, 4, 7, adaptive=False, extent="channel")
    with torch.no_grad():
        layer.extent[:, 0].fill_(math.log(math.expm1(0.5)))  # y: 3 rows for every channel...
        layer.extent[:, 1].fill_(math.log(math.expm1(0.5)))
        layer.extent[2, 1].fill_(math.log(math.expm1(1.0)))  # ...x: one channel keeps 5 columns
    assert layer.effective_kernel_size == (3, 5)
    mask = layer.receptive_field_mask()
    assert mask.shape == (4, 3, 5)
    expected = F.conv2d(
        x, layer.weight[:, :, 2:5, 1:6] * mask.unsqueeze(1), layer.bias, padding=(1, 2)
    )
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_cropped_kernel_can_grow_back(x):
    layer = DynamicConv2d(3, 4, 7, adaptive=False)
    set_sigma(layer, 0.6)
    optimizer = torch.optim.Adam([layer.extent], lr=0.1)
    target = F.conv2d(
        x, layer.weight.detach(), layer.bias.detach(), padding=3
    )  # the full 7×7 kernel
    for _ in range(30):
        optimizer.zero_grad()
        F.mse_loss(layer(x), target).backward()
        optimizer.step()
    assert layer.effective_kernel_size[0] > 3


def conv_output_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


@settings(max_examples=25, deadline=None)
@given(
    k=st.sampled_from([1, 3, 5, 7]),
    stride=st.sampled_from([1, 2]),
    padding=st.sampled_from(["same", "valid", 0, 1, 2]),
    height=st.integers(7, 12),
    width=st.integers(7, 12),
    adaptive=st.booleans(),
)
def test_output_shape_matches_conv2d(k, stride, padding, height, width, adaptive):
    layer = DynamicConv2d(
        2, 3, k, stride=stride, padding=padding, adaptive=adaptive, backend="torch"
    )
    pad = {"same": k // 2, "valid": 0}.get(padding, padding)
    out = layer(torch.randn(1, 2, height, width))
    expected = (conv_output_size(height, k, stride, pad), conv_output_size(width, k, stride, pad))
    assert out.shape == (1, 3, *expected)
    if padding == "same" and stride == 1:
        assert out.shape[-2:] == (height, width)


def test_gradients_reach_weight_extent_and_localisation(x):
    layer = DynamicConv2d(3, 4, 5, backend="torch", init_extent=2.0)
    layer(x).square().sum().backward()
    for name in ("weight", "bias", "extent", "localization.conv.weight", "localization.conv.bias"):
        grad = layer.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_keras_alias_translates_the_design_document_example():
    layer = DynamicConv2D(
        filters=32, kernel_size=(7, 7), center_constraint=[(2, 2), (2, 2)], trainable=True
    )
    out = layer(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 32, 22, 22)  # Keras' default padding is "valid"
    assert type(layer) is DynamicConv2d
    assert layer.in_channels == 1 and layer.weight.shape == (32, 1, 7, 7)
    assert layer.center_constraint == (2.0, 2.0)
    # Zero-initialised localisation: equals the conv of the masked weights.
    same = DynamicConv2D(filters=8, kernel_size=3, padding="same")
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(
        same(x), F.conv2d(x, same.effective_weight(), same.bias, padding=1), atol=1e-5, rtol=1e-5
    )


def test_keras_alias_trainable_false_freezes():
    layer = DynamicConv2D(filters=4, kernel_size=3, trainable=False)
    layer(torch.randn(1, 2, 8, 8))
    assert not any(p.requires_grad for p in layer.parameters())


def test_repr_shows_non_default_arguments():
    text = repr(DynamicConv2d(3, 8, 5, stride=2, adaptive=False, extent="channel"))
    assert "stride=(2, 2)" in text and "adaptive=False" in text and "extent='channel'" in text
    assert "dilation" not in text and "groups" not in text
