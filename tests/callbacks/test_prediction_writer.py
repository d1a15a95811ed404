"""``dck predict`` writes its results: a CSV for classification, one COCO-style JSON for
detection, palette PNG masks for segmentation, for the test set or a folder of images."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dck_lightning.callbacks.prediction_writer import PredictionWriter
from dck_lightning.cli import main
from dck_lightning.data.shapes import SHAPE_NAMES
from dck_lightning.data.voc_common import VOC_CLASSES, VOC_SEGMENTATION_CLASSES, voc_palette

REPO = Path(__file__).resolve().parents[2]
SIZES = [(40, 56), (64, 48), (33, 90)]  # (H, W) of the generated photos
COMMON = [
    "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false",
    "--run.wandb", "disabled",
]  # fmt: skip


def photos(folder: Path, sizes=SIZES) -> list[str]:
    """Noisy RGB pictures in a plain folder (one in a subfolder, one PNG); their names."""
    rng = np.random.default_rng(0)
    names = []
    for index, (height, width) in enumerate(sizes):
        name = f"sub/p{index}.png" if index == 1 else f"p{index}.jpg"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        names.append(name)
    return sorted(names)


def predict(args: list[str]):
    """Run ``dck predict``; the CLI and the folder its prediction writer wrote into."""
    cli = main(["predict", *args, *COMMON])
    (writer,) = [c for c in cli.trainer.callbacks if isinstance(c, PredictionWriter)]
    assert writer.folder.parent == Path(cli.run_dir)
    return cli, writer.folder


def original_sizes(folder: Path) -> dict[str, tuple[int, int]]:
    """``{file name: (height, width)}`` of the JPEGs in ``folder``."""
    sizes = {}
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as image:
            sizes[path.name] = (image.height, image.width)
    return sizes


def voc_sample_photos(year: str) -> Path:
    root = Path(os.environ.get("DCK_SHARED_DATA", REPO.parent / "shared" / "data"))
    folder = root / "voc-sample" / "VOCdevkit" / f"VOC{year}" / "JPEGImages"
    if not folder.is_dir():
        pytest.skip(f"shared VOC sample not found at {folder}")
    return folder


def tiny_backbone() -> list[str]:
    return [
        "--model.init_args.backbone.init_args",
        '{"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}',
    ]


# -- classification ---------------------------------------------------------------------------


def test_classification_writes_a_csv_row_per_image(tmp_path):
    names = photos(tmp_path / "photos")
    cli, out = predict(
        [
            "--run.root",
            str(tmp_path / "runs"),
            "--data.init_args.predict_dir",
            str(tmp_path / "photos"),
        ]
        + tiny_backbone()
    )
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [row["file"] for row in rows] == names
    assert [int(row["index"]) for row in rows] == [0, 1, 2]
    for row in rows:
        assert row["class"] == SHAPE_NAMES[int(row["label"])]
        assert 1 / len(SHAPE_NAMES) <= float(row["probability"]) <= 1
    probabilities = cli.trainer.predict_loop.predictions[0]
    assert float(rows[0]["probability"]) == pytest.approx(float(probabilities[0].max()), abs=1e-6)


def test_classification_of_the_test_set_names_rows_by_index(tmp_path):
    _, out = predict(
        ["--run.root", str(tmp_path), "--data.init_args.num_test", "5"] + tiny_backbone()
    )
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(row["index"], row["file"]) for row in rows] == [(str(i), "") for i in range(5)]


def test_a_second_predict_into_the_same_run_folder_keeps_the_first(tmp_path):
    args = ["--run.root", str(tmp_path), "--run.version", "v", "--data.init_args.num_test", "3"]
    _, first = predict(args + tiny_backbone())
    _, second = predict(args + tiny_backbone())
    assert first.name == "predictions" and second.name == "predictions_1"
    assert (first / "predictions.csv").is_file() and (second / "predictions.csv").is_file()


# -- detection --------------------------------------------------------------------------------


def detection_args(tmp_path: Path, config: str, folder: Path, size: int) -> list[str]:
    return [
        "-c", str(REPO / "configs" / config),
        "--run.root", str(tmp_path / "runs"),
        "--data.init_args.predict_dir", str(folder),
        "--data.init_args.image_size", str(size),
        "--data.init_args.num_workers", "0",
        "--model.init_args.score_thresh", "0.0",
        "--model.init_args.detections_per_img", "5",
        "--model.init_args.fpn_channels", "16",
        "--model.init_args.head_convs", "1",
        *tiny_backbone(),
    ]  # fmt: skip


def check_coco(path: Path, files: dict[str, tuple[int, int]], classes) -> dict:
    coco = json.loads(path.read_text())
    assert [c["name"] for c in coco["categories"]] == list(classes)
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(classes) + 1))
    images = {image["id"]: image for image in coco["images"]}
    assert sorted(image["file_name"] for image in images.values()) == sorted(files)
    for image in images.values():  # the original size of each file
        assert (image["height"], image["width"]) == files[image["file_name"]]
    assert coco["annotations"], "a random detector with score_thresh 0 detects something"
    for annotation in coco["annotations"]:
        image = images[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= image["width"] + 0.01 and y + h <= image["height"] + 0.01
        assert 1 <= annotation["category_id"] <= len(classes) and 0 <= annotation["score"] <= 1
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    return coco


def test_detection_writes_one_coco_json_in_original_coordinates(tmp_path):
    names = photos(tmp_path / "photos")
    _, out = predict(detection_args(tmp_path, "shapes_detection.yaml", tmp_path / "photos", 64))
    sizes = dict(zip(names, [SIZES[0], SIZES[2], SIZES[1]]))  # sorted: p0, p2, sub/p1
    coco = check_coco(out / "detections.json", sizes, SHAPE_NAMES)
    wide = next(i for i in coco["images"] if i["file_name"] == "p2.jpg")
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == wide["id"]]
    assert max(x + w for x, _, w, _ in boxes) > 64  # scaled back past the 64-px network input


def test_detection_on_the_voc_sample_images(tmp_path):
    folder = voc_sample_photos("2007")
    _, out = predict(detection_args(tmp_path, "voc_detection_fcos.yaml", folder, 64))
    check_coco(out / "detections.json", original_sizes(folder), VOC_CLASSES)


# -- segmentation -----------------------------------------------------------------------------


def segmentation_args(tmp_path: Path, config: str, folder: Path) -> list[str]:
    return [
        "-c", str(REPO / "configs" / config),
        "--run.root", str(tmp_path / "runs"),
        "--data.init_args.predict_dir", str(folder),
        "--data.init_args.image_size", "64",
        "--data.init_args.num_workers", "0",
        "--model.init_args.head_kwargs", '{"fpn_channels": 8, "channels": 8, "norm": "gn"}',
        *tiny_backbone(),
    ]  # fmt: skip


def check_masks(out: Path, files: dict[str, tuple[int, int]], num_classes: int) -> None:
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == sorted(str(Path(name).with_suffix(".png")) for name in files)
    for name, size in files.items():
        with Image.open((out / "masks" / name).with_suffix(".png")) as mask:
            assert mask.mode == "P" and (mask.height, mask.width) == size
            assert mask.getpalette()[: 3 * num_classes] == voc_palette()[: 3 * num_classes]
            assert np.asarray(mask).max() < num_classes


def test_segmentation_writes_palette_masks_at_the_original_size(tmp_path):
    names = photos(tmp_path / "photos")
    cli, out = predict(segmentation_args(tmp_path, "shapes_segmentation.yaml", tmp_path / "photos"))
    check_masks(out, dict(zip(names, [SIZES[0], SIZES[2], SIZES[1]])), 7)
    maps = cli.trainer.predict_loop.predictions[0]  # what predict_step returned, as written
    with Image.open(out / "masks" / "p0.png") as mask:
        assert np.array_equal(np.asarray(mask), maps[0].numpy())


def test_segmentation_on_the_voc_sample_images(tmp_path):
    folder = voc_sample_photos("2012")
    _, out = predict(segmentation_args(tmp_path, "voc_segmentation_fpn.yaml", folder))
    check_masks(out, original_sizes(folder), len(VOC_SEGMENTATION_CLASSES))


# -- images that do not decode ----------------------------------------------------------------


def unreadable(folder: Path) -> list[str]:
    """Two files that do not decode: not an image, and a truncated PNG; their names."""
    (folder / "bad.jpg").write_bytes(b"this is not a JPEG")
    image = Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8))
    image.save(folder / "broken.png")
    data = (folder / "broken.png").read_bytes()
    (folder / "broken.png").write_bytes(data[: len(data) // 2])
    return ["bad.jpg", "broken.png"]


def test_the_predict_set_gives_a_marked_placeholder_for_an_unreadable_file(tmp_path):
    from dck_lightning.data import SyntheticShapesDataModule

    photos(tmp_path)
    unreadable(tmp_path)
    dm = SyntheticShapesDataModule(image_size=16, predict_dir=str(tmp_path))
    dataset = dm.predict_dataloader().dataset
    by_file = {target["file"]: (image, target) for image, target in dataset}
    image, target = by_file["bad.jpg"]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and not image.any()
    assert "bad.jpg" in target["skipped"] and "skipped" not in by_file["p0.jpg"][1]


def test_an_unreadable_image_is_skipped_named_and_the_rest_predicted(tmp_path):
    names = photos(tmp_path / "photos")
    bad = unreadable(tmp_path / "photos")
    args = ["--run.root", str(tmp_path / "runs"), "--data.init_args.batch_size", "2",
            "--data.init_args.predict_dir", str(tmp_path / "photos")]  # fmt: skip
    with pytest.warns(UserWarning, match="skipped, not predicted") as warned:
        _, out = predict(args + tiny_backbone())  # batch 1 holds the two unreadable files
    messages = [str(w.message) for w in warned if "skipped" in str(w.message)]
    assert len(messages) == 2  # one line per file, naming it
    assert all(str(tmp_path / "photos" / name) in m for name, m in zip(bad, sorted(messages)))
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [row["file"] for row in rows] == names
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert [(row["index"], row["file"]) for row in skipped] == [("0", bad[0]), ("1", bad[1])]
    assert all(row["file"] in row["reason"] for row in skipped)


def test_segmentation_and_detection_skip_an_unreadable_image(tmp_path):
    names = photos(tmp_path / "photos")
    unreadable(tmp_path / "photos")
    files = dict(zip(names, [SIZES[0], SIZES[2], SIZES[1]]))
    with pytest.warns(UserWarning, match="skipped, not predicted"):
        _, out = predict(
            segmentation_args(tmp_path, "shapes_segmentation.yaml", tmp_path / "photos")
        )
    check_masks(out, files, 7)  # masks of the readable images only
    assert len(list(csv.DictReader((out / "skipped.csv").open()))) == 2
    with pytest.warns(UserWarning, match="skipped, not predicted"):
        _, out = predict(detection_args(tmp_path, "shapes_detection.yaml", tmp_path / "photos", 64))
    check_coco(out / "detections.json", files, SHAPE_NAMES)
    assert len(list(csv.DictReader((out / "skipped.csv").open()))) == 2
