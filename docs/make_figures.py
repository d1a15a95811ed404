"""Make the pictures in docs/ with the analysis helpers (run by hand, not by the tests).

::

    python docs/make_figures.py --train --runs /tmp/dck_docs_runs   # trains 4 small runs (CPU, minutes)
    python docs/make_figures.py --runs /tmp/dck_docs_runs           # pictures only, from existing runs

The runs: the embedded default (``dcb_small`` on 32×32 synthetic shapes) with fewer images,
``dck`` adaptive / static × 2 seeds.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parent
MODES = ("adaptive", "static")  # "off" arrives as False through the CLI (YAML 1.1)
SEEDS = (1, 2)
SWITCH = "model.init_args.backbone.init_args.dck"


def train(root: Path, epochs: int, num_train: int) -> None:
    from dck_lightning.cli import main

    os.environ.pop("WANDB_MODE", None)
    for mode in MODES:
        for seed in SEEDS:
            main([
                "fit", "--run.root", str(root), "--run.name", "ablation", "--run.wandb", "disabled",
                "--seed_everything", str(seed), "--trainer.max_epochs", str(epochs),
                "--trainer.enable_progress_bar", "false",
                "--model.init_args.backbone.init_args.dck", mode,
                "--data.init_args.num_train", str(num_train), "--data.init_args.num_val", "512",
            ])  # fmt: skip


def figures(root: Path) -> None:
    from dck_lightning.analysis import (
        load_datamodule,
        load_runs,
        load_task,
        plot_ablation,
        plot_learning_curves,
        plot_position_fields,
        plot_receptive_fields,
        sample_batch,
    )

    runs = load_runs(root)
    fig = plot_learning_curves(runs, ["train/loss_epoch", "val/loss", "val/acc"], hue=SWITCH)
    fig.savefig(DOCS / "learning_curves.png", dpi=90)
    fig = plot_ablation(runs, SWITCH, "best/val/acc")
    fig.savefig(DOCS / "ablation.png", dpi=90)
    adaptive = runs[runs[SWITCH] == "adaptive"].sort_values("best/val/acc").iloc[-1]
    task = load_task(adaptive["best_checkpoint"])
    plot_receptive_fields(task).savefig(DOCS / "receptive_fields.png", dpi=90)
    datamodule = load_datamodule(adaptive["run_dir"])
    images, _ = sample_batch(datamodule, "val", 4)
    fig = plot_position_fields(task, images, datamodule, index=0, ncols=4)
    fig.savefig(DOCS / "offset_fields.png", dpi=80)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=Path("/tmp/dck_docs_runs"))
    parser.add_argument("--train", action="store_true", help="train the runs first")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--num-train", type=int, default=1024)
    args = parser.parse_args()
    if args.train:
        train(args.runs, args.epochs, args.num_train)
    figures(args.runs)
