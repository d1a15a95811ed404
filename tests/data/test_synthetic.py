"""The synthetic shapes generator and its DataModule."""

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
from dck_lightning.data.shapes import shape_mask


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
