"""Metrics by object size: COCO's buckets (scaled), AP per bucket, per-instance IoU per bucket."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dck_lightning.metrics import (
    InstanceSizeIoU,
    coco_map,
    instance_ious,
    size_area_ranges,
    size_scale,
)


def test_buckets_scale_with_the_image_side():
    assert size_area_ranges() == {
        "small": (0.0, 32.0**2),
        "medium": (32.0**2, 96.0**2),
        "large": (96.0**2, 1e10),
    }
    assert size_scale(128, 512) == 0.25 and size_scale((64, 256), 512) == 0.25
    assert size_scale(128, None) == 1.0
    assert size_area_ranges(0.25)["medium"] == (64.0, 576.0)
    with pytest.raises(ValueError, match="reference_size"):
        size_scale(128, 0)


# -- AP per size --------------------------------------------------------------------------------
# One 128×128 image, one class: a 6×6 box (36 px², found), a 16×16 box (256 px², missed), a
# 40×40 box (1,600 px², found). With COCO's buckets (small <= 32² = 1,024) the first two are
# small, the third medium; scaled to 128-px images (small <= 8² = 64, large >= 24² = 576) one
# box lands in each bucket.
GT = [
    {
        "boxes": torch.tensor([[0.0, 0, 6, 6], [20, 20, 36, 36], [50, 50, 90, 90]]),
        "labels": torch.tensor([0, 0, 0]),
    }
]
PRED = [
    {
        "boxes": torch.tensor([[0.0, 0, 6, 6], [50, 50, 90, 90]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([0, 0]),
    }
]


def test_map_per_size_with_cocos_buckets():
    metric = coco_map()
    metric.update(PRED, GT)
    result = metric.compute()
    # small: 2 objects, 1 found at precision 1 -> recall 0.5: 51 of COCO's 101 recall points
    assert float(result["map_small"]) == pytest.approx(51 / 101)
    assert float(result["map_medium"]) == pytest.approx(1.0)
    assert float(result["map_large"]) == -1.0  # no large object


def test_map_per_size_with_buckets_scaled_to_the_image():
    metric = coco_map(area_ranges=size_area_ranges(size_scale(128, 512)))
    metric.update(PRED, GT)
    result = metric.compute()
    assert float(result["map_small"]) == pytest.approx(1.0)
    assert float(result["map_medium"]) == pytest.approx(0.0)
    assert float(result["map_large"]) == pytest.approx(1.0)
    assert float(result["mar_medium"]) == pytest.approx(0.0)
    # the buckets do not change the overall AP
    plain = coco_map()
    plain.update(PRED, GT)
    assert float(result["map"]) == pytest.approx(float(plain.compute()["map"]))


def test_unmatched_detections_count_in_the_bucket_of_their_own_size():
    """A false positive counts against the bucket its box falls in (COCO ignores unmatched
    detections outside the bucket): the scaled buckets must apply to detections too."""
    gt = [{"boxes": torch.tensor([[50.0, 50, 90, 90]]), "labels": torch.tensor([0])}]
    pred = [
        {
            "boxes": torch.tensor([[0.0, 0, 6, 6], [50, 50, 90, 90]]),
            "scores": torch.tensor([0.9, 0.8]),  # the small false positive ranks first
            "labels": torch.tensor([0, 0]),
        }
    ]
    metric = coco_map(area_ranges=size_area_ranges(0.25))
    metric.update(pred, gt)
    result = metric.compute()
    assert float(result["map_large"]) == pytest.approx(1.0)  # the small FP is not in "large"
    assert float(result["map"]) == pytest.approx(0.5, abs=0.01)  # it is in "all": precision 1/2


def test_area_ranges_need_the_three_buckets():
    with pytest.raises(ValueError, match="small"):
        coco_map(area_ranges={"tiny": (0.0, 1.0)})


# -- IoU per instance and size ----------------------------------------------------------------
# A 10×10 target: instances A and B of class 1 side by side (2×2 each, touching), C of class 2
# (3×3), D of class 3 (1 pixel). The prediction covers A and B with one class-1 blob two
# pixels wider than both, C's top two rows with class 2, a stray class-2 pixel far from C, and
# nothing on D.
TARGET = np.zeros((10, 10), dtype=np.int64)
TARGET[1:3, 1:3] = 1  # A
TARGET[1:3, 3:5] = 1  # B
TARGET[6:9, 6:9] = 2  # C
TARGET[4, 0] = 3  # D
INSTANCES = np.zeros((10, 10), dtype=np.int64)
INSTANCES[1:3, 1:3], INSTANCES[1:3, 3:5], INSTANCES[6:9, 6:9], INSTANCES[4, 0] = 1, 2, 3, 4
PRED_MAP = np.zeros((10, 10), dtype=np.int64)
PRED_MAP[1:3, 1:6] = 1  # A, B and 2 pixels more
PRED_MAP[6:8, 6:9] = 2  # 6 of C's 9 pixels
PRED_MAP[0, 9] = 2  # a stray pixel, not touching C


def test_instance_ious_with_instance_ids():
    areas, ious = instance_ious(PRED_MAP, TARGET, INSTANCES)
    # A: the blob less B's pixels = A's 4 + the 2 extra pixels: IoU 4/6; B alike.
    # C: the touching class-2 component has 6 pixels, all in C: 6/9 (the stray pixel does
    # not touch C and does not count). D: missed, 0.
    assert areas.tolist() == [4, 4, 9, 1]
    np.testing.assert_allclose(ious, [4 / 6, 4 / 6, 6 / 9, 0.0])


def test_instance_ious_from_connected_components():
    areas, ious = instance_ious(PRED_MAP, TARGET)
    # Without ids A and B are one 8-connected class-1 component of 8 pixels: 8/10.
    order = np.argsort(areas)
    assert areas[order].tolist() == [1, 8, 9]
    np.testing.assert_allclose(ious[order], [0.0, 8 / 10, 6 / 9])


def test_instance_ious_leave_ignored_pixels_and_background_out():
    target = TARGET.copy()
    target[8, 6:9] = 255  # C's bottom row (which the prediction misses) no longer counts
    areas, ious = instance_ious(PRED_MAP, target, INSTANCES)
    assert areas.tolist() == [4, 4, 6, 1]
    np.testing.assert_allclose(ious, [4 / 6, 4 / 6, 1.0, 0.0])
    empty = np.zeros((4, 4), dtype=np.int64)
    assert instance_ious(empty + 1, empty)[0].size == 0  # background only: no instance


def test_size_iou_metric_averages_per_bucket_and_accumulates():
    # reference 128 on 10×10: s = 10/128, small below (32 s)² = 6.25 px², large from 56.25:
    # A, B, D small, C medium, no large instance.
    metric = InstanceSizeIoU(reference_size=128)
    pred, target, ids = (torch.from_numpy(a) for a in (PRED_MAP, TARGET, INSTANCES))
    metric.update(pred[None], target[None], ids[None])
    result = metric.compute()
    assert float(result["small"]) == pytest.approx((4 / 6 + 4 / 6 + 0) / 3)
    assert float(result["medium"]) == pytest.approx(6 / 9)
    assert math.isnan(float(result["large"]))
    # a second batch (the same image, perfectly predicted) adds its instances
    metric.update(target[None], target[None], ids[None])
    result = metric.compute()
    assert float(result["small"]) == pytest.approx((4 / 6 + 4 / 6 + 0 + 3) / 6)
    assert float(result["medium"]) == pytest.approx((6 / 9 + 1) / 2)
    with pytest.raises(ValueError, match="one shape"):
        metric.update(pred[None], target[None, :5])
