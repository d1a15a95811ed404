"""Claim 1, measured on trained runs: what did the DCKs learn, and is the network lighter?

For a trained run (or a folder of seeds of one configuration) this prints two tables:

1. **Learned extents**, per seed and DCK layer: the window, the learned ``σ`` (mean over
   channels; min–max), the kernel the layer runs after cropping, and the layer's forward
   FLOPs as it runs against at its full window (:func:`dck_lightning.analysis.cost.extent_table`).
2. **Cost**, per model: accuracy, GFLOPs per image, parameters, peak training memory
   (torch's ``MemTracker``: parameters, gradients, AdamW state, activations, temporaries),
   and training and inference images/s with their ratio to the plain 3×3 row, timed
   interleaved in this process (``scripts/bench_utils.py``). Rows: the trained network as it
   runs (cropped DCKs); the same with its DCKs at their full window (never cropped); the same
   with every DCK a plain ``k × k`` convolution on the same output grid (``--kernels``, and
   ``own``: each DCK's own window); any ``--compare`` run (another trained configuration, e.g.
   the plain twin of a sweep), measured the same way; and, for inference only, the trained
   network and the plain 3×3 one frozen by :func:`dck_lightning.deploy.freeze` (cropped
   kernels and masks folded into plain weights, batch norms into the convolutions). The
   variants that were not trained have no accuracy.

Accuracy is the run's final test metric (``--metric``, default the task's monitor on the test
set, e.g. ``test/acc``), mean ± std over the seeds of a folder of seeds.

    python scripts/report_dck_cost.py runs/claim1_mnist/adaptive \\
        --compare "plain twin" runs/claim1_mnist/plain --data-dir DATA --batch 64
    python scripts/report_dck_cost.py RUN --write docs/RESULTS.md --section mnist_cost

The load average is printed with the tables: the timings are ratios measured in one process,
but a busy machine still widens their spread.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch
from bench_utils import interleaved_times, paired_ratio, publish

from dck_lightning.analysis import find_runs, load_datamodule, load_runs, load_task, sample_batch
from dck_lightning.analysis.cost import (
    TrainingStep,
    cost_table,
    eval_step,
    extent_table,
    with_full_windows,
    with_plain_kernels,
)
from dck_lightning.deploy import freeze
from dck_lightning.models import count_flops, count_parameters

BASELINE = "plain 3×3"


def seed_runs(path: Path) -> list[Path]:
    """The run folders under ``path`` (one run, or a folder of seeds), in order."""
    runs = find_runs(path)
    if not runs:
        raise SystemExit(f"{path}: no run folder (config.yaml + metrics.csv) found there")
    return runs


def accuracy(runs: list[Path], metric: str) -> str:
    """``mean ± std (n)`` of the runs' final ``metric``; ``—`` when no run has it."""
    frame = load_runs(runs)
    column = f"final/{metric}"
    values = frame[column].dropna().tolist() if column in frame else []
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({len(values)})"


def default_metric(run: Path) -> str:
    monitor = load_runs(run).iloc[0].get("monitor") or "val/acc"
    return "test/" + monitor.split("/", 1)[1]


def extents(runs: list[Path], images: torch.Tensor) -> pd.DataFrame:
    frames = []
    for run in runs:
        table = extent_table(load_task(run), images)
        table.insert(0, "run", run.name)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def extents_markdown(table: pd.DataFrame, batch: int) -> list[str]:
    lines = [
        "| run | layer | window | σ (y, x) | σ min–max | runs as | MFLOPs / image | × full window |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.run} | {row.layer} | {'×'.join(map(str, row.kernel_size))} | "
            f"{row.sigma_y:.2f}, {row.sigma_x:.2f} | {row.sigma_min:.2f}–{row.sigma_max:.2f} | "
            f"{'×'.join(map(str, row.effective_kernel_size))} | {row.flops / batch / 1e6:.3f} | "
            f"{row.flops_ratio:.2f} |"
        )
    return lines


def measure(variants: dict, inference: dict, batch, args: argparse.Namespace) -> pd.DataFrame:
    """Static costs and interleaved train/eval timings of every variant (``inference``
    variants: FLOPs, parameters and eval timings only)."""
    images, size = batch[0], batch[0].shape[0]
    frozen = pd.DataFrame(
        [
            {
                "model": name,
                "gflops": count_flops(task, images) / 1e9,
                "params": count_parameters(task),
            }
            for name, task in inference.items()
        ]
    )
    table = pd.concat([cost_table(variants, batch), frozen]).set_index("model")
    everything = {**variants, **inference}
    for mode in ("train", "eval"):
        if mode == "train":
            steps = {name: TrainingStep(task, batch) for name, task in variants.items()}
        else:
            steps = {name: eval_step(task, images) for name, task in everything.items()}
        times = interleaved_times(steps, args.repeats, args.warmup)
        for name in steps:
            table.loc[name, f"{mode}_img_s"] = size / statistics.median(times[name].values())
            if BASELINE in times:
                table.loc[name, f"{mode}_x_base"] = 1 / paired_ratio(times[name], times[BASELINE])
    return table


def _number(value: float, spec: str) -> str:
    return "—" if pd.isna(value) else format(value, spec)


def cost_markdown(table: pd.DataFrame, accuracies: dict[str, str], batch: int) -> list[str]:
    lines = [
        "| model | accuracy | GFLOPs / image | parameters | peak training MiB | train img/s "
        f"| × {BASELINE} | eval img/s | × {BASELINE} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.iterrows():
        cells = [
            name,
            accuracies.get(name, "—"),
            _number(row.gflops / batch, ".4f"),
            _number(row.params, ",.0f"),
            _number(row.get("train_mib"), ".1f"),
            _number(row.get("train_img_s"), ".0f"),
            _number(row.get("train_x_base"), ".2f"),
            _number(row.get("eval_img_s"), ".0f"),
            _number(row.get("eval_x_base"), ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a run folder or a folder of its seeds")
    parser.add_argument(
        "--compare",
        action="append",
        nargs=2,
        default=[],
        metavar=("LABEL", "RUN"),
        help="another trained configuration (a run or a folder of seeds) to measure beside it",
    )
    parser.add_argument("--label", default="trained DCKs (cropped)", help="the run's row")
    parser.add_argument("--kernels", nargs="*", default=["own", "3", "7", "11"])
    parser.add_argument("--metric", help="accuracy metric (default: the monitor on test)")
    parser.add_argument("--batch", type=int, default=64, help="images per timed step")
    parser.add_argument("--split", default="val", help="where the timed batch comes from")
    parser.add_argument("--data-dir", help="data.init_args.data_dir of the runs, if moved")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", type=Path, help="put the tables into this Markdown file")
    parser.add_argument("--section", default="dck_cost", help="marker name in --write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    runs = seed_runs(args.run)
    metric = args.metric or default_metric(runs[0])
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    datamodule = load_datamodule(runs[0], **overrides)
    batch = sample_batch(datamodule, args.split, args.batch)
    size = batch[0].shape[0]
    load_start = os.getloadavg()[0]

    extent = extents(runs, batch[0])
    trained = load_task(runs[0])
    variants = {args.label: trained, "same, DCKs at full window": with_full_windows(trained)}
    for kernel in args.kernels:
        if kernel == "own":
            variants["same, plain conv of each DCK's window"] = with_plain_kernels(trained)
        else:
            variants[f"plain {kernel}×{kernel}"] = with_plain_kernels(trained, int(kernel))
    accuracies = {args.label: accuracy(runs, metric)}
    for label, path in args.compare:
        others = seed_runs(Path(path))
        variants[label] = load_task(others[0])
        accuracies[label] = accuracy(others, metric)
    inference = {f"{args.label}, frozen (deploy.freeze)": freeze(trained)}
    if BASELINE in variants:
        inference[f"{BASELINE}, frozen"] = freeze(variants[BASELINE])
    table = measure(variants, inference, batch, args)
    load_end = os.getloadavg()[0]

    flops = {run.name: count_flops(load_task(run), batch[0]) / size / 1e9 for run in runs}
    lines = [
        f"Run: `{args.run}` ({len(runs)} seed(s)); accuracy: `{metric}`; batch of {size} "
        f"{tuple(batch[0].shape[1:])} images from the {args.split} split; {args.threads} torch "
        f"thread(s); load average {load_start:.2f} → {load_end:.2f}.",
        "",
        "Learned extents (per seed):",
        "",
        *extents_markdown(extent, size),
        "",
        "Cost (the first seed's network for the trained rows"
        + (
            "; the seeds' GFLOPs / image: " + ", ".join(f"{k} {v:.4f}" for k, v in flops.items())
            if len(set(round(v, 6) for v in flops.values())) > 1
            else ""
        )
        + "):",
        "",
        *cost_markdown(table, accuracies, size),
        "",
        "Command: `python scripts/report_dck_cost.py "
        + shlex.join(argv if argv is not None else sys.argv[1:])
        + "`",
    ]
    publish("\n".join(lines), args.write, args.section)


if __name__ == "__main__":
    main()
