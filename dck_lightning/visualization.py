"""Pictures of images, boxes and class maps: the one drawing kit of the package.

The tasks (their PNG prediction panels), the image-logging callback and the analysis
plots all draw with these, so an image looks the same wherever it is shown:

* :func:`to_display`: normalised images back to ``uint8`` pixels, ``x · std + mean``;
* :data:`PALETTE` / :func:`class_colour`: one colour per class index, cycled;
* :func:`enlarge`: nearest-neighbour upscaling of small images so that labels stay legible;
* :func:`draw_boxes`: boxes in class colours with their texts
  (:func:`torchvision.utils.draw_bounding_boxes`);
* :func:`draw_class_map`: a class map as coloured masks
  (:func:`torchvision.utils.draw_segmentation_masks`), background left out, ignored pixels
  in :data:`IGNORE_COLOUR`;
* :func:`titled_row`: views side by side with a title over each and a colour legend below.

Pixels are ``uint8[3, H, W]`` tensors, as torchvision's drawing utilities take them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

__all__ = [
    "IGNORE_COLOUR",
    "PALETTE",
    "class_colour",
    "class_name",
    "draw_boxes",
    "draw_class_map",
    "drawn_classes",
    "enlarge",
    "titled_row",
    "to_display",
]

Colour = tuple[int, int, int]

#: Distinct class colours (RGB), cycled over class indices: Sasha Trubetskoy's 20 colours.
PALETTE: tuple[Colour, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)
#: The colour of pixels without a class (``ignore_index``): VOC's border colour.
IGNORE_COLOUR: Colour = (224, 224, 192)


def class_colour(label: int) -> Colour:
    """The colour of class ``label``: ``PALETTE[label mod len(PALETTE)]``."""
    return PALETTE[int(label) % len(PALETTE)]


def class_name(class_names: Optional[Sequence[str]], label: int) -> str:
    """The name of class ``label``, or the index as text when there is no such name."""
    label = int(label)
    return str(class_names[label]) if class_names and 0 <= label < len(class_names) else str(label)


def to_display(
    images: Tensor, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None
) -> Tensor:
    """Normalised images back to ``uint8`` pixels: ``round(255 · clamp(x · std + mean, 0, 1))``.

    Args:
        images: ``float[B, C, H, W]`` or one image ``[C, H, W]``, normalised with ``mean``/``std``.
        mean, std: per-channel statistics (fractions of 255); empty or ``None`` is the
            identity (``0`` and ``1``).

    Returns:
        ``uint8[B, 3, H, W]`` (``[3, H, W]`` for one image); one channel is repeated to RGB,
        channels after the third are dropped.
    """
    single = images.dim() == 3
    images = images[None] if single else images
    channels = images.shape[1]
    mean_t = torch.tensor(list(mean or ()) or [0.0] * channels, dtype=torch.float32)
    std_t = torch.tensor(list(std or ()) or [1.0] * channels, dtype=torch.float32)
    pixels = images.detach().float().cpu() * std_t.view(1, -1, 1, 1) + mean_t.view(1, -1, 1, 1)
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    if channels == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    pixels = pixels[:, :3].contiguous()
    return pixels[0] if single else pixels


def enlarge(pixels: Tensor, min_side: int) -> tuple[Tensor, int]:
    """``uint8[3, H, W]`` enlarged (nearest) by the integer ``factor = ceil(min_side / min(H, W))``.

    Returns:
        The pixels (unchanged when ``factor`` is 1) and ``factor``, to scale boxes with.
    """
    factor = max(1, math.ceil(min_side / min(pixels.shape[-2:])))
    if factor > 1:
        pixels = F.interpolate(pixels[None], scale_factor=factor, mode="nearest")[0]
    return pixels, factor


def draw_boxes(
    pixels: Tensor, boxes: Tensor, labels: Sequence[int], texts: Sequence[str]
) -> Tensor:
    """Boxes drawn in their class colours, each with its text on a filled tag.

    Args:
        pixels: ``uint8[3, H, W]``.
        boxes: ``float[N, 4]`` ``xyxy`` pixels of ``pixels``.
        labels: ``N`` class indices (the colours).
        texts: ``N`` captions (class name, score, notes).

    Returns:
        ``uint8[3, H, W]`` (``pixels`` itself when there is no box).
    """
    if len(boxes) == 0:
        return pixels
    return draw_bounding_boxes(
        pixels,
        torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=list(texts),
        colors=[class_colour(label) for label in labels],
        width=2,
        fill_labels=True,
        label_colors="black",
    )


def drawn_classes(
    class_map: Tensor,
    class_names: Optional[Sequence[str]] = None,
    ignore_index: Optional[int] = None,
) -> list[int]:
    """The classes of ``class_map`` that :func:`draw_class_map` colours, in increasing order:
    every class present but one named ``"background"``, then ``ignore_index`` if present."""
    present = [int(c) for c in class_map.unique()]
    classes = [
        c
        for c in present
        if c != ignore_index and class_name(class_names, c).lower() != "background"
    ]
    return classes + ([ignore_index] if ignore_index in present else [])


def draw_class_map(
    pixels: Tensor,
    class_map: Tensor,
    class_names: Optional[Sequence[str]] = None,
    ignore_index: Optional[int] = None,
    alpha: float = 0.6,
) -> Tensor:
    """A class map drawn over ``pixels``, class ``c`` in :func:`class_colour` ``(c)``.

    The classes are those of :func:`drawn_classes`: a class named ``"background"`` is not
    drawn, ``ignore_index`` pixels are drawn in :data:`IGNORE_COLOUR`.

    Args:
        pixels: ``uint8[3, H, W]``.
        class_map: ``int[h, W']`` class indices; resized (nearest) to ``H x W`` when it differs.
        class_names: the name of each class index.
        ignore_index: the value of pixels without a class, or ``None``.
        alpha: opacity of the masks.

    Returns:
        ``uint8[3, H, W]``.
    """
    class_map = torch.as_tensor(class_map).detach().cpu().long()
    if class_map.shape[-2:] != pixels.shape[-2:]:
        size = pixels.shape[-2:]
        class_map = F.interpolate(class_map[None, None].float(), size=size, mode="nearest")
        class_map = class_map[0, 0].long()
    classes = drawn_classes(class_map, class_names, ignore_index)
    if not classes:
        return pixels
    colours = [IGNORE_COLOUR if c == ignore_index else class_colour(c) for c in classes]
    masks = torch.stack([class_map == c for c in classes])
    return draw_segmentation_masks(pixels, masks, alpha=alpha, colors=colours)


def titled_row(
    views: Sequence[Tensor],
    titles: Sequence[str],
    legend: Sequence[tuple[str, Colour]] = (),
    gap: int = 4,
) -> np.ndarray:
    """Views side by side on white, a title over each, and a legend of colour swatches below.

    The legend entries (``(text, colour)``) are laid out in rows that fit the width.

    Args:
        views: ``uint8[3, H, W]`` each, of one size.
        titles: one per view.
        legend: ``(text, colour)`` entries; none: no legend.
        gap: pixels between the views.

    Returns:
        ``uint8[H', W', 3]``.
    """
    font = ImageFont.load_default()
    title_h, row_h, pad, swatch = 16, 16, 4, 12
    height, width = views[0].shape[-2:]
    canvas_w = len(views) * width + (len(views) - 1) * gap
    rows: list[list[tuple[int, str, Colour]]] = [[]]
    x = pad
    for text, colour in legend:
        entry_w = swatch + 4 + int(font.getlength(text)) + 12
        if rows[-1] and x + entry_w > canvas_w:
            rows.append([])
            x = pad
        rows[-1].append((x, text, colour))
        x += entry_w
    legend_h = pad + row_h * len(rows) if legend else 0
    canvas = Image.new("RGB", (canvas_w, title_h + height + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (view, title) in enumerate(zip(views, titles)):
        left = i * (width + gap)
        canvas.paste(Image.fromarray(view.permute(1, 2, 0).numpy()), (left, title_h))
        draw.text((left + 2, 2), title, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        y = title_h + height + pad + r * row_h
        for x, text, colour in row:
            draw.rectangle((x, y + 1, x + swatch - 1, y + swatch), fill=colour, outline=(0, 0, 0))
            draw.text((x + swatch + 4, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8)
