"""Parameter and FLOP counts (``torch.utils.flop_counter``) printed when fitting starts.

``FlopCounterMode`` counts the aten ops it knows (convolutions, matrix products). The sampled
convolutions of the DCK family run through ops it does not know — the CPU backend's fused
``dck_lightning::sampled_matmul`` (and its backward) and ``torchvision::deform_conv2d`` — so
their formulas are registered here: the matrix product each one is,
``2 · (output positions) · (K · C_in / groups) · C_out`` for the forward, twice that for the
backward when both the input and the weight gradient are wanted. The bilinear sampling itself
(4 multiply-adds per sample and channel) is not counted, as for ``grid_sample``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from ..layers import sampling  # noqa: F401  (registers the dck_lightning ops counted below)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example_input`` (batch included), counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products,
    the DCK family's sampled convolutions included; the bilinear sampling is not counted)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example_input)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


@register_flop_formula(torch.ops.dck_lightning.sampled_matmul)
def _sampled_matmul_flop(table_shape, y_shape, x_shape, mask_shape, matrix_shape, *args, **kw):
    """``cols [rows, K·C] @ matrix [K·C, O]`` with one row per output position."""
    rows = math.prod(y_shape[:3])
    return 2 * rows * matrix_shape[0] * matrix_shape[1]


@register_flop_formula(torch.ops.dck_lightning.sampled_matmul_backward)
def _sampled_matmul_backward_flop(
    grad_shape, table_shape, y_shape, x_shape, mask_shape, matrix_shape, index, weights, width,
    needs, *args, **kw
):  # fmt: skip
    """``grad_out [rows, O] @ matrixᵀ`` (input and position gradients) and
    ``grad_outᵀ @ cols`` (weight gradient), each the forward's product."""
    need_table, need_y, need_x, need_mask, need_matrix = needs
    products = int(need_matrix) + int(need_table or need_y or need_x or need_mask)
    return products * 2 * grad_shape[0] * matrix_shape[0] * matrix_shape[1]


@register_flop_formula(torch.ops.torchvision.deform_conv2d)
def _deform_conv2d_flop(input_shape, weight_shape, *args, out_shape=None, **kw):
    """A convolution's count: ``2 · B · H_out · W_out · C_out · (C_in / groups) · kh · kw``."""
    batch, _, out_h, out_w = out_shape
    return 2 * batch * out_h * out_w * math.prod(weight_shape)
