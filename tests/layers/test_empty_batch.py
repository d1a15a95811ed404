"""Batch size 0: every layer, block and model returns an empty output and back-propagates, as
torchvision's deformable convolution does (a last partial batch, an empty prediction set)."""

from __future__ import annotations

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
    deform_conv2d,
    sampling,
)
from dck_lightning.models import (
    SeedNet,
    create_backbone,
    create_classifier,
    list_backbones,
)
from dck_lightning.models.segmentation import create_segmentation_model

TINY = {"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}


@pytest.mark.parametrize("path", ["table", "grid_sample", "reference"])
@pytest.mark.parametrize("modulated", [True, False])
def test_torch_backend_op_on_an_empty_batch(path, modulated, monkeypatch):
    if path == "table":
        monkeypatch.setattr(sampling, "GRID_SAMPLE_MAX_CHANNELS", 0)
    elif path == "reference":
        monkeypatch.setattr(sampling, "_fused_cpu_path", lambda input: False)
    x = torch.randn(0, 4, 7, 8, requires_grad=True)
    offset = torch.randn(0, 18, 7, 8, requires_grad=True)
    mask = torch.rand(0, 9, 7, 8, requires_grad=True) if modulated else None
    weight = torch.randn(6, 4, 3, 3, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    out = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, backend="torch")
    expected = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, backend="torchvision")
    assert out.shape == expected.shape == (0, 6, 7, 8)
    out.sum().backward()
    assert weight.grad is not None and torch.equal(weight.grad, torch.zeros_like(weight))
    assert x.grad.shape == x.shape and offset.grad.shape == offset.shape


LAYERS = {
    "dck adaptive torch": lambda: DynamicConv2d(4, 6, 5, backend="torch"),
    "dck adaptive torchvision": lambda: DynamicConv2d(4, 6, 5, backend="torchvision"),
    "dck static": lambda: DynamicConv2d(4, 6, 5, adaptive=False),
    "deform torch": lambda: DeformConv2d(4, 6, backend="torch"),
    "deform torchvision": lambda: DeformConv2d(4, 6, backend="torchvision"),
    "gcm": lambda: GlobalContextModule(4),
    "conv block": lambda: ConvBlock(4, 4, conv="dynamic"),
    "dcb": lambda: DCB(4, 6, dck_kernel_size=3),
    "residual dcb": lambda: ResidualDCB(4, 6, stride=2, dck_kernel_size=3),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("training", [True, False])
def test_layers_and_blocks_take_an_empty_batch(name, training):
    layer = LAYERS[name]().train(training)
    x = torch.randn(0, 4, 8, 8, requires_grad=True)
    out = layer(x)
    assert out.shape[0] == 0 and out.shape[1] in (4, 6)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)


MODELS = {
    "seednet": (lambda: SeedNet(), (1, 28, 28)),
    "seednet static": (lambda: SeedNet(adaptive=False), (1, 28, 28)),
    **{
        f"classifier {name}": (
            lambda name=name: create_classifier(name, 5, in_channels=3, **TINY),
            (3, 32, 32),
        )
        for name in list_backbones()
    },
    "backbone dcb_small": (lambda: create_backbone("dcb_small", in_channels=3), (3, 32, 32)),
    "segmentation fpn": (
        lambda: create_segmentation_model(
            "dcb_resnet18",
            "fpn",
            num_classes=3,
            backbone_kwargs=TINY,
            head_kwargs={"fpn_channels": 8, "channels": 8},
        ),
        (3, 32, 32),
    ),
    "segmentation deeplabv3": (
        lambda: create_segmentation_model(
            "dcb_resnet18", "deeplabv3", num_classes=3, aux=True, backbone_kwargs=TINY
        ),
        (3, 32, 32),
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("training", [True, False])
def test_models_take_an_empty_batch(name, training):
    make, shape = MODELS[name]
    model = make().train(training)
    out = model(torch.randn(0, *shape))
    outputs = list(out.values()) if isinstance(out, dict) else [out]
    assert all(output.shape[0] == 0 for output in outputs)
    sum(output.sum() for output in outputs).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


def test_a_model_trains_on_a_batch_with_an_empty_last_step():
    """An optimiser step on an empty batch changes nothing (zero gradients, Adam's own
    update aside) and the next real batch works."""
    model = nn.Sequential(DCB(3, 4, dck_kernel_size=3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    model(torch.randn(0, 3, 8, 8)).sum().backward()
    optimizer.step()
    for old, new in zip(before, model.parameters()):
        assert torch.equal(old, new)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
