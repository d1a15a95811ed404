"""Plots of runs and models (matplotlib); every function returns its :class:`~matplotlib.figure.Figure`.

Runs (tables from :func:`~.loading.load_runs`):

- :func:`plot_learning_curves` — metrics against epochs, one line per run, coloured by a switch;
- :func:`plot_ablation` / :func:`ablation_table` — a metric by config switch, mean ± std over seeds;
- :func:`plot_sweep` — the result of ``dck sweep``: the metric per combination (seeds, mean and
  95 % interval) and against training throughput;
- :func:`plot_confusion_matrix`, :func:`plot_per_class` — per-class results of a test.

Models (tasks from :func:`~.inspection.load_task`):

- :func:`plot_receptive_fields` — σ and effective kernel size of every DCK layer, and its mask;
- :func:`plot_position_fields` — centre shifts (arrows) and scales (colour) of every adaptive DCK,
  mean offsets and modulation of every deformable conv, over an input image;
- :func:`plot_predictions` — predicted classes, boxes or masks (drawn with
  :mod:`dck_lightning.visualization`), optionally beside the ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Union

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from ..visualization import class_colour, class_name, draw_boxes, draw_class_map, enlarge
from .inspection import LayerField, dck_layers, position_fields, to_display
from .loading import load_history

__all__ = [
    "ablation_table",
    "draw_predictions",
    "figure_to_array",
    "per_class_values",
    "plot_ablation",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_offset_field",
    "plot_per_class",
    "plot_position_fields",
    "plot_predictions",
    "plot_receptive_fields",
    "plot_sweep",
]


def _figure(
    nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0), **kwargs: Any
) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(
        nrows, ncols, figsize=size, squeeze=False, layout="constrained", **kwargs
    )
    return fig, axes


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as ``uint8[H, W, 3]`` (for W&B images and PNG files)."""
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


# -- runs --------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _histories(
    runs: Union[pd.DataFrame, Mapping[str, pd.DataFrame], Iterable[Any]],
    label: Union[str, Callable],
    hue: str | None,
) -> list[tuple[str, Any, pd.DataFrame]]:
    """``[(label, hue value, history)]`` from a runs table, ``{label: history}`` or run folders."""
    if isinstance(runs, pd.DataFrame):
        out = []
        for _, row in runs.iterrows():
            text = label(row) if callable(label) else str(row.get(label, row.get("run")))
            out.append((text, row.get(hue) if hue else None, load_history(row)))
        return out
    if isinstance(runs, Mapping):
        return [(str(k), None, v) for k, v in runs.items()]
    return [(str(p), None, load_history(p)) for p in runs]


def _curve(history: pd.DataFrame, metric: str, x: str) -> pd.Series:
    if metric not in history.columns:
        return pd.Series(dtype=float)
    values = pd.to_numeric(history[metric], errors="coerce")
    frame = pd.DataFrame(
        {"value": values, "epoch": history["epoch"], "step": history.index}
    ).dropna(subset=["value"])
    if x == "epoch":
        # One point per epoch ("after epoch N"), the mean when a metric is logged per step.
        return frame.groupby(frame["epoch"].astype(float) + 1)["value"].mean()
    return frame.set_index("step")["value"]


def plot_learning_curves(
    runs: Union[pd.DataFrame, Mapping[str, pd.DataFrame], Iterable[Any]],
    metrics: Union[str, Sequence[str]] = ("train/loss_epoch", "val/loss", "val/acc"),
    x: str = "epoch",
    hue: str | None = None,
    label: Union[str, Callable[[pd.Series], str]] = "run",
    ncols: int = 3,
) -> Figure:
    """Learning curves of several runs, one panel per metric.

    Args:
        runs: a table from :func:`~.loading.load_runs`, ``{label: history}``, or run folders.
        metrics: metric names (columns of the histories); missing ones give an empty panel.
        x: ``"epoch"`` (one point per epoch, per-step metrics averaged) or ``"step"``.
        hue: a config column (e.g. ``"model.init_args.backbone.init_args.dck"``): runs with the
            same value share a colour and a legend entry; default: one colour per run.
        label: column (or ``row -> str``) naming each run in the legend when ``hue`` is unset.
        ncols: panels per row.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    curves = _histories(runs, label, hue)
    ncols = max(1, min(ncols, len(metrics)))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = _figure(nrows, ncols, (4.2 * ncols, 3.2 * nrows))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    keys = (
        list(dict.fromkeys("(default)" if _is_missing(h) else str(h) for _, h, _ in curves))
        if hue
        else []
    )
    for index, metric in enumerate(metrics):
        ax = axes[index // ncols][index % ncols]
        seen: set[str] = set()
        for run_index, (name, hue_value, history) in enumerate(curves):
            curve = _curve(history, metric, x)
            if curve.empty:
                continue
            if hue:
                key = "(default)" if _is_missing(hue_value) else str(hue_value)
                colour, text = (
                    cycle[keys.index(key) % len(cycle)],
                    f"{hue.rsplit('.', 1)[-1]}={key}",
                )
            else:
                colour, text = cycle[run_index % len(cycle)], name
            ax.plot(
                curve.index,
                curve.values,
                marker="o" if len(curve) < 30 else None,
                markersize=3,
                color=colour,
                alpha=0.85,
                label=None if text in seen else text,
            )
            seen.add(text)
        ax.set_title(metric)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize="small")
        else:
            ax.text(
                0.5,
                0.5,
                "not logged",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
    for index in range(len(metrics), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    return fig


def _switch_values(runs: pd.DataFrame, switch: Union[str, Sequence[str]]) -> pd.Series:
    switches = [switch] if isinstance(switch, str) else list(switch)
    for name in switches:
        if name not in runs.columns:
            raise KeyError(
                f"no column {name!r} in the runs table (config columns are dotted keys, e.g. "
                "'model.init_args.backbone.init_args.dck'; see varying_columns(runs))"
            )

    def key(row: pd.Series) -> str:
        parts = ["(default)" if _is_missing(row[n]) else str(row[n]) for n in switches]
        return ", ".join(parts)

    return runs.apply(key, axis=1) if len(runs) else pd.Series(dtype=str)


def ablation_table(
    runs: pd.DataFrame, switch: Union[str, Sequence[str]], metric: str = "best/val/acc"
) -> pd.DataFrame:
    """``mean``, ``std``, ``count``, ``min``, ``max`` of ``metric`` per value of ``switch``.

    ``switch`` is a config column (or several: their combinations). Runs that differ only by
    seed fall into one group; a run without the key is ``(default)``.
    """
    if metric not in runs.columns:
        raise KeyError(
            f"no column {metric!r} in the runs table (metrics are 'best/<name>' and 'final/<name>')"
        )
    groups = _switch_values(runs, switch)
    values = pd.to_numeric(runs[metric], errors="coerce")
    table = values.groupby(groups).agg(["mean", "std", "count", "min", "max"])
    table.index.name = switch if isinstance(switch, str) else ", ".join(switch)
    return table


def plot_ablation(
    runs: pd.DataFrame,
    switch: Union[str, Sequence[str]],
    metric: str = "best/val/acc",
    ax: Axes | None = None,
) -> Figure:
    """A metric by config switch: bars at the mean, error bars ±1 std, one dot per run (seed)."""
    table = ablation_table(runs, switch, metric)
    if ax is None:
        fig, axes = _figure(1, 1, (max(4.0, 1.3 * len(table) + 2), 3.6))
        ax = axes[0][0]
    fig = ax.figure
    positions = np.arange(len(table))
    ax.bar(
        positions,
        table["mean"],
        yerr=table["std"].fillna(0),
        capsize=6,
        color="#8fb3d9",
        edgecolor="#2b5d8a",
        label="mean ± std",
    )
    groups = _switch_values(runs, switch)
    values = pd.to_numeric(runs[metric], errors="coerce")
    rng = np.random.default_rng(0)
    for position, key in zip(positions, table.index):
        points = values[groups == key].dropna()
        jitter = rng.uniform(-0.12, 0.12, len(points))
        ax.scatter(
            position + jitter,
            points,
            color="#1b3a57",
            zorder=3,
            s=18,
            label="runs" if position == 0 else None,
        )
    ax.set_xticks(positions, [f"{k}\n(n={int(n)})" for k, n in zip(table.index, table["count"])])
    ax.set_xlabel(table.index.name)
    ax.set_ylabel(metric)
    for position, (mean, std) in zip(positions, zip(table["mean"], table["std"].fillna(0))):
        ax.annotate(f"{mean:.3f} ± {std:.3f}", (position, mean + std), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=8)  # fmt: skip
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(f"{metric} by {table.index.name.rsplit('.', 1)[-1]}")
    return fig


def plot_sweep(summary: pd.DataFrame, per_run: pd.DataFrame, metric: str) -> Figure:
    """The result of a ``dck sweep`` (its ``sweep.csv`` and ``sweep_runs.csv`` tables).

    Left: the metric per combination, one dot per finished seed and the mean with its 95 %
    interval (``ci95 low``/``ci95 high``: Student's t), the axis zoomed on the values (bars from
    0 would hide differences of a few tenths of a percent). Right: the mean metric (and its
    interval) against the median training images/s, log scale, one point per combination:
    what each one gives for what it costs.
    """
    fig, axes = _figure(1, 2, (max(8.0, 1.1 * len(summary) + 6.0), 3.8))
    left, right = axes[0]
    names = list(summary["combination"])
    mean = pd.to_numeric(summary[f"{metric} mean"], errors="coerce").to_numpy(float)
    low = pd.to_numeric(summary["ci95 low"], errors="coerce").to_numpy(float)
    high = pd.to_numeric(summary["ci95 high"], errors="coerce").to_numpy(float)
    interval = np.nan_to_num(np.stack([mean - low, high - mean]))
    finished = per_run[per_run["state"] == "finished"]
    rng = np.random.default_rng(0)
    for position, name in enumerate(names):
        points = pd.to_numeric(
            finished.loc[finished["combination"] == name, metric], errors="coerce"
        ).dropna()
        left.scatter(position + rng.uniform(-0.15, 0.15, len(points)), points, s=16,
                     color="#8fb3d9", zorder=2, label="seeds" if position == 0 else None)  # fmt: skip
    left.errorbar(range(len(names)), mean, yerr=interval, fmt="o", color="#1b3a57", capsize=6,
                  zorder=3, label="mean, 95 % interval")  # fmt: skip
    for position, value in enumerate(mean):
        if not np.isnan(value):
            left.annotate(f"{value:.4f}", (position, value), textcoords="offset points",
                          xytext=(9, 0), va="center", fontsize=8)  # fmt: skip
    counts = finished.groupby("combination").size()
    left.set_xticks(range(len(names)), [f"{n}\n(n={int(counts.get(n, 0))})" for n in names],
                    fontsize=8)  # fmt: skip
    left.set_ylabel(metric)
    left.margins(x=0.12, y=0.15)
    left.grid(axis="y", alpha=0.3)
    left.legend(fontsize="small")
    left.set_title(f"{metric} per combination")

    speed = pd.to_numeric(summary["train images/s"], errors="coerce").to_numpy(float)
    shown = ~np.isnan(speed) & ~np.isnan(mean)
    if shown.any():
        right.errorbar(speed[shown], mean[shown], yerr=interval[:, shown], fmt="o",
                       color="#1b3a57", capsize=4)  # fmt: skip
        for name, x, y in zip(np.asarray(names)[shown], speed[shown], mean[shown]):
            right.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        right.set_xscale("log")
        right.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        right.margins(x=0.25, y=0.15)
    else:
        right.text(0.5, 0.5, "no training throughput logged", ha="center", va="center",
                   transform=right.transAxes)  # fmt: skip
    right.set_xlabel("training images/s (median over epochs and seeds)")
    right.set_ylabel(metric)
    right.grid(alpha=0.3)
    right.set_title("what it gives for what it costs")
    return fig


def plot_confusion_matrix(
    matrix: Union[Tensor, np.ndarray],
    class_names: Sequence[str] | None = None,
    normalize: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted), row-normalised by default."""
    counts = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=float)
    n = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    shown = (
        counts / np.clip(counts.sum(axis=1, keepdims=True), 1e-12, None) if normalize else counts
    )
    if ax is None:
        side = max(3.5, 0.55 * n + 2)
        fig, axes = _figure(1, 1, (side + 1, side))
        ax = axes[0][0]
    fig = ax.figure
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        threshold = np.nanmax(shown) / 2 if shown.size else 0
        for i in range(n):
            for j in range(n):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shown[i, j] > threshold else "black",
                )
    ax.set_title("confusion matrix" + (" (rows normalised)" if normalize else ""))
    return fig


def per_class_values(source: Union[pd.Series, Mapping[str, float]], prefix: str) -> pd.Series:
    """``{class: value}`` from a run row or a metrics dict, e.g. ``prefix="final/test/iou/"``."""
    items = {str(k)[len(prefix) :]: v for k, v in dict(source).items() if str(k).startswith(prefix)}
    return pd.Series(items, dtype=float)


def plot_per_class(
    values: Union[pd.Series, Mapping[str, float], Tensor, np.ndarray, Sequence[float]],
    class_names: Sequence[str] | None = None,
    metric: str = "AP",
    ax: Axes | None = None,
) -> Figure:
    """A bar per class (AP, IoU, accuracy…), the mean over classes as a dashed line.

    ``values``: ``{class: value}``, a Series, or a vector in class order (with
    ``class_names``). NaN (a class absent from the test set) is shown as a missing bar.
    """
    if isinstance(values, (pd.Series, Mapping)):
        series = pd.Series(dict(values), dtype=float)
    else:
        array = np.asarray(
            values.cpu() if isinstance(values, Tensor) else values, dtype=float
        ).reshape(-1)
        names = (
            list(class_names) if class_names is not None else [str(i) for i in range(len(array))]
        )
        series = pd.Series(array, index=names)
    if ax is None:
        fig, axes = _figure(1, 1, (max(4.0, 0.5 * len(series) + 2), 3.6))
        ax = axes[0][0]
    fig = ax.figure
    positions = np.arange(len(series))
    ax.bar(
        positions,
        series.fillna(0).values,
        color=[np.array(class_colour(i)) / 255 for i in positions],
    )
    for position, value in zip(positions, series.values):
        ax.text(
            position,
            0 if np.isnan(value) else value,
            "n/a" if np.isnan(value) else f"{value:.2f}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    mean = float(np.nanmean(series.values)) if series.notna().any() else float("nan")
    if not np.isnan(mean):
        ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.legend(fontsize="small")
    ax.set_xticks(positions, list(series.index), rotation=45, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, max(1.0, float(np.nanmax(series.values)) * 1.1) if series.notna().any() else 1.0)
    ax.set_title(f"{metric} per class")
    ax.grid(axis="y", alpha=0.3)
    return fig


# -- models ------------------------------------------------------------------------------------


@torch.no_grad()
def plot_receptive_fields(model: nn.Module, max_layers: int = 12) -> Figure:
    """The learned extent of every DCK layer.

    Top: ``σ_y``/``σ_x`` per layer (mean over channels; error bars span the channels when the
    extent is per channel), with the effective kernel size that runs after cropping below
    each name. Bottom: each layer's mask ``M`` over its full window (mean over channels), the
    taps kept after cropping framed in red.
    """
    layers = list(dck_layers(model).items())[:max_layers]
    n = len(layers)
    if n == 0:
        fig, axes = _figure(1, 1, (5, 2))
        axes[0][0].text(0.5, 0.5, "no DCK layers in this model", ha="center", va="center")
        axes[0][0].axis("off")
        return fig
    fig = plt.figure(figsize=(max(6.0, 1.7 * n), 6.2), layout="constrained")
    grid = fig.add_gridspec(2, n, height_ratios=[1.4, 1])
    ax = fig.add_subplot(grid[0, :])
    positions = np.arange(n)
    labels = []
    for axis, (offset, colour, text) in enumerate(
        ((-0.18, "#3b75af", "σ_y"), (0.18, "#ef8636", "σ_x"))
    ):
        sigma = [layer.sigma[:, axis].detach().float().cpu() for _, layer in layers]
        means = np.array([float(s.mean()) for s in sigma])
        errors = np.array(
            [[float(s.mean() - s.min()) for s in sigma], [float(s.max() - s.mean()) for s in sigma]]
        )
        ax.bar(
            positions + offset,
            means,
            width=0.36,
            color=colour,
            label=text,
            yerr=errors if errors.any() else None,
            capsize=3,
        )
    for name, layer in layers:
        eff, full = layer.effective_kernel_size, layer.kernel_size
        labels.append(f"{name}\n{eff[0]}×{eff[1]} of {full[0]}×{full[1]}")
    ax.set_xticks(positions, labels, fontsize=7)
    ax.set_ylabel("σ (taps)")
    ax.set_title("DCK receptive field: learned σ and effective kernel size per layer")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    for index, (name, layer) in enumerate(layers):
        mask_ax = fig.add_subplot(grid[1, index])
        kh, kw = layer.kernel_size
        full = (
            layer.receptive_field_mask(((kh - 1) // 2, (kw - 1) // 2)).mean(0).float().cpu().numpy()
        )
        mask_ax.imshow(full, cmap="viridis", vmin=0, vmax=1)
        r_y, r_x = layer.crop_radius()
        c_y, c_x = (kh - 1) // 2, (kw - 1) // 2
        mask_ax.add_patch(
            Rectangle(
                (c_x - r_x - 0.5, c_y - r_y - 0.5),
                2 * r_x + 1,
                2 * r_y + 1,
                fill=False,
                edgecolor="red",
                linewidth=1.5,
            )
        )
        mask_ax.set_xticks([])
        mask_ax.set_yticks([])
        mask_ax.set_title(name.removesuffix(".conv"), fontsize=7)
    return fig


def _hwc(image: Union[Tensor, np.ndarray]) -> np.ndarray:
    """An image as ``[H, W, 3]`` for ``imshow``: uint8 ``[3, H, W]`` tensors are transposed."""
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def plot_offset_field(
    image: Union[Tensor, np.ndarray],
    field: LayerField,
    index: int = 0,
    ax: Axes | None = None,
    max_arrows: int = 24,
    exaggerate: float = 1.0,
    title: str | None = None,
) -> Figure:
    """One layer's field over an image: arrows = centre shift (DCK) or mean offset (deformable),
    in image pixels; dots = scale ``s`` (DCK, blue < 1 < red) or modulation (deformable).

    Args:
        image: the input image, ``uint8[3, H, W]`` (see :func:`~.inspection.to_display`) or ``[H, W, 3]``.
        field: from :func:`~.inspection.position_fields`.
        index: which image of the field's batch.
        max_arrows: at most this many arrows per side (the output grid is subsampled).
        exaggerate: multiply arrow lengths (shifts of a briefly trained model are tiny).
    """
    pixels = _hwc(image)
    height, width = pixels.shape[:2]
    if ax is None:
        fig, axes = _figure(1, 1, (4.2, 4.0))
        ax = axes[0][0]
    fig = ax.figure
    ax.imshow(pixels, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    shift = field.shift[index]
    h, w = shift.shape[-2:]
    step_y, step_x = max(1, math.ceil(h / max_arrows)), max(1, math.ceil(w / max_arrows))
    rows, cols = np.arange(0, h, step_y), np.arange(0, w, step_x)
    grid_y, grid_x = np.meshgrid(
        (rows + 0.5) * height / h - 0.5, (cols + 0.5) * width / w - 0.5, indexing="ij"
    )
    in_h, in_w = field.input_size
    dy = shift[0][rows][:, cols].numpy() * height / in_h * exaggerate
    dx = shift[1][rows][:, cols].numpy() * width / in_w * exaggerate
    if field.kind == "dck" and field.scale is not None:
        colour = field.scale[index].mean(0)[rows][:, cols].numpy()
        bound = field.max_scale or 2.0
        norm, cmap, label = (
            TwoSlopeNorm(vmin=1 / bound, vcenter=1.0, vmax=bound),
            "coolwarm",
            "scale s",
        )
    elif field.modulation is not None:
        colour = field.modulation[index][rows][:, cols].numpy()
        norm, cmap, label = Normalize(0, 1), "viridis", "modulation m"
    else:
        colour, norm, cmap, label = np.zeros_like(dx), None, "Greys", None
    dots = ax.scatter(
        grid_x,
        grid_y,
        c=colour,
        cmap=cmap,
        norm=norm,
        s=min(120.0, max(4.0, 600 / max(len(rows), len(cols)))),
        edgecolors="white",
        linewidths=0.3,
    )
    ax.quiver(
        grid_x,
        grid_y,
        dx,
        dy,
        angles="xy",
        scale_units="xy",
        scale=1,
        color="yellow",
        width=0.006,
        pivot="tail",
    )
    if label:
        fig.colorbar(dots, ax=ax, fraction=0.046, pad=0.04, label=label)
    if field.kind == "dck":  # the centre constraint bounds each axis: |t_y|, |t_x| ≤ c
        largest = float(field.shift[index].abs().max())
        text = f"max |t_y|, |t_x| {largest:.2f} (≤ {field.max_shift:g})"
    else:  # the deformable bound is radial
        largest = float(field.shift[index].square().sum(0).sqrt().max())
        text = f"max |mean offset| {largest:.2f} (≤ {field.max_shift:g})"
    ax.set_title(title or f"{text} input px", fontsize=8)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def plot_position_fields(
    model: nn.Module,
    images: Tensor,
    datamodule: Any = None,
    index: int = 0,
    deformable: bool = True,
    max_layers: int = 8,
    exaggerate: float = 1.0,
    ncols: int = 4,
) -> Figure:
    """Shifts and scales of every adaptive DCK (and offsets of every deformable conv) over one image.

    Args:
        model: a task or network.
        images: normalised ``Tensor[B, C, H, W]`` (or one image ``[C, H, W]``).
        datamodule: for un-normalising the image (its ``mean``/``std``).
        index: which image of the batch.
        deformable: include deformable convolutions.
        max_layers: at most this many panels.
        exaggerate: multiply arrow lengths.
    """
    images = images[None] if images.dim() == 3 else images
    parameter = next(iter(model.parameters()))
    image = images[index : index + 1].to(parameter.device, parameter.dtype)
    fields = list(position_fields(model, image, deformable=deformable).items())[:max_layers]
    pixels = to_display(image[0], datamodule)
    if not fields:
        fig, axes = _figure(1, 1, (4, 4))
        axes[0][0].imshow(_hwc(pixels))
        axes[0][0].set_title("no adaptive DCK or deformable layers")
        axes[0][0].axis("off")
        return fig
    ncols = max(1, min(ncols, len(fields)))
    nrows = math.ceil(len(fields) / ncols)
    fig, axes = _figure(nrows, ncols, (4.0 * ncols, 3.8 * nrows))
    for panel, (name, field) in enumerate(fields):
        ax = axes[panel // ncols][panel % ncols]
        plot_offset_field(pixels, field, 0, ax=ax, exaggerate=exaggerate)
        ax.set_title(f"{name} ({field.kind})\n" + ax.get_title(), fontsize=8)
    for panel in range(len(fields), nrows * ncols):
        axes[panel // ncols][panel % ncols].set_visible(False)
    return fig


def _draw_one(
    pixels: Tensor,
    item: Any,
    names: Sequence[str] | None,
    score_threshold: float,
    min_side: int,
    ignore_index: int = 255,
) -> Tensor:
    """Boxes (dict with ``boxes``) or a class map (``Tensor[H, W]``) drawn on ``uint8[3, H, W]``."""
    pixels, factor = enlarge(pixels, min_side)
    if isinstance(item, dict) and "boxes" in item:
        boxes = item["boxes"].detach().float().cpu().reshape(-1, 4)
        labels = item["labels"].detach().cpu().reshape(-1)
        scores = item.get("scores")
        scores = None if scores is None else scores.detach().float().cpu().reshape(-1)
        keep = (
            torch.ones(len(labels), dtype=torch.bool)
            if scores is None
            else scores >= score_threshold
        )
        labels = labels[keep].tolist()
        texts = [class_name(names, label) for label in labels]
        if scores is not None:
            texts = [f"{text} {float(score):.2f}" for text, score in zip(texts, scores[keep])]
        return draw_boxes(pixels, boxes[keep] * factor, labels, texts)
    mask = item["mask"] if isinstance(item, dict) else item
    return draw_class_map(pixels, mask, names, ignore_index)


def draw_predictions(
    images: Tensor,
    predictions: Any,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.3,
    min_side: int = 128,
) -> list[Tensor]:
    """Draw detections or segmentation maps on display images.

    Args:
        images: ``uint8[B, 3, H, W]`` (see :func:`~.inspection.to_display`).
        predictions: detection dicts ``[{"boxes", "labels", "scores"}]`` (input
            coordinates; ground-truth dicts without ``scores`` work too), class maps
            ``[Tensor[H, W]]`` or ``Tensor[B, H, W]``, or target dicts with ``mask``.
        class_names: names of the labels.
        score_threshold: boxes scoring below are not drawn.
        min_side: images are enlarged (nearest) to at least this many pixels, so labels fit.

    Returns:
        ``[uint8[3, H', W']]``, one per image.
    """
    return [
        _draw_one(pixels, item, class_names, score_threshold, min_side)
        for pixels, item in zip(images, predictions)
    ]


def plot_predictions(
    images: Tensor,
    predictions: Any,
    datamodule: Any = None,
    class_names: Sequence[str] | None = None,
    targets: Any = None,
    score_threshold: float = 0.3,
    ncols: int = 4,
) -> Figure:
    """A grid of images with their predictions (and the ground truth, when ``targets`` are given).

    Classification (``predictions`` = probabilities ``Tensor[B, K]``): the predicted class and
    its probability as title, green when it matches the target label. Detection (dicts with
    boxes) and segmentation (class maps): boxes / masks drawn on the image, with a second row
    of ground truth per image row when ``targets`` are given.

    Args:
        images: normalised ``Tensor[B, C, H, W]`` as the model saw them.
        predictions: from :func:`~.inspection.predict`.
        datamodule: for un-normalising images and class names.
        class_names: default: the DataModule's.
        targets: labels ``Tensor[B]`` or target dicts, as in the batch.
    """
    names = (
        list(class_names) if class_names is not None else getattr(datamodule, "class_names", None)
    )
    pixels = to_display(images, datamodule)
    count = len(pixels)
    ncols = max(1, min(ncols, count))
    classification = isinstance(predictions, Tensor) and predictions.dim() == 2
    with_truth = targets is not None and not classification
    rows_per = 2 if with_truth else 1
    nrows = math.ceil(count / ncols) * rows_per
    fig, axes = _figure(nrows, ncols, (3.0 * ncols, 3.1 * nrows))
    for ax in axes.flat:
        ax.axis("off")
    if classification:
        probs = predictions.detach().float().cpu()
        for i in range(count):
            ax = axes[i // ncols][i % ncols]
            ax.imshow(_hwc(pixels[i]))
            label = int(probs[i].argmax())
            title = f"{class_name(names, label)} {float(probs[i, label]):.2f}"
            colour = "black"
            if targets is not None:
                truth = int(targets[i])
                title += f"\n(true: {class_name(names, truth)})"
                colour = "green" if truth == label else "red"
            ax.set_title(title, fontsize=8, color=colour)
    else:
        drawn = draw_predictions(pixels, predictions, names, score_threshold)
        truth = draw_predictions(pixels, targets, names, score_threshold) if with_truth else None
        for i in range(count):
            row = (i // ncols) * rows_per
            ax = axes[row][i % ncols]
            ax.imshow(_hwc(drawn[i]))
            ax.set_title("prediction", fontsize=8)
            if truth is not None:
                axes[row + 1][i % ncols].imshow(_hwc(truth[i]))
                axes[row + 1][i % ncols].set_title("ground truth", fontsize=8)
    return fig
