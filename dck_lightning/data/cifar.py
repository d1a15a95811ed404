"""CIFAR-10 as an in-memory LightningDataModule.

Reads the python pickle batches of ``cifar-10-batches-py`` (as
``torchvision.datasets.CIFAR10`` downloads them) or, when they are absent, the
class-folder layout ``<root>/train/<class>/*.png`` and ``<root>/test/<class>/*.png``
through :func:`~dck_lightning.data.image_folder.load_image_folder`. A tree with only
``train/`` fits (validation is the seeded ``val_split`` of it); ``test_split`` holds out a
seeded part of it as the test set.
"""

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from .base import ClassificationArrays, InMemoryClassificationDataModule, held_out_split
from .batch_augment import ClassificationBatchAugment
from .errors import DataNotFoundError, prepare_command
from .image_folder import load_image_folder

__all__ = ["CIFAR10DataModule", "CIFAR10_CLASSES", "read_cifar_batches"]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: the pickle batch files of each split (torchvision's ``CIFAR10.train_list``/``test_list``).
CIFAR10_BATCHES: dict[str, list[str]] = {
    "train": [name for name, _ in CIFAR10.train_list],
    "test": [name for name, _ in CIFAR10.test_list],
}


def read_cifar_batches(paths: Sequence[Path]) -> ClassificationArrays:
    """Read CIFAR python pickle batches (``data``: ``uint8[N, 3072]``, ``labels``: ``list[int]``).

    Returns:
        ``(images, labels)``: ``uint8`` ``Tensor[N, 3, 32, 32]`` and ``int64`` ``Tensor[N]``.
    """
    data, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    return torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.long)


class CIFAR10DataModule(InMemoryClassificationDataModule):
    """CIFAR-10: 50,000 train and 10,000 test images, 3 x 32 x 32, 10 classes.

    Looks for ``data_dir/cifar-10-batches-py/{data_batch_1..5,test_batch}`` first, then for
    the class folders ``data_dir/<root>/{train,test}/<class>/*.png`` with ``<root>`` one of
    ``folder_roots`` (``cifar10``, ``cifar-10``, ``CIFAR10``, or ``data_dir`` itself).

    Args:
        data_dir: root directory.
        download: download the pickle batches through ``torchvision.datasets.CIFAR10`` in
            ``prepare_data`` when they are missing.
        val_split: fraction of the 50,000 training images held out for validation.
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes (0 is fastest for in-memory tensors).
        seed: seed of the train/val split and of the augmentation.
        augment: pad-4 random crop and horizontal flip of training batches.
        normalize: normalise with the CIFAR-10 channel mean/std.
        predict_dir: a folder of images for ``dck predict`` instead of the test set (see
            :class:`~dck_lightning.data.base.BaseDataModule`).
        test_split: fraction of the training images held out as the test set (seeded with
            ``seed``, before the validation part is taken from the rest), for a tree that has
            no test split (``train/<class>/*.png`` only). 0 (default): the dataset's test split.
    """

    dataset_name = "CIFAR-10"
    folder_roots = ("cifar10", "cifar-10", "CIFAR10", ".")

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_split: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 42,
        augment: bool = True,
        normalize: bool = True,
        predict_dir: Optional[str] = None,
        test_split: float = 0.0,
    ) -> None:
        if not 0.0 <= test_split < 1.0:
            raise ValueError(f"test_split must be in [0, 1), got {test_split}")
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
        self.in_channels = 3
        self.class_names = list(CIFAR10_CLASSES)
        self.image_size = (32, 32)
        self._set_statistics(CIFAR10_MEAN, CIFAR10_STD)
        self.batch_augment = ClassificationBatchAugment(flip=True, crop_padding=4)
        self.test_split = test_split

    @property
    def batches_dir(self) -> Path:
        """``data_dir/cifar-10-batches-py``."""
        return self.data_dir / CIFAR10.base_folder

    def _batch_paths(self, split: str) -> list[Path]:
        return [self.batches_dir / name for name in CIFAR10_BATCHES[split]]

    def _folder(self, split: str) -> Optional[Path]:
        for root in self.folder_roots:
            folder = self.data_dir / root / split
            if folder.is_dir():
                return folder
        return None

    def load_split(self, split: str) -> Optional[ClassificationArrays]:
        """Decode the ``"train"`` or ``"test"`` split (CIFAR-10 has no ``"val"`` split); with
        ``test_split``, the test split is a seeded part of the training images, left out of
        ``"train"``."""
        if split == "val":
            return None
        if self.test_split > 0:
            images, labels = self._read_split("train")
            train, test = held_out_split(len(labels), self.test_split, self.seed)
            keep = test if split == "test" else train
            return images[keep], labels[keep]
        return self._read_split(split)

    def _read_split(self, split: str) -> ClassificationArrays:
        paths = self._batch_paths(split)
        if all(path.is_file() for path in paths):
            return read_cifar_batches(paths)
        folder = self._folder(split)
        if folder is not None:
            class_to_idx = {name: index for index, name in enumerate(CIFAR10_CLASSES)}
            return load_image_folder(
                folder, class_to_idx, in_channels=3, image_size=self.image_size
            )
        missing = [str(path.relative_to(self.data_dir)) for path in paths if not path.is_file()]
        raise self.data_not_found(missing + [f"cifar10/{split}/<class>/*.png"], split=split)

    def download_data(self) -> None:
        """Download and extract the pickle batches unless they (or the class folders) are present."""
        if all(path.is_file() for split in ("train", "test") for path in self._batch_paths(split)):
            return
        if self._folder("train") is not None and self._folder("test") is not None:
            return
        CIFAR10(str(self.data_dir), train=True, download=True)

    def data_not_found(
        self,
        missing: Optional[Sequence[str]] = None,
        download_error: Optional[BaseException] = None,
        split: Optional[str] = None,
    ) -> DataNotFoundError:
        """Name ``data_dir``, the pickle batches (or class folders) and the fetch command."""
        data_dir = self.data_dir.resolve()
        names = CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"] + [CIFAR10.meta["filename"]]
        return DataNotFoundError(
            self.dataset_name,
            data_dir,
            expected=[f"{CIFAR10.base_folder}/{name}" for name in names],
            missing=missing,
            command=prepare_command("cifar10", data_dir),
            download_error=download_error,
            hint=(
                "Alternatively the class-folder layout cifar10/train/<class>/*.png and "
                f"cifar10/test/<class>/*.png, with <class> in {', '.join(CIFAR10_CLASSES)}."
                + (
                    " A tree without test/ can hold out a seeded part of train/ as the test "
                    "set: --data.init_args.test_split 0.1."
                    if split == "test" and self._folder("train") is not None
                    else ""
                )
            ),
        )
