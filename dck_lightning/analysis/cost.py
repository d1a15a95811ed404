"""What a trained network's DCKs learned, and what the network costs against fixed kernels.

The design document says the DCK "reduces memory and computation" because its kernel shrinks
to the receptive field it needs. These functions measure that on a trained task:

* :func:`extent_table` — per DCK layer, the learned extent (``σ``), the kernel it runs after
  cropping and that layer's FLOPs as it runs and at its full window.
* :func:`with_plain_kernels` — the same task with every DCK replaced by a plain ``k × k``
  :class:`~torch.nn.Conv2d` on the same output grid (the fixed 3×3, 7×7 or 11×11 kernels of a
  conventional network); :func:`with_full_windows` — the DCKs never cropped.
* :class:`TrainingStep` / :func:`eval_step` — one timed optimiser step / inference forward
  of a task (for :func:`scripts.bench_utils.interleaved_times`), and
  :func:`peak_training_memory` — the most memory a training step holds, counted by torch's
  :class:`~torch.distributed._tools.mem_tracker.MemTracker` on any device (parameters,
  gradients, optimiser state, activations, temporaries).
* :func:`cost_table` — FLOPs, parameters and peak training memory of several variants.

``scripts/report_dck_cost.py`` puts them together for a run folder, with throughput and
accuracy.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Optional

import pandas as pd
import torch
from torch import Tensor, nn
from torch.distributed._tools.mem_tracker import MemTracker

from ..layers import DynamicConv2d
from ..models import count_flops, count_parameters
from .inspection import dck_layers, layer_inputs, receptive_field_table

__all__ = [
    "cost_table",
    "eval_step",
    "extent_table",
    "TrainingStep",
    "peak_training_memory",
    "plain_conv_like",
    "with_full_windows",
    "with_plain_kernels",
]

Batch = tuple[Tensor, Any]


def plain_conv_like(layer: DynamicConv2d, kernel_size: Optional[int] = None) -> nn.Module:
    """A plain ``kernel_size × kernel_size`` :class:`~torch.nn.Conv2d` (``None``: the DCK's
    window) with the DCK's channels, stride, dilation, groups and bias, padded so that it
    computes on the DCK's output grid.

    The DCK's window ``K`` with padding ``p`` becomes ``k`` with padding
    ``p + d·(k − K)/2``; a negative padding (a small kernel in a ``"valid"`` DCK's place) crops
    the input first (:class:`~torch.nn.ZeroPad2d` with negative padding). Fresh weights: this
    is for measuring cost, not for reusing the DCK's weights.
    """
    size = tuple(layer.kernel_size) if kernel_size is None else (kernel_size, kernel_size)
    if any(k < 1 or k % 2 == 0 for k in size):
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    padding = [
        p + d * (s - k) // 2
        for p, d, s, k in zip(layer.padding, layer.dilation, size, layer.kernel_size)
    ]
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        size,
        layer.stride,
        [max(p, 0) for p in padding],
        layer.dilation,
        layer.groups,
        bias=layer.bias is not None,
    ).to(layer.weight.device, layer.weight.dtype)
    crop = [min(p, 0) for p in padding]
    if crop == [0, 0]:
        return conv
    return nn.Sequential(nn.ZeroPad2d((crop[1], crop[1], crop[0], crop[0])), conv)


def _replace_dcks(model: nn.Module, make: Callable[[DynamicConv2d], nn.Module]) -> nn.Module:
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, DynamicConv2d):
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attribute, make(module))
    return model


def with_plain_kernels(model: nn.Module, kernel_size: Optional[int] = None) -> nn.Module:
    """A copy of ``model`` (a task or a network) with every DCK a plain ``kernel_size²``
    convolution on the same output grid (``None``: each DCK's own window; see
    :func:`plain_conv_like`)."""
    if isinstance(model, DynamicConv2d):
        return plain_conv_like(model, kernel_size)
    return _replace_dcks(model, lambda layer: plain_conv_like(layer, kernel_size))


def with_full_windows(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose DCKs are never cropped (``crop_threshold = 0``): every tap of
    the window runs, as if the extent had not been learned."""
    model = copy.deepcopy(model)
    for layer in dck_layers(model).values():
        layer.crop_threshold = 0.0  # never cropped again...
        # ...but a DCK keeps the crop it last decided when its threshold becomes 0 (prune()
        # skips layers without a threshold): reset it to the whole window.
        layer._crop = tuple((k - 1) // 2 for k in layer.kernel_size)
    return model


def extent_table(model: nn.Module, images: Tensor) -> pd.DataFrame:
    """:func:`~.inspection.receptive_field_table` plus, per layer, the FLOPs of one forward of
    ``images`` through the layer as it runs (``flops``, cropped) and at its full window
    (``flops_full_window``), and their ratio ``flops_ratio``."""
    table = receptive_field_table(model)
    layers = dck_layers(model)
    inputs = layer_inputs(model, images, layers)
    cropped, full = [], []
    for name in table["layer"]:
        layer = layers[name]
        cropped.append(count_flops(layer, inputs[name]))
        full.append(count_flops(with_full_windows(layer), inputs[name]))
    table["flops"] = cropped
    table["flops_full_window"] = full
    table["flops_ratio"] = table["flops"] / table["flops_full_window"]
    return table


def _loss(task: Any, batch: Batch) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() without a trainer
        return task.training_step(batch, 0)


class TrainingStep:
    """One training step of ``task`` on ``batch`` — ``zero_grad``, ``task.training_step`` (its
    loss), ``backward``, an AdamW step — as a callable that returns its seconds.

    The optimiser's learning rate is 0: a full AdamW step (moments, update) that leaves the
    trained weights — and so the learned extents and crops — as they are.
    """

    def __init__(self, task: Any, batch: Batch) -> None:
        self.task, self.batch = task, batch
        self.optimizer = torch.optim.AdamW(task.parameters(), lr=0.0)

    def __call__(self) -> float:
        self.task.train()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        _loss(self.task, self.batch).backward()
        self.optimizer.step()
        return time.perf_counter() - start


def eval_step(task: Any, images: Tensor) -> Callable[[], float]:
    """A callable that runs ``task(images)`` in eval mode under inference mode and returns
    its seconds."""

    def step() -> float:
        task.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            task(images)
        return time.perf_counter() - start

    return step


def peak_training_memory(task: Any, batch: Batch) -> int:
    """Bytes held at the peak of one training step (after a first one, so that the optimiser
    state exists), counted by :class:`~torch.distributed._tools.mem_tracker.MemTracker`:
    parameters, buffers, gradients, optimiser state, activations kept for the backward and
    temporaries (on the CPU as on a GPU)."""
    step = TrainingStep(task, batch)
    step()
    tracker = MemTracker()
    tracker.track_external(task, step.optimizer)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")
    return int(sum(snapshot["Total"] for snapshot in peak.values()))


def cost_table(variants: Mapping[str, Any], batch: Batch) -> pd.DataFrame:
    """FLOPs of one forward of ``batch``'s images (``gflops``), parameters (``params``) and
    peak training memory on ``batch`` (``train_mib``) of each task in ``variants``."""
    images = batch[0]
    rows = []
    for name, task in variants.items():
        rows.append(
            {
                "model": name,
                "gflops": count_flops(task, images) / 1e9,
                "params": count_parameters(task),
                "train_mib": peak_training_memory(copy.deepcopy(task), batch) / 2**20,
            }
        )
    return pd.DataFrame(rows)
