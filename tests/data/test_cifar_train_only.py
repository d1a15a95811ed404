"""CIFAR-10 from a class-folder tree that has only ``train/``: fit on it, validate and test on
seeded held-out parts of it."""

from __future__ import annotations

import pytest
import torch

from dck_lightning.data import CIFAR10DataModule
from dck_lightning.data.cifar import CIFAR10_CLASSES
from dck_lightning.data.errors import DataNotFoundError


@pytest.fixture
def train_only(tmp_path, data_files):
    data_files.write_image_folder(tmp_path / "train", CIFAR10_CLASSES, per_class=4, size=(32, 32))
    return tmp_path


def test_fit_reads_train_only_and_validates_on_a_held_out_part(train_only):
    dm = CIFAR10DataModule(str(train_only), val_split=0.25, batch_size=8)
    dm.setup("fit")
    assert len(dm.train_dataset) == 30 and len(dm.val_dataset) == 10
    with pytest.raises(DataNotFoundError, match="test_split 0.1"):
        dm.setup("test")


def test_test_split_is_a_seeded_held_out_part_disjoint_from_train_and_val(train_only):
    def splits(seed: int):
        dm = CIFAR10DataModule(str(train_only), val_split=0.25, test_split=0.25, seed=seed)
        dm.setup("fit")
        dm.setup("test")
        return [
            d.tensors[0].flatten(1) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)
        ]

    train, val, test = splits(0)
    assert (len(train), len(val), len(test)) == (22, 8, 10)
    every = torch.cat([train, val, test])
    assert torch.unique(every, dim=0).shape[0] == 40  # disjoint, and together all 40 images
    assert all(torch.equal(a, b) for a, b in zip(splits(0), (train, val, test)))  # reproducible
    assert not torch.equal(splits(1)[2], test)


def test_the_shared_cifar_sample_fits_and_tests_from_train_only(shared_data):
    folder = shared_data / "cifar10-train-10k"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    dm = CIFAR10DataModule(str(folder), val_split=0.1, test_split=0.1)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (8100, 900, 1000)
    assert dm.test_dataset.tensors[1].bincount(minlength=10).min() > 50
