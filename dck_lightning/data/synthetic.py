"""The embedded default dataset: synthetic shapes, generated from a seed, no files.

Every image is a pure function of ``(seed, split, index)`` (see
:func:`~dck_lightning.data.shapes.render_shapes`), so runs are reproducible
on any machine without a download. One generator serves the three tasks:

- ``classification``: one shape per image, label = shape class; all images are
  rendered in ``setup`` into ``uint8`` tensors and served like MNIST/CIFAR.
- ``detection``: ``min_objects..max_objects`` shapes per image with tight xyxy
  boxes and 0-based labels, rendered on the fly per sample.
- ``segmentation``: the per-pixel class mask of the same scenes, 0 = background,
  shape class + 1 on the shapes, and the instance ids (``instances``, 0 = background).

Options for controlled experiments (the defaults give the images they always gave):
``shape_family`` draws the regular shapes, the irregular ones (random blobs and star
polygons, a new outline per object) or both; ``object_sizes`` draws every object's size from
COCO-style buckets (small / medium / large) scaled to the image, see
:func:`object_size_ranges`.
"""

from collections.abc import Sequence
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..metrics import COCO_SIDE_THRESHOLDS, SIZE_BUCKETS, size_scale
from .base import BaseDataModule
from .batch_augment import flip_targets, random_horizontal_flip
from .collate import detection_collate
from .shapes import SHAPE_FAMILIES, SHAPE_NAMES, RenderedShapes, render_shapes
from .tensor_dataset import BatchedTensorDataset, passthrough_collate

__all__ = ["SyntheticShapesDataModule", "SyntheticShapesDataset", "object_size_ranges"]

Task = Literal["classification", "detection", "segmentation"]
ShapeFamily = Literal["regular", "irregular", "all"]
SizeBucket = Literal["small", "medium", "large"]
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Channel statistics of the generator (measured: mean 0.50, std 0.22 per channel, all tasks).
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.22, 0.22, 0.22)


def object_size_ranges(
    image_size: int, reference_size: float = 512
) -> dict[str, tuple[float, float]]:
    """Diameter ranges (pixels) of the small / medium / large objects of ``image_size`` images.

    COCO's side thresholds 32 and 96 px scaled by ``s = image_size / reference_size``
    (:func:`~dck_lightning.metrics.size_scale`): small ``[1, 32 s)``, medium ``[32 s, 96 s)``,
    large ``[96 s, image_size / 2)``. A shape's tight box is about its diameter on a side, so
    its area lands in the matching bucket of :func:`~dck_lightning.metrics.size_area_ranges`
    (mostly: a square's box is 0.85 of its diameter, a rotated star's can be less).
    """
    scale = size_scale(image_size, reference_size)
    small, large = (scale * side for side in COCO_SIDE_THRESHOLDS)
    if small < 4 or large >= image_size / 2:
        low = 2 * COCO_SIDE_THRESHOLDS[1]
        high = COCO_SIDE_THRESHOLDS[0] * image_size / 4
        raise ValueError(
            f"object_sizes need small objects of at least 4 px and large ones under half the "
            f"image: with image_size {image_size} and object_size_reference {reference_size:g} the "
            f"buckets split at {small:g} and {large:g} px; choose an object_size_reference above "
            f"{low:g} and at most {high:g}"
        )
    return {"small": (1.0, small), "medium": (small, large), "large": (large, image_size / 2)}


class SyntheticShapesDataset(Dataset):
    """Map-style dataset of synthetic shapes images, rendered on access.

    Args:
        task: which target each sample carries.
        split: ``"train"``, ``"val"`` or ``"test"`` (part of the random seed).
        length: number of images.
        image_size: height and width in pixels.
        seed: base seed; sample ``i`` uses ``numpy.random.default_rng([seed, split, i])``.
        min_objects, max_objects: range of the number of shapes per image (detection and
            segmentation; classification draws exactly one).
        min_size, max_size: range of shape diameters in pixels.
        noise_std: pixel noise standard deviation (0-255 scale).
        cache: keep every sample once rendered (image and compact targets, about
            ``4·H·W`` bytes), so that later epochs read it instead of rendering it again.
        shapes: the class names labels index (default the regular :data:`SHAPE_NAMES`).
        size_ranges: diameter ranges, one drawn per object (see
            :func:`~dck_lightning.data.shapes.render_shapes`); ``None``: ``[min_size, max_size]``.

    A sample is ``(image, target)`` with ``image`` a ``uint8`` ``Tensor[3, H, W]`` and
    ``target`` the ``int`` label (classification), a dict with ``boxes`` ``float32[N, 4]``,
    ``labels`` ``int64[N]``, ``difficult`` ``bool[N]``, ``orig_size`` ``int64[2]``,
    ``image_id`` (detection) or a dict with ``mask`` ``int64[H, W]``, ``instances``
    ``int64[H, W]`` (object ``i`` is ``i + 1``, 0 the background), ``orig_size``,
    ``image_id`` (segmentation).
    """

    def __init__(
        self,
        task: Task,
        split: str,
        length: int,
        image_size: int = 32,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 4,
        min_size: int = 4,
        max_size: Optional[int] = None,
        noise_std: float = 6.0,
        cache: bool = False,
        shapes: Sequence[str] = SHAPE_NAMES,
        size_ranges: Optional[Sequence[tuple[float, float]]] = None,
    ) -> None:
        if task not in ("classification", "detection", "segmentation"):
            raise ValueError(f"unknown task {task!r}")
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
        if not 0 <= min_objects <= max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}"
            )
        if seed < 0 or length < 0:
            raise ValueError(f"seed and length must be >= 0, got {seed}, {length}")
        self.task = task
        self.split = split
        self.length = length
        self.image_size = image_size
        self.seed = seed
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.min_size = min_size
        self.max_size = max_size if max_size is not None else max(min_size, image_size // 2)
        self.noise_std = noise_std
        self.shapes = tuple(shapes)
        self.size_ranges = None if size_ranges is None else [tuple(r) for r in size_ranges]
        self._cache: Optional[dict[int, tuple[Tensor, Any]]] = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def render(self, index: int) -> RenderedShapes:
        """Render image ``index`` with all its annotations (boxes, labels, masks)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        if self.task == "classification":
            labels = [index % len(self.shapes)]  # balanced classes
        else:
            count = int(rng.integers(self.min_objects, self.max_objects + 1))
            labels = rng.integers(0, len(self.shapes), count).tolist()
        return render_shapes(
            rng,
            self.image_size,
            labels,
            self.min_size,
            self.max_size,
            self.noise_std,
            shapes=self.shapes,
            size_ranges=self.size_ranges,
        )

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        if self._cache is None:
            image, target = self._compact_sample(index)
        else:
            if index not in self._cache:
                self._cache[index] = self._compact_sample(index)
            image, target = self._cache[index]
            image = image.clone()  # the batch may be augmented in place (num_workers=0)
        if self.task == "classification":
            return image, target
        orig_size = torch.tensor([self.image_size, self.image_size], dtype=torch.long)
        if self.task == "detection":
            boxes, labels = target
            return image, {
                "boxes": boxes.clone(),
                "labels": labels.clone(),
                "difficult": torch.zeros_like(labels, dtype=torch.bool),
                "orig_size": orig_size,
                "image_id": index,
            }
        mask, instances = target
        return image, {
            "mask": mask.long(),
            "instances": instances.long(),
            "orig_size": orig_size,
            "image_id": index,
        }

    def fill_cache(self) -> None:
        """Render every image now (needs ``cache=True``), so that training never waits for it."""
        if self._cache is None:
            raise RuntimeError("fill_cache() needs a dataset made with cache=True")
        for index in range(self.length):
            if index not in self._cache:
                self._cache[index] = self._compact_sample(index)

    def _compact_sample(self, index: int) -> tuple[Tensor, Any]:
        """``(image uint8[3, H, W], target)``: the label, ``(boxes, labels)`` or the class
        and instance masks as ``uint8[H, W]`` (``int16`` past 255 objects), the form the cache
        keeps."""
        rendered = self.render(index)
        image = torch.from_numpy(rendered.image).permute(2, 0, 1).contiguous()
        if self.task == "classification":
            return image, int(rendered.labels[0])
        if self.task == "detection":
            return image, (torch.from_numpy(rendered.boxes), torch.from_numpy(rendered.labels))
        id_type = np.uint8 if self.max_objects < 256 else np.int16
        return image, (
            torch.from_numpy(rendered.mask.astype(np.uint8)),
            torch.from_numpy(rendered.instances.astype(id_type)),
        )

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All classification samples at once: ``uint8[N, 3, H, W]`` images and ``int64[N]`` labels."""
        images = np.empty((self.length, self.image_size, self.image_size, 3), dtype=np.uint8)
        labels = np.empty(self.length, dtype=np.int64)
        for index in range(self.length):
            rendered = self.render(index)
            images[index], labels[index] = rendered.image, rendered.labels[0]
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


class SyntheticShapesDataModule(BaseDataModule):
    """Synthetic shapes for classification, detection or segmentation; needs no files.

    Six shape classes (:data:`~dck_lightning.data.shapes.SHAPE_NAMES`: circle, square,
    triangle, diamond, cross, ring; with ``shape_family`` also or only the irregular
    :data:`~dck_lightning.data.shapes.IRREGULAR_SHAPE_NAMES`: blob, star) of random size,
    position and colour over a textured, noisy background, 3 channels. Batches follow the
    project conventions (``C`` shape classes: 6 regular, 2 irregular, 8 for ``"all"``):

    - classification: ``(images, labels)``, ``labels`` ``int64[B]``; ``num_classes = C``.
    - detection: ``(images, targets)``, one dict per image with ``boxes``, ``labels``
      (0-based), ``difficult``, ``orig_size``, ``image_id``; ``num_classes = C``.
    - segmentation: ``(images, targets)``, one dict per image with ``mask``, ``instances``
      (object ids, for :class:`~dck_lightning.metrics.InstanceSizeIoU`), ``orig_size``,
      ``image_id``; ``num_classes = C + 1`` (class 0 is the background).

    Args:
        task: ``"classification"``, ``"detection"`` or ``"segmentation"``.
        image_size: height and width in pixels.
        num_train: training images.
        num_val: validation images (0 disables validation).
        num_test: test images.
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes (detection/segmentation render in them).
        seed: seed of the generated images and of the augmentation.
        min_objects: fewest shapes per detection/segmentation image (0 allows empty images).
        max_objects: most shapes per detection/segmentation image.
        min_size: smallest shape diameter in pixels; ``None`` is a quarter of the image for
            classification and 4 pixels otherwise.
        max_size: largest shape diameter in pixels; ``None`` is half the image.
        noise_std: pixel noise standard deviation (0-255 scale).
        shape_family: ``"regular"`` (the six fixed outlines), ``"irregular"`` (random blobs and
            star polygons with 4-8 points, a new outline per object) or ``"all"`` (both, 8
            classes).
        object_sizes: draw every object's size bucket uniformly from these (``small``,
            ``medium``, ``large``: COCO's buckets scaled to the image, see
            :func:`object_size_ranges`), then its diameter in the bucket; ``min_size`` and
            ``max_size`` are then not used. ``["small"]`` makes every object small. Default:
            one range, ``[min_size, max_size]``.
        object_size_reference: the image side COCO's buckets are scaled from for
            ``object_sizes`` (512: in a 128-px image small objects are under 8 px, large ones
            over 24 px). Give the task's ``area_reference_size`` the same value to log per-size
            metrics on these buckets (a name of its own, so that Lightning's check of equal
            hyperparameter names in the task and the data never meets two defaults).
        augment: random horizontal flips of training batches (boxes and masks follow).
        normalize: normalise images with ``mean``/``std``.
        predict_dir: a folder of images for ``dck predict`` instead of the test set (see
            :class:`~dck_lightning.data.base.BaseDataModule`).
        cache: detection/segmentation: render every image once in ``setup`` and keep it in
            memory (about ``4·H·W`` bytes an image: 2,048 images of 128×128 take 134 MB, and
            about 10 s to render), so that no epoch renders again and no loader process
            competes with training for the CPU. Turn off for very large ``num_train``: images
            are then rendered on access, in the loader workers. Classification always renders
            once in ``setup``.
    """

    def __init__(
        self,
        task: Task = "classification",
        image_size: int = 32,
        num_train: int = 2048,
        num_val: int = 512,
        num_test: int = 512,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 4,
        min_size: Optional[int] = None,
        max_size: Optional[int] = None,
        noise_std: float = 6.0,
        shape_family: ShapeFamily = "regular",
        object_sizes: Optional[list[SizeBucket]] = None,
        object_size_reference: int = 512,
        augment: bool = True,
        normalize: bool = True,
        cache: bool = True,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, augment, normalize, predict_dir)
        self.save_hyperparameters()
        if task not in ("classification", "detection", "segmentation"):
            raise ValueError(
                f"task must be classification, detection or segmentation, got {task!r}"
            )
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if shape_family not in SHAPE_FAMILIES:
            raise ValueError(
                f"shape_family must be one of {sorted(SHAPE_FAMILIES)}, got {shape_family!r}"
            )
        size_ranges = None
        if object_sizes is not None:
            unknown = sorted(set(object_sizes) - set(SIZE_BUCKETS))
            if not object_sizes or unknown:
                raise ValueError(
                    f"object_sizes must be a non-empty list of {list(SIZE_BUCKETS)}, got "
                    f"{object_sizes!r}"
                )
            if min_size is not None or max_size is not None:
                raise ValueError(
                    "give object_sizes or min_size/max_size, not both: object_sizes sets each "
                    "object's diameter range"
                )
            buckets = object_size_ranges(image_size, object_size_reference)
            size_ranges = [buckets[name] for name in object_sizes]
        self.task = task
        self.image_size = (image_size, image_size)
        self.in_channels = 3
        shapes = list(SHAPE_FAMILIES[shape_family])
        self.class_names = ["background", *shapes] if task == "segmentation" else shapes
        self.num_classes = len(self.class_names)
        self._set_statistics(SYNTHETIC_MEAN, SYNTHETIC_STD)
        if min_size is None:
            min_size = max(4, image_size // 4) if task == "classification" else 4
        self._sizes = {"train": num_train, "val": num_val, "test": num_test}
        self._dataset_kwargs = dict(
            image_size=image_size,
            seed=seed,
            min_objects=min_objects,
            max_objects=max_objects,
            min_size=min_size,
            max_size=max_size,
            noise_std=noise_std,
            shapes=shapes,
            size_ranges=size_ranges,
        )
        self.collate_fn = passthrough_collate if task == "classification" else detection_collate
        # Fail now, not in setup, on inconsistent generator arguments.
        self.dataset("train")

    def dataset(self, split: str, cache: bool = False) -> SyntheticShapesDataset:
        """The on-the-fly dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        return SyntheticShapesDataset(
            self.task, split, self._sizes[split], cache=cache, **self._dataset_kwargs
        )

    def _build(self, split: str) -> Optional[Dataset]:
        if self._sizes[split] == 0:
            return None
        if self.task == "classification":
            return BatchedTensorDataset(*self.dataset(split).tensors())
        dataset = self.dataset(split, cache=self.hparams.cache)
        if self.hparams.cache:
            dataset.fill_cache()
        return dataset

    def setup(self, stage: Optional[str] = None) -> None:
        """Create (classification: render) the splits the stage needs."""
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            self.train_dataset = self._build("train")
            self.val_dataset = self._build("val")
        if self._needs_test_set(stage) and self.test_dataset is None:
            self.test_dataset = self._build("test")

    def augment_batch(
        self, images: Tensor, targets: Any, generator: torch.Generator
    ) -> tuple[Tensor, Any]:
        """Random horizontal flips; detection boxes and segmentation masks are flipped along."""
        images, flipped = random_horizontal_flip(images, generator)
        if self.task != "classification":
            targets = flip_targets(targets, flipped, images.shape[-1])
        return images, targets
