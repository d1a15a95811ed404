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
from torch.autograd.function import once_differentiable
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


def bilinear_taps(
    offset: Tensor,
    mask: Optional[Tensor],
    kernel_size: tuple[int, int],
    in_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """The four input pixels and weights of every bilinear sample, ordered for the matmul.

    Tap ``k = (i, j)`` of output position ``(oy, ox)`` in offset group ``g`` samples the input
    at ``(oy·s_y − p_y + i·d_y + Δy, ox·s_x − p_x + j·d_x + Δx)``. Its value is
    ``Σ_n weights[·, n] · table[index[·, n]]`` over the four neighbouring pixels, where
    ``table = input.permute(0, 2, 3, 1).reshape(B·H·W·G, C // G)`` holds one row per
    (pixel, offset group). Neighbours outside the image get weight 0 (their index is clamped
    to a valid row), which is zero padding, as in torchvision; the modulation ``mask`` is
    folded into the weights. Coordinates are computed in at least ``float32``.

    Args:
        offset (Tensor[B, 2 * G * kh * kw, out_h, out_w]): ``(Δy, Δx)`` per tap, torchvision's layout.
        mask (Tensor[B, G * kh * kw, out_h, out_w], optional): modulation per tap.

    Returns:
        index (LongTensor[B * out_h * out_w * kh * kw * G, 4]) and weights (Tensor[same, 4]),
        rows ordered ``(b, oy, ox, tap, g)`` so that the sampled rows reshape to
        ``[B · out_h · out_w, kh · kw · C]``.
    """
    batch, channels, out_h, out_w = offset.shape
    kh, kw = kernel_size
    taps = kh * kw
    groups = channels // (2 * taps)
    height, width = in_size
    device, dtype = offset.device, torch.promote_types(offset.dtype, torch.float32)
    # [B, G, K, 2, out_h, out_w] -> [B, out_h, out_w, K, G, 2]: the order of the output rows.
    offset = offset.to(dtype).view(batch, groups, taps, 2, out_h, out_w).permute(0, 4, 5, 2, 1, 3)
    tap_y = (torch.arange(kh, device=device) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=device) * dilation[1]).repeat(kh)
    pos_y = torch.arange(out_h, device=device) * stride[0] - padding[0]
    pos_x = torch.arange(out_w, device=device) * stride[1] - padding[1]
    y = (pos_y.view(-1, 1, 1, 1) + tap_y.view(-1, 1)).to(dtype) + offset[..., 0]  # [B, oh, ow, K, G]
    x = (pos_x.view(-1, 1, 1) + tap_x.view(-1, 1)).to(dtype) + offset[..., 1]
    y0, x0 = y.detach().floor(), x.detach().floor()
    # The two neighbouring rows and columns, and their (separable) interpolation weights.
    corner = torch.arange(2, device=device)
    rows = y0.long().unsqueeze(-1) + corner  # [B, oh, ow, K, G, 2]
    cols = x0.long().unsqueeze(-1) + corner
    frac_y, frac_x = y - y0, x - x0
    weight_y = torch.stack((1 - frac_y, frac_y), dim=-1) * ((rows >= 0) & (rows < height))
    weight_x = torch.stack((1 - frac_x, frac_x), dim=-1) * ((cols >= 0) & (cols < width))
    if mask is not None:
        mask = mask.to(dtype).view(batch, groups, taps, out_h, out_w).permute(0, 3, 4, 2, 1)
        weight_y = weight_y * mask.unsqueeze(-1)
    weights = weight_y.unsqueeze(-1) * weight_x.unsqueeze(-2)  # [B, oh, ow, K, G, 2, 2]
    image_rows = rows.clamp_(0, height - 1) + (torch.arange(batch, device=device) * height).view(-1, 1, 1, 1, 1, 1)
    pixel = (image_rows * width).unsqueeze(-1) + cols.clamp_(0, width - 1).unsqueeze(-2)
    index = pixel * groups + torch.arange(groups, device=device).view(-1, 1, 1)
    return index.reshape(-1, 4), weights.reshape(-1, 4)


class _GatherRows(torch.autograd.Function):
    """``out[n] = Σ_j weights[n, j] · table[index[n, j]]`` with a backward that suits CPUs.

    The forward is :func:`~torch.nn.functional.embedding_bag`. Its own backward sorts all
    indices to accumulate the table gradient; here the op is read as a sparse matrix ``S``
    (4 non-zeros a row, ``out = S · table``), so the table gradient is one unsorted pass
    ``Sᵀ · grad`` (COO) and the weight gradient is ``grad · tableᵀ`` sampled at the
    non-zeros of ``S`` (:func:`torch.sparse.sampled_addmm`).
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(table, index, weights)
        return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], None, Optional[Tensor]]:
        table, index, weights = ctx.saved_tensors
        dtype = grad.dtype
        if dtype not in (torch.float32, torch.float64):  # the sparse kernels want float32/64
            grad, table, weights = grad.float(), table.float(), weights.float()
        rows, per_row = index.shape
        flat_index, flat_weights = index.reshape(-1), weights.reshape(-1)
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            row_of = torch.arange(rows, device=index.device).repeat_interleave(per_row)
            s_t = torch.sparse_coo_tensor(
                torch.stack((flat_index, row_of)), flat_weights, (table.shape[0], rows), check_invariants=False
            )
            grad_table = torch.sparse.mm(s_t, grad).to(dtype)
        if ctx.needs_input_grad[2]:
            crow = torch.arange(0, rows * per_row + 1, per_row, device=index.device)
            s = torch.sparse_csr_tensor(
                crow, flat_index, flat_weights, (rows, table.shape[0]), check_invariants=False
            )
            dots = torch.sparse.sampled_addmm(s, grad, table.t(), beta=0.0)
            grad_weights = dots.values().view(rows, per_row).to(dtype)
        return grad_table, None, grad_weights


def gather_rows(table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """``Σ_j weights[:, j, None] · table[index[:, j]]``: ``[N, C]`` from ``table [R, C]``, ``index, weights [N, J]``."""
    if torch.onnx.is_in_onnx_export():  # Gather + Mul + ReduceSum
        return (table[index] * weights.unsqueeze(-1)).sum(1)
    if table.device.type == "cpu" and torch.is_grad_enabled() and (table.requires_grad or weights.requires_grad):
        return _GatherRows.apply(table, index, weights)
    return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")


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
    """Bilinear gathers + one matmul implementation of :func:`deform_conv2d`.

    The input is read channels-last, one row of ``C // G`` channels per (pixel, offset
    group); every sample is a weighted sum of four rows (:func:`gather_rows`, the weights
    shared by all channels and carrying the mask). The samples come out as the im2col
    matrix ``cols [B · out_h · out_w, kh · kw · C]``, and the convolution is one matmul with
    the weight reshaped to ``[kh · kw · C, out_channels]``.
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
    channels_last = input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast(input.device.type, enabled=False):
        index, weights = bilinear_taps(
            offset, mask, (kh, kw), (height, width), stride, padding, dilation
        )
        table = input.to(dtype).permute(0, 2, 3, 1).reshape(-1, in_channels // offset_groups)
        cols = gather_rows(table, index, weights.to(dtype))
        cols = cols.view(batch * out_h * out_w, taps * in_channels)  # im2col, (tap, channel) order
        weight = weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        if groups == 1:
            w = weight.permute(2, 3, 1, 0).reshape(taps * in_channels, out_channels)
            out = cols @ w if bias is None else torch.addmm(bias, cols, w)
        else:
            w = weight.view(groups, out_channels // groups, channels_per_group, taps)
            cols = cols.view(-1, taps, groups, channels_per_group)
            out = torch.einsum("nkgc,gock->ngo", cols, w).reshape(-1, out_channels)
            if bias is not None:
                out = out + bias
    out = out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()
