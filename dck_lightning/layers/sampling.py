"""Deformable sampling: one functional op, several backends that give the same numbers.

A deformable convolution samples the input at ``p + p_k + Δp_k`` for every output
position ``p`` and kernel tap ``p_k`` (bilinear interpolation, zero outside the
image), optionally modulates each sample by ``m_k`` and contracts with the weight::

    y(p) = Σ_k w_k · m_k(p) · x(p_0 + p_k + Δp_k(p))

Backends:

* ``"torchvision"`` — :func:`torchvision.ops.deform_conv2d` (its own CPU/CUDA kernels).
* ``"torch"`` — one :func:`torch.nn.functional.grid_sample` over all taps followed by
  one matrix multiply. Pure PyTorch: runs in ``float16``/``bfloat16`` (and under
  :func:`torch.autocast`), exports to ONNX (``GridSample``) and is several times faster
  than torchvision's kernel on CPU.
* ``"auto"`` — picks per device and dtype (see :func:`resolve_backend`).

The backend is chosen per call, per layer (``backend=`` argument of the layers) or
globally with :func:`set_default_backend` / the :func:`sampling_backend` context manager.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torch.nn.modules.utils import _pair

Backend = Literal["auto", "torch", "torchvision"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "torchvision")

# device type -> backend chosen by "auto" for float32/float64 inputs.
_AUTO_BACKEND_BY_DEVICE = {"cpu": "torch", "cuda": "torchvision"}
_default_backend: str = "auto"


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is known, else raise a ``ValueError`` listing the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def set_default_backend(backend: Backend) -> None:
    """Set the backend that layers constructed with ``backend=None`` use."""
    global _default_backend
    _default_backend = check_backend(backend)


def get_default_backend() -> str:
    return _default_backend


@contextlib.contextmanager
def sampling_backend(backend: Backend) -> Iterator[None]:
    """Temporarily change the default backend::

    with sampling_backend("torchvision"):
        y = layer(x)
    """
    previous = get_default_backend()
    set_default_backend(backend)
    try:
        yield
    finally:
        set_default_backend(previous)


def resolve_backend(backend: Optional[str], input: Tensor) -> str:
    """Turn ``None``/``"auto"`` into a concrete backend for this input.

    torchvision's kernel has no ``bfloat16`` path and does not follow autocast, so low
    precision always goes to the ``torch`` backend; otherwise the per-device table decides.
    """
    backend = check_backend(backend or _default_backend)
    if backend != "auto":
        return backend
    if input.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(
        input.device.type
    ):
        return "torch"
    return _AUTO_BACKEND_BY_DEVICE.get(input.device.type, "torch")


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: Union[int, tuple[int, int]] = 1,
    padding: Union[int, tuple[int, int]] = 0,
    dilation: Union[int, tuple[int, int]] = 1,
    mask: Optional[Tensor] = None,
    backend: Optional[Backend] = None,
) -> Tensor:
    r"""Deformable (and modulated) 2D convolution with a selectable backend.

    Same arguments and layout as :func:`torchvision.ops.deform_conv2d`.

    Args:
        input (Tensor[batch_size, in_channels, in_height, in_width]): input tensor.
        offset (Tensor[batch_size, 2 * offset_groups * kernel_height * kernel_width, out_height, out_width]):
            offsets ``(Δy, Δx)`` for every tap, interleaved per tap as in torchvision.
        weight (Tensor[out_channels, in_channels // groups, kernel_height, kernel_width]): weights.
        bias (Tensor[out_channels]): optional bias.
        stride, padding, dilation (int or Tuple[int, int]): as in :func:`torch.nn.functional.conv2d`.
        mask (Tensor[batch_size, offset_groups * kernel_height * kernel_width, out_height, out_width]):
            optional modulation scalars per tap.
        backend (str): ``"torch"``, ``"torchvision"`` or ``"auto"``; ``None`` uses the default.

    Returns:
        Tensor[batch_size, out_channels, out_height, out_width]

    Examples::
        >>> x = torch.rand(2, 4, 8, 8)
        >>> w = torch.rand(6, 4, 3, 3)
        >>> offset = torch.rand(2, 2 * 3 * 3, 6, 6)
        >>> deform_conv2d(x, offset, w, backend="torch").shape
        torch.Size([2, 6, 6, 6])
    """
    backend = resolve_backend(backend, input)
    if backend == "torchvision":
        return torchvision.ops.deform_conv2d(
            input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
        )
    return _deform_conv2d_torch(input, offset, weight, bias, stride, padding, dilation, mask)


def _check_shapes(input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor]) -> int:
    """Validate the channel arithmetic and return the number of offset groups."""
    in_channels, taps = input.shape[1], weight.shape[2] * weight.shape[3]
    if in_channels % weight.shape[1] != 0:
        raise ValueError(
            f"input channels ({in_channels}) must be a multiple of weight.shape[1] ({weight.shape[1]})"
        )
    if offset.shape[1] % (2 * taps) != 0:
        raise ValueError(
            f"offset.shape[1] ({offset.shape[1]}) must be a multiple of 2 * kernel taps ({2 * taps})"
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if in_channels % offset_groups != 0:
        raise ValueError(
            f"input channels ({in_channels}) must be divisible by offset groups ({offset_groups})"
        )
    if mask is not None and mask.shape[1] != offset_groups * taps:
        raise ValueError(
            f"mask.shape[1] ({mask.shape[1]}) must equal offset_groups * kernel taps "
            f"({offset_groups * taps})"
        )
    return offset_groups


def sampling_grid(
    offset: Tensor,
    kernel_size: tuple[int, int],
    in_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Normalised ``grid_sample`` coordinates of every (tap, output position).

    Tap ``k = (i, j)`` of output position ``(oy, ox)`` samples input pixel
    ``(oy·s_y − p_y + i·d_y + Δy, ox·s_x − p_x + j·d_x + Δx)``. Pixel centres are mapped to
    ``align_corners=False`` coordinates ``(2·c + 1) / size − 1``.

    Args:
        offset (Tensor[N, 2 * kh * kw, out_h, out_w]): per-group offsets (groups folded into N).

    Returns:
        Tensor[N, kh * kw * out_h, out_w, 2] of ``(x, y)`` pairs, as ``grid_sample`` wants.
    """
    n, _, out_h, out_w = offset.shape
    kh, kw = kernel_size
    height, width = in_size
    device, dtype = offset.device, offset.dtype
    offset = offset.view(n, kh * kw, 2, out_h, out_w)
    tap_y = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dilation[0]
    tap_x = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dilation[1]
    base_y = torch.arange(out_h, device=device, dtype=dtype) * stride[0] - padding[0]
    base_x = torch.arange(out_w, device=device, dtype=dtype) * stride[1] - padding[1]
    # Regular positions in normalised units, then offsets scaled into the same units.
    grid_y = (2 * (tap_y[:, None, None] + base_y[None, :, None]) + 1) / height - 1
    grid_x = (2 * (tap_x[:, None, None] + base_x[None, None, :]) + 1) / width - 1
    y = grid_y + offset[:, :, 0] * (2 / height)
    x = grid_x + offset[:, :, 1] * (2 / width)
    return torch.stack((x, y), dim=-1).view(n, kh * kw * out_h, out_w, 2)


def _deform_conv2d_torch(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: Union[int, tuple[int, int]],
    padding: Union[int, tuple[int, int]],
    dilation: Union[int, tuple[int, int]],
    mask: Optional[Tensor],
) -> Tensor:
    """``grid_sample`` + matmul implementation of :func:`deform_conv2d`.

    The sampled columns ``[B, C, K, L]`` (``K`` taps, ``L`` output positions) come out of
    ``grid_sample`` already in ``im2col`` order, so the convolution is one batched matmul
    ``W[O, C·K] @ cols[B, C·K, L]`` (per group).
    """
    offset_groups = _check_shapes(input, offset, weight, mask)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    batch, in_channels, height, width = input.shape
    out_channels, channels_per_group, kh, kw = weight.shape
    groups = in_channels // channels_per_group
    taps = kh * kw
    out_h, out_w = offset.shape[-2:]

    dtype = torch.promote_types(input.dtype, weight.dtype)
    if torch.is_autocast_enabled(input.device.type):
        dtype = torch.get_autocast_dtype(input.device.type)
    input, offset, weight = input.to(dtype), offset.to(dtype), weight.to(dtype)

    grid = sampling_grid(
        offset.reshape(batch * offset_groups, 2 * taps, out_h, out_w),
        (kh, kw),
        (height, width),
        stride,
        padding,
        dilation,
    )
    with torch.autocast(input.device.type, enabled=False):
        cols = F.grid_sample(
            input.reshape(batch * offset_groups, in_channels // offset_groups, height, width),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
    # cols: [B·G_off, C/G_off, K·out_h, out_w] -> [B, C, K, L]
    cols = cols.view(batch, offset_groups, in_channels // offset_groups, taps, out_h * out_w)
    if mask is not None:
        cols = cols * mask.to(dtype).view(batch, offset_groups, 1, taps, out_h * out_w)
    cols = cols.reshape(batch, groups, channels_per_group * taps, out_h * out_w)
    w = weight.reshape(groups, out_channels // groups, channels_per_group * taps)
    out = torch.matmul(w.unsqueeze(0), cols)  # [B, groups, O/groups, L]
    out = out.reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.to(dtype).view(1, -1, 1, 1)
    return out
