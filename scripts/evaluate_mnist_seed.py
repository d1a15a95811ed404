"""Train ``configs/mnist_seed.yaml`` on real digits and report its test accuracy.

The sample of real data (``$DCK_SHARED_DATA/mnist-t10k``: MNIST's t10k IDX files) has only
MNIST's 10,000 test images, so they are split 80/20 by index:
images 0–7999 become the training set (of which the config's ``val_split: 0.1`` holds out
800 for validation, seeded) and images 8000–9999 the test set. Both are written in the
original IDX gzip format into a temporary ``data_dir`` and read by ``MNISTDataModule``.

    python scripts/evaluate_mnist_seed.py [--mnist-dir DIR] [--runs runs]

``--mnist-dir`` defaults to ``$DCK_SHARED_DATA/mnist-t10k``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from dck_lightning.cli import main as dck
from dck_lightning.data import read_idx, write_idx

REPO = Path(__file__).resolve().parents[1]


def split_t10k(mnist_dir: Path, data_dir: Path, n_train: int = 8000) -> None:
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, part in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", images[part].numpy())
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", labels[part].numpy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shared = os.environ.get("DCK_SHARED_DATA")
    parser.add_argument(
        "--mnist-dir",
        type=Path,
        default=Path(shared) / "mnist-t10k" if shared else None,
        required=not shared,
        help="folder with t10k-{images-idx3,labels-idx1}-ubyte.gz (default: $DCK_SHARED_DATA/mnist-t10k)",
    )
    parser.add_argument("--runs", default="runs")
    args, overrides = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        split_t10k(args.mnist_dir, Path(tmp))
        common = [
            "-c",
            str(REPO / "configs" / "mnist_seed.yaml"),
            "--data.init_args.data_dir",
            tmp,
            "--run.root",
            args.runs,
            "--run.name",
            "mnist_seed_t10k",
            *overrides,
        ]
        fit = dck(["fit", *common])
        best = fit.trainer.checkpoint_callback.best_model_path
        test = dck(["test", *common, "--run.wandb", "disabled", "--ckpt_path", best])
        accuracy = float(test.trainer.callback_metrics["test/acc"])
    print(
        f"mnist_seed.yaml on the real t10k digits (train 0-7999 incl. 10% val, test 8000-9999): "
        f"test accuracy {accuracy:.4f} (checkpoint {best})"
    )


if __name__ == "__main__":
    main()
