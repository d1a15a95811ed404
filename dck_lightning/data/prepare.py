"""``dck-prepare-data``: download datasets into the layout the dck_lightning DataModules read.

Run it on a machine with network access, then copy the data directory to the
cluster (compute nodes usually have no network; the DataModules never download
in ``setup``)::

    dck-prepare-data --dataset mnist --data-dir data
    dck-prepare-data --dataset all --data-dir /scratch/$USER/data
    rsync -a data/ cluster:/path/to/data/

Layouts written (all through ``torchvision.datasets``):

- mnist:   DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
- cifar10: DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
- voc2007: DIR/VOCdevkit/VOC2007 (trainval and test)
- voc2012: DIR/VOCdevkit/VOC2012 (trainval, with SegmentationClass)

Files already present are not downloaded again.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

DATASETS = ("mnist", "cifar10", "voc2007", "voc2012")


def prepare_mnist(data_dir: Path) -> list[Path]:
    """Download MNIST through :class:`~dck_lightning.data.MNISTDataModule`."""
    from dck_lightning.data import MNISTDataModule

    datamodule = MNISTDataModule(str(data_dir), download=True)
    datamodule.prepare_data()
    return [datamodule.raw_dir]


def prepare_cifar10(data_dir: Path) -> list[Path]:
    """Download CIFAR-10 through :class:`~dck_lightning.data.CIFAR10DataModule`."""
    from dck_lightning.data import CIFAR10DataModule

    datamodule = CIFAR10DataModule(str(data_dir), download=True)
    datamodule.prepare_data()
    return [datamodule.batches_dir]


def _voc_present(root: Path, year: str, image_sets: Sequence[str]) -> bool:
    base = root / "VOCdevkit" / f"VOC{year}"
    return (base / "JPEGImages").is_dir() and all(
        (base / "ImageSets" / "Main" / f"{name}.txt").is_file() for name in image_sets
    )


def prepare_voc(data_dir: Path, year: str) -> list[Path]:
    """Download Pascal VOC ``year`` with ``torchvision.datasets.VOCDetection``/``VOCSegmentation``.

    VOC2007 gets its ``trainval`` and ``test`` sets, VOC2012 its ``trainval`` set (the
    segmentation masks come in the same archive).
    """
    from torchvision.datasets import VOCDetection, VOCSegmentation

    image_sets = ("trainval", "test") if year == "2007" else ("trainval",)
    if not _voc_present(data_dir, year, image_sets):
        for image_set in image_sets:
            VOCDetection(str(data_dir), year=year, image_set=image_set, download=True)
    # Same archive: just check the segmentation split loads.
    VOCSegmentation(str(data_dir), year=year, image_set="trainval", download=False)
    return [data_dir / "VOCdevkit" / f"VOC{year}"]


PREPARERS: dict[str, Callable[[Path], list[Path]]] = {
    "mnist": prepare_mnist,
    "cifar10": prepare_cifar10,
    "voc2007": lambda data_dir: prepare_voc(data_dir, "2007"),
    "voc2012": lambda data_dir: prepare_voc(data_dir, "2012"),
}


def _summary(path: Path) -> str:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files)
    return f"{path}  ({len(files)} files, {size / 2**20:.1f} MiB)"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="dck-prepare-data",
        description="Download datasets into the layout the dck_lightning DataModules read.",
        epilog="Run where the network is reachable, then copy DATA_DIR to the machines that train.",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        choices=(*DATASETS, "all"),
        help="dataset to download ('all' = every one of them)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="directory to download into; pass the same path as data_dir to the DataModule (default: data)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Download the requested datasets; return the exit status (1 if any download failed)."""
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    names = DATASETS if args.dataset == "all" else (args.dataset,)
    status = 0
    for name in names:
        print(f"[{name}] preparing in {data_dir}", flush=True)
        try:
            written = PREPARERS[name](data_dir)
        except Exception as err:  # report every failure, go on with the next dataset
            print(
                f"[{name}] error: could not download into {data_dir} (is the network reachable?)\n"
                f"{type(err).__name__}: {err}",
                file=sys.stderr,
            )
            status = 1
            continue
        for path in written:
            print(f"[{name}] wrote {_summary(path)}")
    return status


def entry_point() -> None:
    """The ``dck-prepare-data`` console script: exits with :func:`main`'s status."""
    raise SystemExit(main())
