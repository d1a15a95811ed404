"""Freeze a trained DCB network for inference: fold what training needed into plain weights.

:func:`freeze` returns a copy of the model in eval mode where

* every static DCK is one plain :class:`~torch.nn.Conv2d` of its cropped size, the mask folded
  into the weights: ``W' = (W ⊙ M)[kept taps]`` (a cropped ``"valid"`` DCK first crops its
  input, :class:`~torch.nn.ZeroPad2d` with negative padding);
* every adaptive DCK is a :class:`FrozenDynamicConv2d`: its localisation network and the
  fixed kernel ``(W ⊙ M)[kept taps]``, no mask or crop computed per call;
* every batch norm that directly follows a convolution (plain, DCK or deformable) is folded
  into it: ``W'' = W' · γ/σ``, ``b'' = (b − μ) · γ/σ + β`` with ``σ = √(var + ε)``
  (:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`), and replaced by ``Identity``.

The frozen model computes what the original computes in eval mode (to float rounding), in
fewer operations, and exports with a fixed kernel size per layer (:mod:`dck_lightning.export`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.resnet import BasicBlock, Bottleneck

from .layers import ConvBlock, DeformConv2d, DynamicConv2d, ResidualDCB
from .layers.dynamic import DCKGeometry

__all__ = ["FrozenDynamicConv2d", "fold_batch_norms", "freeze", "freeze_dcks"]


class FrozenDynamicConv2d(DCKGeometry):
    """An adaptive DCK for inference: its localisation network and the kernel of its kept taps.

    ``weight = (W ⊙ M)[kept taps]`` of the :class:`~dck_lightning.layers.DynamicConv2d` it was
    made from, which it computes like (same geometry, positions ``p + t + s · p_k``, sampling
    backend) without the mask and the crop decision.

    Args:
        layer (DynamicConv2d): an adaptive DCK.
    """

    def __init__(self, layer: DynamicConv2d) -> None:
        super().__init__()
        if layer.localization is None:
            raise ValueError("FrozenDynamicConv2d needs an adaptive DCK (a static one is a Conv2d)")
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride = layer.kernel_size, layer.stride
        self.padding, self.dilation, self.groups = layer.padding, layer.dilation, layer.groups
        self.backend = layer.backend
        self.radius = layer.crop_radius()
        self.localization = copy.deepcopy(layer.localization)
        with torch.no_grad():
            self.weight = nn.Parameter(layer.effective_weight(self.radius).detach().clone())
            self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def crop_radius(self) -> tuple[int, int]:
        return self.radius

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x, self.weight, self.radius)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.weight.shape[-2:])} "
            f"(of {self.kernel_size}), stride={self.stride}, padding={self.padding}"
        )


def _static_dck_as_conv(layer: DynamicConv2d) -> nn.Module:
    """A static DCK as the ``Conv2d`` of its cropped, masked kernel (after an input crop
    when the cropped kernel needs negative padding)."""
    radius = layer.crop_radius()
    weight = layer.effective_weight(radius).detach()
    padding = layer._input_padding(radius)
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        tuple(weight.shape[-2:]),
        layer.stride,
        tuple(max(p, 0) for p in padding),
        layer.dilation,
        layer.groups,
        bias=layer.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    if all(p >= 0 for p in padding):
        return conv
    crop_y, crop_x = (min(p, 0) for p in padding)
    return nn.Sequential(nn.ZeroPad2d((crop_x, crop_x, crop_y, crop_y)), conv)


def _children_to_replace(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    for parent in model.modules():
        for name, child in parent.named_children():
            yield parent, name, child


def freeze_dcks(model: nn.Module) -> nn.Module:
    """Replace, in place, every static DCK by a ``Conv2d`` and every adaptive one by a
    :class:`FrozenDynamicConv2d`; returns ``model``."""
    for parent, name, child in list(_children_to_replace(model)):
        if isinstance(child, DynamicConv2d):
            frozen = (
                _static_dck_as_conv(child)
                if child.localization is None
                else FrozenDynamicConv2d(child)
            )
            setattr(parent, name, frozen.train(child.training))
    return model


# Modules whose weight and bias are a convolution's: y = W * x + b (a batch norm after them folds).
FOLDABLE = (nn.Conv2d, FrozenDynamicConv2d, DeformConv2d)
# (convolution, batch norm) attribute pairs applied one after the other in these blocks' forward.
NAMED_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    ConvBlock: (("conv", "norm"),),
    ResidualDCB: (("deform", "norm"),),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


def _fold(conv: nn.Module, norm: nn.Module) -> bool:
    """Fold the eval-mode batch norm ``norm`` into ``conv`` (in place); whether it could."""
    if not (
        isinstance(conv, FOLDABLE)
        and type(norm) is nn.BatchNorm2d
        and norm.track_running_stats
        and norm.running_mean is not None
    ):
        return False
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    conv.weight, conv.bias = weight, bias
    return True


def _last_conv(module: nn.Module) -> Optional[nn.Module]:
    """``module`` if it is a foldable convolution, or the convolution ending a ``Sequential``
    (a cropped static DCK: ``ZeroPad2d`` then ``Conv2d``)."""
    if isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    return module if isinstance(module, FOLDABLE) else None


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold, in place, every batch norm that directly follows a convolution — inside an
    ``nn.Sequential`` or in the blocks of :data:`NAMED_PAIRS` — and replace it by ``Identity``.
    The model must be in eval mode (running statistics). Returns ``model``."""
    if model.training:
        raise ValueError("fold_batch_norms needs the model in eval mode (model.eval())")
    for module in list(model.modules()):
        pairs: list[tuple[nn.Module, str, str]] = []
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            pairs = [(module, a, b) for a, b in zip(names, names[1:])]
        for cls, named in NAMED_PAIRS.items():
            if isinstance(module, cls):
                pairs += [(module, a, b) for a, b in named if hasattr(module, a)]
        for parent, conv_name, norm_name in pairs:
            conv = _last_conv(getattr(parent, conv_name))
            norm = getattr(parent, norm_name)
            if conv is not None and _fold(conv, norm):
                setattr(parent, norm_name, nn.Identity())
    return model


def freeze(model: nn.Module, fold_norms: bool = True) -> nn.Module:
    """An inference copy of ``model`` (eval mode, no gradients): DCKs frozen
    (:func:`freeze_dcks`) and, with ``fold_norms``, batch norms folded into the convolutions
    before them (:func:`fold_batch_norms`). The original is left as it is.

    Example::
        >>> from dck_lightning.models import SeedNet
        >>> model = SeedNet(adaptive=False).eval()
        >>> frozen = freeze(model)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> torch.allclose(frozen(x), model(x), atol=1e-5)
        True
    """
    frozen = copy.deepcopy(model).eval()
    freeze_dcks(frozen)
    if fold_norms:
        fold_batch_norms(frozen)
    return frozen.requires_grad_(False)
