"""MNIST as an in-memory LightningDataModule.

Reads the original IDX files (``MNIST/raw/*-ubyte``, or the ``.gz`` files, as
``torchvision.datasets.MNIST`` downloads them), decodes each split once into a
``uint8`` tensor and augments whole batches on the device.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from torchvision.datasets import MNIST

from .base import ClassificationArrays, InMemoryClassificationDataModule
from .batch_augment import ClassificationBatchAugment
from .errors import DataNotFoundError, prepare_command
from .idx import read_idx

__all__ = ["MNISTDataModule", "MNIST_FILES"]

#: the IDX files of each split, as named by torchvision (``MNIST.resources`` minus ``.gz``).
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class MNISTDataModule(InMemoryClassificationDataModule):
    """MNIST handwritten digits: 60,000 train and 10,000 test images, 1 x 28 x 28, 10 classes.

    Files are looked up in ``data_dir/MNIST/raw`` (torchvision's layout) and then in
    ``data_dir`` itself, each as ``<name>`` or ``<name>.gz``. The legacy
    ``data_dir/MNIST/processed/{training,test}.pt`` files of old torchvision versions load too.

    Args:
        data_dir: root directory (holding ``MNIST/raw``).
        download: download the files through ``torchvision.datasets.MNIST`` in
            ``prepare_data`` when they are missing.
        val_split: fraction of the 60,000 training images held out for validation.
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes (0 is fastest for in-memory tensors).
        seed: seed of the train/val split and of the augmentation.
        augment: small random affine transform (rotation 10 deg, shift 10 %, zoom 0.9-1.1)
            of training batches.
        normalize: normalise with the MNIST mean/std (0.1307, 0.3081).
        predict_dir: a folder of images for ``dck predict`` instead of the test set (see
            :class:`~dck_lightning.data.base.BaseDataModule`).

    Example:
        >>> dm = MNISTDataModule("data", download=True)  # doctest: +SKIP
        >>> dm.prepare_data(); dm.setup("fit")  # doctest: +SKIP
    """

    dataset_name = "MNIST"

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_split: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 42,
        augment: bool = False,
        normalize: bool = True,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(
            data_dir,
            download,
            val_split,
            batch_size,
            num_workers,
            seed,
            augment,
            normalize,
            predict_dir,
        )
        self.save_hyperparameters()
        self.num_classes = 10
        self.in_channels = 1
        self.class_names = [str(digit) for digit in range(10)]
        self.image_size = (28, 28)
        self._set_statistics(MNIST_MEAN, MNIST_STD)
        self.batch_augment = ClassificationBatchAugment(affine=True)

    @property
    def raw_dir(self) -> Path:
        """``data_dir/MNIST/raw``, where torchvision puts the files."""
        return self.data_dir / "MNIST" / "raw"

    def find_file(self, name: str) -> Optional[Path]:
        """Locate ``name`` or ``name.gz`` in ``raw_dir`` or ``data_dir``."""
        for folder in (self.raw_dir, self.data_dir):
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    def load_split(self, split: str) -> Optional[ClassificationArrays]:
        """Decode the ``"train"`` or ``"test"`` IDX files (MNIST has no ``"val"`` split)."""
        if split == "val":
            return None
        legacy = (
            self.data_dir
            / "MNIST"
            / "processed"
            / ("training.pt" if split == "train" else "test.pt")
        )
        if legacy.is_file():
            images, labels = torch.load(legacy, weights_only=True)
            return images.unsqueeze(1), labels.long()
        names = MNIST_FILES[split]
        paths = [self.find_file(name) for name in names]
        missing = [f"MNIST/raw/{name}" for name, path in zip(names, paths) if path is None]
        if missing:
            raise self.data_not_found(missing)
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(
                f"{paths[0]}: expected uint8 images [N, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{paths[1]}: {tuple(labels.shape)} labels for {images.shape[0]} images in {paths[0]}"
            )
        return images.unsqueeze(1), labels.long()

    def download_data(self) -> None:
        """Download the four IDX files with ``torchvision.datasets.MNIST`` unless all are present."""
        if all(self.find_file(name) for pair in MNIST_FILES.values() for name in pair):
            return
        MNIST(str(self.data_dir), train=True, download=True)

    def data_not_found(
        self,
        missing: Optional[Sequence[str]] = None,
        download_error: Optional[BaseException] = None,
    ) -> DataNotFoundError:
        """Name ``data_dir``, the four IDX files and the ``dck-prepare-data`` command."""
        data_dir = self.data_dir.resolve()
        return DataNotFoundError(
            "MNIST",
            data_dir,
            expected=[f"MNIST/raw/{name}" for pair in MNIST_FILES.values() for name in pair],
            missing=missing,
            command=prepare_command("mnist", data_dir),
            download_error=download_error,
            hint="Each file may also be gzip-compressed (<name>.gz) or sit directly in data_dir.",
        )
