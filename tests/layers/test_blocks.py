"""GCM, ConvBlock, DCB and ResidualDCB: identities at init, shapes for every switch, training."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from dck_lightning.layers import DCB, ConvBlock, GlobalContextModule, ResidualDCB


def test_gcm_is_identity_at_init_and_keeps_shape():
    gcm = GlobalContextModule(8)
    x = torch.randn(3, 8, 7, 9)
    gcm.train()
    assert torch.equal(gcm(x), x)
    assert gcm(x).shape == x.shape
    assert [name for name, _ in gcm.named_children()] == ["sppm", "gef", "gca"]


def test_gcm_trains_at_batch_size_one():
    gcm = GlobalContextModule(8).train()
    with torch.no_grad():
        nn.init.normal_(gcm.gca.transform[-1].weight)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    out = gcm(x)
    out.sum().backward()
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.isfinite(x.grad).all()


def test_conv_block_residual_only_when_shapes_match():
    assert ConvBlock(4, 4).residual
    assert not ConvBlock(4, 8).residual
    assert not ConvBlock(4, 4, stride=2).residual


def test_conv_block_names_are_the_dck_modes():
    """ConvBlock's DCK convolutions are named like the blocks' ``dck=`` modes."""
    from dck_lightning.layers import DeformConv2d, DynamicConv2d
    from dck_lightning.layers.dcb import dck_conv_args

    adaptive, static = ConvBlock(4, 4, conv="adaptive"), ConvBlock(4, 4, conv="static")
    assert isinstance(adaptive.conv, DynamicConv2d) and adaptive.conv.adaptive
    assert isinstance(static.conv, DynamicConv2d) and not static.conv.adaptive
    assert ConvBlock(4, 4, conv="dynamic").conv.adaptive  # the earlier name still works
    assert type(ConvBlock(4, 4, conv="plain").conv) is nn.Conv2d
    assert isinstance(ConvBlock(4, 4, conv="deform").conv, DeformConv2d)
    for mode, conv in (("adaptive", "adaptive"), ("static", "static"), ("off", "plain")):
        assert dck_conv_args(mode, 5, (2.0, 2.0), None)["conv"] == conv


SWITCHES = list(itertools.product(["adaptive", "static", "off"], [True, False], [True, False]))


@pytest.mark.parametrize("block_cls", [DCB, ResidualDCB])
@pytest.mark.parametrize("dck,deform,gcm", SWITCHES)
@pytest.mark.parametrize("in_ch,out_ch,stride", [(4, 4, 1), (4, 8, 2), (4, 6, 1)])
def test_block_shapes_for_every_switch(block_cls, dck, deform, gcm, in_ch, out_ch, stride):
    block = block_cls(
        in_ch, out_ch, stride=stride, dck=dck, deform=deform, gcm=gcm, dck_kernel_size=3
    )
    out = block(torch.randn(2, in_ch, 8, 8))
    assert out.shape == (2, out_ch, 8 // stride, 8 // stride)
    assert isinstance(block.gcm, GlobalContextModule) == gcm


def test_dcb_forward_is_its_docstring_formula():
    """``y = ConvBlock_3×3(ConvBlock_DCK(x)); out = GCM(y + deform(y))`` — the residual included."""
    assert "out = GCM(y + deform(y))" in DCB.__doc__
    torch.manual_seed(0)
    block = DCB(4, 4, dck_kernel_size=3).eval()
    with torch.no_grad():  # non-trivial GCM, so that the order of the terms matters
        nn.init.normal_(block.gcm.gca.transform[-1].weight)
    x = torch.randn(2, 4, 8, 8)
    y = block.conv(block.dck(x))
    torch.testing.assert_close(block(x), block.gcm(y + block.deform(y)))
    assert not torch.allclose(block(x), block.gcm(block.deform(y)))


def test_residual_dcb_starts_as_its_shortcut():
    block = ResidualDCB(4, 4).eval()
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_tiny_dcb_network_fits_a_fixed_batch():
    torch.manual_seed(0)
    net = nn.Sequential(
        DCB(3, 8, stride=2, dck_kernel_size=3),
        ResidualDCB(8, 16, stride=2, dck_kernel_size=3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    x = torch.randn(16, 3, 12, 12)
    y = torch.arange(16) % 4
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0]


def test_yaml_false_reads_as_dck_off():
    """A bare ``dck: off`` in YAML 1.1 arrives as ``False``."""
    assert ResidualDCB(4, 4, dck=False).dck_mode == "off"
    assert isinstance(ResidualDCB(4, 4, dck=False).dck.conv, nn.Conv2d)
