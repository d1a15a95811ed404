"""Fixtures of the data tests: the writers of ``tests/data_fixtures.py`` as ``data_files``."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from data_fixtures import (
    CIFAR_PER_BATCH,
    CIFAR_TEST,
    MNIST_TEST,
    MNIST_TRAIN,
    shared_data_dir,
    write_cifar_batches,
    write_idx,
    write_image_folder,
    write_mnist,
)


@pytest.fixture
def data_files() -> SimpleNamespace:
    """The fixture writers and constants of ``data_fixtures``, as one namespace."""
    return SimpleNamespace(
        shared_data_dir=shared_data_dir,
        write_idx=write_idx,
        write_mnist=write_mnist,
        write_cifar_batches=write_cifar_batches,
        write_image_folder=write_image_folder,
        MNIST_TRAIN=MNIST_TRAIN,
        MNIST_TEST=MNIST_TEST,
        CIFAR_TRAIN=5 * CIFAR_PER_BATCH,
        CIFAR_TEST=CIFAR_TEST,
    )


@pytest.fixture
def fake_trainer():
    """A stand-in for ``datamodule.trainer``: ``fake_trainer(training=True)``."""

    def make(training: bool = True, global_rank: int = 0) -> SimpleNamespace:
        return SimpleNamespace(training=training, global_rank=global_rank)

    return make


@pytest.fixture
def mnist_dir(tmp_path: Path) -> tuple[Path, dict]:
    """A tmp ``data_dir`` with uncompressed MNIST IDX files."""
    return tmp_path, write_mnist(tmp_path)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> tuple[Path, dict]:
    """A tmp ``data_dir`` with CIFAR-10 pickle batches."""
    return tmp_path, write_cifar_batches(tmp_path)
