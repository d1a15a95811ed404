"""Pascal VOC segmentation: masks, SBD set, DataModule, mask pipelines, errors (offline, tiny images)."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from voc_fixtures import (
    FixtureImage,
    FixtureObject,
    draw_image,
    draw_mask,
    shared_voc_sample,
    write_voc,
)

from dck_lightning.data.errors import DataNotFoundError
from dck_lightning.data.transforms import (
    IGNORE_INDEX,
    apply_segmentation_transform,
    segmentation_eval_transform,
    segmentation_train_transform,
)
from dck_lightning.data.voc import VOCSegmentationDataModule
from dck_lightning.data.voc_common import (
    VOC_SEGMENTATION_CLASSES,
    CorruptImageError,
    InvalidMaskError,
    MissingSampleFileError,
    voc_palette,
)
from dck_lightning.data.voc_segmentation import VOCSegmentationDataset

CAT = VOC_SEGMENTATION_CLASSES.index("cat")

IMAGES = [
    FixtureImage("2008_000001", [FixtureObject("cat", (10, 8, 40, 30))]),
    FixtureImage(
        "2008_000002",
        [FixtureObject("dog", (5, 5, 20, 20)), FixtureObject("person", (30, 10, 60, 45))],
    ),
    FixtureImage("2008_000003", []),
    FixtureImage("2008_000004", [FixtureObject("bus", (2, 2, 63, 47))]),
    FixtureImage("2008_000005", [FixtureObject("cow", (20, 20, 30, 30))]),
]
TRAIN, VAL = ["2008_000001", "2008_000002", "2008_000003"], ["2008_000004", "2008_000005"]


def write_tree(data_dir: Path, sbd: bool = False) -> Path:
    return write_voc(
        data_dir,
        IMAGES,
        year="2012",
        segmentation_sets={"train": TRAIN, "val": VAL, "trainval": TRAIN + VAL},
        # a typical train_aug list also names a val image: it must be left out
        sbd_ids=TRAIN + ["2008_000004", "2008_000005"] if sbd else None,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "data")


def datamodule(data_dir: Path, **kwargs) -> VOCSegmentationDataModule:
    options = dict(
        data_dir=str(data_dir), image_size=32, batch_size=2, num_workers=0, val_set="val"
    )
    options.update(kwargs)
    return VOCSegmentationDataModule(**options)


def is_object_colour(pixels: np.ndarray) -> np.ndarray:
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (r > g + 60) & (r > b + 60)


# --------------------------------------------------------------------------- real sample


@pytest.fixture
def sample() -> Path:
    root = shared_voc_sample()
    if root is None:
        pytest.skip("shared VOC sample (../shared/data/voc-sample) not available")
    return root


def test_real_sample_masks_have_class_ids_and_ignore(sample: Path) -> None:
    dataset = VOCSegmentationDataset(sample, "2012", "train")
    assert [r.image_id for r in dataset.records] == [
        "2007_000032",
        "2007_000039",
        "2011_000003",
        "2011_000025",
    ]
    image, target = dataset[0]  # 2007_000032: aeroplanes and people, original size
    assert image.shape == (3, 281, 500) and target["orig_size"].tolist() == [281, 500]
    mask = target["mask"]
    assert mask.dtype == torch.int64 and mask.shape == (281, 500)
    values, counts = mask.unique(return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 129545, 1: 4734, 15: 866, 255: 5355}
    assert VOC_SEGMENTATION_CLASSES[1] == "aeroplane" and VOC_SEGMENTATION_CLASSES[15] == "person"


def test_real_sample_palette_is_the_voc_palette(sample: Path) -> None:
    with Image.open(sample / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png") as png:
        assert png.getpalette()[: 3 * 21] == voc_palette()[: 3 * 21]
    assert voc_palette()[3 * 255 : 3 * 256] == [224, 224, 192]


def test_real_sample_datamodule(sample: Path) -> None:
    dm = datamodule(sample, image_size=64)  # use_sbd, but the sample has no SBD: plain train
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (4, 3)
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 64, 64)
    assert targets[0]["image_id"] == "2007_000033" and targets[0]["mask"].shape == (64, 64)
    assert set(targets[0]["mask"].unique().tolist()) <= {0, 1, 255}


# --------------------------------------------------------------------------- DataModule


def test_datamodule_contract(tree: Path) -> None:
    dm = datamodule(tree)
    assert (dm.num_classes, dm.in_channels, dm.task, dm.ignore_index) == (
        21,
        3,
        "segmentation",
        255,
    )
    assert dm.class_names[0] == "background" and len(dm.class_names) == 21
    dm.prepare_data()
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    for target in targets:
        assert target["mask"].shape == (32, 32) and target["mask"].dtype == torch.int64
        assert set(target["mask"].unique().tolist()) <= set(range(21)) | {255}
        assert target["orig_size"].tolist() == [48, 64]


def test_eval_masks_are_resized_with_nearest(tree: Path) -> None:
    dm = datamodule(tree)
    dm.setup("validate")
    _, target = dm.val_dataset[1]  # 2008_000005: a cow square
    original = draw_mask(IMAGES[4])
    assert set(target["mask"].unique().tolist()) == set(np.unique(original).tolist())


def test_eval_targets_carry_the_original_mask(tree: Path) -> None:
    dm = datamodule(tree)
    dm.setup("fit")
    _, val_targets = next(iter(dm.val_dataloader()))
    for target, fixture in zip(val_targets, IMAGES[3:]):
        assert target["orig_mask"].shape == (48, 64) and target["mask"].shape == (32, 32)
        assert np.array_equal(target["orig_mask"].numpy(), draw_mask(fixture))
    _, train_targets = next(iter(dm.train_dataloader()))
    assert all("orig_mask" not in target for target in train_targets)
    resized = datamodule(tree, eval_original_size=False)
    resized.setup("validate")
    assert "orig_mask" not in resized.val_dataset[0][1]


def test_sbd_train_aug_is_used_without_val_images(tmp_path: Path) -> None:
    data_dir = write_tree(tmp_path / "data", sbd=True)
    dm = datamodule(data_dir)
    dm.setup("fit")
    assert dm.train_dataset.image_set == "train_aug"
    assert [r.image_id for r in dm.train_dataset.records] == TRAIN
    assert all("SegmentationClassAug" in str(r.mask_path) for r in dm.train_dataset.records)
    without = datamodule(data_dir, use_sbd=False)
    without.setup("fit")
    assert without.train_dataset.image_set == "train"


def test_by_default_validation_is_held_out_of_train_and_voc_val_is_reported(tree: Path) -> None:
    """VOC2012 test masks are not public: ``val`` is the reported set (``dck test``), so the
    best checkpoint is chosen on a seeded share of the training images instead."""
    dm = VOCSegmentationDataModule(str(tree), image_size=32, num_workers=0, val_split=0.5)
    dm.setup("fit")
    dm.setup("test")
    train = [dm.train_dataset[i][1]["image_id"] for i in range(len(dm.train_dataset))]
    val = [dm.val_dataset[i][1]["image_id"] for i in range(len(dm.val_dataset))]
    test = [r.image_id for r in dm.test_dataset.records]
    assert sorted(train + val) == sorted(TRAIN) and not set(train) & set(val)
    assert test == VAL and not set(val) & set(test)
    assert "orig_mask" in dm.val_dataset[0][1] and "orig_mask" not in dm.train_dataset[0][1]


def test_sbd_train_aug_leaves_out_the_reported_set(tmp_path: Path) -> None:
    data_dir = write_voc(
        tmp_path / "data",
        IMAGES,
        year="2012",
        segmentation_sets={"train": TRAIN, "val": VAL, "report": ["2008_000001"]},
        sbd_ids=TRAIN,
    )
    dm = VOCSegmentationDataModule(
        str(data_dir), image_size=32, num_workers=0, test_set="report", val_split=0.0
    )
    dm.setup("fit")
    assert dm.train_dataset.dataset.image_set == "train_aug"
    assert [r.image_id for r in dm.train_dataset.dataset.records] == TRAIN[1:]


def test_missing_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        datamodule(tmp_path / "empty").setup("fit")
    message = str(info.value)
    assert str((tmp_path / "empty").resolve()) in message
    assert "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt" in message
    assert "VOCdevkit/VOC2012/SegmentationClass/" in message
    assert "dck-prepare-data --dataset voc2012 --data-dir" in message


# --------------------------------------------------------------------------- augmentation


def test_mask_and_image_stay_aligned_through_train_augmentation() -> None:
    fixture = FixtureImage("x", [FixtureObject("cat", (12, 10, 40, 34))])
    image, mask = draw_image(fixture), draw_mask(fixture)
    pipeline = segmentation_train_transform(48, scale_range=(0.5, 2.0))
    checked = 0
    for seed in range(12):
        pipeline.set_random_seed(seed)
        out, out_mask = apply_segmentation_transform(pipeline, image, mask)
        red = is_object_colour(out.permute(1, 2, 0).numpy())
        cat, background = (out_mask == CAT).numpy(), (out_mask == 0).numpy()
        if cat.sum() < 50:
            continue
        checked += 1
        assert red[cat].mean() > 0.8, f"seed {seed}: mask pixels off the object"
        assert red[background].mean() < 0.02, f"seed {seed}: object under background mask"
        assert set(out_mask.unique().tolist()) <= {0, CAT, IGNORE_INDEX}
    assert checked >= 8


def test_zoomed_out_padding_is_ignored_in_the_mask() -> None:
    image = draw_image(FixtureImage("x"))
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    pipeline = segmentation_train_transform(32, scale_range=(0.5, 0.5))
    _, out_mask = apply_segmentation_transform(pipeline, image, mask)
    assert (out_mask == IGNORE_INDEX).float().mean() == pytest.approx(0.75, abs=0.05)
    assert set(out_mask.unique().tolist()) == {0, IGNORE_INDEX}


def test_eval_transform_keeps_ids() -> None:
    fixture = FixtureImage("x", [FixtureObject("cat", (12, 10, 40, 34))])
    _, out_mask = apply_segmentation_transform(
        segmentation_eval_transform(24), draw_image(fixture), draw_mask(fixture)
    )
    assert set(out_mask.unique().tolist()) == {0, CAT, IGNORE_INDEX}


# --------------------------------------------------------------------------- bad input


def _mask_path(tree: Path, image_id: str = "2008_000001") -> Path:
    return tree / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{image_id}.png"


def _resize_mask(path: Path) -> None:
    with Image.open(path) as png:
        palette, values = png.getpalette(), np.array(png)
    small = Image.fromarray(values[:40, :50], mode="P")
    small.putpalette(palette)
    small.save(path)


def _bad_ids(path: Path) -> None:
    with Image.open(path) as png:
        palette, values = png.getpalette(), np.array(png)
    values[0, 0] = 30
    out = Image.fromarray(values, mode="P")
    out.putpalette(palette)
    out.save(path)


def _rgb_mask(path: Path) -> None:
    with Image.open(path) as png:
        png.convert("RGB").save(path)


def _corrupt_image(path: Path) -> None:
    image = path.parent.parent / "JPEGImages" / f"{path.stem}.jpg"
    image.write_bytes(b"not a jpeg at all")


BAD_MASKS = {
    "size mismatch": (_resize_mask, InvalidMaskError, "50x40 but its image"),
    "ids out of range": (_bad_ids, InvalidMaskError, "class ids [30] outside 0-20 and 255"),
    "rgb mask": (_rgb_mask, InvalidMaskError, "mode is 'RGB'"),
    "corrupt image": (_corrupt_image, CorruptImageError, "cannot decode image"),
}


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_bad_sample_raises_naming_the_file(tree: Path, case: str) -> None:
    damage, error, reason = BAD_MASKS[case]
    path = _mask_path(tree)
    damage(path)
    dataset = VOCSegmentationDataset(tree, "2012", "train")
    with pytest.raises(error) as info:
        dataset[0]
    assert isinstance(info.value, ValueError)
    named = (
        path
        if error is InvalidMaskError
        else path.parent.parent / "JPEGImages" / f"{path.stem}.jpg"
    )
    assert str(named) in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_skip_invalid_serves_the_next_sample(tree: Path, case: str, caplog) -> None:
    damage, _, reason = BAD_MASKS[case]
    damage(_mask_path(tree))
    dataset = VOCSegmentationDataset(tree, "2012", "train", skip_invalid=True)
    with caplog.at_level(logging.WARNING):
        _, target = dataset[0]
        _, again = dataset[0]
    assert target["image_id"] == again["image_id"] == "2008_000002"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2008_000001" in warnings[0] and reason in warnings[0]


def test_missing_mask_raises_or_is_skipped_at_setup(tree: Path, caplog) -> None:
    path = _mask_path(tree)
    path.unlink()
    with pytest.raises(MissingSampleFileError, match=str(path)):
        VOCSegmentationDataset(tree, "2012", "train")
    with caplog.at_level(logging.WARNING):
        dataset = VOCSegmentationDataset(tree, "2012", "train", skip_invalid=True)
    assert [r.image_id for r in dataset.records] == TRAIN[1:]
    assert any(str(path) in r.getMessage() for r in caplog.records)
