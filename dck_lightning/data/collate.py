"""Collate functions for batches whose targets cannot be stacked."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["detection_collate"]


def detection_collate(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Stack the images of a detection or segmentation batch and keep the targets as a list.

    Args:
        batch: samples ``(image, target)`` with ``image`` a ``Tensor[C, H, W]`` (all the same
            shape) and ``target`` a dict of per-image annotations.

    Returns:
        ``(images, targets)``: ``images`` is ``Tensor[B, C, H, W]``, ``targets`` the list of the
        ``B`` target dicts in batch order.

    Example:
        >>> images, targets = detection_collate([(torch.zeros(3, 8, 8), {"image_id": 0})] * 2)
        >>> images.shape, len(targets)
        (torch.Size([2, 3, 8, 8]), 2)
    """
    if len(batch) == 0:
        raise ValueError("detection_collate got an empty batch")
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
