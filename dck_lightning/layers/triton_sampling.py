"""Triton kernels of the ``torch`` sampling backend: the sampled convolution as an implicit GEMM.

The op (:func:`sampled_conv`) computes, for every output row ``m`` (one output position of
one image, ``M = B·out_h·out_w`` rows) and output channel ``o`` of conv group ``γ(o)``::

    out[m, o] = bias[o] + Σ_k Σ_{c ∈ γ(o)} cols[m, k, c] · W[o, c, k]
    cols[m, k, c] = mask[m, k, g(c)] · Σ_n w_n(y, x) · input[b(m), c, y_n, x_n]

with ``(y, x) = (y, x)[m, k, g(c)]`` the sample position of tap ``k`` in offset group ``g(c)``,
its four neighbours ``(y_n, x_n) ∈ {⌊y⌋, ⌊y⌋+1} × {⌊x⌋, ⌊x⌋+1}`` (zero outside the image) and
the bilinear weights ``w_n = (1 − |y − y_n|)(1 − |x − x_n|)``. The im2col matrix ``cols``
never reaches global memory: each program samples a ``[BLOCK_M, BLOCK_C]`` tile of it in
registers (fp32), and feeds it to ``tl.dot`` with a ``[BLOCK_C, BLOCK_N]`` tile of the weight.

The reduction runs over *segments* of ``S = gcd(C/groups, C/G)`` channels: each lies in one
conv group and one offset group, so a tile's samples share their positions and weights
(computed once per row, for all its channels), and grouped convolutions cost their own FLOPs
(no block-diagonal weight).

Backward, three gradients from two kernels:

* input and positions (:func:`_input_positions_backward_kernel`, one program per row tile,
  tap and offset group): ``grad_cols = grad_out · Wᵀ`` per tile (``tl.dot``), scattered to the
  four neighbours with ``tl.atomic_add`` into an fp32 input gradient, and the dots
  ``d_n = Σ_c grad_cols[c] · input[c, y_n, x_n]`` turned into ``∂/∂y``, ``∂/∂x``, ``∂/∂mask``
  as :func:`~dck_lightning.layers.sampling.bilinear_backward` does: with ``f_y = y − ⌊y⌋``,
  ``∂/∂y = m · lerp(d₁₀ − d₀₀, d₁₁ − d₀₁, f_x)``, ``∂/∂x = m · lerp(d₀₁ − d₀₀, d₁₁ − d₁₀, f_y)``,
  ``∂/∂m = lerp(d₀₀, d₀₁, f_x) + f_y · lerp(d₁₀ − d₀₀, d₁₁ − d₀₁, f_x)``;
* weight (:func:`_weight_backward_kernel`): ``grad_W = colsᵀ · grad_out`` per
  ``[BLOCK_C, BLOCK_N]`` tile, re-sampling the ``cols`` tiles as the forward does, the rows
  split over programs (fp32 ``tl.atomic_add`` of the partial sums) when the tiles alone
  would not fill the GPU.

Inputs ``float32``, ``float16`` or ``bfloat16``; sampling, blending and accumulation in fp32,
the ``tl.dot`` operands in the input dtype (``float32`` operands in TF32 only when
:func:`torch.get_float32_matmul_precision` allows it, as cuBLAS does for the reference).
The input gradient is summed with atomics: fast, not bitwise deterministic.

:func:`sampled_conv` is a ``torch.library`` custom op (``dck_lightning::sampled_conv_triton``,
its backward ``dck_lightning::sampled_conv_triton_backward``) with fake implementations, so
that :func:`torch.compile` keeps it whole. On CUDA tensors the kernels are compiled; with
``TRITON_INTERPRET=1`` set *before triton is imported* (``@triton.jit`` reads it when it
decorates, triton's own library functions at its import) they run in Triton's interpreter,
on CPU tensors too — how the tests run them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tile sizes: rows (output positions) × output channels, and channels per reduction step.
BLOCK_M = 64
MAX_BLOCK_N = 64
MAX_BLOCK_C = 32
# Programs the weight gradient aims for per streaming multiprocessor (its rows are split
# over programs until there are this many), and in all off a GPU (the interpreter).
PROGRAMS_PER_SM = 4
PROGRAMS_OFF_GPU = 1


@triton.jit
def _sample_setup(
    pos_y, pos_x, mod, p, row_ok, base, height, width, s_h, s_w, HAS_MASK: tl.constexpr
):
    """Per row of a tile, one sample ``(y, x)`` (and its mask): the offset of its top-left
    neighbour, the four neighbours' validity (inside the image and a real row), the four
    bilinear weights ``(00, 01, 10, 11)`` with the mask folded in, the fractional parts
    ``f_y, f_x`` and the mask."""
    y = tl.load(pos_y + p, mask=row_ok, other=0.0).to(tl.float32)
    x = tl.load(pos_x + p, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_MASK:
        m = tl.load(mod + p, mask=row_ok, other=0.0).to(tl.float32)
    else:
        m = tl.full(y.shape, 1.0, tl.float32)
    top = tl.floor(y)
    left = tl.floor(x)
    frac_y = y - top
    frac_x = x - left
    # Validity tested on the floats: a NaN position (NaN offsets) reads nothing and keeps NaN
    # weights (a NaN output, as a convolution of NaNs), a huge one never reaches an int cast.
    in_y0 = (top >= 0) & (top < height)
    in_y1 = (top >= -1) & (top < height - 1)
    in_x0 = (left >= 0) & (left < width)
    in_x1 = (left >= -1) & (left < width - 1)
    near = (in_y0 | in_y1) & (in_x0 | in_x1) & row_ok
    top_i = tl.where(near, top, 0.0).to(tl.int64)
    left_i = tl.where(near, left, 0.0).to(tl.int64)
    offset = base + top_i * s_h + left_i * s_w
    above = (1.0 - frac_y) * m
    below = frac_y * m
    w00 = above * (1.0 - frac_x)
    w01 = above * frac_x
    w10 = below * (1.0 - frac_x)
    w11 = below * frac_x
    v00 = in_y0 & in_x0 & row_ok
    v01 = in_y0 & in_x1 & row_ok
    v10 = in_y1 & in_x0 & row_ok
    v11 = in_y1 & in_x1 & row_ok
    return offset, v00, v01, v10, v11, w00, w01, w10, w11, frac_y, frac_x, m


@triton.jit
def _neighbour(inp, offset, valid, chan, chan_ok, s_c):
    """The ``[BLOCK_M, BLOCK_C]`` fp32 tile of one neighbour's channels (zero where invalid)."""
    ptrs = inp + offset[:, None] + chan[None, :].to(tl.int64) * s_c
    return tl.load(ptrs, mask=valid[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _sampled_tile(
    inp, offset, v00, v01, v10, v11, w00, w01, w10, w11, chan, chan_ok, s_h, s_w, s_c
):
    """A ``[BLOCK_M, BLOCK_C]`` tile of ``cols``: ``Σ_n w_n · input[y_n, x_n]`` in fp32."""
    tile = w00[:, None] * _neighbour(inp, offset, v00, chan, chan_ok, s_c)
    tile += w01[:, None] * _neighbour(inp, offset + s_w, v01, chan, chan_ok, s_c)
    tile += w10[:, None] * _neighbour(inp, offset + s_h, v10, chan, chan_ok, s_c)
    tile += w11[:, None] * _neighbour(inp, offset + s_h + s_w, v11, chan, chan_ok, s_c)
    return tile


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` (fp32 accumulator). ``UPCAST`` (Triton's interpreter, whose ``dot`` has
    no bfloat16) multiplies the same values in fp32: what a bfloat16/float16 tensor-core
    product with fp32 accumulation computes, since products of such values are exact in fp32."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _forward_kernel(
    inp, pos_y, pos_x, mod, wmat, bias, out,
    rows, rows_per_image, height, width, channels, out_channels, out_per_group,
    chan_per_group, chan_per_offset_group, offset_groups, taps, segment,
    s_b, s_c, s_h, s_w,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``out[m, o] = bias[o] + Σ_k Σ_c cols[m, k, c] · wmat[k, c, o]`` for one
    ``[BLOCK_M, BLOCK_N]`` tile of rows × the output channels of one conv group."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_blocks = tl.cdiv(out_per_group, BLOCK_N)
    group = pid_n // n_blocks
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = (pid_n % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rm < rows
    col_ok = rn < out_per_group
    base = (rm // rows_per_image).to(tl.int64) * s_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first = group * chan_per_group // segment
    for k in range(0, taps):
        for seg in range(first, first + chan_per_group // segment):
            c_lo = seg * segment
            p = (rm.to(tl.int64) * taps + k) * offset_groups + c_lo // chan_per_offset_group
            offset, v00, v01, v10, v11, w00, w01, w10, w11, _fy, _fx, _m = _sample_setup(
                pos_y, pos_x, mod, p, row_ok, base, height, width, s_h, s_w, HAS_MASK
            )
            for c0 in range(c_lo, c_lo + segment, BLOCK_C):
                chan = c0 + tl.arange(0, BLOCK_C)
                chan_ok = chan < c_lo + segment
                tile = _sampled_tile(
                    inp,
                    offset,
                    v00,
                    v01,
                    v10,
                    v11,
                    w00,
                    w01,
                    w10,
                    w11,
                    chan,
                    chan_ok,
                    s_h,
                    s_w,
                    s_c,
                )
                w_ptrs = (
                    wmat + (k * channels + chan)[:, None].to(tl.int64) * out_per_group + rn[None, :]
                )
                w = tl.load(w_ptrs, mask=chan_ok[:, None] & col_ok[None, :], other=0.0)
                acc = _dot(tile.to(w.dtype), w, acc, PRECISION, UPCAST)
    out_col = group * out_per_group + rn
    if HAS_BIAS:
        acc += tl.load(bias + out_col, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out + rm[:, None].to(tl.int64) * out_channels + out_col[None, :]
    tl.store(out_ptrs, acc.to(out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _input_positions_backward_kernel(
    inp, pos_y, pos_x, mod, wmat, grad_out, grad_inp, grad_y, grad_x, grad_mod,
    rows, rows_per_image, height, width, channels, out_channels, out_per_group,
    chan_per_group, chan_per_offset_group, offset_groups, taps, segment,
    s_b, s_c, s_h, s_w,
    HAS_MASK: tl.constexpr, NEED_INPUT: tl.constexpr, NEED_POSITIONS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """For one tile of rows, tap ``k`` and offset group ``g``: ``grad_cols = grad_out · Wᵀ``
    over the channels of ``g``, scattered (atomics) to the four neighbours of every sample,
    and the bilinear derivatives of the positions and the mask (plain stores: this program
    owns the samples ``(m, k, g)`` of its rows)."""
    pid_m = tl.program_id(0)
    k = tl.program_id(1) // offset_groups
    g = tl.program_id(1) % offset_groups
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rm < rows
    image = (rm // rows_per_image).to(tl.int64)
    p = (rm.to(tl.int64) * taps + k) * offset_groups + g
    offset, v00, v01, v10, v11, w00, w01, w10, w11, frac_y, frac_x, m = _sample_setup(
        pos_y, pos_x, mod, p, row_ok, image * s_b, height, width, s_h, s_w, HAS_MASK
    )
    d00 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    d01 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    d10 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    d11 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    first = g * chan_per_offset_group // segment
    for seg in range(first, first + chan_per_offset_group // segment):
        c_lo = seg * segment
        group = c_lo // chan_per_group
        for c0 in range(c_lo, c_lo + segment, BLOCK_C):
            chan = c0 + tl.arange(0, BLOCK_C)
            chan_ok = chan < c_lo + segment
            grad_cols = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            for n0 in range(0, out_per_group, BLOCK_N):
                rn = n0 + tl.arange(0, BLOCK_N)
                col_ok = rn < out_per_group
                g_ptrs = (
                    grad_out
                    + rm[:, None].to(tl.int64) * out_channels
                    + (group * out_per_group + rn)[None, :]
                )
                grad = tl.load(g_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
                w_ptrs = (
                    wmat + (k * channels + chan)[None, :].to(tl.int64) * out_per_group + rn[:, None]
                )
                w_t = tl.load(w_ptrs, mask=col_ok[:, None] & chan_ok[None, :], other=0.0)
                grad_cols = _dot(grad, w_t, grad_cols, PRECISION, UPCAST)
            if NEED_INPUT:
                # (The fp32 input gradient has the input's strides: the same offsets.)
                dst = grad_inp + offset[:, None] + chan[None, :].to(tl.int64) * s_c
                ok = chan_ok[None, :]
                tl.atomic_add(dst, w00[:, None] * grad_cols, mask=v00[:, None] & ok)
                tl.atomic_add(dst + s_w, w01[:, None] * grad_cols, mask=v01[:, None] & ok)
                tl.atomic_add(dst + s_h, w10[:, None] * grad_cols, mask=v10[:, None] & ok)
                tl.atomic_add(dst + s_h + s_w, w11[:, None] * grad_cols, mask=v11[:, None] & ok)
            if NEED_POSITIONS:
                d00 += tl.sum(grad_cols * _neighbour(inp, offset, v00, chan, chan_ok, s_c), axis=1)
                d01 += tl.sum(
                    grad_cols * _neighbour(inp, offset + s_w, v01, chan, chan_ok, s_c), axis=1
                )
                d10 += tl.sum(
                    grad_cols * _neighbour(inp, offset + s_h, v10, chan, chan_ok, s_c), axis=1
                )
                d11 += tl.sum(
                    grad_cols * _neighbour(inp, offset + s_h + s_w, v11, chan, chan_ok, s_c),
                    axis=1,
                )
    if NEED_POSITIONS:
        dy = (d10 - d00) + frac_x * ((d11 - d01) - (d10 - d00))
        dx = (d01 - d00) + frac_y * ((d11 - d10) - (d01 - d00))
        if HAS_MASK:
            dm = d00 + frac_x * (d01 - d00) + frac_y * dy
            tl.store(grad_mod + p, dm.to(grad_mod.dtype.element_ty), mask=row_ok)
            dy = dy * m
            dx = dx * m
        tl.store(grad_y + p, dy.to(grad_y.dtype.element_ty), mask=row_ok)
        tl.store(grad_x + p, dx.to(grad_x.dtype.element_ty), mask=row_ok)


@triton.jit
def _weight_backward_kernel(
    inp, pos_y, pos_x, mod, grad_out, grad_wmat,
    rows, rows_per_image, height, width, channels, out_channels, out_per_group,
    chan_per_group, chan_per_offset_group, offset_groups, taps, segment, row_blocks_per_program,
    s_b, s_c, s_h, s_w,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``grad_wmat[k, c, o] += Σ_m cols[m, k, c] · grad_out[m, o]`` for one
    ``[BLOCK_C, BLOCK_N]`` tile and one range of row blocks (``program_id(2)``)."""
    blocks_per_segment = tl.cdiv(segment, BLOCK_C)
    per_tap = channels // segment * blocks_per_segment
    k = tl.program_id(0) // per_tap
    seg = tl.program_id(0) % per_tap // blocks_per_segment
    c_lo = seg * segment
    chan = c_lo + tl.program_id(0) % blocks_per_segment * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chan < c_lo + segment
    g = c_lo // chan_per_offset_group
    group = c_lo // chan_per_group
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = rn < out_per_group
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    first = tl.program_id(2) * row_blocks_per_program
    last = tl.minimum(first + row_blocks_per_program, tl.cdiv(rows, BLOCK_M))
    for block in range(first, last):
        rm = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rm < rows
        base = (rm // rows_per_image).to(tl.int64) * s_b
        p = (rm.to(tl.int64) * taps + k) * offset_groups + g
        offset, v00, v01, v10, v11, w00, w01, w10, w11, _fy, _fx, _m = _sample_setup(
            pos_y, pos_x, mod, p, row_ok, base, height, width, s_h, s_w, HAS_MASK
        )
        tile = _sampled_tile(
            inp, offset, v00, v01, v10, v11, w00, w01, w10, w11, chan, chan_ok, s_h, s_w, s_c
        )
        g_ptrs = (
            grad_out
            + rm[:, None].to(tl.int64) * out_channels
            + (group * out_per_group + rn)[None, :]
        )
        grad = tl.load(g_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _dot(tl.trans(tile.to(grad.dtype)), grad, acc, PRECISION, UPCAST)
    dst = grad_wmat + (k * channels + chan)[:, None].to(tl.int64) * out_per_group + rn[None, :]
    tl.atomic_add(dst, acc, mask=chan_ok[:, None] & col_ok[None, :])


# Whether the kernels run in Triton's interpreter (TRITON_INTERPRET=1 when they were decorated).
INTERPRETED = not isinstance(_forward_kernel, triton.runtime.JITFunction)


class _Problem:
    """The launch arguments shared by the three kernels, from the op's arguments.

    ``input`` is made channels-last (each neighbour's channels contiguous), the positions and
    mask contiguous ``[B, out_h, out_w, K, G]``, the weight the ``[K, C, O/groups]`` matrix
    ``wmat[k, c, o'] = weight[γ(c)·O/groups + o', c mod C/groups, k]``.
    """

    def __init__(self, input: Tensor, y: Tensor, x: Tensor, mask: Optional[Tensor], weight: Tensor):
        check_arguments(input, y, x, mask, weight)
        batch, channels, self.height, self.width = input.shape
        out_channels, chan_per_group, kh, kw = weight.shape
        self.batch, self.channels, self.out_channels = batch, channels, out_channels
        self.groups = channels // chan_per_group
        self.taps, self.offset_groups = kh * kw, y.shape[-1]
        self.out_size = tuple(y.shape[1:3])
        self.rows = y.shape[:3].numel()
        self.input = input.contiguous(memory_format=torch.channels_last)
        self.y, self.x = y.contiguous(), x.contiguous()
        self.mask = None if mask is None else mask.contiguous()
        self.out_per_group = out_channels // self.groups
        self.chan_per_group = chan_per_group
        self.chan_per_offset_group = channels // self.offset_groups
        self.segment = math.gcd(chan_per_group, self.chan_per_offset_group)
        self.wmat = (
            weight.reshape(self.groups, self.out_per_group, chan_per_group, self.taps)
            .permute(3, 0, 2, 1)
            .reshape(self.taps, channels, self.out_per_group)
            .contiguous()
        )
        self.block_n = min(MAX_BLOCK_N, max(16, triton.next_power_of_2(self.out_per_group)))
        self.block_c = min(MAX_BLOCK_C, max(16, triton.next_power_of_2(self.segment)))
        matmul_tf32 = torch.get_float32_matmul_precision() != "highest"
        self.precision = "tf32" if input.dtype == torch.float32 and matmul_tf32 else "ieee"

    def scalars(self) -> tuple[int, ...]:
        """The integer arguments every kernel takes first, then the input's strides."""
        return (
            self.rows,
            self.out_size[0] * self.out_size[1],
            self.height,
            self.width,
            self.channels,
            self.out_channels,
            self.out_per_group,
            self.chan_per_group,
            self.chan_per_offset_group,
            self.offset_groups,
            self.taps,
            self.segment,
        )

    def strides(self) -> tuple[int, ...]:
        return tuple(self.input.stride())

    def weight_grad(self, grad_wmat: Tensor, like: Tensor) -> Tensor:
        """``grad_wmat [K, C, O/groups]`` back in the weight's shape ``[O, C/groups, kh, kw]``."""
        return (
            grad_wmat.view(self.taps, self.groups, self.chan_per_group, self.out_per_group)
            .permute(1, 3, 2, 0)
            .reshape(like.shape)
            .to(like.dtype)
        )


def check_arguments(
    input: Tensor, y: Tensor, x: Tensor, mask: Optional[Tensor], weight: Tensor
) -> None:
    """Raise a ``ValueError`` naming the argument when the shapes or dtypes do not fit."""
    if input.dtype not in DTYPES or weight.dtype != input.dtype:
        raise ValueError(
            f"sampled_conv_triton runs float32/float16/bfloat16 with one dtype for input and "
            f"weight; got input {input.dtype}, weight {weight.dtype}"
        )
    if input.dim() != 4 or weight.dim() != 4 or y.dim() != 5:
        raise ValueError(
            "sampled_conv_triton expects input [B, C, H, W], weight [O, C/groups, kh, kw] and "
            f"positions [B, out_h, out_w, K, G]; got {tuple(input.shape)}, "
            f"{tuple(weight.shape)}, {tuple(y.shape)}"
        )
    batch, channels = input.shape[:2]
    out_channels, chan_per_group, kh, kw = weight.shape
    for name, tensor in (("x", x), ("mask", mask)):
        if tensor is not None and tensor.shape != y.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, y has {tuple(y.shape)}")
    if y.shape[0] != batch or y.shape[3] != kh * kw or channels % y.shape[4] != 0:
        raise ValueError(
            f"positions {tuple(y.shape)} do not fit input {tuple(input.shape)} and a "
            f"{kh}x{kw} kernel: need [B, out_h, out_w, {kh * kw}, G] with C divisible by G"
        )
    if channels % chan_per_group != 0 or out_channels % (channels // chan_per_group) != 0:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not fit {channels} input channels in groups"
        )


def _forward(problem: _Problem, bias: Optional[Tensor]) -> Tensor:
    """Launch :func:`_forward_kernel`: ``out [B, out_h, out_w, O]`` in the input's dtype."""
    out = problem.input.new_empty(problem.rows, problem.out_channels)
    if problem.rows > 0:
        grid = (
            triton.cdiv(problem.rows, BLOCK_M),
            problem.groups * triton.cdiv(problem.out_per_group, problem.block_n),
        )
        dummy = problem.wmat  # (pointer arguments of absent tensors; never read)
        _forward_kernel[grid](
            problem.input,
            problem.y,
            problem.x,
            dummy if problem.mask is None else problem.mask,
            problem.wmat,
            dummy if bias is None else bias.to(problem.input.dtype).contiguous(),
            out,
            *problem.scalars(),
            *problem.strides(),
            HAS_MASK=problem.mask is not None,
            HAS_BIAS=bias is not None,
            PRECISION=problem.precision,
            UPCAST=INTERPRETED,
            BLOCK_M=BLOCK_M,
            BLOCK_N=problem.block_n,
            BLOCK_C=problem.block_c,
        )
    return out.view(problem.batch, *problem.out_size, problem.out_channels)


def _row_split(problem: _Problem, tiles: int) -> int:
    """Row blocks per program of the weight gradient: all of them, unless ``tiles`` programs
    would leave the GPU (``PROGRAMS_PER_SM`` per multiprocessor) partly idle."""
    row_blocks = triton.cdiv(problem.rows, BLOCK_M)
    if problem.input.device.type == "cuda":
        sms = torch.cuda.get_device_properties(problem.input.device).multi_processor_count
        target = PROGRAMS_PER_SM * sms
    else:
        target = PROGRAMS_OFF_GPU
    splits = min(row_blocks, max(1, triton.cdiv(target, tiles)))
    return triton.cdiv(row_blocks, splits)


def _backward(
    grad_out: Tensor, problem: _Problem, needs: list[bool]
) -> tuple[Optional[Tensor], ...]:
    """Launch the backward kernels for what ``needs`` asks, in the order
    ``(input, y, x, mask, weight)``; ``None`` for the rest."""
    need_input, need_y, need_x, need_mask, need_weight = needs
    need_mask = need_mask and problem.mask is not None
    need_positions = need_y or need_x or need_mask
    grad_out = grad_out.reshape(problem.rows, problem.out_channels)
    grad_out = grad_out.to(problem.input.dtype).contiguous()
    inp, fp32 = problem.input, torch.float32
    mask = problem.mask
    grad_input = grad_y = grad_x = grad_mask = grad_wmat = None
    if need_input:  # fp32, the input's (channels-last) strides: the kernel's offsets
        grad_input = torch.empty_strided(inp.shape, inp.stride(), dtype=fp32, device=inp.device)
        grad_input.zero_()
    if need_positions:
        grad_y, grad_x = torch.empty_like(problem.y), torch.empty_like(problem.x)
        grad_mask = None if mask is None else torch.empty_like(mask)
    if need_weight:
        grad_wmat = torch.zeros_like(problem.wmat, dtype=fp32)
    if problem.rows > 0 and (need_input or need_positions):
        dummy = problem.wmat
        grid = (triton.cdiv(problem.rows, BLOCK_M), problem.taps * problem.offset_groups)
        _input_positions_backward_kernel[grid](
            inp,
            problem.y,
            problem.x,
            dummy if mask is None else mask,
            problem.wmat,
            grad_out,
            dummy if grad_input is None else grad_input,
            dummy if grad_y is None else grad_y,
            dummy if grad_x is None else grad_x,
            dummy if grad_mask is None else grad_mask,
            *problem.scalars(),
            *problem.strides(),
            HAS_MASK=mask is not None,
            NEED_INPUT=need_input,
            NEED_POSITIONS=need_positions,
            PRECISION=problem.precision,
            UPCAST=INTERPRETED,
            BLOCK_M=BLOCK_M,
            BLOCK_N=problem.block_n,
            BLOCK_C=problem.block_c,
        )
    if problem.rows > 0 and need_weight:
        segments = problem.channels // problem.segment
        tiles = problem.taps * segments * triton.cdiv(problem.segment, problem.block_c)
        n_blocks = triton.cdiv(problem.out_per_group, problem.block_n)
        per_program = _row_split(problem, tiles * n_blocks)
        grid = (tiles, n_blocks, triton.cdiv(triton.cdiv(problem.rows, BLOCK_M), per_program))
        _weight_backward_kernel[grid](
            inp,
            problem.y,
            problem.x,
            problem.wmat if mask is None else mask,
            grad_out,
            grad_wmat,
            *problem.scalars(),
            per_program,
            *problem.strides(),
            HAS_MASK=mask is not None,
            PRECISION=problem.precision,
            UPCAST=INTERPRETED,
            BLOCK_M=BLOCK_M,
            BLOCK_N=problem.block_n,
            BLOCK_C=problem.block_c,
        )
    return (
        None if grad_input is None else grad_input.to(inp.dtype),
        grad_y if need_y else None,
        grad_x if need_x else None,
        grad_mask if need_mask else None,
        grad_wmat,
    )


@torch.library.custom_op("dck_lightning::sampled_conv_triton", mutates_args=())
def sampled_conv(
    input: Tensor,
    y: Tensor,
    x: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor],
) -> Tensor:
    """The sampled convolution by the Triton kernels (the module's formula).

    Args:
        input (Tensor[B, C, H, W]): any strides (read channels-last).
        y, x (Tensor[B, out_h, out_w, K, G]): sample positions in input pixels (pixel centres
            at integers), taps in the weight's row-major order, ``G`` offset groups.
        mask (Tensor[B, out_h, out_w, K, G], optional): modulation of every sample.
        weight (Tensor[O, C/groups, kh, kw]), bias (Tensor[O], optional): the input's dtype.

    Returns:
        Tensor[B, out_h, out_w, O]: channels last, the input's dtype.
    """
    if not (input.is_cuda or INTERPRETED):
        raise RuntimeError(
            "sampled_conv_triton needs CUDA tensors (or TRITON_INTERPRET=1 set before triton "
            f"is imported); got a {input.device} input"
        )
    return _forward(_Problem(input, y, x, mask, weight), bias)


@sampled_conv.register_fake
def _(input, y, x, mask, weight, bias):
    check_arguments(input, y, x, mask, weight)
    return input.new_empty(*y.shape[:3], weight.shape[0])


@torch.library.custom_op("dck_lightning::sampled_conv_triton_backward", mutates_args=())
def sampled_conv_backward(
    grad_out: Tensor,
    input: Tensor,
    y: Tensor,
    x: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`sampled_conv` for ``(input, y, x, mask, weight)``, each empty
    where ``needs`` (the same order) says it is not wanted."""
    problem = _Problem(input, y, x, mask, weight)
    grads = list(_backward(grad_out, problem, needs))
    if grads[4] is not None:
        grads[4] = problem.weight_grad(grads[4], weight)
    # (A custom op returns tensors, distinct ones: an empty one stands for "not wanted".)
    return tuple(y.new_empty(0) if grad is None else grad for grad in grads)


@sampled_conv_backward.register_fake
def _(grad_out, input, y, x, mask, weight, needs):
    def like(tensor, needed):
        return torch.empty_like(tensor) if needed and tensor is not None else y.new_empty(0)

    return tuple(like(t, need) for t, need in zip((input, y, x, mask, weight), needs))


def _setup_context(ctx, inputs, output):
    input, y, x, mask, weight, bias = inputs
    ctx.save_for_backward(input, y, x, mask, weight)
    ctx.has_bias = bias is not None


def _backward_op(ctx, grad_out):
    input, y, x, mask, weight = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5])
    needs[3] = needs[3] and mask is not None
    grads = sampled_conv_backward(grad_out, input, y, x, mask, weight, needs)
    grads = [grad if need else None for grad, need in zip(grads, needs)]
    grad_bias = grad_out.sum((0, 1, 2)) if ctx.has_bias and ctx.needs_input_grad[5] else None
    return (*grads, grad_bias)


sampled_conv.register_autograd(_backward_op, setup_context=_setup_context)
