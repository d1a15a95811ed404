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

Validation is a seeded held-out share (``val_split``) of the training images unless
validation sets are given, so the checkpoint kept as "best" is never chosen on the images
that ``dck test`` reports.

Images are augmented and resized to ``image_size x image_size`` by albumentations in the
loader (workers), and leave it as ``uint8``; the base DataModule converts and normalises them
on the device (:meth:`~dck_lightning.data.base.BaseDataModule.on_after_batch_transfer`). The
loaders are the base's: evaluation batches are split over DDP ranks without padding, and the
augmentation seeds come from the DataModule's generator, which every checkpoint saves — a
resumed run draws the augmentations the uninterrupted run would have drawn. Batches are
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
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision.datasets import VOCDetection, VOCSegmentation

from dck_lightning.data.base import BaseDataModule, held_out_split
from dck_lightning.data.collate import detection_collate
from dck_lightning.data.errors import DataNotFoundError
from dck_lightning.data.transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    detection_eval_transform,
    detection_train_transform,
    image_eval_transform,
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
    parse_set_spec,
    read_image_set,
    seed_worker,
    set_seed_source,
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

    Subclasses give their class names (:attr:`classes`) and their albumentations pipelines
    (:attr:`pipelines`: the training and the evaluation factory of
    :mod:`~dck_lightning.data.transforms`), and say which image sets each stage uses
    (:meth:`train_image_sets`, ``val_sets``, ``test_sets``), which files a set needs
    (:meth:`required_paths`), how to build a dataset (:meth:`make_dataset`) and to download a
    set (:meth:`download_set`).

    Args:
        data_dir: folder holding ``VOCdevkit``.
        download: download missing image sets in :meth:`prepare_data`.
        image_size: side of the square images of every batch.
        batch_size, num_workers, seed: see :class:`~dck_lightning.data.base.BaseDataModule`;
            ``seed`` also seeds the albumentations pipelines (mixed with rank and worker).
        augment: augment training images (else they get the evaluation pipeline).
        scale_range: zoom range of the training scale jitter, relative to ``image_size``.
        skip_invalid: log and skip invalid samples instead of raising.
        val_split: share of the training images held out for validation (seeded with
            ``seed``) when ``val_sets`` is empty; 0 validates on nothing.
        predict_dir: a folder of images for ``dck predict`` instead of the test sets.
    """

    in_channels = 3
    #: The name of each class index.
    classes: tuple[str, ...]
    #: ``(train, eval)``: ``train(image_size, mean, scale_range=, seed=)`` and
    #: ``eval(image_size)`` make the albumentations pipelines.
    pipelines: tuple[Callable[..., Callable], Callable[[Optional[int]], Callable]]

    def __init__(
        self,
        data_dir: str,
        download: bool,
        image_size: int,
        batch_size: int,
        num_workers: int,
        seed: int,
        augment: bool,
        scale_range: tuple[float, float],
        skip_invalid: bool,
        val_split: float = 0.0,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, augment, True, predict_dir)
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.image_size = (image_size, image_size)
        self.scale_range = tuple(scale_range)
        self.skip_invalid = skip_invalid
        self.val_split = val_split
        self.num_classes = len(self.classes)
        self.class_names = list(self.classes)
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
        """Read the image sets the stage needs (once; later calls reuse them).

        Without ``val_sets`` the validation images are a seeded ``val_split`` share of the
        training images (with the evaluation pipeline), left out of training.
        """
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            train_sets = self.train_image_sets()
            self._check(train_sets + self.val_sets)
            train = self._dataset(train_sets, train=True)
            if self.val_sets:
                self.train_dataset = train
                self.val_dataset = self._dataset(self.val_sets, train=False)
            else:
                kept, held_out = held_out_split(len(train), self.val_split, self.seed)
                self.train_dataset = Subset(train, kept.tolist())
                self.val_dataset = (
                    Subset(self._dataset(train_sets, train=False), held_out.tolist())
                    if len(held_out)
                    else None
                )
        if self._needs_test_set(stage) and self.test_dataset is None:
            self._check(self.test_sets)
            self.test_dataset = self._dataset(self.test_sets, train=False)

    def loader_options(self, train: bool) -> dict[str, Any]:
        """Training loaders draw their augmentation seeds from the DataModule's CPU generator.

        The generator is the one :meth:`~dck_lightning.data.base.BaseDataModule.state_dict`
        saves in every checkpoint. It is the loader's ``generator`` (shuffling and the workers'
        base seed, drawn when each epoch's iterator starts) and, for loading in the main
        process, the datasets' per-sample seed source; workers start afresh every epoch
        (``persistent_workers=False``) and seed theirs from it (:func:`seed_worker`). So the
        epochs after a resume draw what the uninterrupted run drew.
        """
        if not train:
            return {}
        generator = self.augment_generator(torch.device("cpu"))
        if self.train_dataset is not None:
            set_seed_source(self.train_dataset, generator)
        return {
            "generator": generator,
            "worker_init_fn": partial(seed_worker, rank=self._rank()),
            "persistent_workers": False,
        }

    def train_transform(self) -> Callable:
        """The training pipeline (the eval one when ``augment`` is off)."""
        if not self.augment:
            return self.eval_transform()
        train, _ = self.pipelines
        return train(self.image_size[0], self.mean, scale_range=self.scale_range, seed=self.seed)

    def eval_transform(self) -> Callable:
        """Resize to ``image_size`` (masks nearest)."""
        _, evaluation = self.pipelines
        return evaluation(self.image_size[0])

    def predict_transform(self) -> Callable:
        """The evaluation resize to ``image_size`` (no boxes or masks to carry)."""
        return image_eval_transform(self.image_size[0])

    # -- helpers ---------------------------------------------------------------------------

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

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
        val_sets: validation image sets; ``None`` (default) holds out ``val_split`` of the
            training images instead, so the best checkpoint is not chosen on ``test_sets``.
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
        val_split: share of the training images held out for validation when ``val_sets``
            is ``None`` (seeded with ``seed``). Default: 0.05.
        predict_dir: a folder of images for ``dck predict`` instead of the test sets.

    Example:
        >>> dm = VOCDetectionDataModule("data", image_size=320)  # doctest: +SKIP
        >>> dm.setup("fit"); images, targets = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    """

    task = "detection"
    classes = VOC_CLASSES
    pipelines = (detection_train_transform, detection_eval_transform)

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
        val_split: float = 0.05,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(
            data_dir,
            download,
            image_size,
            batch_size,
            num_workers,
            seed,
            augment,
            scale_range,
            skip_invalid,
            val_split,
            predict_dir,
        )
        self.save_hyperparameters()
        self.train_sets = _parse_sets(train_sets, "train_sets")
        self.test_sets = _parse_sets(test_sets, "test_sets")
        self.val_sets = [] if val_sets is None else _parse_sets(val_sets, "val_sets")
        self.keep_difficult_in_train = keep_difficult_in_train

    def train_image_sets(self) -> list[ImageSet]:
        """The ``train_sets``."""
        return list(self.train_sets)

    def required_paths(self, image_set: ImageSet) -> list[Path]:
        """``ImageSets/Main/<set>.txt``, ``JPEGImages/`` and ``Annotations/`` of the year."""
        return detection_paths(self.data_dir, *image_set)

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
    ``train_aug`` set (``VOC2012/SegmentationClassAug``, 10,582 images, the ids of the
    validation and test sets removed) when that folder exists, and the plain ``train`` set
    otherwise.

    VOC2012's test masks are not public, so the reported set (``test_set``) is VOC ``val``;
    validation (the best checkpoint) is then a seeded ``val_split`` share of the training
    images, unless ``val_set`` names another set.

    Args:
        data_dir: folder holding ``VOCdevkit``.
        download: download the VOC archive through ``torchvision.datasets.VOCSegmentation``
            in ``prepare_data`` (SBD is not downloaded).
        year: VOC year.
        train_set, test_set: files of ``ImageSets/Segmentation`` (``test_set`` is what
            ``dck test`` reports, and serves ``predict`` without ``predict_dir``).
        val_set: the validation set's file; ``None`` (default) holds out ``val_split`` of
            the training images.
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
        val_split: share of the training images held out for validation when ``val_set``
            is ``None`` (seeded with ``seed``). Default: 0.05.
        predict_dir: a folder of images for ``dck predict`` instead of the test set.
    """

    task = "segmentation"
    ignore_index = IGNORE_INDEX
    classes = VOC_SEGMENTATION_CLASSES
    pipelines = (segmentation_train_transform, segmentation_eval_transform)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        year: str = "2012",
        train_set: str = "train",
        val_set: Optional[str] = None,
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
        val_split: float = 0.05,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(
            data_dir,
            download,
            image_size,
            batch_size,
            num_workers,
            seed,
            augment,
            scale_range,
            skip_invalid,
            val_split,
            predict_dir,
        )
        self.save_hyperparameters()
        if year not in VOC_YEARS:
            raise ValueError(f"year must be one of {', '.join(VOC_YEARS)}, got {year!r}")
        self.year = year
        self.train_set = train_set
        self.val_sets = [] if val_set is None else [(year, val_set)]
        self.test_sets = [(year, test_set)]
        self.use_sbd = use_sbd

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

    def make_dataset(self, image_set: ImageSet, train: bool) -> VOCSegmentationDataset:
        """A :class:`VOCSegmentationDataset`; ``train_aug`` leaves out the validation and
        test ids."""
        year, name = image_set
        exclude: list[str] = []
        if name == SBD_IMAGE_SET:
            for val_year, val_name in dict.fromkeys(self.val_sets + self.test_sets):
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
