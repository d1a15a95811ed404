"""MNIST, CIFAR-10 and image-folder DataModules on tiny fixtures in the real formats.

All offline: downloads are replaced by failures where a test needs one.
"""

import configparser
import importlib
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision.datasets
from torch import nn
from torchvision.datasets.mnist import read_image_file, read_label_file

from dck_lightning.data import (
    CIFAR10_CLASSES,
    MNIST_FILES,
    CIFAR10DataModule,
    DataNotFoundError,
    ImageFolderDataModule,
    MNISTDataModule,
    prepare,
    random_affine,
    random_crop,
    random_horizontal_flip,
    read_idx,
    split_train_val,
    write_idx,
)

REPO = Path(__file__).resolve().parents[2]


def _all_batches(loader):
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


# -- IDX reader ----------------------------------------------------------------------------


def test_read_idx_plain_and_gzip_match_torchvision(tmp_path, data_files):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    raw = data_files.write_idx(tmp_path / "raw" / "images", images)
    raw_labels = data_files.write_idx(tmp_path / "raw" / "labels", labels)
    gz = data_files.write_idx(tmp_path / "gz" / "images", images, compress=True)
    assert gz.suffix == ".gz"
    assert torch.equal(read_idx(raw), torch.from_numpy(images))
    assert torch.equal(read_idx(gz), read_idx(raw))
    assert torch.equal(read_idx(raw), read_image_file(str(raw)))
    assert torch.equal(read_idx(raw_labels).long(), read_label_file(str(raw_labels)))


def test_read_idx_rejects_garbage(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_write_idx_gzips_by_name_and_rejects_values_beyond_a_byte(tmp_path):
    """What the benchmark and evaluation scripts write: int64 digits, ``.gz`` as MNIST ships."""
    digits = np.random.default_rng(1).integers(0, 256, (4, 28, 28))
    path = write_idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", digits)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert torch.equal(read_idx(path), torch.from_numpy(digits.astype(np.uint8)))
    with pytest.raises(ValueError, match="labels.*holds bytes.*256"):
        write_idx(tmp_path / "labels", np.array([0, 256]))


def test_mnist_file_names_follow_torchvision():
    names = {Path(name).stem for name, _ in torchvision.datasets.MNIST.resources}
    assert names == {name for pair in MNIST_FILES.values() for name in pair}


# -- MNIST ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_mnist_loads_splits(tmp_path, data_files, compress):
    written = data_files.write_mnist(tmp_path, compress=compress)
    dm = MNISTDataModule(str(tmp_path), val_split=0.1, batch_size=8)
    dm.setup("fit")
    dm.setup("test")
    train_x, train_y = dm.train_dataset.tensors
    val_x, val_y = dm.val_dataset.tensors
    test_x, test_y = dm.test_dataset.tensors
    assert (len(train_y), len(val_y), len(test_y)) == (18, 2, 10)
    assert train_x.dtype == torch.uint8 and train_x.shape[1:] == (1, 28, 28)
    assert train_y.dtype == torch.int64
    assert torch.equal(test_x[:, 0], torch.from_numpy(written["test"][0]))
    assert torch.equal(test_y, torch.from_numpy(written["test"][1]).long())
    # train + val is exactly the training file
    all_x = torch.cat([train_x, val_x])[:, 0].flatten(1)
    expected = torch.from_numpy(written["train"][0]).flatten(1)
    assert sorted(map(tuple, all_x.tolist())) == sorted(map(tuple, expected.tolist()))
    assert dm.num_classes == 10 and dm.in_channels == 1 and dm.class_names[3] == "3"
    assert dm.image_size == (28, 28) and dm.task == "classification"
    assert dm.mean == (0.1307,) and dm.std == (0.3081,)


def test_mnist_flat_layout_and_test_only(tmp_path, data_files):
    data_files.write_mnist(tmp_path, compress=True, splits=("test",), flat=True)
    dm = MNISTDataModule(str(tmp_path))
    dm.setup("test")
    assert len(dm.test_dataset) == data_files.MNIST_TEST
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte"):
        dm.setup("fit")


def test_mnist_legacy_processed_files(tmp_path):
    folder = tmp_path / "MNIST" / "processed"
    folder.mkdir(parents=True)
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    labels = torch.arange(7)
    torch.save((images, labels), folder / "test.pt")
    dm = MNISTDataModule(str(tmp_path))
    dm.setup("test")
    assert torch.equal(dm.test_dataset.tensors[0][:, 0], images)


def test_split_is_seeded_and_disjoint():
    images = torch.arange(100).view(100, 1, 1, 1).to(torch.uint8)
    labels = torch.arange(100)
    (tx, ty), (vx, vy) = split_train_val(images, labels, 0.2, seed=7)
    (tx2, _), (vx2, vy2) = split_train_val(images, labels, 0.2, seed=7)
    (_, _), (_, vy3) = split_train_val(images, labels, 0.2, seed=8)
    assert len(vy) == 20 and len(ty) == 80
    assert torch.equal(vx, vx2) and torch.equal(tx, tx2) and torch.equal(vy, vy2)
    assert not torch.equal(vy, vy3)
    assert set(ty.tolist()).isdisjoint(vy.tolist())
    assert set(ty.tolist()) | set(vy.tolist()) == set(range(100))
    assert torch.equal(tx.view(-1).long(), ty)  # images follow their labels
    with pytest.raises(ValueError, match="val_split"):
        split_train_val(images, labels, 1.0, seed=0)


def test_mnist_split_depends_on_seed(tmp_path, data_files):
    data_files.write_mnist(tmp_path)
    splits = []
    for seed in (1, 1, 2):
        dm = MNISTDataModule(str(tmp_path), val_split=0.25, seed=seed)
        dm.setup("fit")
        splits.append(dm.val_dataset.tensors[0])
    assert torch.equal(splits[0], splits[1])
    assert not torch.equal(splits[0], splits[2])


def test_mnist_missing_data_error(tmp_path):
    dm = MNISTDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str((tmp_path / "nowhere").resolve()) in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert f"MNIST/raw/{name}" in message
    command = f"dck-prepare-data --dataset mnist --data-dir {(tmp_path / 'nowhere').resolve()}"
    assert command in message
    assert info.value.data_dir == (tmp_path / "nowhere").resolve()


def _no_network(*args, **kwargs):
    raise URLError("[Errno -3] Temporary failure in name resolution")


def test_mnist_download_failure_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_network)
    dm = MNISTDataModule(str(tmp_path), download=True)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "Downloading MNIST" in message and "failed" in message and "network" in message
    assert "Temporary failure in name resolution" in message
    assert "dck-prepare-data --dataset mnist" in message
    assert isinstance(info.value.__cause__, URLError)


def test_mnist_download_skipped_when_present(tmp_path, data_files, monkeypatch):
    data_files.write_mnist(tmp_path, compress=True)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_network)
    MNISTDataModule(str(tmp_path), download=True).prepare_data()  # no network needed


def test_setup_without_download_never_touches_network(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_network)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _no_network)
    for cls in (MNISTDataModule, CIFAR10DataModule):
        dm = cls(str(tmp_path), download=False)
        dm.prepare_data()
        with pytest.raises(DataNotFoundError, match="not found"):
            dm.setup("fit")


# -- real MNIST test split from the shared samples ------------------------------------------------

# Class counts of the official MNIST test and training sets.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture
def real_mnist(data_files) -> Path:
    shared = data_files.shared_data_dir()
    folder = shared / "mnist-t10k" if shared is not None else None
    if folder is None or not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("shared real MNIST sample not available (set DCK_SHARED_DATA)")
    return folder


def test_real_mnist_test_split(real_mnist):
    dm = MNISTDataModule(str(real_mnist), batch_size=1000)  # flat layout of .gz files
    dm.setup("test")
    images, labels = dm.test_dataset.tensors
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert abs(images.float().mean().item() / 255 - 0.1325) < 0.002
    x, y = dm.on_after_batch_transfer(next(iter(dm.test_dataloader())), 0)
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1  # normalised
    # the training labels are there, the training images are not
    assert (
        torch.bincount(read_idx(real_mnist / "train-labels-idx1-ubyte.gz").long()).tolist()
        == MNIST_TRAIN_COUNTS
    )
    with pytest.raises(DataNotFoundError, match="MNIST/raw/train-images-idx3-ubyte"):
        dm.setup("fit")


def test_real_mnist_in_torchvision_layout(real_mnist, tmp_path, data_files):
    """The t10k .gz files copied into MNIST/raw next to tiny train files: both splits load."""
    raw = tmp_path / "MNIST" / "raw"
    data_files.write_mnist(tmp_path, splits=("train",))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).write_bytes((real_mnist / name).read_bytes())
    dm = MNISTDataModule(str(tmp_path))
    dm.setup()
    assert len(dm.train_dataset) + len(dm.val_dataset) == data_files.MNIST_TRAIN
    assert len(dm.test_dataset) == 10_000


# -- CIFAR-10 ------------------------------------------------------------------------------


def test_cifar_pickle_batches(cifar_dir):
    root, written = cifar_dir
    dm = CIFAR10DataModule(str(root), val_split=0.25)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (15, 5, 6)
    test_x, test_y = dm.test_dataset.tensors
    assert test_x.shape == (6, 3, 32, 32) and test_x.dtype == torch.uint8
    # pixels land in CHW order exactly
    assert torch.equal(test_x.permute(0, 2, 3, 1), torch.from_numpy(written["test"][0]))
    assert test_y.tolist() == written["test"][1].tolist()
    train_y = torch.cat([dm.train_dataset.tensors[1], dm.val_dataset.tensors[1]])
    assert sorted(train_y.tolist()) == sorted(written["train"][1].tolist())
    assert dm.class_names == list(CIFAR10_CLASSES) and dm.num_classes == 10 and dm.in_channels == 3


def test_cifar_class_folders(tmp_path, data_files):
    for split in ("train", "test"):
        data_files.write_image_folder(
            tmp_path / "cifar10" / split, ["cat", "ship"], per_class=2, size=(32, 32)
        )
    dm = CIFAR10DataModule(str(tmp_path), val_split=0.0)
    dm.setup("fit")
    dm.setup("test")
    x, y = dm.train_dataset.tensors
    assert x.shape == (4, 3, 32, 32)
    assert sorted(y.tolist()) == [3, 3, 8, 8]  # canonical CIFAR indices, not folder order
    assert dm.val_dataset is None and dm.val_dataloader() == []


def test_cifar_missing_data_error(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        CIFAR10DataModule(str(tmp_path)).setup("test")
    message = str(info.value)
    assert str(tmp_path.resolve()) in message
    assert (
        "cifar-10-batches-py/data_batch_1" in message
        and "cifar-10-batches-py/test_batch" in message
    )
    assert f"dck-prepare-data --dataset cifar10 --data-dir {tmp_path.resolve()}" in message
    assert "cifar10/train/<class>/*.png" in message


# -- image folders -------------------------------------------------------------------------


def test_image_folder_loads_and_resizes(tmp_path, data_files):
    data_files.write_image_folder(
        tmp_path / "train", ["b_dog", "a_cat", "c_eel"], per_class=4, sizes=[(12, 16), (20, 10)]
    )
    data_files.write_image_folder(tmp_path / "test", ["a_cat", "c_eel"], per_class=2, size=(9, 9))
    dm = ImageFolderDataModule(str(tmp_path), image_size=(8, 12), val_split=0.25, batch_size=4)
    assert dm.class_names == ["a_cat", "b_dog", "c_eel"] and dm.num_classes == 3
    dm.setup("fit")
    dm.setup("test")
    assert dm.train_dataset.tensors[0].shape == (9, 3, 8, 12)
    assert len(dm.val_dataset) == 3
    assert sorted(dm.test_dataset.tensors[1].tolist()) == [0, 0, 2, 2]
    assert dm.batch_augment.crop_padding == 1 and dm.batch_augment.flip


def test_image_folder_keeps_exact_pixels_grey_and_val_dir(tmp_path, data_files):
    written = data_files.write_image_folder(
        tmp_path / "tr", ["x", "y"], per_class=2, size=(6, 5), mode="L"
    )
    data_files.write_image_folder(tmp_path / "va", ["y"], per_class=1, size=(6, 5), mode="L")
    dm = ImageFolderDataModule(
        str(tmp_path), train_dir="tr", val_dir="va", test_dir=None, in_channels=1
    )
    dm.setup("fit")
    x, y = dm.train_dataset.tensors
    assert x.shape == (4, 1, 6, 5) and dm.image_size == (6, 5)
    assert torch.equal(x[0, 0], torch.from_numpy(written["x"][0]))
    assert dm.val_dataset.tensors[1].tolist() == [1]
    assert len(dm.mean) == 1
    dm.setup("test")
    assert dm.test_dataset is None


def test_image_folder_mixed_sizes_need_image_size(tmp_path, data_files):
    data_files.write_image_folder(tmp_path / "train", ["a"], per_class=2, sizes=[(4, 4), (5, 5)])
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderDataModule(str(tmp_path)).setup("fit")


def test_image_folder_missing(tmp_path):
    dm = ImageFolderDataModule(str(tmp_path / "absent"))
    with pytest.raises(DataNotFoundError) as info:
        dm.setup("fit")
    assert str((tmp_path / "absent").resolve()) in str(info.value)
    assert "train/<class_name>/<image>" in str(info.value)


# -- batch transform and augmentation ------------------------------------------------------


def test_loader_yields_uint8_batches(mnist_dir):
    root, _ = mnist_dir
    dm = MNISTDataModule(str(root), batch_size=8, val_split=0.1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    x, y = next(iter(loader))
    assert x.dtype == torch.uint8 and x.shape == (8, 1, 28, 28) and y.dtype == torch.int64
    assert len(loader) == 2  # 18 samples, ragged last batch dropped
    val_x, _ = _all_batches(dm.val_dataloader())
    assert torch.equal(val_x, dm.val_dataset.tensors[0])  # not shuffled


def test_loader_with_worker_process(mnist_dir):
    root, written = mnist_dir
    dm = MNISTDataModule(str(root), batch_size=4, num_workers=1)
    dm.setup("test")
    x, y = _all_batches(dm.test_dataloader())
    assert torch.equal(y, torch.from_numpy(written["test"][1]).long())


def test_normalisation_for_every_stage(cifar_dir, fake_trainer):
    root, _ = cifar_dir
    dm = CIFAR10DataModule(str(root))
    dm.setup("test")
    batch = dm.test_dataset.__getitems__(list(range(6)))
    expected = (batch[0].float() / 255 - torch.tensor(dm.mean).view(1, 3, 1, 1)) / torch.tensor(
        dm.std
    ).view(1, 3, 1, 1)
    for trainer in (None, fake_trainer(training=False)):
        dm.trainer = trainer
        x, y = dm.on_after_batch_transfer(batch, 0)
        assert x.dtype == torch.float32
        torch.testing.assert_close(x, expected)
        assert torch.equal(y, batch[1])
    raw = CIFAR10DataModule(str(root), normalize=False)
    x, _ = raw.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(x, batch[0].float() / 255)
    assert raw.mean == (0.0, 0.0, 0.0) and raw.std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("cls, fixture", [(CIFAR10DataModule, "cifar"), (MNISTDataModule, "mnist")])
def test_augmentation_only_in_training_and_seeded(cls, fixture, tmp_path, data_files, fake_trainer):
    if fixture == "cifar":
        data_files.write_cifar_batches(tmp_path)
    else:
        data_files.write_mnist(tmp_path)
    outputs = []
    for seed in (3, 3, 4):
        dm = cls(str(tmp_path), seed=seed, augment=True)
        dm.setup("test")
        batch = dm.test_dataset.__getitems__(list(range(6)))
        dm.trainer = fake_trainer(training=False)
        plain, _ = dm.on_after_batch_transfer(batch, 0)
        dm.trainer = fake_trainer(training=True)
        first, labels = dm.on_after_batch_transfer(batch, 0)
        second, _ = dm.on_after_batch_transfer(batch, 0)
        assert torch.equal(labels, batch[1])
        assert first.shape == plain.shape and first.dtype == torch.float32
        assert not torch.equal(first, plain)
        assert not torch.equal(first, second)  # the generator advances
        outputs.append(first)
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_no_augmentation_when_disabled(cifar_dir, fake_trainer):
    root, _ = cifar_dir
    dm = CIFAR10DataModule(str(root), augment=False)
    dm.setup("test")
    batch = dm.test_dataset.__getitems__([0, 1, 2])
    dm.trainer = fake_trainer(training=True)
    x, _ = dm.on_after_batch_transfer(batch, 0)
    dm.trainer = fake_trainer(training=False)
    torch.testing.assert_close(x, dm.on_after_batch_transfer(batch, 0)[0])


def test_random_crop_is_a_shifted_window():
    images = torch.rand(16, 2, 7, 9)
    generator = torch.Generator().manual_seed(0)
    out = random_crop(images, padding=2, generator=generator)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for image, result in zip(padded, out):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(image[:, dy : dy + 7, dx : dx + 9], result)
        ]
        assert matches, "crop is not a window of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1
    assert torch.equal(random_crop(images, 0, generator), images)


def test_random_flip_and_identity_affine():
    images = torch.rand(32, 3, 5, 6)
    out, flipped = random_horizontal_flip(images, torch.Generator().manual_seed(0))
    assert 0 < flipped.sum() < 32
    assert torch.equal(out[flipped], images[flipped].flip(-1))
    assert torch.equal(out[~flipped], images[~flipped])
    same = random_affine(
        images, torch.Generator().manual_seed(0), degrees=0.0, translate=0.0, scale=(1.0, 1.0)
    )
    torch.testing.assert_close(same, images)
    moved = random_affine(images, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and not torch.allclose(moved, images)


class _TinyClassifier(pl.LightningModule):
    """Records what the steps receive."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        self.seen: list[tuple[str, torch.dtype, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(("train", x.dtype, x))
        return nn.functional.cross_entropy(self.head(x), y)

    def validation_step(self, batch, batch_idx):
        self.seen.append(("val", batch[0].dtype, batch[0]))

    def test_step(self, batch, batch_idx):
        self.seen.append(("test", batch[0].dtype, batch[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_gets_float_batches_and_augments_training_only(cifar_dir):
    root, _ = cifar_dir
    dm = CIFAR10DataModule(str(root), batch_size=5, val_split=0.25)
    model = _TinyClassifier(dm.num_classes)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    stages = [stage for stage, _, _ in model.seen]
    assert stages.count("train") == 3 and "val" in stages and "test" in stages
    assert all(dtype == torch.float32 for _, dtype, _ in model.seen)
    val = torch.cat([x for stage, _, x in model.seen if stage == "val"])
    val_raw = dm.val_dataset.tensors[0]
    expected = (val_raw.float() / 255 - torch.tensor(dm.mean).view(1, 3, 1, 1)) / torch.tensor(
        dm.std
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(val, expected)  # validation batches are not augmented


# -- dck-prepare-data (dck_lightning.data.prepare; scripts/prepare_data.py wraps it) ----------


def _console_scripts() -> dict[str, str]:
    """``[options.entry_points] console_scripts`` of setup.cfg: name -> ``module:function``."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_the_command_in_data_errors_is_an_installed_console_script(tmp_path, capsys):
    """Every DataNotFoundError names ``dck-prepare-data``: a command the package installs
    (a clone's scripts/ folder is not there for a pip-installed package)."""
    with pytest.raises(DataNotFoundError) as info:
        MNISTDataModule(str(tmp_path)).setup("fit")
    command = info.value.command.split()[0]
    target = _console_scripts()[command]
    module, function = target.split(":")
    entry_point = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_info:
        entry_point_args(entry_point, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {command} ")
    for word in ("--dataset", "--data-dir", "mnist", "cifar10", "voc2007", "voc2012", "all"):
        assert word in out


def entry_point_args(entry_point, args):
    """Run a console-script function with ``sys.argv`` set as the installed script would."""
    saved = sys.argv
    sys.argv = [entry_point.__name__, *args]
    try:
        entry_point()
    finally:
        sys.argv = saved


def test_prepare_data_script_wraps_the_package_command():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--dataset" in result.stdout


def test_prepare_data_reports_unreachable_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_network)
    assert prepare.main(["--dataset", "mnist", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "could not download" in err and "network" in err and str(tmp_path.resolve()) in err


def test_prepare_data_skips_present_files(tmp_path, data_files, monkeypatch, capsys):
    data_files.write_mnist(tmp_path)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_network)
    assert prepare.main(["--dataset", "mnist", "--data-dir", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out


# -- configuration through jsonargparse (what LightningCLI does) ----------------------------


@pytest.mark.parametrize(
    "cls, args",
    [
        (MNISTDataModule, ["--data.val_split=0.2", "--data.augment=true"]),
        (CIFAR10DataModule, ["--data.data_dir=/tmp/x", "--data.normalize=false"]),
        (
            ImageFolderDataModule,
            ["--data.data_dir=x", "--data.image_size=[8, 12]", "--data.in_channels=1"],
        ),
    ],
)
def test_constructors_are_configurable(cls, args):
    from jsonargparse import ArgumentError, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    dm = parser.instantiate(parser.parse_args(args)).data
    assert isinstance(dm, cls) and dm.task == "classification"
    if cls is ImageFolderDataModule:
        assert dm.image_size == (8, 12) and dm.in_channels == 1
    with pytest.raises(ArgumentError):
        parser.parse_args(["--data.val_split=not-a-number"])
