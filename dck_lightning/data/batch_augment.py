"""Augmentation and normalisation of whole image batches, on the batch's device.

The in-memory DataModules load ``uint8`` batches and transform them here, in
``on_after_batch_transfer``, with one vectorised torch op per step instead of
per-image PIL transforms in the loader workers. Every random draw takes an
explicit ``torch.Generator`` living on the images' device, so a run is
reproducible from its seed.

All functions take ``images`` as ``Tensor[B, C, H, W]`` (float unless stated).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ClassificationBatchAugment",
    "flip_targets",
    "normalize",
    "random_affine",
    "random_crop",
    "random_horizontal_flip",
    "to_float",
]


def to_float(images: Tensor) -> Tensor:
    """Convert ``uint8`` images in ``[0, 255]`` to ``float32`` in ``[0, 1]``; float images pass through."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel.

    Args:
        images: ``Tensor[B, C, H, W]`` float.
        mean: ``C`` channel means.
        std: ``C`` channel standard deviations.
    """
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(
            f"mean/std have {len(mean)}/{len(std)} entries but images have {images.shape[1]} channels"
        )
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def random_horizontal_flip(
    images: Tensor, generator: Optional[torch.Generator] = None, p: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Flip each image left-right with probability ``p``.

    Returns:
        ``(images, flipped)`` with ``flipped`` a ``Tensor[B]`` bool telling which images were
        flipped (to flip their boxes and masks with :func:`flip_targets`).
    """
    flipped = torch.rand(images.shape[0], generator=generator, device=images.device) < p
    return torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images), flipped


def random_crop(
    images: Tensor, padding: int, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Zero-pad by ``padding`` pixels on every side, then crop back to ``H x W`` at a random offset per image.

    The vectorised equivalent of ``torchvision.transforms.RandomCrop(size, padding)``: one
    ``gather`` over the flattened padded batch with per-sample pixel indices.
    """
    if padding <= 0:
        return images
    b, c, h, w = images.shape
    padded_width = w + 2 * padding
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=images.device)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # [B, W]
    flat_index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(b, 1, h * w)
    cropped = padded.flatten(2).gather(2, flat_index.expand(b, c, h * w))
    return cropped.view(b, c, h, w)


def random_affine(
    images: Tensor,
    generator: Optional[torch.Generator] = None,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
) -> Tensor:
    """Random rotation, translation and scale per image (bilinear, zero fill).

    Args:
        images: ``Tensor[B, C, H, W]`` float.
        generator: random generator on the images' device.
        degrees: rotation drawn uniformly from ``[-degrees, degrees]``.
        translate: shift drawn uniformly from ``[-translate, translate]`` times the image size.
        scale: zoom factor drawn uniformly from ``[scale[0], scale[1]]``.
    """
    b = images.shape[0]
    u = torch.rand(4, b, generator=generator, device=images.device, dtype=images.dtype)
    angle = (2 * u[0] - 1) * math.radians(degrees)
    zoom = scale[0] + (scale[1] - scale[0]) * u[1]
    shift = (2 * u[2:] - 1) * (2 * translate)  # normalised coordinates span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps output coordinates to input coordinates (the inverse transform).
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[0]], -1), torch.stack([sin, cos, shift[1]], -1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def flip_targets(
    targets: list[dict[str, Any]], flipped: Tensor, width: int
) -> list[dict[str, Any]]:
    """Mirror the ``boxes``, ``mask`` and ``instances`` of the targets whose image
    :func:`random_horizontal_flip` flipped.

    Args:
        targets: per-image dicts with optional ``boxes`` (``Tensor[N, 4]`` xyxy pixels),
            ``mask`` and ``instances`` (``Tensor[H, W]``).
        flipped: ``Tensor[B]`` bool.
        width: image width in pixels.
    """
    out = []
    for target, flip in zip(targets, flipped.tolist()):
        if flip:
            target = dict(target)
            if "boxes" in target:
                boxes = target["boxes"]
                target["boxes"] = torch.stack(
                    [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=-1
                )
            for key in ("mask", "instances"):
                if key in target:
                    target[key] = target[key].flip(-1)
        out.append(target)
    return out


@dataclass
class ClassificationBatchAugment:
    """The batch augmentation of a classification DataModule: affine, then crop, then flip.

    Args:
        flip: random horizontal flips (p = 0.5).
        crop_padding: pad-and-random-crop by this many pixels (0 = off).
        affine: random affine transform (rotation ``affine_degrees``, shift
            ``affine_translate``, zoom ``affine_scale``).
    """

    flip: bool = False
    crop_padding: int = 0
    affine: bool = False
    affine_degrees: float = 10.0
    affine_translate: float = 0.1
    affine_scale: tuple[float, float] = (0.9, 1.1)

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Augment ``images`` (``Tensor[B, C, H, W]`` float in ``[0, 1]``)."""
        if self.affine:
            images = random_affine(
                images, generator, self.affine_degrees, self.affine_translate, self.affine_scale
            )
        if self.crop_padding > 0:
            images = random_crop(images, self.crop_padding, generator)
        if self.flip:
            images, _ = random_horizontal_flip(images, generator)
        return images
