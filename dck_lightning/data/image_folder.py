"""Classification datasets in the class-folder layout, decoded once into memory.

The layout is torchvision's ``ImageFolder``::

    data_dir/train/<class_name>/<image>.png
    data_dir/test/<class_name>/<image>.png

Class names are the sorted folder names of the training split
(``torchvision.datasets.folder.find_classes``).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .base import ClassificationArrays, InMemoryClassificationDataModule
from .batch_augment import ClassificationBatchAugment
from .errors import DataNotFoundError

__all__ = ["ImageFolderDataModule", "decode_images", "load_image_folder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_images(
    paths: Sequence[Path], in_channels: int = 3, image_size: Optional[tuple[int, int]] = None
) -> Tensor:
    """Decode image files into one ``uint8`` ``Tensor[N, C, H, W]``.

    Args:
        paths: image files (any format PIL reads).
        in_channels: 3 (RGB) or 1 (greyscale).
        image_size: ``(H, W)`` to resize every image to (bilinear); ``None`` requires all
            images to have the same size.

    Raises:
        ValueError: sizes differ and ``image_size`` is ``None``.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    mode = "RGB" if in_channels == 3 else "L"
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert(mode)
            if image_size is not None and image.size != (image_size[1], image_size[0]):
                image = image.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            arrays.append(
                np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, in_channels)
            )
    if not arrays:
        return torch.empty(0, in_channels, *(image_size or (0, 0)), dtype=torch.uint8)
    sizes = {array.shape[:2] for array in arrays}
    if len(sizes) > 1:
        raise ValueError(
            f"images have different sizes {sorted(sizes)[:4]}...; set image_size=(H, W) to resize them"
        )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_image_folder(
    root: Path,
    class_to_idx: Optional[dict[str, int]] = None,
    in_channels: int = 3,
    image_size: Optional[tuple[int, int]] = None,
) -> ClassificationArrays:
    """Decode every image under ``root/<class_name>/`` into memory.

    Args:
        root: the split folder.
        class_to_idx: class index of each folder name; ``None`` uses the sorted folder names
            of ``root``. Folders of ``root`` absent from it are an error.
        in_channels: 3 (RGB) or 1 (greyscale).
        image_size: ``(H, W)`` to resize to, see :func:`decode_images`.

    Returns:
        ``(images, labels)``: ``uint8`` ``Tensor[N, C, H, W]`` and ``int64`` ``Tensor[N]``.
    """
    folder_classes, _ = find_classes(root)
    if class_to_idx is None:
        class_to_idx = {name: index for index, name in enumerate(folder_classes)}
    unknown = sorted(set(folder_classes) - set(class_to_idx))
    if unknown:
        raise ValueError(
            f"{root}: class folders {unknown} are not among the classes {sorted(class_to_idx)}"
        )
    present = {name: index for name, index in class_to_idx.items() if name in folder_classes}
    samples = make_dataset(root, present, extensions=IMG_EXTENSIONS, allow_empty=True)
    images = decode_images([Path(path) for path, _ in samples], in_channels, image_size)
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return images, labels


class ImageFolderDataModule(InMemoryClassificationDataModule):
    """Any classification dataset in the class-folder layout, held in memory.

    Images are decoded once (PIL) into ``uint8`` tensors, optionally resized to
    ``image_size``; training batches get a random pad-and-crop and horizontal flip on
    the device.

    Args:
        data_dir: root directory holding the split folders.
        train_dir: training split folder, relative to ``data_dir``.
        val_dir: validation split folder; ``None`` holds out ``val_split`` of the training set.
        test_dir: test split folder; ``None`` when there is no test split.
        image_size: ``(H, W)`` every image is resized to; ``None`` keeps the size (all
            images must then share it).
        in_channels: 3 to decode RGB, 1 for greyscale.
        mean: channel means for normalisation; ``None`` uses ImageNet's.
        std: channel standard deviations; ``None`` uses ImageNet's.
        crop_padding: pixels of the random pad-and-crop; ``None`` is an eighth of the
            shorter image side, 0 turns it off.
        val_split: fraction of the training set held out when ``val_dir`` is ``None``.
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes.
        seed: seed of the train/val split and of the augmentation.
        augment: augment training batches (pad-and-crop, horizontal flip).
        normalize: normalise with ``mean``/``std``.
        predict_dir: a folder of images for ``dck predict`` instead of the test set (see
            :class:`~dck_lightning.data.base.BaseDataModule`).
    """

    dataset_name = "image folder"

    def __init__(
        self,
        data_dir: str,
        train_dir: str = "train",
        val_dir: Optional[str] = None,
        test_dir: Optional[str] = "test",
        image_size: Optional[tuple[int, int]] = None,
        in_channels: Literal[1, 3] = 3,
        mean: Optional[tuple[float, ...]] = None,
        std: Optional[tuple[float, ...]] = None,
        crop_padding: Optional[int] = None,
        val_split: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 42,
        augment: bool = True,
        normalize: bool = True,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(
            data_dir,
            False,
            val_split,
            batch_size,
            num_workers,
            seed,
            augment,
            normalize,
            predict_dir,
        )
        self.save_hyperparameters()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.split_dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.in_channels = in_channels
        self.image_size = tuple(image_size) if image_size is not None else None
        default_mean = IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,)
        default_std = IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,)
        mean, std = mean or default_mean, std or default_std
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values, got {mean} and {std}")
        self._set_statistics(mean, std)
        self.crop_padding = crop_padding
        self._class_names: Optional[list[str]] = None

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """Sorted class folder names of the training split (scanned on first access)."""
        if self._class_names is None:
            root = self.data_dir / self.split_dirs["train"]
            if not root.is_dir():
                raise self.data_not_found([self._pattern("train")])
            self._class_names = find_classes(root)[0]
        return self._class_names

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of class folders in the training split."""
        return len(self.class_names)

    def _pattern(self, split: str) -> str:
        return f"{self.split_dirs[split]}/<class_name>/<image>{{{','.join(IMG_EXTENSIONS)}}}"

    def load_split(self, split: str) -> Optional[ClassificationArrays]:
        """Decode one split folder; ``None`` for a split configured as ``None``."""
        folder = self.split_dirs[split]
        if folder is None:
            return None
        root = self.data_dir / folder
        if not root.is_dir():
            raise self.data_not_found([self._pattern(split)])
        class_to_idx = {name: index for index, name in enumerate(self.class_names)}
        images, labels = load_image_folder(root, class_to_idx, self.in_channels, self.image_size)
        if self.image_size is None and images.shape[0] > 0:
            self.image_size = (int(images.shape[2]), int(images.shape[3]))
        return images, labels

    def setup(self, stage: Optional[str] = None) -> None:
        """Decode the splits of the stage, then size the pad-and-crop to the images."""
        super().setup(stage)
        if self.image_size is not None:
            padding = self.crop_padding
            if padding is None:
                padding = max(1, min(self.image_size) // 8)
            self.batch_augment = ClassificationBatchAugment(flip=True, crop_padding=padding)

    def data_not_found(
        self,
        missing: Optional[Sequence[str]] = None,
        download_error: Optional[BaseException] = None,
    ) -> DataNotFoundError:
        """Name ``data_dir`` and the expected class-folder layout."""
        expected = [
            self._pattern(split) for split, folder in self.split_dirs.items() if folder is not None
        ]
        return DataNotFoundError(
            self.dataset_name,
            self.data_dir,
            expected=expected,
            missing=missing,
            download_error=download_error,
            hint="Lay the images out as <split>/<class_name>/<image> (torchvision ImageFolder layout).",
        )
