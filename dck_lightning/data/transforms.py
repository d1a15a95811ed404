"""albumentations pipelines for images with boxes (detection) and masks (segmentation).

Every pipeline maps a ``uint8`` RGB image ``[H, W, 3]`` (plus its boxes or mask) to a
``uint8`` tensor ``[3, S, S]``, where ``S`` is ``image_size``; the DataModule converts and
normalises the batch on the device
(:meth:`~dck_lightning.data.base.BaseDataModule.on_after_batch_transfer`), so the loader
moves a quarter of the bytes float images would take:

* **eval** pipelines are a plain resize to ``S x S`` (boxes scale per axis, masks
  use nearest neighbour), so predictions map back to the original image by the
  per-axis factors ``orig_size / S``.
* **train** pipelines start from the same resize, then jitter the scale
  (``RandomScale``), pad to ``S x S`` at a random position (image with the mean
  colour, which normalises to about 0; mask with the ignore index) and crop ``S x S``
  at random, flip horizontally and jitter colours.

Boxes are ``pascal_voc`` (``xyxy`` in pixels); :func:`apply_detection_transform`
and :func:`apply_segmentation_transform` run a pipeline and return tensors in the
shapes the batch conventions ask for. Masks always use nearest interpolation.

Example:
    >>> import numpy as np
    >>> pipeline = detection_eval_transform(image_size=32)
    >>> image = np.zeros((48, 64, 3), dtype=np.uint8)
    >>> boxes = np.array([[8.0, 12.0, 40.0, 36.0]], dtype=np.float32)
    >>> out = apply_detection_transform(pipeline, image, boxes, np.array([3]), np.array([False]))
    >>> out[0].shape, out[0].dtype, out[1].tolist()
    (torch.Size([3, 32, 32]), torch.uint8, [[4.0, 8.0, 20.0, 24.0]])
"""

from typing import Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

#: Train-time boxes smaller than this (pixels, after the transform) or with less than
#: this fraction of their area left inside the crop are dropped; eval keeps every box.
MIN_BOX_AREA = 4.0
MIN_BOX_SIDE = 1.0
MIN_BOX_VISIBILITY = 0.1

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "apply_detection_transform",
    "apply_segmentation_transform",
    "detection_eval_transform",
    "detection_train_transform",
    "image_eval_transform",
    "segmentation_eval_transform",
    "segmentation_train_transform",
]


def _mean_fill(mean: Sequence[float]) -> tuple[int, ...]:
    """The ``uint8`` colour closest to ``mean`` (normalised to about zero on the device)."""
    return tuple(round(255.0 * m) for m in mean)


def _resize(image_size: Optional[int]) -> list[A.BasicTransform]:
    """Resize to ``image_size x image_size`` (no resize when ``None``)."""
    if image_size is None:
        return []
    return [
        A.Resize(
            image_size,
            image_size,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            area_for_downscale="image",
        )
    ]


def _scale_jitter(
    image_size: int, scale_range: tuple[float, float], mean: Sequence[float], ignore_index: int
) -> list[A.BasicTransform]:
    """Random scale in ``scale_range``, then pad and crop back to ``image_size``."""
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    return [
        A.RandomScale(
            scale_limit=(low - 1.0, high - 1.0),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
        A.PadIfNeeded(
            min_height=image_size,
            min_width=image_size,
            position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=_mean_fill(mean),
            fill_mask=ignore_index,
        ),
        A.RandomCrop(image_size, image_size),
    ]


def _photometric() -> A.BasicTransform:
    return A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02, p=0.8)


def _to_tensor() -> list[A.BasicTransform]:
    """``uint8 [H, W, C]`` -> ``uint8 Tensor[C, H, W]`` (normalised later, on the device)."""
    return [ToTensorV2()]


def _bbox_params(train: bool) -> A.BboxParams:
    """``pascal_voc`` boxes carrying ``labels`` and ``difficult``, clipped to the image."""
    if train:
        return A.BboxParams(
            format="pascal_voc",
            label_fields=["labels", "difficult"],
            clip=True,
            min_area=MIN_BOX_AREA,
            min_visibility=MIN_BOX_VISIBILITY,
            min_width=MIN_BOX_SIDE,
            min_height=MIN_BOX_SIDE,
        )
    return A.BboxParams(format="pascal_voc", label_fields=["labels", "difficult"], clip=True)


def detection_train_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    scale_range: tuple[float, float] = (0.5, 1.5),
    hflip_prob: float = 0.5,
    seed: Optional[int] = None,
) -> A.Compose:
    """Training pipeline for images with boxes.

    Args:
        image_size: side ``S`` of the square output.
        mean: per-channel mean (fractions of 255): the colour of the padding.
        scale_range: zoom factors relative to the ``S x S`` resize (``< 1`` zooms out
            and pads, ``> 1`` zooms in and crops).
        hflip_prob: probability of a horizontal flip.
        seed: seed of the pipeline's own random generator.
    """
    return A.Compose(
        [
            *_resize(image_size),
            *_scale_jitter(image_size, scale_range, mean, IGNORE_INDEX),
            A.HorizontalFlip(p=hflip_prob),
            _photometric(),
            *_to_tensor(),
        ],
        bbox_params=_bbox_params(train=True),
        seed=seed,
    )


def detection_eval_transform(image_size: Optional[int]) -> A.Compose:
    """Evaluation pipeline for images with boxes: resize to ``S x S``.

    ``image_size=None`` keeps the original size.
    """
    if image_size is None:  # nothing moves the boxes: they pass through unchanged
        return A.Compose(_to_tensor())
    return A.Compose([*_resize(image_size), *_to_tensor()], bbox_params=_bbox_params(train=False))


def segmentation_train_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip_prob: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
    seed: Optional[int] = None,
) -> A.Compose:
    """Training pipeline for images with masks; padding of the mask is ``ignore_index``.

    Arguments as in :func:`detection_train_transform`.
    """
    return A.Compose(
        [
            *_resize(image_size),
            *_scale_jitter(image_size, scale_range, mean, ignore_index),
            A.HorizontalFlip(p=hflip_prob),
            _photometric(),
            *_to_tensor(),
        ],
        seed=seed,
    )


def segmentation_eval_transform(image_size: Optional[int]) -> A.Compose:
    """Evaluation pipeline for images with masks: resize (mask: nearest).

    ``image_size=None`` keeps the original size.
    """
    return A.Compose([*_resize(image_size), *_to_tensor()])


class ImageOnly:
    """A pipeline applied to an image alone: ``uint8 [H, W, 3]`` -> ``uint8 Tensor[3, S, S]``."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.pipeline(image=image)["image"]


def image_eval_transform(image_size: Optional[int]) -> ImageOnly:
    """The evaluation resize for an image without boxes or masks (``dck predict`` on files)."""
    return ImageOnly(A.Compose([*_resize(image_size), *_to_tensor()]))


def apply_detection_transform(
    transform: A.Compose,
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run a box pipeline.

    Args:
        transform: a pipeline from this module (``pascal_voc`` boxes, label fields
            ``labels`` and ``difficult``).
        image: ``uint8[H, W, 3]`` RGB.
        boxes: ``float[N, 4]`` ``xyxy`` in pixels of ``image``.
        labels: ``int[N]``.
        difficult: ``bool[N]``.

    Returns:
        ``(image uint8[3, S, S], boxes float32[M, 4], labels int64[M], difficult bool[M])``
        with ``M <= N`` (boxes pushed out of the crop are dropped; ``M`` may be 0).
    """
    out = transform(
        image=image,
        bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )
    out_boxes = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4))
    out_labels = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
    out_difficult = torch.as_tensor(np.asarray(out["difficult"], dtype=bool).reshape(-1))
    return out["image"], out_boxes, out_labels, out_difficult


def apply_segmentation_transform(
    transform: A.Compose, image: np.ndarray, mask: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a mask pipeline: ``uint8[H, W, 3]``, ``uint8[H, W]`` -> ``uint8[3, S, S]``, ``int64[S, S]``."""
    out = transform(image=image, mask=mask)
    return out["image"], torch.as_tensor(out["mask"]).long()
