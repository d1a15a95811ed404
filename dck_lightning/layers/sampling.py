"""Deformable sampling: one functional op, several backends that give the same numbers.

A deformable convolution samples the input at ``p + p_k + Δp_k`` for every output
position ``p`` and kernel tap ``p_k`` (bilinear interpolation, zero outside the
image), optionally modulates each sample by ``m_k`` and contracts with the weight::

    y(p) = Σ_k w_k · m_k(p) · x(p_0 + p_k + Δp_k(p))

Backends:

* ``"torchvision"`` — :func:`torchvision.ops.deform_conv2d` (its own CPU/CUDA kernels).
* ``"torch"`` — pure PyTorch: every sample a weighted sum of four input pixels (bilinear
  weights shared by all channels, the mask folded in) — the im2col matrix ``cols = S · table``
  with ``S`` a sparse matrix of four non-zeros a row and ``table`` the input channels-last —
  then one matrix multiply with the weight. On CPU one of two kernels runs: for inputs with
  few channels per offset group, :func:`~torch.nn.functional.grid_sample` of every tap and a
  batched matmul (its cost is per sample and channel); for wider ones :func:`sampled_matmul`,
  fused and chunked with a hand-written backward of sparse-matrix products (its cost is per
  sample; a ``torch.library`` op, so that :func:`torch.compile` keeps it whole). On CUDA
  (``float32``/``float16``/``bfloat16``) the Triton kernels of
  :mod:`~dck_lightning.layers.triton_sampling` run (an implicit GEMM: ``cols`` never in
  memory), each shape class after a one-time self-check against the reference; a class that
  fails it warns once and runs the reference. Elsewhere, without triton, and for export
  (ONNX ``Gather``/``MatMul``, :func:`torch.export`, TorchScript tracing), the same sums run
  through autograd (the reference). Runs in ``float16``/``bfloat16`` (and under
  :func:`torch.autocast`) and is 10–50× faster than torchvision's kernel on CPU.
* ``"auto"`` — picks per device and dtype (see :func:`resolve_backend`): the ``torch``
  backend on CPU, in low precision, and in ``float32`` on CUDA when the Triton kernels pass
  their check there; torchvision's kernel for other ``float32``/``float64`` CUDA inputs.

The backend is chosen per call, per layer (``backend=`` argument of the layers) or
globally with :func:`set_default_backend` / the :func:`sampling_backend` context manager.

The ``torch`` backend takes the sample positions themselves (:func:`sampled_conv2d`), and an
affine copy of the tap grid per output position as three small tensors
(:func:`affine_sampled_conv2d`: the DCK's ``p + t + s · p_k``) instead of ``2·k²`` offset
channels.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
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
    precision always goes to the ``torch`` backend; so does ``float32`` on CUDA when the
    Triton kernels import and pass their self-check there (:func:`triton_ready`); otherwise
    the per-device table decides (torchvision's kernel on CUDA).
    """
    backend = check_backend(backend or _default_backend)
    if backend != "auto":
        return backend
    if input.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(
        input.device.type
    ):
        return "torch"
    if input.dtype == torch.float32 and triton_ready(input.device, input.dtype):
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
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    check_shapes(input, offset, weight, mask, stride, padding, dilation)
    y, x = sample_positions(offset, weight.shape[-2:], stride, padding, dilation)
    if mask is not None:  # (any strides: a mask sliced from the offset conv's output is common)
        mask = mask.reshape(-1, *y.shape[1:])
    return sampled_conv2d(input, y, x, weight, bias, mask)


def conv_output_size(
    in_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """``(out_h, out_w)`` of a convolution, as :class:`torch.nn.Conv2d` computes it."""
    return tuple(
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(in_size, kernel_size, stride, padding, dilation)
    )


def check_shapes(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Optional[Tensor],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> int:
    """Validate the arguments of :func:`deform_conv2d` as torchvision does; the offset groups.

    Checks the channel arithmetic, that offset and mask hold one entry per image, and that
    their spatial size is the convolution's output size (torchvision's "offset output dims:
    (h, w) - computed output dims: (h', w')").
    """
    in_channels, taps = input.shape[1], weight.shape[2] * weight.shape[3]
    if in_channels % weight.shape[1] != 0:
        raise ValueError(
            f"input channels ({in_channels}) must be a multiple of weight.shape[1] ({weight.shape[1]})"
        )
    if offset.shape[1] % (2 * taps) != 0 or offset.shape[1] == 0:
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
    out_size = conv_output_size(input.shape[-2:], weight.shape[-2:], stride, padding, dilation)
    for name, tensor in (("offset", offset), ("mask", mask)):
        if tensor is None:
            continue
        if tensor.shape[0] != input.shape[0]:
            raise ValueError(
                f"invalid batch size of {name}: {tensor.shape[0]}, input has {input.shape[0]}"
            )
        if tuple(tensor.shape[-2:]) != out_size:
            raise ValueError(
                f"{name} output dims: {tuple(tensor.shape[-2:])} - computed output dims: "
                f"{out_size} (the convolution of a {tuple(input.shape[-2:])} input with kernel "
                f"{tuple(weight.shape[-2:])}, stride {stride}, padding {padding}, dilation "
                f"{dilation}); {name} needs one entry per output position"
            )
    return offset_groups


def sample_positions(
    offset: Tensor,
    kernel_size: Sequence[int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Input coordinates ``(y, x)`` of every sample, tap-major.

    Tap ``k = (i, j)`` of output position ``(oy, ox)`` in offset group ``g`` samples the input
    at ``(oy·s_y − p_y + i·d_y + Δy, ox·s_x − p_x + j·d_x + Δx)`` (pixel units, pixel centres
    at integers), computed in at least ``float32`` whatever the offsets' dtype.

    Args:
        offset (Tensor[B, 2 * G * kh * kw, out_h, out_w]): ``(Δy, Δx)`` per tap, torchvision's layout.

    Returns:
        y, x (Tensor[B, G, kh * kw, out_h, out_w])
    """
    batch, channels, out_h, out_w = offset.shape
    kh, kw = kernel_size
    groups = channels // (2 * kh * kw)
    device, dtype = offset.device, torch.promote_types(offset.dtype, torch.float32)
    offset = offset.to(dtype).reshape(-1, groups, kh * kw, 2, out_h, out_w)
    tap_y = (torch.arange(kh, device=device) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=device) * dilation[1]).repeat(kh)
    pos_y = torch.arange(out_h, device=device) * stride[0] - padding[0]
    pos_x = torch.arange(out_w, device=device) * stride[1] - padding[1]
    grid_y = (tap_y.view(kh * kw, 1, 1) + pos_y.view(out_h, 1)).to(dtype)  # [K, out_h, 1]
    grid_x = (tap_x.view(kh * kw, 1, 1) + pos_x).to(dtype)  # [K, 1, out_w]
    return offset[:, :, :, 0] + grid_y, offset[:, :, :, 1] + grid_x


def padded_table(input: Tensor, offset_groups: int) -> Tensor:
    """The input as the table the samples read: ``[B · (H+3) · (W+3) · G, C // G]``.

    Channels last, one row per (pixel, offset group), with a zero border of one pixel
    before and two after each image axis. Coordinates clamped to ``[−1, size]`` have all
    their neighbours in the table; a sample beyond the image reads only zeros, so the
    clamp changes neither its value (0) nor its gradient (0).
    """
    table = F.pad(input.permute(0, 2, 3, 1), (0, 0, 1, 2, 1, 2))
    return table.reshape(-1, input.shape[1] // offset_groups)


def corner_offsets(width: int, groups: int) -> tuple[int, int, int, int]:
    """Table-row offsets of the four neighbours ``(y0, x0), (y0, x1), (y1, x0), (y1, x1)``
    from the first, in the table of :func:`padded_table`."""
    row = (width + 3) * groups  # table rows from one image row to the next
    return (0, groups, row, row + groups)


def bilinear_neighbours(
    y: Tensor, x: Tensor, mask: Optional[Tensor], in_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The first of the four table rows of every bilinear sample, and the four weights.

    A sample at ``(y, x)`` is ``Σ_n weights[·, n] · table[index + corner_offsets[n]]`` with
    the table of :func:`padded_table`. The modulation ``mask`` is folded into the weights:
    it costs nothing in the sampling. Differentiable in ``y``, ``x`` and ``mask``.

    Args:
        y, x (Tensor[B, out_h, out_w, K, G]): coordinates, clamped to ``[−1, size]``.
        mask (Tensor[B, out_h, out_w, K, G], optional): modulation.

    Returns:
        index (LongTensor[N]) and weights (Tensor[N, 4]), ``N = B·out_h·out_w·K·G``;
        neighbours ordered ``(y0, x0), (y0, x1), (y1, x0), (y1, x1)``.
    """
    height, width = in_size
    batch, groups, device = y.shape[0], y.shape[-1], y.device
    row = (width + 3) * groups
    # A NaN coordinate (from NaN offsets) reads the zero border instead of an arbitrary row;
    # its weights stay NaN, so the output is NaN, as a convolution of NaNs would be.
    top = torch.nan_to_num(y.detach(), nan=-1.0).floor_()
    left = torch.nan_to_num(x.detach(), nan=-1.0).floor_()
    # Table row of the top-left neighbour: (b, top + 1, left + 1, g) in the padded image.
    first = torch.arange(batch, device=device) * ((height + 3) * row) + row + groups
    first = first.view(batch, 1, 1, 1, 1) + torch.arange(groups, device=device)
    index = (top.long() * row).add_(left.long() * groups).add_(first)
    frac_y, frac_x = y - top, x - left
    above, below = 1 - frac_y, frac_y
    if mask is not None:
        above, below = above * mask, below * mask
    before, after = 1 - frac_x, frac_x
    # (Four products stacked: much faster than a broadcast outer product over size-2 axes.)
    weights = torch.stack((above * before, above * after, below * before, below * after), dim=-1)
    return index.view(-1), weights.view(-1, 4)


def bilinear_backward(
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


def im2col_weight(weight: Tensor, groups: int) -> Tensor:
    """``weight [O, C/groups, kh, kw]`` as the ``[kh·kw·C, O]`` matrix of the im2col matmul.

    Rows are ordered (tap, input channel). With ``groups > 1`` the matrix is block-diagonal
    in the channels (zeros outside each group): one matmul, ``groups`` times the FLOPs.
    """
    out_channels, channels_per_group, kh, kw = weight.shape
    matrix = weight.permute(2, 3, 1, 0).reshape(kh * kw, channels_per_group, out_channels)
    if groups == 1:
        return matrix.reshape(kh * kw * channels_per_group, out_channels)
    blocks = matrix.view(kh * kw, channels_per_group, groups, out_channels // groups)
    eye = torch.eye(groups, device=weight.device, dtype=weight.dtype)
    full = torch.einsum(
        "kcgo,hg->khcgo", blocks, eye
    )  # [K, groups(in), C/groups, groups(out), O/groups]
    return full.reshape(kh * kw * groups * channels_per_group, out_channels)


def sampled_conv2d(
    input: Tensor,
    y: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """The ``torch`` backend from sample positions: ``out[p] = Σ_k W_k · m_k(p) · input(y, x)``.

    Args:
        input (Tensor[B, C, H, W]): the input (NCHW or channels-last).
        y, x (Tensor[B, G, kh·kw, out_h, out_w]): the input coordinates of every sample
            (pixel centres at integers), ``G`` offset groups, taps in row-major order.
        weight (Tensor[O, C // groups, kh, kw]): the convolution weight.
        bias (Tensor[O], optional).
        mask (Tensor[B, G, kh·kw, out_h, out_w], optional): modulation of every sample.

    Returns:
        Tensor[B, O, out_h, out_w], channels-last when the input is.

    On CPU, inputs with few channels per offset group (at most
    :data:`GRID_SAMPLE_MAX_CHANNELS`: the first layer of a network, SeedNet's 1-channel DCK)
    are sampled by :func:`torch.nn.functional.grid_sample`, whose kernel computes every
    sample's neighbours once for all its channels; wider inputs by :func:`sampled_matmul`,
    whose cost per sample is higher but whose cost per channel is a fraction of grid_sample's.
    """

    def grid(height: int, width: int) -> Tensor:
        scale, shift = _grid_transform(height, width, y)
        # (x, y) pixels -> grid_sample's [-1, 1]; in place on the fresh stack (autograd-safe).
        grid = torch.stack((x, y), dim=-1).mul_(scale).add_(shift)
        return grid.view(-1, y.shape[2] * y.shape[3], y.shape[4], 2)

    return _sampled_conv(input, weight, bias, y.shape[1], lambda: (y, x), grid, mask)


def affine_positions(base: Tensor, step: Tensor, taps: Tensor) -> tuple[Tensor, Tensor]:
    """``(y, x) = base + step · p_k`` for every tap: ``[B, 1, K, out_h, out_w]`` each.

    Args:
        base, step (Tensor[B, 2, out_h, out_w]): per output position, ``(y, x)`` channels.
        taps (Tensor[K, 2]): the tap positions ``p_k``, ``(y, x)``.
    """
    taps = taps.to(base.dtype)
    return tuple(
        torch.addcmul(
            base[:, axis, None], step[:, axis, None], taps[:, axis, None, None]
        ).unsqueeze(1)
        for axis in (0, 1)
    )


def affine_sampled_conv2d(
    input: Tensor,
    base: Tensor,
    step: Tensor,
    taps: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """:func:`sampled_conv2d` at positions ``base + step · p_k`` (:func:`affine_positions`):
    every output position samples an affine copy of the tap grid, as the DCK's
    ``p + t + s · p_k`` does. The positions are never stored per sample on the way to
    grid_sample: its grid is one broadcast ``base' + step' · p_k`` with the pixel-to-grid
    transform folded into the per-position ``base'`` and ``step'``."""

    def grid(height: int, width: int) -> Tensor:
        scale, shift = _grid_transform(height, width, base)
        # [B, out_h, out_w, (x, y)], small: per output position, not per sample.
        base_xy = (base.flip(1).permute(0, 2, 3, 1) * scale + shift).contiguous()
        step_xy = (step.flip(1).permute(0, 2, 3, 1) * scale).contiguous()
        taps_xy = taps.flip(1).to(base.dtype).view(-1, 1, 1, 2)
        grid = torch.addcmul(base_xy.unsqueeze(1), step_xy.unsqueeze(1), taps_xy)
        return grid.view(base.shape[0], -1, base.shape[3], 2)  # [B, K·out_h, out_w, 2]

    return _sampled_conv(
        input, weight, bias, 1, lambda: affine_positions(base, step, taps), grid, None
    )


def _grid_transform(height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` taking ``(x, y)`` pixel coordinates to grid_sample's ``[-1, 1]``
    (``align_corners=False``: pixel centres at ``(2·p + 1) / size − 1``)."""
    scale = torch.tensor((2 / width, 2 / height), dtype=like.dtype, device=like.device)
    shift = torch.tensor((1 / width - 1, 1 / height - 1), dtype=like.dtype, device=like.device)
    return scale, shift


def _sampled_conv(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    offset_groups: int,
    positions,
    grid,
    mask: Optional[Tensor],
) -> Tensor:
    """Run the path of :func:`sampled_conv2d` for this input: ``positions()`` gives the
    ``(y, x)`` of every sample, ``grid(height, width)`` grid_sample's grid of them."""
    dtype = torch.promote_types(input.dtype, weight.dtype)
    if torch.is_autocast_enabled(input.device.type):
        dtype = torch.get_autocast_dtype(input.device.type)
    channels_last = (
        input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    )
    with torch.autocast(input.device.type, enabled=False):
        input, weight = input.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        if _triton_path(input, weight, offset_groups, mask is not None, bias is not None):
            out = _triton_conv(input, *positions(), weight, bias, mask)
        elif not _fused_cpu_path(input) or input.shape[0] == 0:
            out = _reference_conv(input, *positions(), weight, bias, mask)
        elif input.shape[1] // offset_groups <= GRID_SAMPLE_MAX_CHANNELS:
            out = _grid_sample_conv(input, grid(*input.shape[-2:]), weight, bias, mask)
        else:
            out = _table_conv(input, *positions(), weight, bias, mask)
    return out.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


# CPU inputs with at most this many channels per offset group are sampled by grid_sample
# (measured crossover with the table path: between 24 and 32 channels, k=3, 1 thread).
GRID_SAMPLE_MAX_CHANNELS = 24


def _exporting() -> bool:
    """Whether an export or trace is running (they need plain ``Gather``/``MatMul``)."""
    return (
        torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    )


def _fused_cpu_path(input: Tensor) -> bool:
    """Whether the CPU kernels run (eager or compiled), rather than the reference
    composition (other devices; export and tracing)."""
    return input.device.type == "cpu" and not _exporting()


# Device types on which the ``torch`` backend runs the Triton kernels of
# :mod:`~dck_lightning.layers.triton_sampling`, each shape class after its self-check.
TRITON_DEVICES: tuple[str, ...] = ("cuda",)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Shape class -> whether the Triton kernels passed their self-check on it.
_triton_checks: dict[tuple, bool] = {}
_triton_import: list = []  # [the module, or None when triton does not import]


def _triton_module():
    """:mod:`~dck_lightning.layers.triton_sampling`, imported on first use; ``None`` (and no
    warning: the reference runs) when triton is not installed."""
    if not _triton_import:
        try:
            from . import triton_sampling
        except ImportError:
            triton_sampling = None
        _triton_import.append(triton_sampling)
    return _triton_import[0]


def _triton_path(
    input: Tensor, weight: Tensor, offset_groups: int, has_mask: bool, has_bias: bool
) -> bool:
    """Whether this call runs the Triton kernels: a device of :data:`TRITON_DEVICES`, a
    dtype of :data:`TRITON_DTYPES`, no export, no :func:`torch.use_deterministic_algorithms`
    (their input gradient sums with atomics), and a shape class that passed its check."""
    if (
        input.device.type not in TRITON_DEVICES
        or input.dtype not in TRITON_DTYPES
        or _exporting()
        or torch.are_deterministic_algorithms_enabled()
    ):
        return False
    precision = torch.get_float32_matmul_precision() if input.dtype == torch.float32 else ""
    key = (str(input.device), input.dtype, precision, input.shape[1], weight.shape[0])
    key += (input.shape[1] // weight.shape[1], offset_groups, tuple(weight.shape[-2:]))
    key += (has_mask, has_bias)
    passed = _triton_checks.get(key)
    if passed is None:
        passed = _triton_checks[key] = _triton_self_check(key)
    return passed


def triton_ready(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the Triton kernels run on ``device`` in ``dtype``: triton imports and a
    representative class (8 → 8 channels, 3×3, modulated, with bias) passed its check."""
    if device.type not in TRITON_DEVICES or dtype not in TRITON_DTYPES:
        return False
    like = torch.empty(0, 8, 1, 1, device=device, dtype=dtype)
    return _triton_path(like, like.new_empty(8, 8, 3, 3), 1, True, True)


@torch.compiler.disable  # (runs eagerly once per class, also under torch.compile)
def _triton_self_check(key: tuple) -> bool:
    """Run the Triton op and :func:`_reference_conv` on a small input of the class ``key``,
    forward and backward; on an error or a mismatch warn once, naming the class and the
    error, and return ``False`` (the class then runs the reference). ``False`` silently
    when triton does not import."""
    if _triton_module() is None:
        return False
    try:
        mismatch = _triton_mismatch(key)
    except Exception as error:  # a compile error, an unsupported GPU, ...
        mismatch = f"{type(error).__name__}: {error}"
    if mismatch is not None:
        device, dtype, _, channels, out_channels, groups, offset_groups, kernel = key[:8]
        warnings.warn(
            f"the Triton sampling kernels failed their self-check on {device}, {dtype}, "
            f"{channels}->{out_channels} channels, groups={groups}, "
            f"offset_groups={offset_groups}, kernel {kernel}, mask={key[8]}, bias={key[9]}: "
            f"{mismatch}; this class runs the torch reference instead",
            RuntimeWarning,
            stacklevel=2,
        )
    return mismatch is None


def _triton_mismatch(key: tuple) -> Optional[str]:
    """The first of the output and the gradients (input, positions, mask, weight, bias) in
    which the Triton op and the reference (float32, same values) differ by more than the
    dtype's tolerance, relative to the reference's largest entry; ``None`` if none does."""
    device, dtype, precision, channels, out_channels, groups, offset_groups, kernel = key[:8]
    has_mask, has_bias = key[8:]
    gen = torch.Generator().manual_seed(0)
    size, out_size, taps = (5, 5), (3, 4), kernel[0] * kernel[1]

    def rand(*shape, low=0.0, high=1.0):
        values = torch.rand(*shape, generator=gen) * (high - low) + low
        return values.to(device=device, dtype=dtype)

    tensors = {
        "input": rand(2, channels, *size, low=-1),
        "y": rand(2, offset_groups, taps, *out_size, low=-2, high=size[0] + 1),
        "x": rand(2, offset_groups, taps, *out_size, low=-2, high=size[1] + 1),
        "weight": rand(out_channels, channels // groups, *kernel, low=-1),
        "bias": rand(out_channels, low=-1) if has_bias else None,
        "mask": rand(2, offset_groups, taps, *out_size) if has_mask else None,
    }
    grad_out = rand(2, out_channels, *out_size, low=-1)
    results = {}
    with torch.inference_mode(False), torch.enable_grad():
        for name, conv in (("triton", _triton_conv), ("reference", _reference_conv)):
            args = {
                k: None if t is None else t.float().requires_grad_(True) for k, t in tensors.items()
            }
            if name == "triton":  # the class's dtype (positions stay float32, as in use)
                for k in ("input", "weight", "bias", "mask"):
                    if args[k] is not None:
                        args[k] = args[k].to(dtype)
            out = conv(**args)
            wanted = [t for t in args.values() if t is not None]
            grads = torch.autograd.grad(out, wanted, grad_out.to(out.dtype))
            names = [k for k, t in args.items() if t is not None]
            results[name] = {"output": out, **dict(zip(names, grads))}
    tol = 1e-3 if dtype == torch.float32 and precision == "highest" else 5e-2
    for name, expected in results["reference"].items():
        got = results["triton"][name].float()
        error = (got - expected).abs().max().item() / max(expected.abs().max().item(), 1e-6)
        if not error <= tol:  # (NaN fails too)
            return f"{name} differs from the reference by {error:.2g} (relative; tolerance {tol})"
    return None


def _triton_conv(
    input: Tensor,
    y: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    mask: Optional[Tensor],
) -> Tensor:
    """:func:`~dck_lightning.layers.triton_sampling.sampled_conv` at the positions of
    :func:`_rows_layout`: ``Tensor[B, O, out_h, out_w]`` (channels-last memory)."""
    y, x, mask = _rows_layout(input, y, x, mask)
    return _triton_module().sampled_conv(input, y, x, mask, weight, bias).permute(0, 3, 1, 2)


def _rows_layout(
    input: Tensor, y: Tensor, x: Tensor, mask: Optional[Tensor]
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Positions (clamped to ``[−1, size]``) and mask in the order of the im2col rows,
    ``[B, out_h, out_w, K, G]``. A clamped coordinate gets no gradient (autograd's clamp):
    the sample no longer moves with it, and every neighbour stays in the table."""
    height, width = input.shape[-2:]
    y = y.clamp(-1, height).permute(0, 3, 4, 2, 1).contiguous()
    x = x.clamp(-1, width).permute(0, 3, 4, 2, 1).contiguous()
    if mask is not None:
        mask = mask.to(y.dtype).permute(0, 3, 4, 2, 1).contiguous()
    return y, x, mask


def _reference_conv(
    input: Tensor,
    y: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    mask: Optional[Tensor],
) -> Tensor:
    """``cols @ matrix (+ bias)`` by autograd; ``cols [B·out_h·out_w, K·C]`` the sampled im2col
    matrix, every sample ``Σ_n weights[n] · table[index + corner_offsets[n]]``.

    The reference composition of the CPU kernels: used off the CPU and for export, where the
    sums are ``Gather``, ``Mul`` and ``ReduceSum``.
    """
    offset_groups, in_size = y.shape[1], tuple(input.shape[-2:])
    table = padded_table(input, offset_groups)
    matrix = im2col_weight(weight, input.shape[1] // weight.shape[1])
    y, x, mask = _rows_layout(input, y, x, mask)
    index, weights = bilinear_neighbours(y, x, mask, in_size)
    corners = torch.tensor(corner_offsets(in_size[1], offset_groups), device=index.device)
    index = index.unsqueeze(1) + corners
    if torch.onnx.is_in_onnx_export() or table.device.type == "cpu":
        samples = table.index_select(0, index.view(-1)).view(-1, 4, table.shape[1])
        cols = (samples * weights.to(table.dtype).unsqueeze(-1)).sum(1)
    else:
        # CUDA's embedding_bag has no bfloat16 backward for per-sample weights: off the CPU
        # the gather runs in float32 at least and only the matmul in the low precision.
        gather = torch.promote_types(table.dtype, torch.float32)
        cols = F.embedding_bag(
            index, table.to(gather), per_sample_weights=weights.to(gather), mode="sum"
        )
        cols = cols.to(table.dtype)
    cols = cols.view(-1, matrix.shape[0])
    out = cols @ matrix if bias is None else torch.addmm(bias, cols, matrix)
    return out.view(-1, *y.shape[1:3], matrix.shape[1]).permute(0, 3, 1, 2)


def _grid_sample_conv(
    input: Tensor,
    grid: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    mask: Optional[Tensor],
) -> Tensor:
    """:func:`~torch.nn.functional.grid_sample` of every tap into ``cols [B, C·K, out_h·out_w]``
    (bilinear, zeros outside), then ``weight [O, C·K] @ cols`` per image (and group).

    Args:
        grid (Tensor[B·G, K·out_h, out_w, 2]): grid_sample's grid, taps major.

    Returns:
        Tensor[B, O, out_h, out_w]
    """
    batch, channels, height, width = input.shape
    offset_groups = grid.shape[0] // max(batch, 1)
    out_channels, channels_per_group, kh, kw = weight.shape
    taps, out_w = kh * kw, grid.shape[2]
    out_h = grid.shape[1] // taps
    groups = channels // channels_per_group
    cols = F.grid_sample(
        input.reshape(-1, channels // offset_groups, height, width),
        grid.to(input.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    if mask is not None:  # [B, G, C/G, K, ...] × [B, G, 1, K, ...]
        cols = cols.view(-1, offset_groups, channels // offset_groups, taps, out_h * out_w)
        cols = cols * mask.to(cols.dtype).reshape(-1, offset_groups, 1, taps, out_h * out_w)
    # Rows of cols in (channel, tap) order, the order of weight.view(O, C/groups · K).
    cols = cols.reshape(-1, groups, channels_per_group * taps, out_h * out_w)
    matrix = weight.reshape(groups, out_channels // groups, channels_per_group * taps)
    out = torch.matmul(matrix, cols).view(-1, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(out_channels, 1, 1)


def _table_conv(
    input: Tensor,
    y: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    mask: Optional[Tensor],
) -> Tensor:
    """:func:`sampled_matmul` on the channels-last table of the input."""
    height, width = input.shape[-2:]
    table = padded_table(input, y.shape[1])
    matrix = im2col_weight(weight, input.shape[1] // weight.shape[1])
    y, x, mask = _rows_layout(input, y, x, mask)
    out = sampled_matmul(table, y, x, mask, matrix, bias, height, width)[0]
    return out.view(-1, *y.shape[1:3], matrix.shape[1]).permute(0, 3, 1, 2)


# Bytes of im2col rows the CPU op samples and multiplies at a time, per thread (about the
# L2 cache of a core).
CHUNK_BYTES = 2 * 2**20


def _chunks(rows: int, row_bytes: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_BYTES * torch.get_num_threads() // row_bytes)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _gather(table: Tensor, neighbours: Tensor, weights: Tensor, out: Tensor) -> Tensor:
    """``out[s] = Σ_n weights[s, n] · table[neighbours[s, n]]`` (one im2col chunk).

    A compressed-row sparse matrix (four non-zeros a row) times the table, written into
    ``out``: 3–4× faster than :func:`~torch.nn.functional.embedding_bag`. (The sparse kernels
    run in float32/float64; other dtypes take embedding_bag.)
    """
    if table.dtype not in (torch.float32, torch.float64):
        return F.embedding_bag(neighbours, table, per_sample_weights=weights, mode="sum")
    n = neighbours.shape[0]
    rows = torch.arange(0, 4 * n + 1, 4, device=table.device)
    matrix = _csr(rows, neighbours.view(4 * n), weights.reshape(4 * n), (n, table.shape[0]))
    return torch.addmm(out, matrix, table, beta=0, out=out)


def _scatter_add(
    grad_table: Tensor,
    index: Tensor,
    weights: Tensor,
    corners: Sequence[int],
    grad_cols: Tensor,
) -> None:
    """``grad_table[index[s] + corners[n]] += weights[s, n] · grad_cols[s]`` for every ``s, n``.

    The transpose of the sampling as sparse matrices sorted by destination row: one sort of
    the first neighbours serves the four corners (each corner's rows are the first's shifted
    by ``corners[n]``), each a compressed-row product into a shifted view of ``grad_table``.
    """
    first, order = torch.sort(index, stable=True)
    # Only the rows this chunk reaches (a band of the table: its outputs are neighbours).
    low, high = first[[0, -1]].tolist()
    rows = high + 1 - low
    counts = torch.bincount(first - low, minlength=rows)
    crow = first.new_zeros(rows + 1)
    torch.cumsum(counts, 0, out=crow[1:])
    weights = weights[order].to(grad_table.dtype)
    for n, shift in enumerate(corners):
        transposed = _csr(crow, order, weights[:, n], (rows, index.shape[0]))
        view = grad_table[low + shift : low + shift + rows]
        torch.addmm(view, transposed, grad_cols, out=view)


@torch.library.custom_op("dck_lightning::sampled_matmul", mutates_args=())
def sampled_matmul(
    table: Tensor,
    y: Tensor,
    x: Tensor,
    mask: Optional[Tensor],
    matrix: Tensor,
    bias: Optional[Tensor],
    height: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The sampled im2col matrix times ``matrix``, fused and chunked, for CPUs.

    Row ``m`` of ``cols`` (one output position: ``K·G`` samples of ``C // G`` channels) is
    sampled by :func:`_gather` with the neighbours and weights of :func:`bilinear_neighbours`.
    The full ``cols`` (``K`` times the input) is never stored: each chunk of rows is sampled,
    multiplied and dropped while it is in cache, and sampled again in the backward
    (:func:`sampled_matmul_backward`). A ``torch.library`` op, so that :func:`torch.compile`
    keeps it whole.

    Args:
        table (Tensor[R, C // G]): :func:`padded_table` of the input.
        y, x (Tensor[B, out_h, out_w, K, G]): positions clamped to ``[−1, size]``.
        mask (Tensor[B, out_h, out_w, K, G], optional): modulation.
        matrix (Tensor[K·C, O]): :func:`im2col_weight`.

    Returns:
        ``(out [B·out_h·out_w, O], index, weights)``: the output, and the neighbours and
        weights the backward reuses.
    """
    index, weights = bilinear_neighbours(y, x, mask, (height, width))
    weights = weights.to(table.dtype)
    corners = torch.tensor(corner_offsets(width, y.shape[-1]), device=table.device)
    rows, per_row = y.shape[:3].numel(), y.shape[3:].numel()
    out = table.new_empty(rows, matrix.shape[1])
    chunks = _chunks(rows, matrix.shape[0] * table.element_size())
    buffer = table.new_empty((chunks[0][1] - chunks[0][0]) * per_row, table.shape[1])
    for start, stop in chunks:
        samples = slice(start * per_row, stop * per_row)
        neighbours = index[samples].unsqueeze(1) + corners
        cols = _gather(table, neighbours, weights[samples], buffer[: neighbours.shape[0]])
        cols = cols.view(stop - start, matrix.shape[0])
        if bias is None:
            torch.mm(cols, matrix, out=out[start:stop])
        else:
            torch.addmm(bias, cols, matrix, out=out[start:stop])
    return out, index, weights


@sampled_matmul.register_fake
def _(table, y, x, mask, matrix, bias, height, width):
    samples = y.numel()
    return (
        table.new_empty(y.shape[:3].numel(), matrix.shape[1]),
        y.new_empty(samples, dtype=torch.long),
        table.new_empty(samples, 4),
    )


@torch.library.custom_op("dck_lightning::sampled_matmul_backward", mutates_args=())
def sampled_matmul_backward(
    grad_out: Tensor,
    table: Tensor,
    y: Tensor,
    x: Tensor,
    mask: Optional[Tensor],
    matrix: Tensor,
    index: Tensor,
    weights: Tensor,
    width: int,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`sampled_matmul`: ``(table, y, x, mask, matrix)``, each empty
    where ``needs`` (the same order) says it is not wanted.

    The sampling read as a sparse matrix ``S`` with 4 non-zeros a row (``cols = S · table``):
    the table gradient is ``Sᵀ · grad_cols`` (:func:`_scatter_add`), and the gradient of the
    neighbour weights ``grad_cols · tableᵀ`` sampled at the non-zeros of ``S``
    (:func:`torch.sparse.sampled_addmm`); :func:`bilinear_backward` turns it into the
    gradients of the coordinates and the mask.
    """
    need_table, need_y, need_x, need_mask, need_matrix = needs
    need_dots = need_y or need_x or need_mask
    grad_out = grad_out.contiguous()
    corners = corner_offsets(width, y.shape[-1])
    corner_index = torch.tensor(corners, device=table.device)
    rows, per_row = grad_out.shape[0], y.shape[3:].numel()
    chunks = _chunks(rows, matrix.shape[0] * table.element_size())
    # The sparse kernels run in float32/float64 only.
    dtype = torch.promote_types(table.dtype, torch.float32)
    table_rows, channels = table.shape
    sparse_table = table.to(dtype)
    # Room after the last row for the shifted views of _scatter_add.
    grad_table = table.new_zeros(table_rows + corners[-1], channels, dtype=dtype)
    # The weight gradient is accumulated transposed, [out, in]: a faster product in chunks.
    grad_matrix_t = matrix.new_zeros(matrix.shape[::-1])
    dots = weights.new_zeros(weights.shape, dtype=dtype)
    most = (chunks[0][1] - chunks[0][0]) * per_row  # samples in the largest chunk
    row_start = torch.arange(0, 4 * most + 1, 4, device=table.device)
    buffer = table.new_empty(most, channels)
    for start, stop in chunks:
        n = (stop - start) * per_row
        samples = slice(start * per_row, stop * per_row)
        neighbours = index[samples].unsqueeze(1) + corner_index
        grad = grad_out[start:stop]
        if need_matrix:
            cols = _gather(table, neighbours, weights[samples], buffer[:n])
            grad_matrix_t.addmm_(grad.t(), cols.view(stop - start, matrix.shape[0]))
        if not (need_table or need_dots):
            continue
        grad_cols = (grad @ matrix.t()).view(n, channels).to(dtype)
        if need_table:
            _scatter_add(grad_table, index[samples], weights[samples], corners, grad_cols)
        if need_dots:  # (grad_cols · tableᵀ) at the non-zeros of S, written into `dots`
            s = _csr(
                row_start[: n + 1],
                neighbours.view(4 * n),
                dots[samples].view(4 * n),
                (n, table_rows),
            )
            torch.sparse.sampled_addmm(s, grad_cols, sparse_table.t(), beta=0.0, out=s)
    grad_y = grad_x = grad_mask = None
    if need_dots:
        grad_y, grad_x, grad_mask = bilinear_backward(dots, y, x, mask)
    grads = (
        grad_table[:table_rows].to(table.dtype) if need_table else None,
        grad_y.to(y.dtype) if need_y else None,
        grad_x.to(x.dtype) if need_x else None,
        grad_mask if need_mask else None,
        grad_matrix_t.t().contiguous() if need_matrix else None,
    )
    # (A custom op returns tensors, distinct ones: an empty one stands for "not wanted".)
    return tuple(y.new_empty(0) if grad is None else grad for grad in grads)


@sampled_matmul_backward.register_fake
def _(grad_out, table, y, x, mask, matrix, index, weights, width, needs):
    def like(tensor, needed):
        return torch.empty_like(tensor) if needed and tensor is not None else y.new_empty(0)

    return tuple(like(t, need) for t, need in zip((table, y, x, mask, matrix), needs))


def _setup_context(ctx, inputs, output):
    table, y, x, mask, matrix, bias, height, width = inputs
    _, index, weights = output
    ctx.mark_non_differentiable(index, weights)
    ctx.save_for_backward(table, y, x, mask, matrix, index, weights)
    ctx.width = width
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out, _grad_index, _grad_weights):
    table, y, x, mask, matrix, index, weights = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5])
    needs[3] = needs[3] and mask is not None
    grads = sampled_matmul_backward(
        grad_out, table, y, x, mask, matrix, index, weights, ctx.width, needs
    )
    grads = [grad if need else None for grad, need in zip(grads, needs)]
    grad_bias = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[5] else None
    return (*grads, grad_bias, None, None)


sampled_matmul.register_autograd(_backward, setup_context=_setup_context)
