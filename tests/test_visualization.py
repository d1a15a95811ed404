"""dck_lightning.visualization: the one drawing kit of the tasks, the callbacks and the analysis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dck_lightning.analysis import draw_predictions, to_display
from dck_lightning.callbacks.image_logging import BoxSet, PredictionSample, display_images
from dck_lightning.tasks.detection import render_detection_panel
from dck_lightning.tasks.segmentation import render_segmentation_panel
from dck_lightning.visualization import (
    IGNORE_COLOUR,
    PALETTE,
    class_colour,
    draw_boxes,
    draw_class_map,
    drawn_classes,
    enlarge,
)
from dck_lightning.visualization import to_display as pixels_of


def test_to_display_inverts_the_normalisation_everywhere():
    pixels = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = (pixels / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    assert torch.equal(pixels_of(normalised, mean, std), pixels)
    assert torch.equal(pixels_of(normalised[0], mean, std), pixels[0])  # one image
    assert torch.equal(to_display(normalised, mean=mean, std=std), pixels)  # analysis
    hwc = display_images(normalised, mean, std)  # callbacks
    assert np.array_equal(hwc, pixels.permute(0, 2, 3, 1).numpy())
    grey = pixels_of(torch.tensor([[[[0.0, 0.5, 2.0]]]]))  # identity, clamped, grey to RGB
    assert grey.shape == (1, 3, 1, 3) and grey[0, :, 0].tolist() == [[0, 128, 255]] * 3


def test_enlarge_by_an_integer_factor():
    pixels = torch.arange(6, dtype=torch.uint8).view(1, 2, 3).expand(3, 2, 3)
    big, factor = enlarge(pixels, 5)
    assert factor == 3 and big.shape == (3, 6, 9)
    assert torch.equal(big, pixels.repeat_interleave(3, 1).repeat_interleave(3, 2))
    assert enlarge(pixels, 2)[1] == 1


def test_class_maps_leave_out_the_background_and_show_ignored_pixels():
    pixels = torch.zeros(3, 8, 8, dtype=torch.uint8)
    class_map = torch.zeros(4, 4, dtype=torch.long)  # drawn at 8 x 8: resized, nearest
    class_map[0, 0], class_map[3, 3] = 2, 255
    names = ["background", "a", "b"]
    assert drawn_classes(class_map, names, 255) == [2, 255]
    drawn = draw_class_map(pixels, class_map, names, 255, alpha=1.0)
    assert tuple(drawn[:, 1, 1].tolist()) == class_colour(2) == PALETTE[2]
    assert tuple(drawn[:, 7, 7].tolist()) == IGNORE_COLOUR
    assert not drawn[:, 4, 4].any()  # background: the image shows through
    assert draw_class_map(pixels, torch.zeros(8, 8), names) is pixels


def test_boxes_in_class_colours_the_same_in_tasks_and_analysis():
    pixels = torch.zeros(3, 32, 32, dtype=torch.uint8)
    boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0]])
    drawn = draw_boxes(pixels, boxes, [3], ["cat"])
    assert tuple(drawn[:, 12, 4].tolist()) == class_colour(3)  # the left edge
    assert draw_boxes(pixels, torch.zeros(0, 4), [], []) is pixels
    analysis = draw_predictions(
        pixels[None], [{"boxes": boxes, "labels": torch.tensor([3])}], min_side=32
    )[0]
    sample = PredictionSample(
        pixels.permute(1, 2, 0).numpy(),
        "",
        ["a", "b", "c", "d"],
        boxes={
            "ground_truth": BoxSet(boxes.numpy(), np.array([3])),
            "predictions": BoxSet(np.zeros((0, 4)), np.zeros(0, dtype=int), np.zeros(0)),
        },
    )
    task = torch.from_numpy(render_detection_panel(sample, min_side=32)[:, :32]).permute(2, 0, 1)
    assert tuple(analysis[:, 12, 4].tolist()) == tuple(task[:, 12, 4].tolist()) == class_colour(3)


@pytest.mark.parametrize("ignored", [False, True])
def test_segmentation_panel_legend_names_the_drawn_classes(ignored):
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    target = torch.zeros(16, 16, dtype=torch.long)
    target[:8] = 1
    if ignored:
        target[-1] = 255
    prediction = torch.full((16, 16), 2)
    panel = render_segmentation_panel(image, target, prediction, ["background", "a", "b"])
    height = 16 * 10  # enlarged to min_side 160
    assert panel.shape[1] == 3 * 160 + 2 * 4 and panel.shape[0] > 16 + height
    legend = panel[16 + height :]
    colours = {tuple(c) for c in legend.reshape(-1, 3).tolist()}
    assert class_colour(1) in colours and class_colour(2) in colours
    assert (IGNORE_COLOUR in colours) == ignored
