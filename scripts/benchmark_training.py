"""Framework overhead and data throughput for ``configs/mnist_seed.yaml``.

1. Training images/s of the SeedNet recipe (batch 128, Adam) through the framework
   (``dck fit -c configs/mnist_seed.yaml``, in-process, logging on) against a plain PyTorch
   loop over the same model, data and batch size, measured in the same run. Each is run for
   ``--epochs`` epochs, the plain loop once before and once after the framework; the median
   seconds per epoch after the first (a warm-up) are compared. Target: framework time per
   epoch ≤ 1.05 × the plain loop's.
2. The DataModule's own images/s with augmentation on (loader + on-device batch transform,
   no model), against the images/s the model consumes. Target: ≥ 10×.

Data: the real MNIST test split from ``$DCK_SHARED_DATA/mnist-t10k`` when present (used as
both training and test images, since the training images are not shipped), else random
digits in the same IDX format.

    python scripts/benchmark_training.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from bench_utils import write_section

from dck_lightning.callbacks import EpochThroughput
from dck_lightning.cli import main as dck
from dck_lightning.data import MNISTDataModule, write_idx
from dck_lightning.models import SeedNet

REPO = Path(__file__).resolve().parents[1]
SECTION = ("<!-- benchmark_training:start -->", "<!-- benchmark_training:end -->")


def mnist_dir(root: Path) -> tuple[Path, str]:
    """An MNIST data_dir with train and test files; returns it and where the images came from."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shared = Path(os.environ.get("DCK_SHARED_DATA", REPO.parent / "shared" / "data")) / "mnist-t10k"
    if (shared / "t10k-images-idx3-ubyte.gz").is_file():
        for split in ("train", "t10k"):
            for kind in ("images-idx3", "labels-idx1"):
                shutil.copy(shared / f"t10k-{kind}-ubyte.gz", raw / f"{split}-{kind}-ubyte.gz")
        return root, "real MNIST t10k (`$DCK_SHARED_DATA/mnist-t10k`)"
    rng = np.random.default_rng(0)
    for split, n in (("train", 10000), ("t10k", 1000)):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return root, "random IDX digits"


def framework_epochs(data_dir: Path, run_root: Path, epochs: int) -> list[tuple[float, int]]:
    """``dck fit -c configs/mnist_seed.yaml`` (CSV + offline W&B logging, checkpoints) timed per epoch."""
    # sys.argv holds this script's options, not the CLI's.
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = dck(
            [
                "fit",
                "-c",
                str(REPO / "configs" / "mnist_seed.yaml"),
                "--data.init_args.data_dir",
                str(data_dir),
                "--trainer.max_epochs",
                str(epochs),
                "--trainer.limit_val_batches",
                "0",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_model_summary",
                "false",
                "--trainer.callbacks+=dck_lightning.callbacks.EpochThroughput",
                "--run.root",
                str(run_root),
                "--run.wandb",
                "offline",
            ]
        )
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, EpochThroughput))
    return timer.history


def plain_epochs(data_dir: Path, epochs: int, batch_size: int = 128) -> list[tuple[float, int]]:
    """The same SeedNet, data, batch size and optimiser in a hand-written loop."""
    torch.manual_seed(42)
    dm = MNISTDataModule(
        data_dir=str(data_dir), batch_size=batch_size, val_split=0.1, augment=False
    )
    dm.setup("fit")
    model = SeedNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        model.train()
        for batch in dm.train_dataloader():
            x, y = dm.on_after_batch_transfer(batch, 0)
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            images += len(y)
        history.append((time.perf_counter() - start, images))
    return history


class _Training:
    """Stands in for a trainer that is training, so the DataModule augments."""

    training = True
    global_rank = 0


def data_images_per_sec(data_dir: Path, epochs: int = 2, batch_size: int = 128) -> float:
    """Loader + on-device augmentation + normalisation, no model: images/s of the last epoch."""
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=batch_size, val_split=0.1, augment=True)
    dm.setup("fit")
    dm.trainer = _Training()
    rate = 0.0
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        for batch in dm.train_dataloader():
            x, _ = dm.on_after_batch_transfer(batch, 0)
            images += len(x)
        rate = images / (time.perf_counter() - start)
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run (at least 2: the first warms up)"
    )
    parser.add_argument("--write", type=Path, help="update this markdown file's training section")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch of each run is a warm-up)")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, source = mnist_dir(Path(tmp) / "data")
        # The plain loop runs before and after the framework, so that a change in the
        # machine's load during the run shows up in the baseline as well.
        plain = plain_epochs(data_dir, args.epochs)[1:]
        framework = framework_epochs(data_dir, Path(tmp) / "runs", args.epochs)[1:]
        plain += plain_epochs(data_dir, args.epochs)[1:]
        data_rate = data_images_per_sec(data_dir)
    n, n_framework = plain[0][1], framework[0][1]
    plain_s = statistics.median(seconds for seconds, _ in plain)
    framework_s = statistics.median(seconds for seconds, _ in framework)
    model_rate = n / plain_s
    lines = [
        f"Data: {source}; {n} training images per epoch, batch 128, Adam. Seconds/epoch: median over "
        f"epochs 2–{args.epochs} of each run (the first warms up); the plain loop ran {args.epochs} "
        f"epochs before and {args.epochs} after the framework's {args.epochs} (plain: "
        f"{', '.join(f'{s:.1f}' for s, _ in plain)} s; framework: {', '.join(f'{s:.1f}' for s, _ in framework)} s).",
        "",
        "| measurement | seconds/epoch | images/s | ratio |",
        "|---|---|---|---|",
        f"| plain PyTorch loop (baseline) | {plain_s:.2f} | {n / plain_s:.0f} | 1.00 |",
        f"| `dck fit -c configs/mnist_seed.yaml` | {framework_s:.2f} | {n_framework / framework_s:.0f} | {framework_s / plain_s:.3f} × time |",
        f"| DataModule alone (augment on, no model) | — | {data_rate:.0f} | {data_rate / model_rate:.1f} × model consumption |",
    ]
    print("\n".join(lines))
    if args.write:
        command = "python scripts/benchmark_training.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        body = "\n".join(
            [
                "## Training: framework overhead and data throughput (mnist_seed.yaml)",
                "",
                f"Command: `{command.strip()}`  ",
                f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                f"torch {torch.__version__}, {torch.get_num_threads()} threads",
                "",
                *lines,
            ]
        )
        write_section(args.write, body, SECTION)


if __name__ == "__main__":
    main()
