"""Pascal VOC semantic segmentation: mask reading, the SBD-augmented set, the dataset.

Masks are ``SegmentationClass/<id>.png`` palette PNGs whose pixel *indices* are the
class ids (0 background, 1-20 the VOC classes, 255 void / object border, ignored
by the loss and the metric). The SBD-augmented training set ("train_aug", 10,582
images) uses the common ``SegmentationClassAug`` layout: grayscale (or palette)
PNGs of the same ids in ``VOC2012/SegmentationClassAug`` and a list file in one of
:data:`SBD_LIST_FILES` (if none, every mask in the folder is used); images listed
in ``ImageSets/Segmentation/val.txt`` are always removed from it.
"""

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

from dck_lightning.data.transforms import (
    IGNORE_INDEX,
    apply_segmentation_transform,
    segmentation_eval_transform,
)
from dck_lightning.data.voc_common import (
    VOC_SEGMENTATION_CLASSES,
    CorruptImageError,
    InvalidMaskError,
    PathLike,
    VOCImageSetDataset,
    image_set_file,
    keep_valid,
    read_image_set,
    read_rgb_image,
    require_file,
    year_dir,
)

log = logging.getLogger(__name__)

#: Name of the SBD-augmented training image set.
SBD_IMAGE_SET = "train_aug"
SBD_MASK_DIR = "SegmentationClassAug"
#: Where the SBD list file is looked for, relative to ``VOC<year>``, in this order.
SBD_LIST_FILES: tuple[str, ...] = (
    "ImageSets/SegmentationAug/train_aug.txt",
    "ImageSets/Segmentation/train_aug.txt",
    "ImageSets/Segmentation/aug.txt",
)
NUM_SEGMENTATION_CLASSES = len(VOC_SEGMENTATION_CLASSES)

__all__ = [
    "SBD_IMAGE_SET",
    "VOCSegmentationDataset",
    "VOCSegmentationRecord",
    "read_class_mask",
    "required_paths",
    "sbd_available",
]


@dataclass(frozen=True)
class VOCSegmentationRecord:
    """An image and its mask (``image_id`` is the file stem)."""

    image_id: str
    image_path: Path
    mask_path: Path


def read_class_mask(path: Path) -> np.ndarray:
    """Read a class-id mask PNG to ``uint8[H, W]``, checking mode and ids.

    Accepts palette (``P``, read as indices, not colours) and grayscale (``L``)
    PNGs. Raises :class:`MissingSampleFileError`, :class:`CorruptImageError`, or
    :class:`InvalidMaskError` for another mode or ids outside 0-20 and 255.
    """
    require_file(path, "mask file")
    try:
        with Image.open(path) as mask:
            mode = mask.mode
            values = np.array(mask) if mode in ("P", "L") else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(path, f"cannot decode mask ({err})") from err
    if values is None:
        raise InvalidMaskError(
            path,
            f"mask mode is {mode!r}; expected a palette ('P') or grayscale ('L') PNG of class ids",
        )
    counts = np.bincount(values.ravel(), minlength=256)
    counts[:NUM_SEGMENTATION_CLASSES] = 0
    counts[IGNORE_INDEX] = 0
    bad = np.flatnonzero(counts)
    if bad.size:
        raise InvalidMaskError(
            path,
            f"class ids {bad.tolist()} outside 0-{NUM_SEGMENTATION_CLASSES - 1} and {IGNORE_INDEX}",
        )
    return values


def sbd_available(data_dir: PathLike, year: str = "2012") -> bool:
    """Whether the ``SegmentationClassAug`` folder exists for ``year``."""
    return (year_dir(data_dir, year) / SBD_MASK_DIR).is_dir()


def _sbd_ids(root: Path) -> list[str]:
    """Ids of the SBD-augmented set: from its list file, else every mask in the folder."""
    for relative in SBD_LIST_FILES:
        if (root / relative).is_file():
            return read_image_set(root / relative)
    return sorted(path.stem for path in (root / SBD_MASK_DIR).glob("*.png"))


def required_paths(data_dir: PathLike, year: str, image_set: str) -> list[Path]:
    """Paths a segmentation image set needs: its list file (not for ``train_aug``), images, masks."""
    root = year_dir(data_dir, year)
    if image_set == SBD_IMAGE_SET:
        return [root / "JPEGImages", root / SBD_MASK_DIR]
    return [
        image_set_file(data_dir, year, "Segmentation", image_set),
        root / "JPEGImages",
        root / "SegmentationClass",
    ]


class VOCSegmentationDataset(VOCImageSetDataset):
    """One VOC segmentation image set.

    Args:
        data_dir: folder holding ``VOCdevkit`` (or the ``VOCdevkit`` folder itself).
        year: VOC year, normally ``"2012"``.
        image_set: a file of ``ImageSets/Segmentation`` (``train``, ``val``,
            ``trainval``) or ``"train_aug"`` for the SBD-augmented set.
        transform: a mask pipeline from :mod:`dck_lightning.data.transforms`;
            default: normalise only, original size.
        skip_invalid: log and skip invalid samples instead of raising.
        exclude_ids: ids to leave out (for ``train_aug`` the ``val.txt`` ids are
            always left out).
        original_masks: also return the untransformed mask as ``orig_mask``
            (``uint8[H0, W0]``), so that evaluation can score predictions at the original
            resolution, as the VOC protocol does.

    Items are ``(image float32[3, H, W], target)`` with target keys ``mask``
    ``int64[H, W]`` (0-20, 255 ignore), ``orig_size`` ``int64[2]``, ``image_id`` and, with
    ``original_masks``, ``orig_mask``.

    Raises:
        DataNotFoundError: the image-set file or the image/mask folders are missing.
        InvalidSampleError: an invalid sample (unless ``skip_invalid``).
    """

    required_paths = staticmethod(required_paths)
    eval_pipeline = staticmethod(segmentation_eval_transform)

    def __init__(
        self,
        data_dir: PathLike,
        year: str = "2012",
        image_set: str = "train",
        transform: Optional[Callable] = None,
        skip_invalid: bool = False,
        exclude_ids: Collection[str] = (),
        original_masks: bool = False,
    ) -> None:
        super().__init__(data_dir, year, image_set, transform, skip_invalid)
        self.original_masks = original_masks
        root = self.root
        excluded = set(exclude_ids)
        if image_set == SBD_IMAGE_SET:
            mask_dir = root / SBD_MASK_DIR
            ids = _sbd_ids(root)
            val_file = image_set_file(data_dir, year, "Segmentation", "val")
            if val_file.is_file():
                excluded.update(read_image_set(val_file))
        else:
            mask_dir = root / "SegmentationClass"
            ids = read_image_set(image_set_file(data_dir, year, "Segmentation", image_set))
        kept = [image_id for image_id in ids if image_id not in excluded]
        if len(kept) < len(ids):
            log.info("VOC%s %s: left out %d excluded ids", year, image_set, len(ids) - len(kept))

        def locate(image_id: str) -> VOCSegmentationRecord:
            image_path = require_file(root / "JPEGImages" / f"{image_id}.jpg", "image file")
            mask_path = require_file(mask_dir / f"{image_id}.png", "mask file")
            return VOCSegmentationRecord(image_id, image_path, mask_path)

        self.records: list[VOCSegmentationRecord] = keep_valid(kept, locate, skip_invalid)

    def load(self, index: int) -> tuple[torch.Tensor, dict[str, Union[torch.Tensor, str]]]:
        """Decode image and mask, check that they match, transform."""
        record = self.records[index]
        image = read_rgb_image(record.image_path)
        mask = read_class_mask(record.mask_path)
        if mask.shape != image.shape[:2]:
            raise InvalidMaskError(
                record.mask_path,
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{record.image_path} is {image.shape[1]}x{image.shape[0]}",
            )
        image_t, mask_t = apply_segmentation_transform(self.transform, image, mask)
        target = {
            "mask": mask_t,
            "orig_size": torch.tensor(image.shape[:2], dtype=torch.int64),
            "image_id": record.image_id,
        }
        if self.original_masks:
            target["orig_mask"] = torch.from_numpy(mask.astype(np.uint8))
        return image_t, target
