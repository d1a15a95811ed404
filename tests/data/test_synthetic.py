"""The synthetic shapes generator and its DataModule."""

import hashlib
import time

import numpy as np
import pytest
import torch

from dck_lightning.data import (
    SHAPE_NAMES,
    SyntheticShapesDataModule,
    SyntheticShapesDataset,
    detection_collate,
    flip_targets,
    render_shapes,
)
from dck_lightning.data.shapes import IRREGULAR_SHAPE_NAMES, draw_outline, shape_mask
from dck_lightning.data.synthetic import object_size_ranges


def _check_annotations(out, image_size):
    """Boxes tight around each object's pixels, class mask consistent with labels."""
    assert out.image.shape == (image_size, image_size, 3) and out.image.dtype == np.uint8
    assert (
        out.boxes.dtype == np.float32
        and out.labels.dtype == np.int64
        and out.mask.dtype == np.int64
    )
    assert len(out.boxes) == len(out.labels) == out.instances.max()
    for index, (box, label) in enumerate(zip(out.boxes, out.labels)):
        ys, xs = np.nonzero(out.instances == index + 1)
        assert ys.size > 0
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert (out.mask[ys, xs] == label + 1).all()
    lut = np.concatenate([[0], out.labels + 1])
    assert np.array_equal(out.mask, lut[out.instances])


def test_render_is_deterministic():
    a = render_shapes(np.random.default_rng(5), 32, [0, 1, 2])
    b = render_shapes(np.random.default_rng(5), 32, [0, 1, 2])
    c = render_shapes(np.random.default_rng(6), 32, [0, 1, 2])
    for field in ("image", "boxes", "labels", "mask", "instances"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(40))
def test_boxes_tight_and_masks_consistent(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPE_NAMES), rng.integers(1, 7)).tolist()
    out = render_shapes(rng, 40, labels, min_size=3)
    _check_annotations(out, 40)
    assert out.labels.tolist() == labels  # occlusion is limited: no object vanishes


def test_occlusion_is_consistent_in_image_and_mask():
    """Pixels of a later shape win: its colour region and its mask agree."""
    rng = np.random.default_rng(1)
    out = render_shapes(rng, 48, [0] * 6, min_size=20, max_size=24, noise_std=0.0, max_overlap=1.0)
    _check_annotations(out, 48)
    # Without noise an object's visible pixels are one colour with a shading of at most
    # +-15 per axis (range <= 60): no pixel of an occluded shape shows through.
    for index in range(1, out.instances.max() + 1):
        pixels = out.image[out.instances == index].astype(int)
        assert np.ptp(pixels, axis=0).max() <= 61


def test_empty_and_tiny_objects():
    out = render_shapes(np.random.default_rng(0), 32, [])
    assert out.boxes.shape == (0, 4) and out.labels.shape == (0,)
    assert not out.mask.any()
    for label in range(len(SHAPE_NAMES)):
        tiny = render_shapes(np.random.default_rng(label), 32, [label], min_size=1, max_size=3)
        _check_annotations(tiny, 32)
        assert len(tiny.labels) == 1


def test_shapes_are_distinct():
    grid = (np.arange(64) + 0.5) / 32 - 1
    masks = [shape_mask(label, grid[None, :], grid[:, None]) for label in range(len(SHAPE_NAMES))]
    assert len(SHAPE_NAMES) >= 6
    for i in range(len(masks)):
        assert masks[i].sum() > 200
        for j in range(i):
            assert (masks[i] != masks[j]).sum() > 100, (SHAPE_NAMES[i], SHAPE_NAMES[j])


def test_invalid_sizes():
    with pytest.raises(ValueError, match="min_size"):
        render_shapes(np.random.default_rng(0), 16, [0], min_size=10, max_size=5)


# -- DataModule --------------------------------------------------------------------------


def test_classification_datamodule_is_deterministic_and_fast():
    start = time.perf_counter()
    dm = SyntheticShapesDataModule(num_train=2048, num_val=0, num_test=0)
    dm.setup("fit")
    assert time.perf_counter() - start < 5.0
    x, y = dm.train_dataset.tensors
    assert x.shape == (2048, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=6).tolist() == [342, 342, 341, 341, 341, 341]
    assert dm.val_dataset is None
    assert dm.num_classes == 6 and dm.class_names == list(SHAPE_NAMES) and dm.in_channels == 3
    assert dm.image_size == (32, 32) and dm.task == "classification"


def test_classification_seed_and_split_change_images():
    def images(seed):
        dm = SyntheticShapesDataModule(num_train=24, num_val=24, num_test=24, seed=seed)
        dm.setup()
        return dm.train_dataset.tensors[0], dm.val_dataset.tensors[0], dm.test_dataset.tensors[0]

    train, val, test = images(0)
    train2, val2, test2 = images(0)
    other, _, _ = images(1)
    assert torch.equal(train, train2) and torch.equal(val, val2) and torch.equal(test, test2)
    assert not torch.equal(train, other)
    assert not torch.equal(train, val) and not torch.equal(val, test)


def test_classification_batches(fake_trainer):
    dm = SyntheticShapesDataModule(num_train=64, num_val=16, num_test=16, batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].dtype == torch.uint8 and batch[0].shape == (16, 3, 32, 32)
    dm.trainer = fake_trainer(training=False)
    plain, labels = dm.on_after_batch_transfer(batch, 0)
    assert plain.dtype == torch.float32 and torch.equal(labels, batch[1])
    assert abs(plain.mean().item()) < 0.5 and 0.5 < plain.std().item() < 1.5
    dm.trainer = fake_trainer(training=True)
    flipped, _ = dm.on_after_batch_transfer(batch, 0)
    same = (flipped == plain).flatten(1).all(1)
    mirrored = (flipped == plain.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and mirrored.any() and same.any()


def test_detection_batches(fake_trainer):
    dm = SyntheticShapesDataModule(
        task="detection", image_size=48, num_train=32, num_val=8, batch_size=8
    )
    assert dm.num_classes == 6 and dm.class_names == list(SHAPE_NAMES)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    images, targets = dm.on_after_batch_transfer(batch, 0)
    assert images.shape == (8, 3, 48, 48) and images.dtype == torch.float32
    assert isinstance(targets, list) and len(targets) == 8
    for index, target in enumerate(targets):
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
        assert labels.dtype == torch.int64 and 1 <= len(labels) <= 4
        assert target["difficult"].dtype == torch.bool and not target["difficult"].any()
        assert target["orig_size"].tolist() == [48, 48] and target["orig_size"].dtype == torch.int64
        assert target["image_id"] == index
        assert (labels >= 0).all() and (labels < 6).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all() and (boxes <= 48).all()


def test_detection_allows_empty_images():
    dm = SyntheticShapesDataModule(
        task="detection", num_train=4, num_val=4, min_objects=0, max_objects=0, batch_size=4
    )
    dm.setup("fit")
    images, targets = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.shape == (4, 3, 32, 32)
    for target in targets:
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_object_counts_and_all_classes_present():
    dataset = SyntheticShapesDataset("detection", "train", 200, min_objects=2, max_objects=5)
    counts, labels = [], []
    for index in range(len(dataset)):
        out = dataset.render(index)
        _check_annotations(out, 32)
        counts.append(len(out.labels))
        labels += out.labels.tolist()
    assert min(counts) >= 2 and max(counts) == 5
    assert set(labels) == set(range(len(SHAPE_NAMES)))
    sizes = [b[2] - b[0] for i in range(50) for b in dataset.render(i).boxes]
    assert min(sizes) <= 6 and max(sizes) >= 14  # tiny to half-image objects


def test_segmentation_batches_and_consistency():
    dm = SyntheticShapesDataModule(
        task="segmentation", num_train=8, num_val=8, batch_size=4, seed=3
    )
    assert (
        dm.num_classes == 7
        and dm.class_names[0] == "background"
        and dm.class_names[1:] == list(SHAPE_NAMES)
    )
    dm.setup("fit")
    images, targets = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.shape == (4, 3, 32, 32)
    detection = SyntheticShapesDataset("detection", "val", 8, seed=3)
    for index, target in enumerate(targets):
        mask = target["mask"]
        assert mask.dtype == torch.int64 and mask.shape == (32, 32)
        assert mask.min() >= 0 and mask.max() <= 6 and mask.max() > 0
        assert target["orig_size"].tolist() == [32, 32] and target["image_id"] == index
        # the same scene as the detection task: each box holds pixels of its class
        _, det = detection[index]
        for box, label in zip(det["boxes"].long(), det["labels"]):
            assert (mask[box[1] : box[3], box[0] : box[2]] == label + 1).any()


def test_detection_flip_keeps_boxes_tight():
    out = render_shapes(np.random.default_rng(2), 32, [0, 2, 4])
    image = torch.from_numpy(out.image).permute(2, 0, 1)[None].float()
    target = {
        "boxes": torch.from_numpy(out.boxes),
        "mask": torch.from_numpy(out.mask),
        "image_id": 0,
    }
    flipped_targets = flip_targets([target], torch.tensor([True]), width=32)
    flipped_instances = np.ascontiguousarray(out.instances[:, ::-1])
    for index, box in enumerate(flipped_targets[0]["boxes"].tolist()):
        ys, xs = np.nonzero(flipped_instances == index + 1)
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert torch.equal(flipped_targets[0]["mask"], target["mask"].flip(-1))
    assert flip_targets([target], torch.tensor([False]), 32)[0] is target
    assert image.shape == (1, 3, 32, 32)


def test_detection_augment_flips_targets_with_images(fake_trainer):
    dm = SyntheticShapesDataModule(
        task="segmentation", num_train=16, num_val=0, batch_size=16, normalize=False
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = fake_trainer(training=True)
    images, targets = dm.on_after_batch_transfer(batch, 0)
    raw = batch[0].float() / 255
    for image, target, original, original_target in zip(images, targets, raw, batch[1]):
        if torch.equal(image, original):
            assert torch.equal(target["mask"], original_target["mask"])
        else:
            assert torch.equal(image, original.flip(-1))
            assert torch.equal(target["mask"], original_target["mask"].flip(-1))


def test_detection_collate():
    samples = [(torch.zeros(3, 4, 4), {"image_id": i}) for i in range(3)]
    images, targets = detection_collate(samples)
    assert images.shape == (3, 3, 4, 4) and [t["image_id"] for t in targets] == [0, 1, 2]
    with pytest.raises(ValueError):
        detection_collate([])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="task"):
        SyntheticShapesDataModule(task="depth")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticShapesDataModule(task="detection", min_objects=3, max_objects=2)


def test_constructor_is_configurable():
    from jsonargparse import ArgumentError, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SyntheticShapesDataModule, "data")
    dm = parser.instantiate(
        parser.parse_args(["--data.task=segmentation", "--data.image_size=24"])
    ).data
    assert dm.task == "segmentation" and dm.image_size == (24, 24) and dm.num_classes == 7
    with pytest.raises(ArgumentError):
        parser.parse_args(["--data.task=depth"])


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_cache_renders_each_image_once_and_returns_the_same_samples(task, monkeypatch):
    plain = SyntheticShapesDataset(task, "train", 4, seed=5)
    cached = SyntheticShapesDataset(task, "train", 4, seed=5, cache=True)
    renders = []
    original = SyntheticShapesDataset.render
    monkeypatch.setattr(
        SyntheticShapesDataset, "render", lambda self, i: renders.append(i) or original(self, i)
    )
    for _ in range(2):  # two epochs
        for index in range(4):
            (image, target), (ref_image, ref_target) = cached[index], plain[index]
            assert torch.equal(image, ref_image) and target.keys() == ref_target.keys()
            for key, value in ref_target.items():
                got = target[key]
                assert (
                    torch.equal(got, value) and got.dtype == value.dtype
                    if torch.is_tensor(value)
                    else got == value
                )
            image.zero_()  # an in-place augmentation must not reach the cache
            if task == "detection":
                target["boxes"].zero_()
    assert renders.count(0) == 3  # the plain dataset twice, the cached one once
    assert torch.equal(cached[0][0], plain[0][0])


def test_datamodule_renders_detection_and_segmentation_once_in_setup():
    dm = SyntheticShapesDataModule(task="segmentation", num_train=4, num_val=3, batch_size=2)
    dm.setup("fit")
    assert len(dm.train_dataset._cache) == 4 and len(dm.val_dataset._cache) == 3
    off = SyntheticShapesDataModule(task="segmentation", num_train=4, num_val=4, cache=False)
    off.setup("fit")
    assert off.train_dataset._cache is None
    with pytest.raises(RuntimeError, match="cache=True"):
        off.train_dataset.fill_cache()


# -- controlled experiments: shape families, object sizes, instance ids -------------------------


def _digest(dataset, count):
    digest = hashlib.sha256()
    for index in range(count):
        out = dataset.render(index)
        for field in (out.image, out.boxes, out.labels, out.mask, out.instances):
            digest.update(np.ascontiguousarray(field).tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(
    "task, kwargs, expected",
    [
        ("classification", {"image_size": 32, "min_size": 8}, "1bbf9775ccfdd27b"),
        ("detection", {"image_size": 128, "seed": 42}, "5e21341285a2e8c1"),
        (
            "segmentation",
            {"image_size": 128, "seed": 3, "min_objects": 0, "max_objects": 6},
            "249eff7b49e73f18",
        ),
    ],
)
def test_defaults_render_the_images_they_always_rendered(task, kwargs, expected):
    """Digests of the first 12 training images, taken before shape families and object sizes
    existed: the defaults must not draw one more random number."""
    assert _digest(SyntheticShapesDataset(task, "train", 12, **kwargs), 12) == expected


def test_star_outline_is_the_polygon_through_its_vertices():
    from matplotlib.path import Path as PolygonPath

    for seed in range(10):
        outline = draw_outline("star", np.random.default_rng(seed))
        angles, radii = outline.params[:, 0], outline.params[:, 1]
        assert 8 <= len(angles) <= 16 and len(angles) % 2 == 0  # 4-8 points
        assert np.allclose(outline.radius(angles), radii)
        vertices = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
        grid = np.linspace(-1.05, 1.05, 151)
        u, v = np.meshgrid(grid, grid)
        expected = PolygonPath(vertices).contains_points(np.stack([u.ravel(), v.ravel()], 1))
        got = shape_mask("star", u, v, outline).ravel()
        # the two agree everywhere but (at most) on points within rounding of an edge
        assert (got != expected).sum() <= 3


def test_blob_outline_touches_the_unit_circle_and_stays_round():
    for seed in range(10):
        outline = draw_outline("blob", np.random.default_rng(seed))
        radius = outline.radius(np.linspace(0, 2 * np.pi, 3600, endpoint=False))
        assert radius.max() == pytest.approx(1.0, abs=1e-4)
        assert 0.2 < radius.min() < 0.9  # lumpy, never pinched to the centre, never a circle


def test_irregular_shapes_need_their_outline_and_are_drawn_per_object():
    with pytest.raises(ValueError, match="outline"):
        shape_mask("blob", np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="irregular"):
        draw_outline("circle", np.random.default_rng(0))
    out = render_shapes(
        np.random.default_rng(0), 96, [1, 1, 1], shapes=IRREGULAR_SHAPE_NAMES, min_size=30
    )
    _check_annotations(out, 96)
    stars = [out.instances == i + 1 for i in range(3)]
    areas = sorted(int(s.sum()) for s in stars)
    assert len(set(areas)) == 3  # three different stars


@pytest.mark.parametrize("family, names", [("irregular", ["blob", "star"]), ("all", None)])
def test_shape_family_sets_the_classes(family, names):
    names = names or [*SHAPE_NAMES, "blob", "star"]
    dm = SyntheticShapesDataModule(task="segmentation", shape_family=family, num_train=4)
    assert dm.class_names == ["background", *names] and dm.num_classes == len(names) + 1
    detection = SyntheticShapesDataModule(task="detection", shape_family=family, image_size=64)
    dataset = detection.dataset("train")
    labels = np.concatenate([dataset.render(i).labels for i in range(60)])
    assert set(labels.tolist()) == set(range(len(names)))
    classification = SyntheticShapesDataModule(shape_family=family, num_train=len(names) * 3)
    classification.setup("fit")
    counts = torch.bincount(classification.train_dataset.tensors[1])
    assert counts.tolist() == [3] * len(names)
    with pytest.raises(ValueError, match="shape_family"):
        SyntheticShapesDataModule(shape_family="odd")  # type: ignore[arg-type]


def test_object_size_ranges_scale_coco_buckets_to_the_image():
    assert object_size_ranges(128) == {
        "small": (1.0, 8.0),
        "medium": (8.0, 24.0),
        "large": (24.0, 64.0),
    }
    assert object_size_ranges(256, 1024)["medium"] == (8.0, 24.0)  # the scale is side / reference
    with pytest.raises(ValueError, match="object_size_reference above 192 and at most 256"):
        object_size_ranges(32)  # small objects under 2 px


@pytest.mark.parametrize("family", ["regular", "irregular"])
@pytest.mark.parametrize("bucket", ["small", "medium", "large"])
def test_object_sizes_put_every_box_in_its_bucket(family, bucket):
    dm = SyntheticShapesDataModule(
        task="detection", image_size=128, shape_family=family, object_sizes=[bucket], cache=False
    )
    dataset = dm.dataset("val")
    low, high = object_size_ranges(128)[bucket]
    areas = []
    for index in range(40):
        out = dataset.render(index)
        _check_annotations(out, 128)
        assert len(out.labels) >= 1  # no object left out for want of a fitting draw
        areas.append((out.boxes[:, 2] - out.boxes[:, 0]) * (out.boxes[:, 3] - out.boxes[:, 1]))
    areas = np.concatenate(areas)
    inside = (areas >= low**2) & (areas < high**2)
    assert inside.mean() >= 0.98, areas[~inside]  # occlusion may shrink a box, rarely


def test_mixed_object_sizes_draw_every_bucket_and_reject_min_size():
    dm = SyntheticShapesDataModule(
        task="detection", image_size=128, object_sizes=["small", "large"], cache=False
    )
    dataset = dm.dataset("train")
    areas = np.concatenate(
        [
            np.prod(dataset.render(i).boxes[:, 2:] - dataset.render(i).boxes[:, :2], 1)
            for i in range(30)
        ]
    )
    assert (
        (areas < 64).sum() > 15
        and (areas >= 24**2).sum() > 15
        and not ((areas >= 64) & (areas < 24**2)).any()
    )
    with pytest.raises(ValueError, match="not both"):
        SyntheticShapesDataModule(
            task="detection", image_size=128, object_sizes=["small"], min_size=4
        )
    with pytest.raises(ValueError, match="object_sizes"):
        SyntheticShapesDataModule(task="detection", image_size=128, object_sizes=["tiny"])  # type: ignore[list-item]


def test_segmentation_targets_carry_instance_ids_that_flip_with_the_image(fake_trainer):
    dm = SyntheticShapesDataModule(
        task="segmentation", num_train=8, num_val=0, batch_size=8, normalize=False, seed=4
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    for target in batch[1]:
        rendered = dm.train_dataset.render(target["image_id"])
        assert target["instances"].dtype == torch.int64
        assert torch.equal(target["instances"], torch.from_numpy(rendered.instances).long())
    dm.trainer = fake_trainer(training=True)
    images, targets = dm.on_after_batch_transfer(batch, 0)
    flips = 0
    for image, target, original, original_target in zip(images, targets, batch[0], batch[1]):
        flipped = not torch.equal(image, original.float() / 255)
        flips += flipped
        expected = (
            original_target["instances"].flip(-1) if flipped else original_target["instances"]
        )
        assert torch.equal(target["instances"], expected)
    assert 0 < flips < 8
