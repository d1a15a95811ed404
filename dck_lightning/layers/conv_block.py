"""ConvBlock: conv → norm → activation, with a residual connection when shapes match.

The convolution is selected by name so that every block of a network can be switched
between a plain convolution, a DCK (adaptive or static) and a deformable convolution from
one config flag. The DCK names are the blocks' ``dck=`` modes (:data:`~.dcb.DCK_MODES`):
``"adaptive"`` and ``"static"`` build :class:`DynamicConv2d` with ``adaptive=True``/``False``;
a block's ``dck="off"`` builds ``"plain"``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor, nn

from .deform import DeformConv2d
from .dynamic import DynamicConv2d
from .validation import check_choice

CONV_TYPES = ("plain", "adaptive", "static", "deform")
#: Earlier names still accepted (configs written before the names followed ``dck=``).
CONV_ALIASES = {"dynamic": "adaptive"}
LayerFactory = Callable[..., nn.Module]


def make_conv(
    conv: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    bias: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a ``kernel_size`` convolution that keeps ``H/stride`` ("same" padding).

    Args:
        conv: ``"plain"`` (:class:`torch.nn.Conv2d`), ``"adaptive"`` (DCK; ``"dynamic"`` is
            its earlier name), ``"static"`` (DCK without the position-adaptive path) or
            ``"deform"`` (DCNv2).
        **kwargs: passed to the layer (e.g. ``center_constraint`` for a DCK).
    """
    conv = CONV_ALIASES.get(conv, conv)
    check_choice("conv", conv, CONV_TYPES)
    padding = kernel_size // 2
    if conv == "plain":
        return nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, bias=bias, **kwargs
        )
    if conv == "deform":
        return DeformConv2d(
            in_channels, out_channels, kernel_size, stride, padding, bias=bias, **kwargs
        )
    return DynamicConv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        bias=bias,
        adaptive=conv == "adaptive",
        **kwargs,
    )


class ConvBlock(nn.Module):
    """``act(norm(conv(x)))``, plus ``x`` when ``residual`` and the shapes match.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): kernel size (odd). Default: 3.
        stride (int): stride. Default: 1.
        conv (str): ``"plain" | "adaptive" | "static" | "deform"``, see :func:`make_conv`.
        norm_layer (callable, optional): normalisation taking the channel count. Default:
            :class:`torch.nn.BatchNorm2d`; ``None`` for no norm (the conv then has a bias).
        act_layer (callable, optional): activation. Default: :class:`torch.nn.ReLU`.
        residual (bool): add the input when ``in_channels == out_channels`` and ``stride == 1``.
        conv_kwargs (dict, optional): extra arguments of the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        conv: str = "plain",
        norm_layer: Optional[LayerFactory] = nn.BatchNorm2d,
        act_layer: Optional[LayerFactory] = nn.ReLU,
        residual: bool = True,
        conv_kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.conv = make_conv(
            conv,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            bias=norm_layer is None,
            **(conv_kwargs or {}),
        )
        self.norm = norm_layer(out_channels) if norm_layer is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()
        self.residual = residual and in_channels == out_channels and stride == 1

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm(self.conv(x)))
        return x + y if self.residual else y
