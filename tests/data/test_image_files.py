"""``predict_dir``: predict on a plain folder of images, through the DataModule's test transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from voc_fixtures import shared_voc_sample

from dck_lightning.data import ImageFolderDataModule, MNISTDataModule, SyntheticShapesDataModule
from dck_lightning.data.image_files import NoImagesError
from dck_lightning.data.voc import VOCDetectionDataModule, VOCSegmentationDataModule


def write_images(folder: Path, sizes: list[tuple[int, int]], mode: str = "RGB") -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate(sizes):
        shape = (height, width, 3) if mode == "RGB" else (height, width)
        path = folder / ("sub" if index % 2 else "") / f"img{index}.{'png' if index % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_a_folder_of_images_of_any_size_becomes_the_predict_set(tmp_path):
    write_images(tmp_path / "mine", [(40, 30), (17, 50), (32, 32)])
    dm = SyntheticShapesDataModule(image_size=32, batch_size=2, predict_dir=str(tmp_path / "mine"))
    dm.setup("predict")
    assert dm.test_dataset is None  # the test split is not built for a predict_dir
    batches = list(dm.predict_dataloader())
    images = torch.cat([b[0] for b in batches])
    targets = [t for b in batches for t in b[1]]
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert [t["file"] for t in targets] == ["img0.jpg", "img2.jpg", "sub/img1.png"]
    assert [t["orig_size"].tolist() for t in targets] == [[40, 30], [32, 32], [17, 50]]
    assert [t["image_id"] for t in targets] == ["img0", "img2", "img1"]
    normalised, _ = dm.on_after_batch_transfer(batches[0], 0)
    assert normalised.dtype == torch.float32


def test_greyscale_models_read_greyscale(tmp_path):
    write_images(tmp_path / "digits", [(28, 28), (56, 40)])
    dm = MNISTDataModule(str(tmp_path / "none"), predict_dir=str(tmp_path / "digits"))
    dm.setup("predict")  # no MNIST files needed to predict on a folder
    images, targets = next(iter(dm.predict_dataloader()))
    assert images.shape == (2, 1, 28, 28) and targets[1]["orig_size"].tolist() == [56, 40]


def test_image_folder_predict_images_are_its_test_images(tmp_path, data_files):
    """The same files through ``predict_dir`` and through the test split: identical tensors."""
    data_files.write_image_folder(tmp_path / "train", ["a", "b"], per_class=2, size=(20, 30))
    written = data_files.write_image_folder(tmp_path / "test", ["a", "b"], size=(50, 36))
    dm = ImageFolderDataModule(
        str(tmp_path), image_size=(24, 16), predict_dir=str(tmp_path / "test")
    )
    dm.setup("test")
    predicted = torch.cat([images for images, _ in dm.predict_dataloader()])
    assert len(predicted) == sum(len(v) for v in written.values())
    assert torch.equal(predicted, dm.test_dataset.tensors[0])  # same files, same order


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_folder_without_images_is_a_clear_error(tmp_path, make):
    folder = tmp_path / "photos"
    if make == "empty":
        folder.mkdir()
        (folder / "readme.md").write_text("x")
    dm = SyntheticShapesDataModule(image_size=16, predict_dir=str(folder))
    dm.setup("predict")
    with pytest.raises(NoImagesError) as info:
        dm.predict_dataloader()
    state = "holds no image file" if make == "empty" else "is not a folder"
    assert f"predict_dir={folder.resolve()} {state}" in str(info.value)
    assert ".jpg" in str(info.value) and isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(
    "cls, year, sets",
    [
        (VOCDetectionDataModule, "2007", {"test_sets": ["2007-test"]}),
        (VOCSegmentationDataModule, "2012", {"test_set": "val"}),
    ],
)
def test_voc_predict_images_get_the_test_transform(cls, year, sets, tmp_path):
    """A JPEG of the VOC sample predicted from a plain folder is exactly the image its test
    set gives the model (the same resize), and needs no VOC layout."""
    sample = shared_voc_sample()
    if sample is None:
        pytest.skip("shared VOC sample ($DCK_SHARED_DATA/voc-sample) not available")
    folder = tmp_path / "photos"
    folder.mkdir()
    for jpeg in (sample / "VOCdevkit" / f"VOC{year}" / "JPEGImages").glob("*.jpg"):
        (folder / jpeg.name).write_bytes(jpeg.read_bytes())
    test = cls(str(sample), image_size=48, num_workers=0, **sets)
    test.setup("test")
    files = cls(
        str(tmp_path / "no-voc-here"), image_size=48, num_workers=0, predict_dir=str(folder)
    )
    files.setup("predict")
    by_id = {
        target["image_id"]: (image, target)
        for images, targets in files.predict_dataloader()
        for image, target in zip(images, targets)
    }
    assert len(test.test_dataset) >= 3
    for index in range(len(test.test_dataset)):
        image, target = test.test_dataset[index]
        predicted, predict_target = by_id[target["image_id"]]
        assert torch.equal(predicted, image)
        assert torch.equal(predict_target["orig_size"], target["orig_size"])
