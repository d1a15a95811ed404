"""Deformable sampling: one functional op, several backends that give the same numbers.

A deformable convolution samples the input at ``p + p_k + Δp_k`` for every output
position ``p`` and kernel tap ``p_k`` (bilinear interpolation, zero outside the
image), optionally modulates each sample by ``m_k`` and contracts with the weight::

    y(p) = Σ_k w_k · m_k(p) · x(p_0 + p_k + Δp_k(p))

Backends:

* ``"torchvision"`` — :func:`torchvision.ops.deform_conv2d` (its own CPU/CUDA kernels).
* ``"torch"`` — pure PyTorch: the input read channels-last as a table of rows, each
  sample a weighted sum of four rows (bilinear weights shared by all channels, the mask
  folded in), then one matrix multiply with the weight. On CPU the two steps are fused and
  chunked, with a backward built on sparse-matrix products (:class:`_DeformMatmulCPU`);
  elsewhere, and for ONNX export (``Gather``/``MatMul``), they run through autograd. Runs in
  ``float16``/``bfloat16`` (and under :func:`torch.autocast`) and is 10–30× faster than
  torchvision's kernel on CPU.
* ``"auto"`` — picks per device and dtype (see :func:`resolve_backend`).

The backend is chosen per call, per layer (``backend=`` argument of the layers) or
globally with :func:`set_default_backend` / the :func:`sampling_backend` context manager.
"""

from __future__ import annotations

import contextlib
import warnings
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
            input,
            offset,
            weight,
            bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
            mask=mask,
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


def sample_positions(
    offset: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Input coordinates ``(y, x)`` of every sample, in the order of the im2col rows.

    Tap ``k = (i, j)`` of output position ``(oy, ox)`` in offset group ``g`` samples the input
    at ``(oy·s_y − p_y + i·d_y + Δy, ox·s_x − p_x + j·d_x + Δx)`` (pixel units, pixel centres
    at integers), computed in at least ``float32`` whatever the offsets' dtype.

    Args:
        offset (Tensor[B, 2 * G * kh * kw, out_h, out_w]): ``(Δy, Δx)`` per tap, torchvision's layout.

    Returns:
        y, x (Tensor[B, out_h, out_w, kh * kw, G])
    """
    batch, channels, out_h, out_w = offset.shape
    kh, kw = kernel_size
    groups = channels // (2 * kh * kw)
    device, dtype = offset.device, torch.promote_types(offset.dtype, torch.float32)
    # [B, G, K, 2, out_h, out_w] -> [B, out_h, out_w, K, G, 2], copied once in that order.
    offset = offset.to(dtype).view(batch, groups, kh * kw, 2, out_h, out_w)
    offset = offset.permute(0, 4, 5, 2, 1, 3).contiguous()
    tap_y = (torch.arange(kh, device=device) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=device) * dilation[1]).repeat(kh)
    pos_y = torch.arange(out_h, device=device) * stride[0] - padding[0]
    pos_x = torch.arange(out_w, device=device) * stride[1] - padding[1]
    grid_y = (pos_y.view(-1, 1, 1, 1) + tap_y.view(-1, 1)).to(dtype)  # [out_h, 1, K, 1]
    grid_x = (pos_x.view(-1, 1, 1) + tap_x.view(-1, 1)).to(dtype)  # [out_w, K, 1]
    return offset[..., 0] + grid_y, offset[..., 1] + grid_x


def padded_table(input: Tensor, offset_groups: int) -> Tensor:
    """The input as the table the samples read: ``[B · (H+3) · (W+3) · G, C // G]``.

    Channels last, one row per (pixel, offset group), with a zero border of one pixel
    before and two after each image axis. Coordinates clamped to ``[−1, size]`` have all
    their neighbours in the table; a sample beyond the image reads only zeros, so the
    clamp changes neither its value (0) nor its gradient (0).
    """
    table = F.pad(input.permute(0, 2, 3, 1), (0, 0, 1, 2, 1, 2))
    return table.reshape(-1, input.shape[1] // offset_groups)


def bilinear_neighbours(
    y: Tensor, x: Tensor, mask: Optional[Tensor], in_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The four table rows of every bilinear sample and their weights.

    A sample at ``(y, x)`` is ``Σ_n weights[·, n] · table[index[·, n]]`` with the table of
    :func:`padded_table`. The modulation ``mask`` is folded into the weights: it costs
    nothing in the sampling. Differentiable in ``y``, ``x`` and ``mask``.

    Args:
        y, x (Tensor[B, out_h, out_w, K, G]): coordinates, clamped to ``[−1, size]``.
        mask (Tensor[B, out_h, out_w, K, G], optional): modulation.

    Returns:
        index (LongTensor[N, 4]) and weights (Tensor[N, 4]),
        ``N = B·out_h·out_w·K·G``; neighbours ordered ``(y0, x0), (y0, x1), (y1, x0), (y1, x1)``.
    """
    height, width = in_size
    batch, groups, device = y.shape[0], y.shape[-1], y.device
    row = (width + 3) * groups  # table rows from one image row to the next
    # A NaN coordinate (from NaN offsets) reads the zero border instead of an arbitrary row;
    # its weights stay NaN, so the output is NaN, as a convolution of NaNs would be.
    top = torch.nan_to_num(y.detach(), nan=-1.0).floor()
    left = torch.nan_to_num(x.detach(), nan=-1.0).floor()
    # Table row of the top-left neighbour: (b, top + 1, left + 1, g) in the padded image.
    first = torch.arange(batch, device=device) * ((height + 3) * row) + row + groups
    first = first.view(-1, 1, 1, 1, 1) + torch.arange(groups, device=device)
    top_left = (top.long() * row).add_(left.long() * groups).add_(first)
    corners = torch.tensor([0, groups, row, row + groups], device=device)
    index = top_left.unsqueeze(-1) + corners
    frac_y, frac_x = y - top, x - left
    above, below = 1 - frac_y, frac_y
    if mask is not None:
        above, below = above * mask, below * mask
    before, after = 1 - frac_x, frac_x
    # (Four products stacked: much faster than a broadcast outer product over size-2 axes.)
    weights = torch.stack((above * before, above * after, below * before, below * after), dim=-1)
    return index.view(-1, 4), weights.view(-1, 4)


def _bilinear_backward(
    dots: Tensor, y: Tensor, x: Tensor, mask: Optional[Tensor]
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Gradients of ``y``, ``x`` and ``mask`` from ``dots[·, n] = ∂loss/∂weights[·, n]``.

    With ``weights[a, b] = m · wy[a] · wx[b]``, ``wy = (1 − fy, fy)``, ``wx = (1 − fx, fx)``:
    ``∂/∂y = m · Σ_b wx[b] · (dots[1, b] − dots[0, b])``, symmetrically for ``x``, and
    ``∂/∂m = Σ_ab wy[a] · wx[b] · dots[a, b]``. (Neighbours in the zero border have
    ``dots = 0``, so no "inside the image" test is needed.)
    """
    frac_y, frac_x = y - y.floor(), x - x.floor()
    d00, d01, d10, d11 = dots.view(*y.shape, 4).unbind(-1)
    grad_y = torch.lerp(d10 - d00, d11 - d01, frac_x)
    grad_x = torch.lerp(d01 - d00, d11 - d10, frac_y)
    grad_mask = None
    if mask is not None:
        grad_mask = torch.lerp(d00, d01, frac_x) + frac_y * grad_y
        grad_y, grad_x = grad_y * mask, grad_x * mask
    return grad_y, grad_x, grad_mask


Geometry = tuple[
    tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]
]


def _samples(
    offset: Tensor, mask: Optional[Tensor], geometry: Geometry
) -> tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """``(y, x)`` unclamped and clamped, and the mask, all ``[B, out_h, out_w, K, G]``."""
    kernel_size, (height, width), stride, padding, dilation = geometry
    y_raw, x_raw = sample_positions(offset, kernel_size, stride, padding, dilation)
    if mask is not None:
        batch, _, out_h, out_w = mask.shape
        mask = mask.to(y_raw.dtype).view(batch, -1, kernel_size[0] * kernel_size[1], out_h, out_w)
        mask = mask.permute(0, 3, 4, 2, 1)
    return y_raw, x_raw, y_raw.clamp(-1, height), x_raw.clamp(-1, width), mask


def _deform_matmul(
    table: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor],
    geometry: Geometry,
) -> Tensor:
    """``cols @ weight (+ bias)`` by autograd; ``cols [B·out_h·out_w, K·C]`` the sampled im2col matrix.

    The reference composition of :class:`_DeformMatmulCPU`, used off the CPU and for ONNX
    export, where the gathers are ``Gather``, ``Mul`` and ``ReduceSum``.
    """
    _, _, y, x, mask = _samples(offset, mask, geometry)
    index, weights = bilinear_neighbours(y, x, mask, geometry[1])
    if torch.onnx.is_in_onnx_export():
        rows = table.index_select(0, index.reshape(-1)).view(*index.shape, -1)
        cols = (rows * weights.to(table.dtype).unsqueeze(-1)).sum(1)
    else:
        # CUDA's embedding_bag has no bfloat16 backward for per-sample weights: off the CPU
        # the gather runs in float32 at least and only the matmul in the low precision.
        gather = (
            table.dtype
            if table.device.type == "cpu"
            else torch.promote_types(table.dtype, torch.float32)
        )
        cols = F.embedding_bag(
            index, table.to(gather), per_sample_weights=weights.to(gather), mode="sum"
        )
        cols = cols.to(table.dtype)
    cols = cols.view(y.shape[:3].numel(), -1)
    return cols @ weight if bias is None else torch.addmm(bias, cols, weight)


# CPU: im2col matrices larger than this go through the fused, chunked path; smaller ones
# (where per-op overheads dominate) through autograd, which is then as fast.
FUSED_MIN_BYTES = 16 * 2**20
# Bytes of im2col rows the fused CPU path samples and multiplies at a time, per thread
# (about the L2 cache of a core).
CHUNK_BYTES = 2 * 2**20


def _chunks(rows: int, row_bytes: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_BYTES * torch.get_num_threads() // row_bytes)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


class _DeformMatmulCPU(torch.autograd.Function):
    """:func:`_deform_matmul`, fused and chunked, with a backward written for CPUs.

    Row ``m`` of ``cols`` (one output position: ``K·G`` samples of ``C // G`` channels) is an
    :func:`~torch.nn.functional.embedding_bag` of ``table`` with the neighbours and weights
    of :func:`bilinear_neighbours`. The full ``cols`` (``K`` times the input) is never
    stored: each chunk of rows is sampled, multiplied and dropped while it is in cache, and
    sampled again in the backward. There the sampling is read as a sparse matrix ``S`` with
    4 non-zeros a row (``cols = S · table``): the table gradient is ``Sᵀ · grad_cols``, one
    unsorted pass (``embedding_bag``'s own backward sorts every index), and the gradient of
    the neighbour weights is ``grad_cols · tableᵀ`` sampled at the non-zeros of ``S``
    (:func:`torch.sparse.sampled_addmm`); :func:`_bilinear_backward` turns it into the
    gradients of the offsets and the mask.
    """

    @staticmethod
    def forward(ctx, table, offset, mask, weight, bias, geometry):
        _, _, y, x, rows_mask = _samples(offset, mask, geometry)
        index, weights = bilinear_neighbours(y, x, rows_mask, geometry[1])
        weights = weights.to(table.dtype)
        rows, per_row = y.shape[:3].numel(), y.shape[3:].numel()
        out = table.new_empty(rows, weight.shape[1])
        for start, stop in _chunks(rows, weight.shape[0] * table.element_size()):
            samples = slice(start * per_row, stop * per_row)
            cols = F.embedding_bag(
                index[samples], table, per_sample_weights=weights[samples], mode="sum"
            )
            if bias is None:
                torch.mm(cols.view(stop - start, -1), weight, out=out[start:stop])
            else:
                torch.addmm(bias, cols.view(stop - start, -1), weight, out=out[start:stop])
        ctx.save_for_backward(table, offset, mask, weight, index, weights)
        ctx.geometry = geometry
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        table, offset, mask, weight, index, weights = ctx.saved_tensors
        need_table, need_offset, need_mask, need_weight, need_bias, _ = ctx.needs_input_grad
        need_dots = need_offset or need_mask
        grad_out = grad_out.contiguous()
        rows, per_row = grad_out.shape[0], index.shape[0] // grad_out.shape[0]
        chunks = _chunks(rows, weight.shape[0] * table.element_size())
        # The sparse kernels run in float32/float64 only.
        dtype = torch.promote_types(table.dtype, torch.float32)
        table_rows, channels = table.shape
        sparse_table, flat_index, flat_weights = (
            table.to(dtype),
            index.view(-1),
            weights.view(-1).to(dtype),
        )
        grad_table = table.new_zeros(table.shape, dtype=dtype) if need_table else None
        # The weight gradient is accumulated transposed, [out, in]: a faster product in chunks.
        grad_weight_t = weight.new_zeros(weight.shape[::-1]) if need_weight else None
        dots = weights.new_zeros(weights.shape, dtype=dtype) if need_dots else None
        if need_table or need_dots:
            most = (chunks[0][1] - chunks[0][0]) * per_row  # samples in the largest chunk
            sample_of = torch.arange(most, device=index.device).repeat_interleave(4)
            row_start = torch.arange(0, 4 * most + 1, 4, device=index.device)
        for start, stop in chunks:
            n = (stop - start) * per_row
            samples, entries = (
                slice(start * per_row, stop * per_row),
                slice(4 * start * per_row, 4 * stop * per_row),
            )
            grad = grad_out[start:stop]
            if need_weight:
                cols = F.embedding_bag(
                    index[samples], table, per_sample_weights=weights[samples], mode="sum"
                )
                grad_weight_t.addmm_(grad.t(), cols.view(stop - start, -1))
            if not (need_table or need_dots):
                continue
            grad_cols = (grad @ weight.t()).view(n, channels).to(dtype)
            if need_table:  # += Sᵀ · grad_cols
                s_t = torch.sparse_coo_tensor(
                    torch.stack((flat_index[entries], sample_of[: 4 * n])),
                    flat_weights[entries],
                    (table_rows, n),
                    check_invariants=False,
                )
                grad_table.addmm_(s_t, grad_cols)
            if need_dots:  # (grad_cols · tableᵀ) at the non-zeros of S, written into `dots`
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                    s = torch.sparse_csr_tensor(
                        row_start[: n + 1],
                        flat_index[entries],
                        dots.view(-1)[entries],
                        (n, table_rows),
                        check_invariants=False,
                    )
                torch.sparse.sampled_addmm(s, grad_cols, sparse_table.t(), beta=0.0, out=s)
        grad_offset = grad_mask = None
        if need_dots:
            y_raw, x_raw, y, x, rows_mask = _samples(offset, mask, ctx.geometry)
            grad_y, grad_x, grad_rows_mask = _bilinear_backward(dots, y, x, rows_mask)
            if need_offset:  # zero where the clamp was active; back to [B, G, K, 2, out_h, out_w]
                grad_yx = torch.stack((grad_y * (y == y_raw), grad_x * (x == x_raw)), dim=-1)
                grad_offset = (
                    grad_yx.permute(0, 4, 3, 5, 1, 2).reshape(offset.shape).to(offset.dtype)
                )
            if need_mask:
                grad_mask = grad_rows_mask.permute(0, 4, 3, 1, 2).reshape(mask.shape).to(mask.dtype)
        grad_table = grad_table.to(table.dtype) if need_table else None
        grad_weight = grad_weight_t.t() if need_weight else None
        grad_bias = grad_out.sum(0) if need_bias else None
        return grad_table, grad_offset, grad_mask, grad_weight, grad_bias, None


def _im2col_weight(weight: Tensor, groups: int) -> Tensor:
    """``weight [O, C/groups, kh, kw]`` as the ``[kh·kw·C, O]`` matrix of the im2col matmul.

    Rows are ordered (tap, input channel). With ``groups > 1`` the matrix is block-diagonal
    in the channels (zeros outside each group): one matmul, ``groups`` times the FLOPs.
    """
    out_channels, channels_per_group, kh, kw = weight.shape
    matrix = weight.permute(2, 3, 1, 0).reshape(kh * kw, channels_per_group, out_channels)
    if groups == 1:
        return matrix.reshape(-1, out_channels)
    blocks = matrix.view(kh * kw, channels_per_group, groups, out_channels // groups)
    eye = torch.eye(groups, device=weight.device, dtype=weight.dtype)
    full = torch.einsum(
        "kcgo,hg->khcgo", blocks, eye
    )  # [K, groups(in), C/groups, groups(out), O/groups]
    return full.reshape(kh * kw * groups * channels_per_group, out_channels)


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
    group) (:func:`padded_table`). Every sample is a weighted sum of four rows, the weights
    shared by all channels and carrying the mask (:func:`bilinear_neighbours`); the samples
    of one output position form a row of the im2col matrix ``cols [B·out_h·out_w, kh·kw·C]``,
    and the convolution is ``cols`` times the weight as a ``[kh·kw·C, out_channels]`` matrix
    (:func:`_im2col_weight`). On CPU the two steps run fused, chunk by chunk
    (:class:`_DeformMatmulCPU`); elsewhere by autograd (:func:`_deform_matmul`).
    """
    offset_groups = _check_shapes(input, offset, weight, mask)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    batch, in_channels, height, width = input.shape
    out_channels, channels_per_group, kh, kw = weight.shape
    out_h, out_w = offset.shape[-2:]
    geometry = ((kh, kw), (height, width), stride, padding, dilation)

    dtype = torch.promote_types(input.dtype, weight.dtype)
    if torch.is_autocast_enabled(input.device.type):
        dtype = torch.get_autocast_dtype(input.device.type)
    channels_last = (
        input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    )
    with torch.autocast(input.device.type, enabled=False):
        table = padded_table(input.to(dtype), offset_groups)
        matrix = _im2col_weight(weight.to(dtype), in_channels // channels_per_group)
        bias = None if bias is None else bias.to(dtype)
        cols_bytes = batch * out_h * out_w * matrix.shape[0] * table.element_size()
        if (
            input.device.type == "cpu"
            and cols_bytes > FUSED_MIN_BYTES
            and not torch.onnx.is_in_onnx_export()
        ):
            out = _DeformMatmulCPU.apply(table, offset, mask, matrix, bias, geometry)
        else:
            out = _deform_matmul(table, offset, mask, matrix, bias, geometry)
    out = out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()
