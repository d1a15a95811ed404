"""torch.compile: every layer compiles as one graph (no host synchronisation in forward), and
a forward pass never reads a tensor back to the host — the DCK's crop is decided outside it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dck_lightning.layers import (
    DCB,
    ConvBlock,
    DeformConv2d,
    DynamicConv2d,
    GlobalContextModule,
    ResidualDCB,
    sampling,
)
from dck_lightning.models import SeedNet, create_classifier, list_backbones

LAYERS = {
    "dck adaptive torch (table)": lambda: DynamicConv2d(32, 8, 5, backend="torch"),
    "dck adaptive torch (grid_sample)": lambda: DynamicConv2d(4, 8, 5, backend="torch"),
    "dck adaptive torchvision": lambda: DynamicConv2d(4, 8, 5, backend="torchvision"),
    "dck static": lambda: DynamicConv2d(4, 8, 5, adaptive=False),
    "deform torch (table)": lambda: DeformConv2d(32, 8, backend="torch"),
    "deform torch (grid_sample)": lambda: DeformConv2d(4, 8, offset_groups=2, backend="torch"),
    "deform torchvision": lambda: DeformConv2d(4, 8, backend="torchvision"),
    "conv block": lambda: ConvBlock(4, 4, conv="dynamic"),
    "gcm": lambda: GlobalContextModule(4),
    "dcb": lambda: DCB(4, 8, dck_kernel_size=3),
    "residual dcb": lambda: ResidualDCB(4, 8, stride=2, dck_kernel_size=3),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_compiles_as_one_graph(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    channels = 32 if "table" in name else 4
    x = torch.randn(2, channels, 9, 9, requires_grad=True)
    expected = layer(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-4, rtol=1e-4)


MODELS = {
    "seednet": (lambda: SeedNet(), (1, 28, 28)),
    **{
        name: (
            lambda name=name: create_classifier(
                name, 4, in_channels=3, widths=(8, 8, 16, 16), depths=(1, 1, 1, 1)
            ),
            (3, 32, 32),
        )
        for name in list_backbones()
    },
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_compiles_as_one_graph(name):
    """Dynamo captures each model whole (the layers' test above covers AOT autograd)."""
    make, shape = MODELS[name]
    model = make()
    x = torch.randn(2, *shape)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    compiled(x).sum().backward()  # training graph (dropout, batch statistics)
    model.eval()
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


class NoHostReads:
    """Fail on any read of a tensor's values by the host (``item``, ``tolist``, ``__bool__``…)."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy")

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in self.NAMES}

        def forbid(name):
            def read(*args, **kwargs):
                raise AssertionError(f"Tensor.{name} called in a forward pass")

            return read

        for name in self.NAMES:
            setattr(torch.Tensor, name, forbid(name))
        return self

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)


def test_a_forward_pass_never_reads_tensors_back_after_training_steps():
    """The crop follows the extent through optimiser steps, decided by the step's hook, so
    the forward passes in between read nothing back (on a GPU: no synchronisation)."""
    assert 3 <= sampling.GRID_SAMPLE_MAX_CHANNELS < 32  # both CPU paths of the torch backend
    model = nn.Sequential(DynamicConv2d(3, 32, 7), nn.ReLU(), DynamicConv2d(32, 4, 5))
    with torch.no_grad():
        model[0].extent.fill_(math.log(math.expm1(0.6)))  # cropped to 3×3 ...
    optimizer = torch.optim.Adam(model.parameters(), lr=0.2)
    x = torch.randn(2, 3, 12, 12)
    assert model[0].effective_kernel_size == (3, 3)
    sizes = []
    for _ in range(15):  # ... and growing back under a loss that wants the wide kernel
        with NoHostReads():
            loss = -model(x).abs().mean() - model[0].sigma.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sizes.append(model[0].effective_kernel_size)
    assert sizes[-1][0] > 3, sizes


def test_task_compile_option_compiles_the_model_and_keeps_its_checkpoint_keys():
    from dck_lightning.tasks import ClassificationTask

    backbone = {"class_path": "dcb_small", "init_args": {"widths": (8, 8, 16, 16)}}
    plain = ClassificationTask(backbone=backbone, num_classes=3)
    compiled = ClassificationTask(backbone=backbone, num_classes=3, compile=True)
    assert compiled.model._compiled_call_impl is not None
    assert plain.model._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert compiled.hparams.compile is True
