"""Bad arguments raise ValueError naming the argument and the allowed values."""

from __future__ import annotations

import pytest
import torch

from dck_lightning.layers import (
    DCB,
    ConvBlock,
    DeformConv2d,
    DynamicConv2D,
    DynamicConv2d,
    deform_conv2d,
)

CASES = [
    (lambda: DynamicConv2d(4, 8, 4), "kernel_size must be odd"),
    (lambda: DynamicConv2d(4, 8, 0), "kernel_size must be a positive integer"),
    (lambda: DynamicConv2d(4, 8, 3, center_constraint=(-1, 2)), "center_constraint must be >= 0"),
    (
        lambda: DynamicConv2d(6, 8, 3, groups=4),
        r"in_channels \(6\) must be divisible by groups \(4\)",
    ),
    (
        lambda: DynamicConv2d(4, 6, 3, groups=4),
        r"out_channels \(6\) must be divisible by groups \(4\)",
    ),
    (lambda: DynamicConv2d(4, 8, 3, padding="full"), r"padding must be one of \('same', 'valid'\)"),
    (
        lambda: DynamicConv2d(4, 8, 3, extent="pixel"),
        r"extent must be one of \('layer', 'channel'\)",
    ),
    (
        lambda: DynamicConv2d(4, 8, 3, backend="cuda"),
        r"backend must be one of \('auto', 'torch', 'torchvision'\)",
    ),
    (lambda: DynamicConv2d(4, 8, 3, max_scale=0.5), "max_scale must be >= 1"),
    (lambda: DynamicConv2d(4, 8, 3, crop_threshold=1.5), r"crop_threshold must be in \[0, 1\)"),
    (lambda: DynamicConv2d(4, 8, 3, init_extent=0), r"init_extent must be > 0 \(taps\), got 0"),
    (lambda: DynamicConv2d(4, 8, 3, init_extent=-1.0), r"init_extent must be > 0 \(taps\), got -1"),
    (
        lambda: DeformConv2d(6, 8, 3, groups=4),
        r"in_channels \(6\) must be divisible by groups \(4\)",
    ),
    (
        lambda: DeformConv2d(4, 8, 3, offset_groups=3),
        r"in_channels \(4\) must be divisible by offset_groups \(3\)",
    ),
    (lambda: DeformConv2d(4, 8, 3, max_offset=-1), "max_offset must be > 0"),
    (lambda: DeformConv2d(4, 8, 3, backend="fast"), "backend must be one of"),
    (
        lambda: ConvBlock(4, 8, conv="fancy"),
        r"conv must be one of \('plain', 'adaptive', 'static', 'deform'\)",
    ),
    (lambda: DCB(4, 8, dck="dynamic"), r"dck must be one of \('adaptive', 'static', 'off'\)"),
    (
        lambda: DynamicConv2D(filters=4, kernel_size=3, center_constraint=[(1, 2), (2, 2)]),
        "must be symmetric",
    ),
]


@pytest.mark.parametrize("make,message", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_deform_conv2d_checks_offset_channels():
    x, weight = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match="offset.shape"):
        deform_conv2d(x, torch.randn(1, 17, 5, 5), weight, padding=1, backend="torch")
    with pytest.raises(ValueError, match="mask.shape"):
        deform_conv2d(
            x,
            torch.zeros(1, 18, 5, 5),
            weight,
            padding=1,
            mask=torch.ones(1, 8, 5, 5),
            backend="torch",
        )


def test_lazy_alias_checks_groups_on_first_call():
    layer = DynamicConv2D(filters=4, kernel_size=3, groups=2)
    with pytest.raises(ValueError, match=r"in_channels \(3\) must be divisible by groups \(2\)"):
        layer(torch.randn(1, 3, 6, 6))


@pytest.mark.parametrize(
    "offset_shape, mask_shape, message",
    [
        ((1, 18, 4, 5), None, r"offset output dims: \(4, 5\) - computed output dims: \(5, 5\)"),
        (
            (1, 18, 5, 5),
            (1, 9, 5, 6),
            r"mask output dims: \(5, 6\) - computed output dims: \(5, 5\)",
        ),
        ((2, 18, 5, 5), None, "invalid batch size of offset: 2, input has 1"),
        ((1, 18, 5, 5), (3, 9, 5, 5), "invalid batch size of mask: 3, input has 1"),
    ],
)
def test_torch_backend_checks_offset_and_mask_against_the_output_size(
    offset_shape, mask_shape, message
):
    """As torchvision's kernel does: offsets and mask hold one entry per output position."""
    x, weight = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    offset = torch.zeros(offset_shape)
    mask = None if mask_shape is None else torch.ones(mask_shape)
    with pytest.raises(RuntimeError):  # torchvision's own check of the same inputs
        deform_conv2d(x, offset, weight, padding=1, mask=mask, backend="torchvision")
    with pytest.raises(ValueError, match=message):
        deform_conv2d(x, offset, weight, padding=1, mask=mask, backend="torch")
