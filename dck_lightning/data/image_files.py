"""A prediction set from a plain folder of the user's images (``data.init_args.predict_dir``).

Every DataModule serves ``dck predict`` from its test set, or — with ``predict_dir`` — from
the image files found under that folder (any depth, torchvision's ``IMG_EXTENSIONS``), each
passed through the DataModule's test transform (:meth:`BaseDataModule.predict_transform`):
the same resize and channels as the test images, ``uint8`` out of the loader and normalised
on the device. Targets carry what a prediction writer needs to name and place the results::

    {"file": "holiday/beach.jpg", "image_id": "beach", "orig_size": int64[H, W]}

(``file`` is relative to ``predict_dir``; ``orig_size`` the size of the file, so detection
boxes and segmentation masks are mapped back to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DataNotFoundError

__all__ = ["ImageFilesDataset", "NoImagesError", "find_images"]

#: ``uint8 [H, W, C]`` image as read -> ``uint8 Tensor[C, H', W']`` as the model's loader gives it.
ImageTransform = Callable[[np.ndarray], Tensor]


class NoImagesError(DataNotFoundError):
    """``predict_dir`` is not a folder or holds no image file."""

    def __init__(self, folder: Path) -> None:
        super().__init__("images", folder, expected=[f"*{ext}" for ext in IMG_EXTENSIONS])

    def _message(self, hint: Optional[str]) -> str:
        state = "holds no image file" if self.data_dir.is_dir() else "is not a folder"
        return (
            f"predict_dir={self.data_dir} {state}: give a folder of images "
            f"({', '.join(IMG_EXTENSIONS)}, in subfolders too)"
        )


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path.

    Raises:
        NoImagesError: the folder does not exist or holds no image file.
    """
    folder = Path(folder).expanduser()
    files = sorted(
        path
        for path in (folder.rglob("*") if folder.is_dir() else [])
        if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS
    )
    if not files:
        raise NoImagesError(folder)
    return files


class ImageFilesDataset(Dataset):
    """Image files read with PIL (``RGB`` or ``L``) and passed through a test transform.

    Args:
        root: the folder the files were found in (file names in targets are relative to it).
        files: the image files.
        transform: ``uint8 [H, W, C]`` array -> ``uint8 Tensor[C, H', W']``.
        in_channels: 3 reads RGB, 1 greyscale.

    Items are ``(image uint8[C, H', W'], {"file", "image_id", "orig_size"})``.
    """

    def __init__(
        self, root: Path, files: Sequence[Path], transform: ImageTransform, in_channels: int = 3
    ) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.root = Path(root)
        self.files = list(files)
        self.transform = transform
        self.mode = "RGB" if in_channels == 3 else "L"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(self.mode), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"{path}: cannot decode image ({error})") from error
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        target = {
            "file": path.relative_to(self.root).as_posix(),
            "image_id": path.stem,
            "orig_size": torch.tensor(pixels.shape[:2], dtype=torch.int64),
        }
        return self.transform(pixels), target
