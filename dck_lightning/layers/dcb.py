"""Dynamic convolutional blocks: the plain DCB and the residual DCB of the design document.

* :class:`DCB`: ``DCK ConvBlock → ConvBlock(3×3) → deformable ConvBlock, added to its input → GCM``::

      y = ConvBlock_3×3(ConvBlock_DCK(x))
      out = GCM(y + deform(y))
* :class:`ResidualDCB` (the design document's ResNet block)::

      y = act(norm_0(deform(ConvBlock_3×3(ConvBlock_DCK(x)))) + shortcut(x))
      out = GCM(y)

  with the last norm's ``γ = 0`` at initialisation (the block starts as its shortcut) and the
  shortcut a 1×1 conv + norm when the shape changes.

Every part switches from config, so ablations are one flag: ``dck`` is ``"adaptive"``,
``"static"`` (DCK without the position-adaptive path) or ``"off"`` (a plain 3×3 conv);
``deform`` and ``gcm`` turn the deformable convolution and the Global Context Module on/off.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

from .conv_block import ConvBlock, make_conv
from .global_context import GlobalContextModule
from .sampling import Backend
from .validation import check_choice

DCK_MODES = ("adaptive", "static", "off")


def dck_mode(value: "str | bool") -> str:
    """Validate a DCK mode; ``False`` reads as ``"off"`` (YAML 1.1 parses a bare ``off`` as false)."""
    mode = "off" if value is False else value
    check_choice("dck", mode, DCK_MODES)
    return mode


def dck_conv_args(
    dck: str,
    dck_kernel_size: int,
    center_constraint: tuple[float, float],
    backend: Optional[Backend],
    init_extent: Optional[float] = None,
) -> dict:
    """ConvBlock arguments of the DCK position for a DCK mode (ConvBlock's ``conv`` uses the same
    names; ``"off"`` is a plain 3×3 convolution)."""
    dck = dck_mode(dck)
    if dck == "off":
        return {"conv": "plain", "kernel_size": 3}
    conv_kwargs = {"center_constraint": center_constraint} if dck == "adaptive" else {}
    if init_extent is not None:
        conv_kwargs["init_extent"] = init_extent
    if dck == "adaptive" and backend is not None:
        conv_kwargs["backend"] = backend
    return {"conv": dck, "kernel_size": dck_kernel_size, "conv_kwargs": conv_kwargs}


class _DCBBase(nn.Module):
    """Shared arguments of the DCB variants.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        stride (int): stride of the first (DCK) convolution. Default: 1.
        dck (str): ``"adaptive" | "static" | "off"``. Default: ``"adaptive"``.
        deform (bool): use the deformable convolution (else a plain 3×3). Default: ``True``.
        gcm (bool): append the Global Context Module. Default: ``True``.
        dck_kernel_size (int): largest DCK kernel. Default: 5.
        center_constraint (Tuple[float, float]): DCK centre constraint, pixels. Default: (2, 2).
        dck_init_extent (float, optional): initial DCK extent ``σ`` in taps. Default: the
            kernel size (:class:`~dck_lightning.layers.DynamicConv2d`'s).
        norm_layer, act_layer: injected norm and activation.
        backend (str, optional): sampling backend of the DCK and deformable convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dck: str = "adaptive",
        deform: bool = True,
        gcm: bool = True,
        dck_kernel_size: int = 5,
        center_constraint: tuple[float, float] = (2.0, 2.0),
        dck_init_extent: Optional[float] = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        backend: Optional[Backend] = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.dck_mode, self.use_deform, self.use_gcm = dck_mode(dck), deform, gcm
        self._dck_args = dck_conv_args(
            dck, dck_kernel_size, center_constraint, backend, dck_init_extent
        )
        self._layers = {"norm_layer": norm_layer, "act_layer": act_layer}
        self._backend_kwargs = {"backend": backend} if backend is not None else {}
        self.gcm = (
            GlobalContextModule(out_channels, norm_layer=norm_layer, act_layer=act_layer)
            if gcm
            else nn.Identity()
        )

    def _third_conv(self, channels: int) -> nn.Module:
        """The deformable 3×3 convolution, or a plain one when ``deform=False``."""
        kind = "deform" if self.use_deform else "plain"
        return make_conv(
            kind, channels, channels, 3, **(self._backend_kwargs if self.use_deform else {})
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, dck={self.dck_mode!r}, "
            f"deform={self.use_deform}, gcm={self.use_gcm}"
        )


class DCB(_DCBBase):
    """Dynamic convolutional block::

        y = ConvBlock_3×3(ConvBlock_DCK(x))
        out = GCM(y + deform(y))

    with ``deform = act(norm(DeformConv2d_3×3))`` (a plain 3×3 conv with ``deform=False``). See :class:`_DCBBase` for the arguments.
    The inner ConvBlocks are residual too where the shapes match.

    Examples::
        >>> block = DCB(8, 16, stride=2)
        >>> block(torch.rand(2, 8, 16, 16)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_channels, out_channels, stride, **kwargs)
        self.dck = ConvBlock(
            in_channels, out_channels, stride=stride, **self._dck_args, **self._layers
        )
        self.conv = ConvBlock(out_channels, out_channels, 3, **self._layers)
        self.deform = nn.Sequential(
            self._third_conv(out_channels),
            self._layers["norm_layer"](out_channels),
            self._layers["act_layer"](),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.dck(x))
        return self.gcm(x + self.deform(x))


class ResidualDCB(_DCBBase):
    """Residual DCB (the design document's ResNet block), see the module docstring.

    Examples::
        >>> block = ResidualDCB(8, 16, stride=2, dck="static", gcm=False)
        >>> block(torch.rand(2, 8, 16, 16)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_channels, out_channels, stride, **kwargs)
        norm_layer, act_layer = self._layers["norm_layer"], self._layers["act_layer"]
        self.dck = ConvBlock(
            in_channels,
            out_channels,
            stride=stride,
            residual=False,
            **self._dck_args,
            **self._layers,
        )
        self.conv = ConvBlock(out_channels, out_channels, 3, residual=False, **self._layers)
        self.deform = self._third_conv(out_channels)
        self.norm = norm_layer(out_channels)
        nn.init.zeros_(self.norm.weight)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                norm_layer(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.act = act_layer()

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.deform(self.conv(self.dck(x))))
        return self.gcm(self.act(y + self.shortcut(x)))
