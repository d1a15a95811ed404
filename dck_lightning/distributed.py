"""Exact epoch means under DDP when the ranks hold different numbers of samples.

Validation and test batches are split over the ranks without padding
(``BaseDataModule._unpadded_sampler``): 13 images on 2 ranks are 7 + 6. Lightning then
reduces a ``self.log(..., sync_dist=True)`` epoch mean as ``mean(Σ value·bs) / mean(Σ bs)``,
and (Lightning 2.6) averages the integer batch-size counter with an integer division —
``(7 + 6) / 2 → 6`` — so ``val/loss`` came out 13/12 too large. :func:`exact_mean_reduce`
makes the strategy reduce integer tensors in floating point; the ratio is then exact.
torchmetrics metrics (accuracy, mAP, IoU) sync their own states and were never affected.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

__all__ = ["exact_mean_reduce"]

_MARK = "_dck_exact_mean_reduce"


def exact_mean_reduce(strategy: Any) -> None:
    """Make ``strategy.reduce(tensor, reduce_op="mean")`` average integer tensors without truncation.

    Patches the strategy instance (idempotent); other reductions and floating-point tensors are
    unchanged. The reduced integer tensor is returned as ``float64`` and the caller's tensor is
    left as it was (Lightning uses the returned value).
    """
    if getattr(strategy, _MARK, False) or not hasattr(strategy, "reduce"):
        return
    original = strategy.reduce

    def reduce(
        tensor: Any, group: Optional[Any] = None, reduce_op: Optional[Union[str, Any]] = "mean"
    ) -> Any:
        if (
            isinstance(tensor, Tensor)
            and not torch.is_floating_point(tensor)
            and isinstance(reduce_op, str)
            and reduce_op.lower() in ("mean", "avg")
        ):
            tensor = tensor.double()
        return original(tensor, group=group, reduce_op=reduce_op)

    strategy.reduce = reduce
    setattr(strategy, _MARK, True)
