"""Load a trained model from its checkpoint and look inside: DCK extents, offset fields, predictions.

Tasks save their hyperparameters, so a checkpoint alone rebuilds the model; the task class is
read from the checkpoint (the CLI stores its class path) or from the run's ``config.yaml``.
DCK and deformable layers are found by type::

    >>> task = load_task("runs/default/version_0/checkpoints/last.ckpt")
    >>> receptive_field_table(task)                 # σ and effective kernel size per DCK layer
    >>> dm = load_datamodule("runs/default/version_0")
    >>> images, targets = sample_batch(dm, "val", 4)
    >>> fields = position_fields(task, images[:1])  # shift/scale of every adaptive DCK
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pandas as pd
import torch
from torch import Tensor, nn

from .. import visualization
from ..layers import DeformConv2d, DynamicConv2d
from ..run_folder import RunFolder, checkpoint_task_class_path
from .loading import PathLike, find_checkpoint, load_config

__all__ = [
    "LayerField",
    "dck_layers",
    "deform_layers",
    "evaluate",
    "layer_inputs",
    "load_datamodule",
    "load_task",
    "per_class_metrics",
    "position_fields",
    "predict",
    "receptive_field_table",
    "sample_batch",
    "short_name",
    "to_display",
]


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_task(
    checkpoint: PathLike,
    task_class: type | None = None,
    map_location: Union[str, torch.device] = "cpu",
    **overrides: Any,
) -> Any:
    """The LightningModule of a checkpoint, in eval mode.

    Args:
        checkpoint: a ``.ckpt`` file, a run folder (its best checkpoint) or a folder of runs
            (the newest run's best checkpoint), see :func:`~.loading.find_checkpoint`.
        task_class: the task class; default: the class path stored in the checkpoint's
            hyperparameters (``_class_path``, written by the CLI), else ``model.class_path``
            of the run's ``config.yaml``, else :class:`~dck_lightning.tasks.ClassificationTask`.
        map_location: device to load the weights on.
        overrides: hyperparameters to replace (passed to ``load_from_checkpoint``).

    Returns:
        The task (``task.model`` is the network) with ``task.checkpoint_path`` set.
    """
    path = find_checkpoint(checkpoint)
    if task_class is None:
        task_class = _task_class_of(path)
    task = task_class.load_from_checkpoint(str(path), map_location=map_location, **overrides)
    task.eval()
    task.checkpoint_path = str(path)
    return task


def _task_class_of(checkpoint: Path) -> type:
    class_path = None
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        class_path = checkpoint_task_class_path(state)
    except Exception:  # unreadable metadata: fall back to the config
        pass
    if class_path is None:
        class_path = RunFolder.containing(checkpoint).task_class_path()
    if class_path is None:
        class_path = "dck_lightning.tasks.ClassificationTask"
    return _import(class_path)


def load_datamodule(run: PathLike, setup: str | None = None, **overrides: Any) -> Any:
    """The DataModule a run was trained on, rebuilt from ``data`` in its ``config.yaml``.

    Args:
        run: the run folder, or one of its checkpoints.
        setup: call ``datamodule.setup(stage)`` (``"fit"``, ``"test"``…); default: none.
        overrides: ``init_args`` to replace, e.g. ``data_dir="/data"`` or ``batch_size=4``.
    """
    run_dir = RunFolder.containing(run).path
    data = load_config(run_dir).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise FileNotFoundError(
            f"{run_dir} has no config.yaml with a data.class_path (not a run folder of `dck`?)"
        )
    init_args = {**(data.get("init_args") or {}), **overrides}
    datamodule = _import(data["class_path"])(**init_args)
    if setup is not None:
        datamodule.setup(setup)
    return datamodule


# -- layers ------------------------------------------------------------------------------------


def short_name(name: str) -> str:
    """``model.backbone.stages.2.0.dck.conv`` → ``stages.2.0.dck.conv``."""
    for prefix in ("model.", "backbone.", "body."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name or "(model)"


def _unwrap(model: nn.Module) -> nn.Module:
    return (
        getattr(model, "model", model)
        if not isinstance(model, (DynamicConv2d, DeformConv2d))
        else model
    )


def dck_layers(model: nn.Module) -> dict[str, DynamicConv2d]:
    """Every :class:`DynamicConv2d` of ``model`` (a task or a network), by short name."""
    return {
        short_name(n): m for n, m in _unwrap(model).named_modules() if isinstance(m, DynamicConv2d)
    }


def deform_layers(model: nn.Module) -> dict[str, DeformConv2d]:
    """Every :class:`DeformConv2d` of ``model``, by short name."""
    return {
        short_name(n): m for n, m in _unwrap(model).named_modules() if isinstance(m, DeformConv2d)
    }


@torch.no_grad()
def receptive_field_table(model: nn.Module) -> pd.DataFrame:
    """The learned receptive field of every DCK layer, one row per layer.

    Columns: ``layer``, ``kernel_size`` (the largest window, ``(kh, kw)``),
    ``effective_kernel_size`` (what runs after cropping), ``sigma_y``/``sigma_x`` (mean over
    channels, in taps), ``sigma_min``/``sigma_max`` (over channels and axes), ``extent``
    (``layer``/``channel``), ``adaptive``, ``center_constraint``.
    """
    rows = []
    for name, layer in dck_layers(model).items():
        sigma = layer.sigma.detach().float().cpu()
        rows.append(
            {
                "layer": name,
                "kernel_size": tuple(layer.kernel_size),
                "effective_kernel_size": tuple(layer.effective_kernel_size),
                "sigma_y": float(sigma[:, 0].mean()),
                "sigma_x": float(sigma[:, 1].mean()),
                "sigma_min": float(sigma.min()),
                "sigma_max": float(sigma.max()),
                "extent": layer.extent_mode,
                "adaptive": layer.localization is not None,
                "center_constraint": tuple(layer.center_constraint),
            }
        )
    columns = [
        "layer",
        "kernel_size",
        "effective_kernel_size",
        "sigma_y",
        "sigma_x",
        "sigma_min",
        "sigma_max",
        "extent",
        "adaptive",
        "center_constraint",
    ]
    return pd.DataFrame(rows, columns=columns)


@torch.no_grad()
def layer_inputs(
    model: nn.Module, images: Tensor, layers: dict[str, nn.Module]
) -> dict[str, Tensor]:
    """The input each of ``layers`` sees when ``model`` runs on ``images`` (forward hooks)."""
    network = _unwrap(model)
    captured: dict[str, Tensor] = {}
    handles = []
    for name, layer in layers.items():

        def hook(module: nn.Module, args: tuple, name: str = name) -> None:
            captured.setdefault(name, args[0].detach())

        handles.append(layer.register_forward_pre_hook(hook))
    was_training = network.training
    network.eval()
    try:
        network(images)
    finally:
        network.train(was_training)
        for handle in handles:
            handle.remove()
    return captured


@dataclass
class LayerField:
    """What one dynamic layer does at every output position, for one input.

    Attributes:
        kind: ``"dck"`` or ``"deform"``.
        shift: ``Tensor[B, 2, H_out, W_out]`` ``(y, x)`` in pixels of the layer's input: the
            DCK's centre shift ``t``; for a deformable layer the mean offset over its taps.
        scale: ``Tensor[B, 2, H_out, W_out]`` the DCK's scale ``s`` (``None`` for deformable).
        modulation: ``Tensor[B, H_out, W_out]`` mean DCNv2 modulation (``None`` for a DCK or
            an unmodulated layer).
        offsets: ``Tensor[B, 2·K, H_out, W_out]`` the per-tap offsets (interleaved ``Δy, Δx``).
        input_size: ``(H_in, W_in)`` of the layer's input.
        max_shift: the bound of ``shift`` (centre constraint, or the deformable ``max_offset``).
        max_scale: the bound of ``scale`` (DCK) or ``None``.
    """

    kind: str
    shift: Tensor
    scale: Tensor | None
    modulation: Tensor | None
    offsets: Tensor
    input_size: tuple[int, int]
    max_shift: float
    max_scale: float | None = None


@torch.no_grad()
def position_fields(
    model: nn.Module, images: Tensor, deformable: bool = True
) -> dict[str, LayerField]:
    """Centre shifts and scales of every adaptive DCK (and offsets of every deformable conv).

    Args:
        model: a task or a network.
        images: ``Tensor[B, C, H, W]``, normalised as the model sees them.
        deformable: include :class:`DeformConv2d` layers.

    Returns:
        ``{layer name: LayerField}`` in forward order.
    """
    layers: dict[str, nn.Module] = {
        n: m for n, m in dck_layers(model).items() if m.localization is not None
    }
    if deformable:
        layers.update(deform_layers(model))
    inputs = layer_inputs(model, images, layers)
    fields: dict[str, LayerField] = {}
    for name, x in inputs.items():
        layer = layers[name]
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if isinstance(layer, DynamicConv2d):
            shift, scale = layer.position_parameters(x)
            fields[name] = LayerField(
                "dck",
                shift.float().cpu(),
                scale.float().cpu(),
                None,
                layer.offsets(x).float().cpu(),
                size,
                float(max(layer.center_constraint)),
                layer.max_scale,
            )
        else:
            offsets, mask = layer.offsets_and_mask(x)
            b, _, h, w = offsets.shape
            mean = offsets.view(b, -1, 2, h, w).mean(dim=1)
            modulation = mask.mean(dim=1) if mask is not None else None
            fields[name] = LayerField(
                "deform",
                mean.float().cpu(),
                None,
                None if modulation is None else modulation.float().cpu(),
                offsets.float().cpu(),
                size,
                float(layer.max_offset),
            )
    return fields


# -- data, predictions -------------------------------------------------------------------------


def sample_batch(datamodule: Any, split: str = "val", n: int = 8) -> tuple[Tensor, Any]:
    """The first ``n`` samples of a split as the model sees them: ``(images, targets)``.

    Images are converted and normalised like in training (``on_after_batch_transfer``, no
    augmentation); ``targets`` are labels (classification) or a list of target dicts.
    """
    stage = {"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split]
    datamodule.setup(stage)
    dataset = getattr(datamodule, f"{split}_dataset" if split != "predict" else "test_dataset")
    if dataset is None and split == "val":
        return sample_batch(datamodule, "test", n)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=n, shuffle=False, num_workers=0, collate_fn=datamodule.collate_fn
    )
    batch = next(iter(loader))
    return datamodule.on_after_batch_transfer(batch, 0)


def to_display(
    images: Tensor,
    datamodule: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Normalised images back to ``uint8[B, 3, H, W]`` (grey images repeated to RGB).

    ``mean``/``std`` default to the DataModule's (identity without one). A single image
    ``[C, H, W]`` gives ``uint8[3, H, W]``. See :func:`dck_lightning.visualization.to_display`.
    """
    mean = mean if mean is not None else getattr(datamodule, "mean", None)
    std = std if std is not None else getattr(datamodule, "std", None)
    return visualization.to_display(images, mean, std)


@torch.no_grad()
def predict(task: Any, images: Tensor) -> Any:
    """The task's predictions for a batch of (normalised) images, in eval mode.

    Returns what the task's ``predict_step`` returns: class probabilities ``Tensor[B, K]``
    (classification), ``[{"boxes", "labels", "scores"}]`` (detection, input coordinates)
    or class maps ``[Tensor[H, W]]`` (segmentation).
    """
    was_training = task.training
    task.eval()
    try:
        return task.predict_step(images.to(task.device), 0)
    finally:
        task.train(was_training)


def evaluate(task: Any, datamodule: Any, split: str = "test") -> dict[str, float]:
    """Run ``trainer.test`` (or ``validate``) on the CPU without loggers or checkpoints.

    After a test the task holds its per-class results: ``task.confusion_matrix``
    (classification), ``task.per_class_iou`` (segmentation); per-class AP of detection is in
    the returned metrics (``test/ap/<class>``).

    Returns:
        ``{metric: value}`` as logged by the task.
    """
    import pytorch_lightning as pl

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    run = trainer.test if split == "test" else trainer.validate
    results = run(task, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


#: Per-class metric prefixes the tasks log at test time, with a label for plots.
PER_CLASS_PREFIXES = (("test/ap/", "AP"), ("test/iou/", "IoU"), ("test/acc_class/", "accuracy"))


def per_class_metrics(metrics: Mapping[str, float]) -> tuple[str, pd.Series]:
    """``(label, {class: value})`` from the metrics of :func:`evaluate` (or a run row).

    Detection logs ``test/ap/<class>``, segmentation ``test/iou/<class>``, classification
    ``test/acc_class/<class>``; the first prefix found is used (a run row's ``final/``
    prefix is accepted too). An empty Series when there are none.
    """
    items = {
        str(k).removeprefix("final/") if str(k).startswith("final/") else str(k): v
        for k, v in dict(metrics).items()
    }
    for prefix, label in PER_CLASS_PREFIXES:
        values = {k[len(prefix) :]: float(v) for k, v in items.items() if k.startswith(prefix)}
        if values:
            return label, pd.Series(values, dtype=float)
    return "", pd.Series(dtype=float)
