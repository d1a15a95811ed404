"""Deformable convolution v2 with the centre-approximation constraint.

DCNv2 (Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019):
an offset/mask branch — a convolution with the main conv's kernel, stride, padding and
dilation, zero-initialised — predicts for every output position ``2·k²`` offsets and
``k²`` modulation scalars per offset group. The design document's centre-approximation
constraint keeps every tap near its home position: each tap's offset vector is bounded
radially,

    Δp_k = max_offset · tanh(‖r_k‖) · r_k / ‖r_k‖,   ‖Δp_k‖ < max_offset (default k/2),

and the modulation is ``m_k = sigmoid(r'_k)`` (0.5 at initialisation, as in DCNv2).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .sampling import Backend, check_backend, deform_conv2d
from .validation import check_divisible, check_positive


def bound_offsets(raw: Tensor, max_offset: float, eps: float = 1e-12) -> Tensor:
    """Radially squash ``(Δy, Δx)`` pairs so that each has norm below ``max_offset``.

    Args:
        raw (Tensor[B, 2 * n, H, W]): unconstrained pairs, interleaved ``(y, x)``.

    Returns:
        Tensor of the same shape with ``‖Δ‖ = max_offset · tanh(‖raw‖)`` and the direction of ``raw``.
    """
    b, c, h, w = raw.shape
    pairs = raw.view(b, c // 2, 2, h, w)
    # clamp, not + eps: finite at 0 (value and gradient), and an exporter keeps it (the ONNX
    # exporter folded "+ 1e-12" away, leaving 0 / 0 for zero offsets).
    norm = pairs.square().sum(dim=2, keepdim=True).clamp_min(eps).sqrt()
    return (pairs * (max_offset * torch.tanh(norm) / norm)).view(b, c, h, w)


class DeformConv2d(nn.Module):
    r"""Modulated deformable convolution (DCNv2) with bounded offsets.

    Unlike :class:`torchvision.ops.DeformConv2d` (``forward(input, offset, mask)``, offsets
    from the caller), this layer predicts its own offsets and modulation: ``forward(x)``.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int or Tuple[int, int]): kernel size. Default: 3.
        stride, padding, dilation (int or Tuple[int, int]): as in :class:`torch.nn.Conv2d`.
        groups (int): convolution groups. Default: 1.
        offset_groups (int): groups of input channels that share one offset field. Default: 1.
        modulated (bool): predict a modulation scalar per tap (DCNv2). Default: ``True``.
        max_offset (float, optional): radial bound of every tap's offset, in pixels.
            Default: ``max(kernel_size) / 2`` (the centre-approximation constraint).
        bias (bool): learnable bias. Default: ``True``.
        backend (str, optional): sampling backend, see :mod:`dck_lightning.layers.sampling`.

    Shape:
        input ``[B, in_channels, H, W]`` → output ``[B, out_channels, H_out, W_out]`` with
        ``H_out`` as for :class:`torch.nn.Conv2d`.

    Examples::
        >>> layer = DeformConv2d(8, 16, kernel_size=3, padding=1)
        >>> layer(torch.rand(2, 8, 10, 10)).shape
        torch.Size([2, 16, 10, 10])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, tuple[int, int]] = 3,
        stride: Union[int, tuple[int, int]] = 1,
        padding: Union[int, tuple[int, int]] = 1,
        dilation: Union[int, tuple[int, int]] = 1,
        groups: int = 1,
        offset_groups: int = 1,
        modulated: bool = True,
        max_offset: Optional[float] = None,
        bias: bool = True,
        backend: Optional[Backend] = None,
    ) -> None:
        super().__init__()
        check_positive("in_channels", in_channels)
        check_positive("out_channels", out_channels)
        check_positive("groups", groups)
        check_positive("offset_groups", offset_groups)
        check_divisible("in_channels", in_channels, "groups", groups)
        check_divisible("out_channels", out_channels, "groups", groups)
        check_divisible("in_channels", in_channels, "offset_groups", offset_groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        for k in self.kernel_size:
            check_positive("kernel_size", k)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.offset_groups = offset_groups
        self.modulated = modulated
        self.max_offset = max(self.kernel_size) / 2 if max_offset is None else float(max_offset)
        if self.max_offset <= 0:
            raise ValueError(f"max_offset must be > 0 (pixels), got {max_offset}")
        self.backend = None if backend is None else check_backend(backend)

        taps = self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # Offsets (2 per tap) and, for DCNv2, one modulation scalar per tap and offset group.
        self.offset_conv = nn.Conv2d(
            in_channels,
            offset_groups * taps * (3 if modulated else 2),
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -(fan_in**-0.5), fan_in**-0.5)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def offsets_and_mask(self, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """The bounded offsets ``[B, 2·G·k², H_out, W_out]`` and modulation ``[B, G·k², ...]``."""
        raw = self.offset_conv(x)
        n_offset = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = bound_offsets(raw[:, :n_offset], self.max_offset)
        mask = torch.sigmoid(raw[:, n_offset:]) if self.modulated else None
        return offset, mask

    def forward(self, x: Tensor) -> Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        defaults = {
            "stride": (1, 1),
            "padding": (1, 1),
            "dilation": (1, 1),
            "groups": 1,
            "offset_groups": 1,
            "modulated": True,
            "backend": None,
        }
        for name, default in defaults.items():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.max_offset != max(self.kernel_size) / 2:
            s += f", max_offset={self.max_offset}"
        if self.bias is None:
            s += ", bias=False"
        return s
