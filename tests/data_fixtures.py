"""Fixture writers for the tests: tiny datasets in the real on-disk formats.

- MNIST: IDX files (``MNIST/raw/*-ubyte``, plain or ``.gz``) as torchvision writes them.
- CIFAR-10: python pickle batches in ``cifar-10-batches-py`` as the original tarball has them.
- class folders: ``<split>/<class>/*.png``.

Each writer returns the arrays it wrote so tests can compare what a DataModule decodes.
The data tests reach them through the ``data_files`` fixture of ``tests/data/conftest.py``,
other tests import this module (``tests/`` is on ``sys.path`` through ``tests/conftest.py``;
importing ``conftest`` by name is ambiguous when other test folders have one too).
"""

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from dck_lightning.data import idx

MNIST_TRAIN, MNIST_TEST = 20, 10
CIFAR_PER_BATCH, CIFAR_TEST = 4, 6


def shared_data_dir() -> Optional[Path]:
    """The project's shared real-data samples (``$DCK_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    env = os.environ.get("DCK_SHARED_DATA")
    candidate = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return candidate.resolve() if candidate.is_dir() else None


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """The package's IDX writer, to ``path.gz`` (gzip-compressed) when ``compress``."""
    return idx.write_idx(path.with_name(path.name + ".gz") if compress else path, array)


def write_mnist(
    root: Path,
    compress: bool = False,
    splits: Sequence[str] = ("train", "test"),
    flat: bool = False,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write tiny MNIST splits (20 train, 10 test) into ``root/MNIST/raw`` (or ``root`` if ``flat``)."""
    rng = np.random.default_rng(seed)
    folder = root if flat else root / "MNIST" / "raw"
    written = {}
    for split in splits:
        n, prefix = (MNIST_TRAIN, "train") if split == "train" else (MNIST_TEST, "t10k")
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
        written[split] = (images, labels)
    return written


def _cifar_pickle(path: Path, images_hwc: np.ndarray, labels: np.ndarray) -> None:
    entry = {
        "batch_label": path.name,
        "labels": labels.tolist(),
        "data": images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1),
        "filenames": [f"img_{i}.png" for i in range(len(images_hwc))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar_batches(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``cifar-10-batches-py`` with 5 x 4 train images, 6 test images and ``batches.meta``.

    Returns ``{"train": (images_hwc, labels), "test": ...}`` in file order.
    """
    from dck_lightning.data.cifar import CIFAR10_CLASSES

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_images, train_labels = [], []
    for index in range(1, 6):
        images = rng.integers(0, 256, (CIFAR_PER_BATCH, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, CIFAR_PER_BATCH)
        _cifar_pickle(folder / f"data_batch_{index}", images, labels)
        train_images.append(images)
        train_labels.append(labels)
    test_images = rng.integers(0, 256, (CIFAR_TEST, 32, 32, 3), dtype=np.uint8)
    test_labels = np.arange(CIFAR_TEST) % 10
    _cifar_pickle(folder / "test_batch", test_images, test_labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 10000, "num_vis": 3072}, f
        )
    return {
        "train": (np.concatenate(train_images), np.concatenate(train_labels)),
        "test": (test_images, test_labels),
    }


def write_image_folder(
    root: Path,
    classes: Sequence[str],
    per_class: int = 3,
    size: tuple[int, int] = (12, 16),
    mode: str = "RGB",
    seed: int = 0,
    sizes: Optional[Sequence[tuple[int, int]]] = None,
) -> dict[str, list[np.ndarray]]:
    """Write ``root/<class>/<i>.png`` images (``size`` = (H, W), or one size per image from ``sizes``)."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[np.ndarray]] = {}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_class):
            h, w = sizes[i % len(sizes)] if sizes else size
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            array = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"{i:03d}.png")
            written[name].append(array)
    return written
