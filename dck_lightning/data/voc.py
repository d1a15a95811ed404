"""Pascal VOC DataModules: :class:`VOCDetectionDataModule` and :class:`VOCSegmentationDataModule`.

Both read the standard layout under ``data_dir``::

    data_dir/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}
    data_dir/VOCdevkit/VOC2012/{JPEGImages,Annotations,SegmentationClass,ImageSets/...}
    data_dir/VOCdevkit/VOC2012/SegmentationClassAug   (optional, SBD-augmented masks)

Files are downloaded (``download=True``) only in :meth:`~VOCDataModule.prepare_data`,
through ``torchvision.datasets``; :meth:`~VOCDataModule.setup` only reads, needs only
the image sets of the stage being set up, and raises
:class:`~dck_lightning.data.errors.DataNotFoundError` naming ``data_dir``, the expected
files and the ``dck-prepare-data`` command when they are missing.

Images are augmented, resized to ``image_size x image_size`` and normalised with the
ImageNet ``mean``/``std`` by albumentations in the loader workers, so batches leave the
loader ready for the model (``on_after_batch_transfer`` leaves them alone):
``(images float32[B, 3, S, S], targets)`` with ``targets`` a list of per-image dicts
(see :class:`~dck_lightning.data.voc_detection.VOCDetectionDataset` and
:class:`~dck_lightning.data.voc_segmentation.VOCSegmentationDataset`).
"""

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchvision.datasets import VOCDetection, VOCSegmentation

from dck_lightning.data.base import BaseDataModule
from dck_lightning.data.collate import detection_collate
from dck_lightning.data.errors import DataNotFoundError
from dck_lightning.data.transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    detection_eval_transform,
    detection_train_transform,
    segmentation_eval_transform,
    segmentation_train_transform,
)
from dck_lightning.data.voc_common import (
    VOC_CLASSES,
    VOC_SEGMENTATION_CLASSES,
    VOC_YEARS,
    data_not_found,
    devkit_dir,
    missing_paths,
    mix_seed,
    parse_set_spec,
    read_image_set,
    seed_transforms,
    seed_worker,
)
from dck_lightning.data.voc_detection import VOCDetectionDataset
from dck_lightning.data.voc_detection import required_paths as detection_paths
from dck_lightning.data.voc_segmentation import (
    SBD_IMAGE_SET,
    VOCSegmentationDataset,
    sbd_available,
)
from dck_lightning.data.voc_segmentation import required_paths as segmentation_paths
from dck_lightning.locking import file_lock

log = logging.getLogger(__name__)

#: ``(year, image_set)``, e.g. ``("2007", "trainval")``.
ImageSet = tuple[str, str]

__all__ = ["VOCDataModule", "VOCDetectionDataModule", "VOCSegmentationDataModule"]


class VOCDataModule(BaseDataModule, ABC):
    """What the two VOC DataModules share: layout checks, download, datasets, loaders.

    Subclasses say which image sets each stage uses (:meth:`train_image_sets`,
    ``val_sets``, ``test_sets``), which files a set needs (:meth:`required_paths`), how
    to build a dataset (:meth:`make_dataset`) and to download a set (:meth:`download_set`).

    Args:
        data_dir: folder holding ``VOCdevkit``.
        download: download missing image sets in :meth:`prepare_data`.
        image_size: side of the square images of every batch.
        batch_size, num_workers, seed: see :class:`~dck_lightning.data.base.BaseDataModule`;
            ``seed`` also seeds the albumentations pipelines (mixed with rank and worker).
        augment: augment training images (else they get the evaluation pipeline).
        skip_invalid: log and skip invalid samples instead of raising.
    """

    in_channels = 3

    def __init__(
        self,
        data_dir: str,
        download: bool,
        image_size: int,
        batch_size: int,
        num_workers: int,
        seed: int,
        augment: bool,
        skip_invalid: bool,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, augment, normalize=True)
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.image_size = (image_size, image_size)
        self.skip_invalid = skip_invalid
        self.collate_fn = detection_collate
        self._set_statistics(IMAGENET_MEAN, IMAGENET_STD)
        self.val_sets: list[ImageSet] = []
        self.test_sets: list[ImageSet] = []

    # -- to implement ----------------------------------------------------------------------

    @abstractmethod
    def train_image_sets(self) -> list[ImageSet]:
        """Image sets of the training split (resolved when :meth:`setup` runs)."""

    @abstractmethod
    def required_paths(self, image_set: ImageSet) -> list[Path]:
        """Files and folders one image set needs."""

    @abstractmethod
    def make_dataset(self, image_set: ImageSet, train: bool) -> Dataset:
        """The dataset of one image set, with the train or eval pipeline."""

    @abstractmethod
    def download_set(self, image_set: ImageSet) -> None:
        """Download (and extract) the archive holding one image set."""

    # -- Lightning hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """With ``download=True``, fetch the image sets that are missing (rank 0 only), under a
        file lock in ``data_dir`` so jobs sharing a filesystem never download into it at once."""
        if not self.download:
            return
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        with file_lock(Path(self.data_dir) / ".prepare_data.lock"):
            for image_set in dict.fromkeys(
                self.train_image_sets() + self.val_sets + self.test_sets
            ):
                if not missing_paths(self.required_paths(image_set)):
                    continue
                try:
                    self.download_set(image_set)
                except Exception as err:  # URLError, RuntimeError, OSError, tarfile errors...
                    raise self._data_not_found([image_set], download_error=err) from err

    def setup(self, stage: Optional[str] = None) -> None:
        """Read the image sets the stage needs (once; later calls reuse them)."""
        if stage in (None, "fit") and self.train_dataset is None:
            train_sets = self.train_image_sets()
            self._check(train_sets + self.val_sets)
            self.train_dataset = self._dataset(train_sets, train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self._check(self.val_sets)
            self.val_dataset = self._dataset(self.val_sets, train=False)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self._check(self.test_sets)
            self.test_dataset = self._dataset(self.test_sets, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Nothing to do: the loader workers already augmented and normalised the images."""
        return batch

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the pipelines are reseeded from ``seed`` and the rank."""
        if self.train_dataset is not None:
            seed_transforms(self.train_dataset, mix_seed(self.seed, self._rank()))
        return super().train_dataloader()

    # -- helpers ---------------------------------------------------------------------------

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _dataloader(self, dataset: Optional[Dataset], train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}: the dataset for this stage is not set up; call "
                "setup() with the matching stage first (the Trainer does this)."
            )
        size = len(dataset)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and size > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=partial(seed_worker, seed=self.seed, rank=self._rank()),
        )

    def _dataset(self, image_sets: Sequence[ImageSet], train: bool) -> Optional[Dataset]:
        parts = [self.make_dataset(image_set, train) for image_set in image_sets]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def _check(self, image_sets: Sequence[ImageSet]) -> None:
        missing_sets = [s for s in image_sets if missing_paths(self.required_paths(s))]
        if missing_sets:
            raise self._data_not_found(missing_sets)

    def _data_not_found(
        self, image_sets: Sequence[ImageSet], download_error: Optional[BaseException] = None
    ) -> DataNotFoundError:
        required = [path for image_set in image_sets for path in self.required_paths(image_set)]
        years = [year for year, _ in image_sets]
        return data_not_found(self.data_dir, list(dict.fromkeys(required)), years, download_error)

    def _torchvision_root(self) -> str:
        """The ``root`` torchvision's VOC datasets expect (the folder holding ``VOCdevkit``)."""
        return str(devkit_dir(self.data_dir).parent)


def _parse_sets(specs: Sequence[str], name: str) -> list[ImageSet]:
    if isinstance(specs, str):
        raise TypeError(
            f"{name} must be a list of '<year>-<set>' strings, got the string {specs!r}"
        )
    return [parse_set_spec(spec) for spec in specs]


class VOCDetectionDataModule(VOCDataModule):
    """Pascal VOC object detection (20 classes), e.g. the classic 07+12 -> 07 test setup.

    Batches: ``(images float32[B, 3, S, S], targets)``, one target dict per image with
    ``boxes`` ``float32[N, 4]`` (xyxy pixels of the ``S x S`` image, ``(0, 4)`` when
    empty), ``labels`` ``int64[N]`` (0-based into ``class_names``), ``difficult``
    ``bool[N]``, ``orig_size`` ``int64[2]`` (H, W of the file) and ``image_id`` (file
    stem). Evaluation images are a plain resize, so a box maps back to the original
    image by the factors ``orig_size / S`` per axis.

    Args:
        data_dir: folder holding ``VOCdevkit``.
        download: download missing sets through ``torchvision.datasets.VOCDetection`` in
            ``prepare_data`` (2007 and 2012 trainval, 2007 test).
        train_sets: training image sets as ``"<year>-<set>"``.
        val_sets: validation image sets; ``None``: the ``test_sets``.
        test_sets: test (and predict) image sets.
        image_size: side ``S`` of the square batch images.
        batch_size: images per batch (per process under DDP).
        num_workers: loader worker processes.
        seed: seed of the augmentation pipelines.
        augment: train-time scale jitter, crop, flip and colour jitter.
        scale_range: zoom range of the scale jitter, relative to ``S``.
        skip_invalid: log and skip invalid samples (bad XML, boxes, images) instead of
            raising.
        keep_difficult_in_train: keep ``difficult`` objects in training targets
            (evaluation targets always keep them, flagged).

    Example:
        >>> dm = VOCDetectionDataModule("data", image_size=320)  # doctest: +SKIP
        >>> dm.setup("fit"); images, targets = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    """

    task = "detection"

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        train_sets: Sequence[str] = ("2007-trainval", "2012-trainval"),
        val_sets: Optional[Sequence[str]] = None,
        test_sets: Sequence[str] = ("2007-test",),
        image_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 4,
        seed: int = 42,
        augment: bool = True,
        scale_range: tuple[float, float] = (0.5, 1.5),
        skip_invalid: bool = False,
        keep_difficult_in_train: bool = False,
    ) -> None:
        super().__init__(
            data_dir, download, image_size, batch_size, num_workers, seed, augment, skip_invalid
        )
        self.save_hyperparameters()
        self.num_classes = len(VOC_CLASSES)
        self.class_names = list(VOC_CLASSES)
        self.train_sets = _parse_sets(train_sets, "train_sets")
        self.test_sets = _parse_sets(test_sets, "test_sets")
        self.val_sets = self.test_sets if val_sets is None else _parse_sets(val_sets, "val_sets")
        self.scale_range = tuple(scale_range)
        self.keep_difficult_in_train = keep_difficult_in_train

    def train_image_sets(self) -> list[ImageSet]:
        """The ``train_sets``."""
        return list(self.train_sets)

    def required_paths(self, image_set: ImageSet) -> list[Path]:
        """``ImageSets/Main/<set>.txt``, ``JPEGImages/`` and ``Annotations/`` of the year."""
        return detection_paths(self.data_dir, *image_set)

    def train_transform(self) -> Callable:
        """The training pipeline (the eval one when ``augment`` is off)."""
        if not self.augment:
            return self.eval_transform()
        return detection_train_transform(
            self.image_size[0], self.mean, self.std, scale_range=self.scale_range, seed=self.seed
        )

    def eval_transform(self) -> Callable:
        """Resize to ``image_size`` and normalise."""
        return detection_eval_transform(self.image_size[0], self.mean, self.std)

    def make_dataset(self, image_set: ImageSet, train: bool) -> VOCDetectionDataset:
        """A :class:`VOCDetectionDataset`; training sets drop difficult objects unless asked."""
        year, name = image_set
        return VOCDetectionDataset(
            self.data_dir,
            year,
            name,
            transform=self.train_transform() if train else self.eval_transform(),
            keep_difficult=self.keep_difficult_in_train if train else True,
            skip_invalid=self.skip_invalid,
        )

    def download_set(self, image_set: ImageSet) -> None:
        """``torchvision.datasets.VOCDetection(..., download=True)``."""
        year, name = image_set
        VOCDetection(self._torchvision_root(), year=year, image_set=name, download=True)


class VOCSegmentationDataModule(VOCDataModule):
    """Pascal VOC semantic segmentation (21 classes: background + 20), VOC2012 by default.

    Batches: ``(images float32[B, 3, S, S], targets)``, one target dict per image with
    ``mask`` ``int64[S, S]`` (class ids 0-20, ``ignore_index`` 255 on object borders and
    padding), ``orig_size`` ``int64[2]`` and ``image_id``.

    With ``use_sbd`` and ``train_set="train"``, training uses the SBD-augmented
    ``train_aug`` set (``VOC2012/SegmentationClassAug``, 10,582 images, validation ids
    removed) when that folder exists, and the plain ``train`` set otherwise.

    Args:
        data_dir: folder holding ``VOCdevkit``.
        download: download the VOC archive through ``torchvision.datasets.VOCSegmentation``
            in ``prepare_data`` (SBD is not downloaded).
        year: VOC year.
        train_set, val_set, test_set: files of ``ImageSets/Segmentation`` (``test_set``
            also serves ``predict``).
        image_size: side ``S`` of the square batch images (train: random crop; eval:
            resize, mask nearest).
        use_sbd: train on ``train_aug`` when available.
        batch_size, num_workers, seed, augment, skip_invalid: as in
            :class:`VOCDetectionDataModule`.
        scale_range: zoom range of the scale jitter, relative to ``S``.
        eval_original_size: validation and test batches also carry each image's
            original mask (``orig_mask``), and :class:`~dck_lightning.tasks.SegmentationTask`
            scores mIoU at the original resolution (logits resized bilinearly), the VOC
            protocol; ``False`` scores on the resized ``S × S`` masks.
    """

    task = "segmentation"
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        year: str = "2012",
        train_set: str = "train",
        val_set: str = "val",
        test_set: str = "val",
        image_size: int = 512,
        use_sbd: bool = True,
        batch_size: int = 8,
        num_workers: int = 4,
        seed: int = 42,
        augment: bool = True,
        scale_range: tuple[float, float] = (0.5, 2.0),
        skip_invalid: bool = False,
        eval_original_size: bool = True,
    ) -> None:
        super().__init__(
            data_dir, download, image_size, batch_size, num_workers, seed, augment, skip_invalid
        )
        self.save_hyperparameters()
        self.num_classes = len(VOC_SEGMENTATION_CLASSES)
        self.class_names = list(VOC_SEGMENTATION_CLASSES)
        if year not in VOC_YEARS:
            raise ValueError(f"year must be one of {', '.join(VOC_YEARS)}, got {year!r}")
        self.year = year
        self.train_set = train_set
        self.val_sets = [(year, val_set)]
        self.test_sets = [(year, test_set)]
        self.use_sbd = use_sbd
        self.scale_range = tuple(scale_range)

    def train_image_sets(self) -> list[ImageSet]:
        """``train_aug`` when ``use_sbd`` and SBD is on disk, else ``train_set``."""
        if self.use_sbd and self.train_set == "train":
            if sbd_available(self.data_dir, self.year):
                return [(self.year, SBD_IMAGE_SET)]
            log.info(
                "SBD masks (SegmentationClassAug) not found; training on VOC%s train", self.year
            )
        return [(self.year, self.train_set)]

    def required_paths(self, image_set: ImageSet) -> list[Path]:
        """The set's list file, ``JPEGImages/`` and the mask folder."""
        return segmentation_paths(self.data_dir, *image_set)

    def train_transform(self) -> Callable:
        """The training pipeline (the eval one when ``augment`` is off)."""
        if not self.augment:
            return self.eval_transform()
        return segmentation_train_transform(
            self.image_size[0], self.mean, self.std, scale_range=self.scale_range, seed=self.seed
        )

    def eval_transform(self) -> Callable:
        """Resize to ``image_size`` (mask nearest) and normalise."""
        return segmentation_eval_transform(self.image_size[0], self.mean, self.std)

    def make_dataset(self, image_set: ImageSet, train: bool) -> VOCSegmentationDataset:
        """A :class:`VOCSegmentationDataset`; ``train_aug`` leaves out the validation ids."""
        year, name = image_set
        exclude: list[str] = []
        if name == SBD_IMAGE_SET:
            for val_year, val_name in self.val_sets:
                exclude += read_image_set(segmentation_paths(self.data_dir, val_year, val_name)[0])
        return VOCSegmentationDataset(
            self.data_dir,
            year,
            name,
            transform=self.train_transform() if train else self.eval_transform(),
            skip_invalid=self.skip_invalid,
            exclude_ids=exclude,
            original_masks=not train and self.hparams.eval_original_size,
        )

    def download_set(self, image_set: ImageSet) -> None:
        """``torchvision.datasets.VOCSegmentation(..., download=True)``; SBD cannot be fetched."""
        year, name = image_set
        if name == SBD_IMAGE_SET:
            raise RuntimeError("the SBD-augmented set is not downloadable here")
        VOCSegmentation(self._torchvision_root(), year=year, image_set=name, download=True)
