"""Pascal VOC detection: parsing, DataModule, box pipelines, errors (offline, tiny images)."""

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from voc_fixtures import (
    FixtureImage,
    FixtureObject,
    draw_image,
    shared_voc_sample,
    write_detection_tree,
    write_voc,
)

from dck_lightning.data.collate import detection_collate
from dck_lightning.data.errors import DataNotFoundError
from dck_lightning.data.transforms import (
    apply_detection_transform,
    detection_eval_transform,
    detection_train_transform,
)
from dck_lightning.data.voc import VOCDetectionDataModule
from dck_lightning.data.voc_common import (
    VOC_CLASSES,
    CorruptImageError,
    InvalidAnnotationError,
    InvalidSampleError,
    MissingSampleFileError,
    seed_worker,
    set_seed_source,
)
from dck_lightning.data.voc_detection import VOCDetectionDataset

DOG, PERSON, CHAIR = (
    VOC_CLASSES.index("dog"),
    VOC_CLASSES.index("person"),
    VOC_CLASSES.index("chair"),
)


def is_object_colour(pixels: np.ndarray) -> np.ndarray:
    """Red-dominant pixels (the drawn objects survive colour jitter as such)."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (r > g + 60) & (r > b + 60)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_detection_tree(tmp_path / "data")


def datamodule(data_dir: Path, **kwargs) -> VOCDetectionDataModule:
    options = dict(
        data_dir=str(data_dir),
        train_sets=["2007-trainval"],
        test_sets=["2007-test"],
        image_size=32,
        batch_size=2,
        num_workers=0,
    )
    options.update(kwargs)
    return VOCDetectionDataModule(**options)


# --------------------------------------------------------------------------- real sample


@pytest.fixture
def sample() -> Path:
    root = shared_voc_sample()
    if root is None:
        pytest.skip("shared VOC sample (../shared/data/voc-sample) not available")
    return root


def test_real_sample_000001_boxes_and_classes(sample: Path) -> None:
    dataset = VOCDetectionDataset(sample, "2007", "test")
    record = next(r for r in dataset.records if r.image_id == "000001")
    assert (record.height, record.width) == (500, 353)
    assert record.labels.tolist() == [DOG, PERSON]
    # XML: dog 48 240 195 371, person 8 12 352 498 (1-based) -> xmin-1, ymin-1, xmax, ymax
    np.testing.assert_allclose(record.boxes, [[47, 239, 195, 371], [7, 11, 352, 498]])
    assert record.difficult.tolist() == [False, False]

    image, target = dataset[[r.image_id for r in dataset.records].index("000001")]
    assert image.shape == (3, 500, 353) and image.dtype == torch.uint8
    assert target["orig_size"].tolist() == [500, 353]
    torch.testing.assert_close(target["boxes"], torch.tensor(record.boxes))


def test_real_sample_difficult_and_parts(sample: Path) -> None:
    voc07 = {r.image_id: r for r in VOCDetectionDataset(sample, "2007", "trainval").records}
    assert voc07["000005"].labels.tolist() == [CHAIR] * 5
    assert voc07["000005"].difficult.tolist() == [False, False, True, False, True]
    assert voc07["000004"].boxes[:, 2].max() == 500  # xmax == width stays inside
    voc12 = {r.image_id: r for r in VOCDetectionDataset(sample, "2012", "trainval").records}
    # person with head/hand/foot <part>s: one object
    assert voc12["2007_000027"].labels.tolist() == [PERSON]


def test_real_sample_datamodule(sample: Path) -> None:
    dm = datamodule(
        sample,
        train_sets=["2007-trainval", "2012-trainval"],
        val_sets=["2007-test"],
        image_size=64,
    )
    dm.setup("fit")
    assert len(dm.train_dataset) == 10 and len(dm.val_dataset) == 5
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 64, 64)
    first = targets[0]
    assert first["image_id"] == "000001"
    scale = torch.tensor([64 / 353, 64 / 500, 64 / 353, 64 / 500])
    torch.testing.assert_close(
        first["boxes"], torch.tensor([[47, 239, 195, 371], [7, 11, 352, 498.0]]) * scale
    )
    voc07 = dm.train_dataset.datasets[0]
    _, target = voc07[[r.image_id for r in voc07.records].index("000005")]
    # of its 5 chairs, the 2 difficult ones are left out of training targets
    assert not target["difficult"].any() and len(target["labels"]) <= 3


# --------------------------------------------------------------------------- DataModule


def test_datamodule_contract(tree: Path) -> None:
    dm = datamodule(tree)
    assert (dm.num_classes, dm.in_channels, dm.task) == (20, 3, "detection")
    assert dm.class_names == list(VOC_CLASSES) and dm.image_size == (32, 32)
    assert len(dm.mean) == len(dm.std) == 3
    dm.prepare_data()  # download=False: nothing to do, no network
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8  # a quarter the bytes
    for target in targets:
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64 and target["difficult"].dtype == torch.bool
        assert target["orig_size"].tolist() == [48, 64]
        assert not target["difficult"].any()  # difficult objects left out of training
    # on the device: float, normalised with the ImageNet statistics; targets untouched
    floats, same = dm.on_after_batch_transfer((images, targets), 0)
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    torch.testing.assert_close(floats, (images / 255.0 - mean) / std)
    assert same is targets


def test_validation_is_held_out_of_the_training_images_not_the_test_set(tree: Path) -> None:
    """Without val_sets, a seeded share of the training images validates (never the reported
    test set); they are left out of training and get the evaluation pipeline."""
    ids = lambda dataset: [dataset[i][1]["image_id"] for i in range(len(dataset))]  # noqa: E731
    dm = datamodule(tree, val_split=0.5)
    dm.setup("fit")
    train, val = ids(dm.train_dataset), ids(dm.val_dataset)
    assert len(train) == len(val) == 2 and not set(train) & set(val)
    assert set(train) | set(val) == {"000001", "000002", "000003", "000004"}
    assert dm.val_sets == [] and dm.test_sets == [("2007", "test")]
    again = datamodule(tree, val_split=0.5)
    again.setup("validate")
    assert ids(again.val_dataset) == val  # the same images on every run (and resume)
    image, target = dm.val_dataset[0]
    assert image.shape == (3, 32, 32)
    if target["image_id"] == "000002":
        assert target["difficult"].tolist() == [False, True]  # eval targets keep difficult


def test_eval_targets_keep_difficult_and_scale_per_axis(tree: Path) -> None:
    dm = datamodule(tree, val_sets=["2007-test"])
    dm.setup("validate")
    _, targets = next(iter(dm.val_dataloader()))
    second = targets[1]
    assert second["difficult"].tolist() == [False, True]
    # (5, 5, 20, 20) -> (4, 4, 20, 20) pixels of 64x48 -> x * 32/64, y * 32/48
    torch.testing.assert_close(
        second["boxes"][0], torch.tensor([2.0, 4 * 32 / 48, 10.0, 20 * 32 / 48])
    )


def test_image_without_objects_gives_empty_boxes(tree: Path) -> None:
    dm = datamodule(tree, batch_size=4)
    dm.setup("test")
    _, targets = next(iter(dm.test_dataloader()))
    empty = next(t for t in targets if t["image_id"] == "000003")
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["boxes"].dtype == torch.float32 and empty["labels"].dtype == torch.int64


def test_keep_difficult_in_train(tree: Path) -> None:
    dm = datamodule(tree, keep_difficult_in_train=True, augment=False, val_sets=["2007-test"])
    dm.setup("fit")
    _, target = dm.train_dataset[1]
    assert target["difficult"].tolist() == [False, True]


def test_only_the_stage_sets_are_required(tmp_path: Path) -> None:
    data_dir = write_detection_tree(tmp_path / "data")  # VOC2007 only
    dm = VOCDetectionDataModule(str(data_dir), image_size=32, num_workers=0)  # default 07+12 train
    dm.setup("test")
    assert len(dm.test_dataset) == 4
    with pytest.raises(DataNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "VOCdevkit/VOC2012/ImageSets/Main/trainval.txt" in message
    assert (
        "--dataset voc2012" in message
        and "VOC2007/ImageSets/Main/trainval.txt" not in message.split("Missing:")[-1]
    )


def test_missing_data_error_names_dir_files_and_command(tmp_path: Path) -> None:
    dm = VOCDetectionDataModule(str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(DataNotFoundError) as info:
        dm.setup("test")
    message = str(info.value)
    assert str((tmp_path / "nowhere").resolve()) in message
    assert "VOCdevkit/VOC2007/ImageSets/Main/test.txt" in message
    assert "VOCdevkit/VOC2007/JPEGImages/" in message
    assert f"dck-prepare-data --dataset voc2007 --data-dir {tmp_path / 'nowhere'}" in message
    assert isinstance(info.value, FileNotFoundError)


def test_cli_types_parse() -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(VOCDetectionDataModule, "data")
    cfg = parser.parse_args(["--data.train_sets=[2012-train]", "--data.scale_range=[0.8, 1.2]"])
    dm = parser.instantiate(cfg).data
    assert dm.train_sets == [("2012", "train")] and dm.val_sets == [] and dm.val_split == 0.05
    assert dm.scale_range == (0.8, 1.2)


def test_bad_set_spec_is_rejected() -> None:
    with pytest.raises(ValueError, match="2007-trainval"):
        VOCDetectionDataModule(train_sets=["voc07"])


# --------------------------------------------------------------------------- augmentation


def test_boxes_stay_on_their_objects_through_train_augmentation() -> None:
    fixture = FixtureImage("x", [FixtureObject("dog", (12, 10, 40, 34))])
    image = draw_image(fixture)
    boxes = np.array([[11, 9, 40, 34]], dtype=np.float32)
    pipeline = detection_train_transform(64, scale_range=(0.5, 1.5))
    seen = 0
    for seed in range(12):
        pipeline.set_random_seed(seed)
        out, out_boxes, labels, _ = apply_detection_transform(
            pipeline, image, boxes, np.array([DOG]), np.array([False])
        )
        if len(out_boxes) == 0:
            continue
        seen += 1
        assert labels.tolist() == [DOG]
        red = is_object_colour(out.permute(1, 2, 0).numpy())
        x1, y1, x2, y2 = out_boxes[0].round().int().tolist()
        inside = np.zeros_like(red)
        inside[y1:y2, x1:x2] = True
        assert red[inside].mean() > 0.8, (
            f"seed {seed}: box {out_boxes[0].tolist()} misses the object"
        )
        assert red[~inside].mean() < 0.05, f"seed {seed}: object pixels outside the box"
    assert seen >= 8


def test_boxes_pushed_out_by_augmentation_leave_empty_targets_that_collate() -> None:
    image = draw_image(FixtureImage("x", [FixtureObject("dog", (1, 1, 6, 6))]))
    pipeline = detection_train_transform(32, scale_range=(3.0, 3.0))
    outputs = []
    for seed in range(20):
        pipeline.set_random_seed(seed)
        img, boxes, labels, difficult = apply_detection_transform(
            pipeline, image, np.array([[0, 0, 6, 6]]), np.array([DOG]), np.array([False])
        )
        outputs.append((img, {"boxes": boxes, "labels": labels, "difficult": difficult}))
    empty = [target for _, target in outputs if len(target["boxes"]) == 0]
    assert empty
    assert all(t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) for t in empty)
    kept = apply_detection_transform(
        detection_eval_transform(32),
        image,
        np.array([[0, 0, 6, 6]]),
        np.array([DOG]),
        np.array([False]),
    )
    outputs.append((kept[0], {"boxes": kept[1], "labels": kept[2], "difficult": kept[3]}))
    images, targets = detection_collate(outputs)
    assert images.shape == (21, 3, 32, 32) and len(targets) == 21
    assert targets[-1]["boxes"].shape == (1, 4)


def test_sample_seeds_come_from_the_seed_source_per_rank_and_worker(tree: Path) -> None:
    dm = datamodule(tree, image_size=32, val_sets=["2007-test"])
    dm.setup("fit")

    def first_image(seed: int) -> torch.Tensor:
        set_seed_source(dm.train_dataset, torch.Generator().manual_seed(seed))
        return dm.train_dataset[0][0]

    torch.testing.assert_close(first_image(1), first_image(1))
    assert not torch.equal(first_image(1), first_image(2))

    def worker_image(worker_seed: int, rank: int) -> torch.Tensor:
        info = SimpleNamespace(seed=worker_seed, dataset=dm.train_dataset)
        with patch("dck_lightning.data.voc_common.get_worker_info", return_value=info):
            seed_worker(0, rank=rank)
        return dm.train_dataset[0][0]

    torch.testing.assert_close(worker_image(5, 0), worker_image(5, 0))
    assert not torch.equal(worker_image(5, 0), worker_image(5, 1))
    assert not torch.equal(worker_image(5, 0), worker_image(6, 0))


# --------------------------------------------------------------------------- bad input


def _corrupt_jpeg(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _bad_xml(path: Path) -> None:
    path.write_text(path.read_text()[:-30])


def _rewrite_box(box: str):
    def edit(path: Path) -> None:
        text = path.read_text()
        start, end = text.index("<bndbox>"), text.index("</bndbox>")
        path.write_text(text[:start] + box + text[end + len("</bndbox>") :])

    return edit


BAD_INPUTS = {
    "missing image": ("JPEGImages/000001.jpg", Path.unlink, MissingSampleFileError, "not found"),
    "missing annotation": (
        "Annotations/000001.xml",
        Path.unlink,
        MissingSampleFileError,
        "not found",
    ),
    "bad xml": ("Annotations/000001.xml", _bad_xml, InvalidAnnotationError, "does not parse"),
    "box outside": (
        "Annotations/000001.xml",
        _rewrite_box(
            "<bndbox><xmin>10</xmin><ymin>8</ymin><xmax>90</xmax><ymax>30</ymax></bndbox>"
        ),
        InvalidAnnotationError,
        "outside the 64x48 image",
    ),
    "max before min": (
        "Annotations/000001.xml",
        _rewrite_box("<bndbox><xmin>10</xmin><ymin>8</ymin><xmax>9</xmax><ymax>30</ymax></bndbox>"),
        InvalidAnnotationError,
        "max corner before its min corner",
    ),
    "unknown class": (
        "Annotations/000001.xml",
        lambda p: p.write_text(p.read_text().replace("<name>dog</name>", "<name>unicorn</name>")),
        InvalidAnnotationError,
        "unknown class 'unicorn'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_naming_the_file(tree: Path, case: str) -> None:
    relative, damage, error, reason = BAD_INPUTS[case]
    path = tree / "VOCdevkit" / "VOC2007" / relative
    damage(path)
    with pytest.raises(error) as info:
        VOCDetectionDataset(tree, "2007", "trainval")
    assert isinstance(info.value, (ValueError, FileNotFoundError))
    assert str(path) in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_skip_invalid_drops_the_sample_with_a_warning(tree: Path, case: str, caplog) -> None:
    relative, damage, _, reason = BAD_INPUTS[case]
    path = tree / "VOCdevkit" / "VOC2007" / relative
    damage(path)
    with caplog.at_level(logging.WARNING):
        dataset = VOCDetectionDataset(tree, "2007", "trainval", skip_invalid=True)
    assert [r.image_id for r in dataset.records] == ["000002", "000003", "000004"]
    assert any(
        str(path) in record.getMessage() and reason in record.getMessage()
        for record in caplog.records
    )


def test_one_pixel_wide_and_high_boxes_are_valid(tree: Path) -> None:
    """VOC corners are inclusive and 1-based: ``xmin == xmax`` is a box one pixel wide."""
    xml = tree / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    _rewrite_box("<bndbox><xmin>10</xmin><ymin>8</ymin><xmax>10</xmax><ymax>8</ymax></bndbox>")(xml)
    dataset = VOCDetectionDataset(tree, "2007", "trainval")
    assert dataset.records[0].boxes.tolist() == [[9.0, 7.0, 10.0, 8.0]]
    _, target = dataset[0]  # the eval pipeline (original size) keeps it
    assert target["boxes"].tolist() == [[9.0, 7.0, 10.0, 8.0]] and target["labels"].tolist() == [
        DOG
    ]


def test_corrupt_jpeg_raises_on_load_or_is_skipped(tree: Path, caplog) -> None:
    path = tree / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg"
    _corrupt_jpeg(path)
    dataset = VOCDetectionDataset(tree, "2007", "trainval")
    with pytest.raises(CorruptImageError, match=str(path)):
        dataset[0]
    skipping = VOCDetectionDataset(tree, "2007", "trainval", skip_invalid=True)
    with caplog.at_level(logging.WARNING):
        _, target = skipping[0]
    assert target["image_id"] == "000002"  # the next valid sample, never a wrong label
    assert any(str(path) in record.getMessage() for record in caplog.records)


def test_annotation_size_must_match_the_image(tree: Path) -> None:
    xml = tree / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>80</width>"))
    dataset = VOCDetectionDataset(tree, "2007", "trainval")
    with pytest.raises(InvalidSampleError, match="differs from the image"):
        dataset[0]


def test_size_comes_from_the_image_when_the_xml_has_none(tree: Path) -> None:
    xml = tree / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    text = xml.read_text()
    xml.write_text(text[: text.index("<size>")] + text[text.index("</size>") + len("</size>") :])
    record = VOCDetectionDataset(tree, "2007", "trainval").records[0]
    assert (record.height, record.width) == (48, 64)


def test_voc_layout_accepts_the_devkit_folder_itself(tmp_path: Path) -> None:
    data_dir = write_voc(
        tmp_path / "d",
        [FixtureImage("a", [FixtureObject("cat", (2, 2, 9, 9))])],
        main_sets={"val": ["a"]},
    )
    assert len(VOCDetectionDataset(data_dir / "VOCdevkit", "2007", "val")) == 1
    shutil.rmtree(data_dir / "VOCdevkit" / "VOC2007" / "Annotations")
    with pytest.raises(DataNotFoundError, match="VOCdevkit/VOC2007/Annotations/"):
        VOCDetectionDataset(data_dir, "2007", "val")
