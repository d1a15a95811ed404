"""Pascal VOC pieces shared by the detection and segmentation datasets.

* class names and the VOC colour palette;
* the on-disk layout (``<data_dir>/VOCdevkit/VOC<year>/...``), image-set files, and
  the :class:`DataNotFoundError` that says what is missing and how to get it;
* per-sample errors (:class:`InvalidSampleError` and subclasses), each naming the
  offending file;
* :class:`SkippingDataset`, a dataset base that either raises on an invalid sample
  or (``skip_invalid=True``) logs a warning and serves the next valid one, and seeds its
  albumentations pipeline per sample from a ``torch.Generator`` (its ``seed_source``);
* :func:`seed_worker`, which gives every DataLoader worker its own seed source.
"""

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset, get_worker_info

from dck_lightning.data.errors import DataNotFoundError, prepare_command

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
T = TypeVar("T")

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
#: Segmentation classes: background is id 0, object classes follow in VOC order.
VOC_SEGMENTATION_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)
VOC_YEARS: tuple[str, ...] = ("2007", "2008", "2009", "2010", "2011", "2012")


def voc_palette(num_colors: int = 256) -> list[int]:
    """The VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list (PIL ``putpalette`` format).

    Colour ``i`` spreads the bits of ``i`` over the high bits of r, g and b, as in the
    VOC devkit's ``VOClabelcolormap.m``; index 255 (ignore) is (224, 224, 192).
    """
    palette = []
    for index in range(num_colors):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette


# --------------------------------------------------------------------------- errors


class InvalidSampleError(ValueError):
    """A sample file that cannot be used; ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingSampleFileError(InvalidSampleError, FileNotFoundError):
    """An image, annotation or mask listed in an image set does not exist."""


class CorruptImageError(InvalidSampleError):
    """An image file that does not decode."""


class InvalidAnnotationError(InvalidSampleError):
    """An annotation XML that does not parse or holds an unusable object."""


class InvalidMaskError(InvalidSampleError):
    """A segmentation mask of the wrong size, mode or class ids."""


# --------------------------------------------------------------------------- layout


def devkit_dir(data_dir: PathLike) -> Path:
    """``<data_dir>/VOCdevkit``; ``data_dir`` may also be the ``VOCdevkit`` folder itself."""
    path = Path(data_dir).expanduser()
    if path.name == "VOCdevkit" and not (path / "VOCdevkit").is_dir():
        return path
    return path / "VOCdevkit"


def year_dir(data_dir: PathLike, year: str) -> Path:
    """``<data_dir>/VOCdevkit/VOC<year>``."""
    return devkit_dir(data_dir) / f"VOC{year}"


def image_set_file(data_dir: PathLike, year: str, kind: str, name: str) -> Path:
    """``VOC<year>/ImageSets/<kind>/<name>.txt`` (``kind`` is ``Main`` or ``Segmentation``)."""
    return year_dir(data_dir, year) / "ImageSets" / kind / f"{name}.txt"


def read_image_set(path: PathLike) -> list[str]:
    """Image ids listed in an image-set file, one per line.

    Only the first token of a line counts and it is reduced to its stem, so the
    per-class files (``000005 -1``) and DeepLab's list format
    (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``) read too.
    """
    ids = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            ids.append(Path(line.split()[0]).stem)
    return ids


def parse_set_spec(spec: str) -> tuple[str, str]:
    """``"2007-trainval"`` -> ``("2007", "trainval")``."""
    year, sep, name = spec.partition("-")
    if not sep or year not in VOC_YEARS or not name:
        raise ValueError(
            f"bad VOC image set {spec!r}: expected '<year>-<set>' with a year in "
            f"{', '.join(VOC_YEARS)}, e.g. '2007-trainval' or '2012-val'"
        )
    return year, name


def data_not_found(
    data_dir: PathLike,
    required: Sequence[Path],
    years: Iterable[str],
    download_error: Optional[BaseException] = None,
) -> DataNotFoundError:
    """A :class:`DataNotFoundError` naming ``data_dir``, the required and missing paths
    (relative to ``data_dir``) and the ``dck-prepare-data`` command per VOC year."""
    root = Path(data_dir).expanduser()

    def shown(path: Path) -> str:
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = path.as_posix()
        return name if path.suffix else f"{name}/"

    ordered = sorted(set(years))
    commands = [prepare_command(f"voc{year}", data_dir) for year in ordered]
    return DataNotFoundError(
        "Pascal VOC",
        root,
        expected=[shown(path) for path in required],
        missing=[shown(path) for path in missing_paths(required)],
        command=commands[0] if commands else None,
        download_error=download_error,
        hint="\n".join(
            f"For VOC{year} also run: {command}" for year, command in zip(ordered[1:], commands[1:])
        )
        or None,
    )


def missing_paths(paths: Iterable[Path]) -> list[Path]:
    """The paths in ``paths`` that do not exist, in order and without repeats."""
    missing: list[Path] = []
    for path in paths:
        if not path.exists() and path not in missing:
            missing.append(path)
    return missing


# --------------------------------------------------------------------------- files


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else :class:`MissingSampleFileError` naming it."""
    if not path.is_file():
        raise MissingSampleFileError(path, f"{what} not found")
    return path


def read_rgb_image(path: Path) -> np.ndarray:
    """Decode an image file to ``uint8[H, W, 3]`` RGB, raising errors that name the file."""
    require_file(path, "image file")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(path, f"cannot decode image ({err})") from err


def image_file_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the image header, without decoding the pixels."""
    require_file(path, "image file")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(path, f"cannot read image header ({err})") from err
    return height, width


# --------------------------------------------------------------------------- datasets


def keep_valid(items: Sequence[T], check: Callable[[T], Any], skip_invalid: bool) -> list[Any]:
    """Apply ``check`` to every item at setup time.

    Returns the list of ``check`` results. An item whose check raises
    :class:`InvalidSampleError` is dropped with a warning when ``skip_invalid``,
    otherwise the error propagates.
    """
    results = []
    for item in items:
        try:
            results.append(check(item))
        except InvalidSampleError as err:
            if not skip_invalid:
                raise
            log.warning("Skipping invalid sample %s: %s", err.path, err.reason)
    return results


class SkippingDataset(Dataset, ABC):
    """Dataset base whose invalid samples raise, or are skipped when ``skip_invalid``.

    Subclasses implement ``__len__`` and :meth:`load`. With ``skip_invalid`` a sample
    whose :meth:`load` raises :class:`InvalidSampleError` is logged once (file and
    reason), remembered, and replaced by the next valid sample; a bad sample never
    yields a wrong label.

    Random pipelines are reproducible through ``seed_source``: when it is set (a
    ``torch.Generator``), every ``__getitem__`` draws a seed from it and reseeds the pipeline
    (albumentations keeps its own numpy and Python generators) before loading. The
    DataModule sets it to its checkpointed generator in the main process
    (:meth:`~dck_lightning.data.voc.VOCDataModule.loader_options`) and :func:`seed_worker` to a
    generator of each loader worker, seeded from the loader's seed for that epoch.

    Args:
        transform: albumentations pipeline applied by :meth:`load`.
        skip_invalid: skip invalid samples instead of raising.
    """

    def __init__(self, transform: Optional[Callable] = None, skip_invalid: bool = False) -> None:
        self.transform = transform
        self.skip_invalid = skip_invalid
        self.seed_source: Optional[torch.Generator] = None
        self._invalid: set[int] = set()

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def load(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Load and transform sample ``index``; raise :class:`InvalidSampleError` if unusable."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.seed_source is not None and hasattr(self.transform, "set_random_seed"):
            seed = int(torch.randint(0, 2**31 - 1, (), generator=self.seed_source))
            self.transform.set_random_seed(seed)
        if not self.skip_invalid:
            return self.load(index)
        size = len(self)
        for offset in range(size):
            candidate = (index + offset) % size
            if candidate in self._invalid:
                continue
            try:
                return self.load(candidate)
            except InvalidSampleError as err:
                self._invalid.add(candidate)
                log.warning("Skipping invalid sample %s: %s", err.path, err.reason)
        raise RuntimeError(f"{type(self).__name__}: every one of its {size} samples is invalid")


class VOCImageSetDataset(SkippingDataset):
    """One image set of one VOC year (``VOCdevkit/VOC<year>``): its files are checked, its
    samples are :attr:`records`.

    Subclasses say which files a set needs (:attr:`required_paths`) and which pipeline
    applies when none is given (:attr:`eval_pipeline`), fill ``records`` and implement
    :meth:`~SkippingDataset.load`.

    Args:
        data_dir: folder holding ``VOCdevkit`` (or the ``VOCdevkit`` folder itself).
        year: ``"2007"`` ... ``"2012"``.
        image_set: the set's name (a file of ``ImageSets/<kind>``).
        transform: the pipeline of :meth:`~SkippingDataset.load`; default:
            ``eval_pipeline(None)`` (normalise only, original size).
        skip_invalid: log and skip invalid samples instead of raising.

    Raises:
        DataNotFoundError: a file or folder of :attr:`required_paths` is missing.
    """

    #: ``(data_dir, year, image_set) -> [Path]``: the files and folders a set needs.
    required_paths: Callable[[PathLike, str, str], list[Path]]
    #: ``(image_size) -> pipeline``: the evaluation pipeline (``None``: original size).
    eval_pipeline: Callable[[Optional[int]], Callable]

    def __init__(
        self,
        data_dir: PathLike,
        year: str,
        image_set: str,
        transform: Optional[Callable] = None,
        skip_invalid: bool = False,
    ) -> None:
        super().__init__(self.eval_pipeline(None) if transform is None else transform, skip_invalid)
        self.year = year
        self.image_set = image_set
        required = self.required_paths(data_dir, year, image_set)
        if missing_paths(required):
            raise data_not_found(data_dir, required, [year])
        self.root = year_dir(data_dir, year)
        self.records: list[Any] = []

    def __len__(self) -> int:
        return len(self.records)


def skipping_datasets(dataset: Dataset) -> list[SkippingDataset]:
    """The :class:`SkippingDataset` parts of ``dataset`` (through ``ConcatDataset``/``Subset``)."""
    if isinstance(dataset, ConcatDataset):
        return [part for child in dataset.datasets for part in skipping_datasets(child)]
    if isinstance(dataset, Subset):
        return skipping_datasets(dataset.dataset)
    return [dataset] if isinstance(dataset, SkippingDataset) else []


def set_seed_source(dataset: Dataset, generator: Optional[torch.Generator]) -> None:
    """Make every :class:`SkippingDataset` inside ``dataset`` draw its per-sample seeds from ``generator``."""
    for part in skipping_datasets(dataset):
        part.seed_source = generator


def mix_seed(*values: int) -> int:
    """A 32-bit seed derived from several integers (e.g. base seed and rank)."""
    return int(np.random.SeedSequence([v % 2**32 for v in values]).generate_state(1)[0])


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """``worker_init_fn``: give each worker of each rank its own stream of sample seeds.

    The worker's seed (``get_worker_info().seed``: the loader's base seed, drawn from the
    loader's ``generator`` when the epoch's iterator starts, plus the worker id) seeds a
    generator that the worker's datasets draw their per-sample seeds from. With the
    DataModule's checkpointed generator as the loader's ``generator`` and workers started
    afresh every epoch, every epoch's augmentations follow from the checkpoint.
    """
    info = get_worker_info()
    if info is not None:
        generator = torch.Generator().manual_seed(mix_seed(info.seed, rank, worker_id))
        set_seed_source(info.dataset, generator)
