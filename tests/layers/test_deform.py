"""DeformConv2d: plain-conv equivalence, the centre-approximation bound, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dck_lightning.layers import DeformConv2d, bound_offsets


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 4, 9, 10, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", ["torch", "torchvision"])
@pytest.mark.parametrize("stride", [1, 2])
def test_zero_offsets_equal_conv2d(x, backend, stride):
    layer = DeformConv2d(4, 6, 3, stride=stride, padding=1, modulated=False, backend=backend)
    expected = F.conv2d(x, layer.weight, layer.bias, stride=stride, padding=1)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_modulated_at_init_is_half_the_conv(x):
    """DCNv2's mask is sigmoid(0) = 0.5 at initialisation."""
    layer = DeformConv2d(4, 6, 3, bias=False)
    torch.testing.assert_close(
        layer(x), 0.5 * F.conv2d(x, layer.weight, padding=1), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("max_offset", [None, 0.75])
def test_offsets_stay_within_the_bound(x, max_offset):
    layer = DeformConv2d(4, 6, 3, max_offset=max_offset)
    with torch.no_grad():
        torch.nn.init.normal_(layer.offset_conv.weight)
        layer.offset_conv.weight.mul_(1000)
    offset, mask = layer.offsets_and_mask(x)
    norms = offset.view(2, 9, 2, *offset.shape[-2:]).norm(dim=2)
    bound = 1.5 if max_offset is None else max_offset
    assert norms.max() <= bound + 1e-6
    assert norms.max() > 0.9 * bound  # saturated, not trivially zero
    assert ((mask >= 0) & (mask <= 1)).all()


def test_bound_offsets_keeps_direction_and_zero():
    raw = torch.tensor([[3.0, 4.0], [0.0, 0.0]]).view(1, 4, 1, 1)
    out = bound_offsets(raw, 2.0).view(2, 2)
    assert torch.allclose(out[0] / out[0].norm(), torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], torch.zeros(2))


def test_gradients_reach_offsets_and_mask(x):
    layer = DeformConv2d(4, 6, 3, backend="torch")
    with torch.no_grad():
        torch.nn.init.normal_(layer.offset_conv.weight, std=0.1)
    layer(x).square().sum().backward()
    grad = layer.offset_conv.weight.grad
    taps = 9
    assert grad[: 2 * taps].abs().sum() > 0  # offset channels
    assert grad[2 * taps :].abs().sum() > 0  # modulation channels
    assert layer.weight.grad.abs().sum() > 0
