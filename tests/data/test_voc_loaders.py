"""VOC DataModules use the base DataModule's loaders: unpadded evaluation under DDP, and
augmentation seeds from the checkpointed generator, so a resumed fit equals an uninterrupted one."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from voc_fixtures import FixtureImage, FixtureObject, write_voc

from dck_lightning.cli import main
from dck_lightning.data.voc import VOCDetectionDataModule, VOCSegmentationDataModule

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("dog", "cat", "car", "person", "bus", "cow", "bird")


def images(n: int) -> list[FixtureImage]:
    """``n`` images, one or two objects each, at varied places."""
    out = []
    for i in range(n):
        x, y = 2 + (7 * i) % 30, 2 + (5 * i) % 20
        objects = [FixtureObject(CLASSES[i % len(CLASSES)], (x, y, x + 20, y + 16))]
        if i % 3 == 0:
            objects.append(FixtureObject("person", (40, 20, 60, 44), difficult=i % 2 == 0))
        out.append(FixtureImage(f"{i:06d}", objects))
    return out


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    fixtures = images(13)
    ids = [image.image_id for image in fixtures]
    return write_voc(
        tmp_path / "data",
        fixtures,
        year="2007",
        main_sets={"trainval": ids[:10], "test": ids[10:] + ids[:2]},
    )


@pytest.fixture
def voc2012(tmp_path: Path) -> Path:
    fixtures = images(13)
    ids = [image.image_id for image in fixtures]
    return write_voc(
        tmp_path / "data12",
        fixtures,
        year="2012",
        segmentation_sets={"train": ids[:8], "val": ids[8:]},
    )


def ddp_trainer(rank: int) -> SimpleNamespace:
    return SimpleNamespace(
        world_size=2,
        global_rank=rank,
        training=False,
        strategy=SimpleNamespace(reduce=None),
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=True),
    )


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_evaluation_batches_give_every_image_to_exactly_one_rank(kind, voc, voc2012):
    """Lightning's DistributedSampler pads 5 images on 2 ranks to 6 (one scored twice)."""
    for stage, loader_of in (("validate", "val_dataloader"), ("test", "test_dataloader")):
        seen = []
        for rank in range(2):
            if kind == "detection":
                dm = VOCDetectionDataModule(
                    str(voc), train_sets=["2007-trainval"], val_sets=["2007-test"],
                    test_sets=["2007-test"], image_size=32, batch_size=2, num_workers=0,
                )  # fmt: skip
            else:
                dm = VOCSegmentationDataModule(
                    str(voc2012), val_set="val", image_size=32, batch_size=2, num_workers=0
                )
            dm.trainer = ddp_trainer(rank)
            dm.setup(stage)
            loader = getattr(dm, loader_of)()
            assert type(loader.sampler).__name__ == "UnrepeatedDistributedSampler"
            seen += [i for batch in loader.batch_sampler for i in batch]
        assert sorted(seen) == list(range(5)), (stage, seen)


def fit_args(data_dir: Path, root: Path, version: str, epochs: int, workers: int) -> list[str]:
    return [
        "fit",
        "--model", "voc_probe.BoxProbeTask",
        "--model.init_args.optimizer", "torch.optim.SGD",
        "--model.init_args.optimizer.init_args.lr", "0.1",
        "--data", "dck_lightning.data.VOCDetectionDataModule",
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.train_sets", "[2007-trainval]",
        "--data.init_args.test_sets", "[2007-test]",
        "--data.init_args.val_split", "0.2",
        "--data.init_args.image_size", "32",
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", str(workers),
        "--run.root", str(root),
        "--run.version", version,
        "--run.wandb", "disabled",
        "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", str(epochs),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


@pytest.mark.parametrize("workers", [0, 2])
def test_fit_two_epochs_equals_one_epoch_then_resume(voc, tmp_path, workers):
    """Augmentation on (scale jitter, crop, flip, colour): the resumed run draws the same
    augmentations the uninterrupted one drew in its second epoch, in the main process and in
    loader workers, so the weights come out bit-identical."""
    root = tmp_path / "runs"
    main(fit_args(voc, root, "straight", 2, workers))
    main(fit_args(voc, root, "resumed", 1, workers))
    main(fit_args(voc, root, "resumed", 2, workers))  # the same run folder: resumes
    straight, resumed = (
        torch.load(root / "default" / version / "checkpoints" / "last.ckpt", weights_only=True)
        for version in ("straight", "resumed")
    )
    assert straight["global_step"] == resumed["global_step"] == 8  # 8 training images, batch 2
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    saved = straight["VOCDetectionDataModule"]["augment_generators"]
    assert set(saved) == {"cpu"}  # the generator the augmentation seeds come from


def test_without_the_saved_generator_the_resume_is_not_exact(voc, tmp_path):
    """Control for the test above: drop the DataModule's state from the checkpoint and the
    resumed epoch draws other augmentations (other weights)."""
    root = tmp_path / "runs"
    main(fit_args(voc, root, "straight", 2, 0))
    main(fit_args(voc, root, "resumed", 1, 0))
    last = root / "default" / "resumed" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["VOCDetectionDataModule"]
    torch.save(checkpoint, last)
    main(fit_args(voc, root, "resumed", 2, 0))
    straight, resumed = (
        torch.load(root / "default" / v / "checkpoints" / "last.ckpt", weights_only=True)
        for v in ("straight", "resumed")
    )
    assert resumed["global_step"] == 8
    assert not torch.equal(
        straight["state_dict"]["model.0.weight"], resumed["state_dict"]["model.0.weight"]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def logged_test_metrics(run_dir: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    for row in csv.DictReader((run_dir / "metrics.csv").open()):
        values.update({k: float(v) for k, v in row.items() if k.startswith("test/") and v})
    return values


@pytest.mark.slow  # two `dck test` runs, one of them 2 gloo processes: about a minute
def test_two_process_ddp_test_of_the_voc_sample_equals_one_process(shared_data, tmp_path):
    """3 VOC2012 val images of the sample on 2 ranks: 2 + 1, none scored twice."""
    voc = shared_data / "voc-sample"
    if not (voc / "VOCdevkit").is_dir():
        pytest.skip(f"no VOC sample at {voc}")
    common = [
        sys.executable, "-m", "dck_lightning.cli", "test",
        "-c", str(REPO / "configs" / "voc_segmentation_fpn.yaml"),
        "--data.init_args.data_dir", str(voc),
        "--data.init_args.image_size", "64",
        "--data.init_args.batch_size", "1",
        "--data.init_args.num_workers", "0",
        "--model.init_args.backbone.init_args",
        '{"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}',
        "--model.init_args.head_kwargs", '{"fpn_channels": 16, "channels": 16, "norm": "gn"}',
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--run.wandb", "disabled",
        "--run.root", str(tmp_path),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()), WANDB_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for name, devices in (("two", ["--trainer.strategy", "ddp", "--trainer.devices", "2"]),
                          ("one", ["--trainer.devices", "1"])):  # fmt: skip
        done = subprocess.run(
            [*common, "--run.name", name, *devices],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
    two = logged_test_metrics(tmp_path / "two" / "version_0")
    one = logged_test_metrics(tmp_path / "one" / "version_0")
    assert {"test/miou", "test/pixel_acc", "test/loss"} <= one.keys() and two.keys() == one.keys()
    for key in one:
        assert abs(two[key] - one[key]) <= 1e-6 or (
            one[key] != one[key] and two[key] != two[key]
        ), (
            key,
            two[key],
            one[key],
        )


@pytest.mark.parametrize(
    "config", sorted((REPO / "configs").glob("voc_*.yaml")), ids=lambda p: p.name
)
def test_voc_configs_never_validate_on_the_set_they_report(config: Path):
    """The best checkpoint is picked on validation: never on the images ``dck test`` reports."""
    import importlib

    import yaml

    data = yaml.safe_load(config.read_text())["data"]
    module, name = data["class_path"].rsplit(".", 1)
    dm = getattr(importlib.import_module(module), name)(**data["init_args"])
    assert not set(dm.val_sets) & set(dm.test_sets), (dm.val_sets, dm.test_sets)
    assert dm.val_sets or dm.val_split > 0  # a held-out share of the training images
    text = config.read_text()
    assert "reported" in text  # the config says which split is reported
