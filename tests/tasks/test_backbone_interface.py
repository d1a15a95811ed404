"""One backbone interface in every task: the same argument, the same state-dict prefix, and
``backbone_weights`` from any task's checkpoint."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from dck_lightning.data import SyntheticShapesDataModule
from dck_lightning.models import DCBNet, SeedNet
from dck_lightning.tasks import ClassificationTask, DetectionTask, SegmentationTask

TINY = {"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}
BACKBONE = {"class_path": "dcb_resnet18", "init_args": TINY}


def make(kind: str, **kwargs):
    torch.manual_seed(0)
    if kind == "classification":
        return ClassificationTask(backbone=BACKBONE, num_classes=6, **kwargs)
    if kind == "seednet":
        return ClassificationTask(backbone="SeedNet", num_classes=10, in_channels=1, **kwargs)
    if kind in ("fcos", "faster_rcnn"):
        return DetectionTask(
            kind, backbone=BACKBONE, fpn_channels=16, head_convs=1, num_classes=6, **kwargs
        )
    return SegmentationTask(
        head=kind,
        backbone=BACKBONE,
        num_classes=7,
        head_kwargs={"fpn_channels": 16, "channels": 16} if kind == "fpn" else {},
        **kwargs,
    )


KINDS = ["classification", "fcos", "faster_rcnn", "fpn", "deeplabv3"]


@pytest.mark.parametrize("kind", KINDS)
def test_backbone_under_the_same_prefix_in_every_task(kind):
    task = make(kind)
    assert isinstance(task.backbone, DCBNet)
    keys = list(task.state_dict())
    expected = [f"backbone.{k}" for k in task.backbone.state_dict()]
    assert [k for k in keys if k.startswith("backbone.")] == expected
    assert keys[: len(expected)] == expected  # in order, where the module sits
    assert not any(".body." in k or k.startswith("model.backbone.stem") for k in keys)
    # The prefix is only the saved form: the state dict loads back into a fresh task.
    fresh = make(kind)
    for tensor in fresh.parameters():
        tensor.data.zero_()
    fresh.load_state_dict(task.state_dict())
    torch.testing.assert_close(fresh.state_dict(), task.state_dict())


def test_seednet_is_the_backbone_of_its_task():
    task = make("seednet")
    assert isinstance(task.backbone, SeedNet) and task.backbone is task.model
    assert all(k.startswith("backbone.") for k in task.state_dict())
    assert task.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert task.hparams.backbone["class_path"] == "dck_lightning.models.SeedNet"


@pytest.mark.parametrize("backbone", ["SeedNet", "dcb_resnet18"])
def test_a_checkpoint_loads_as_lightning_reparses_its_hyperparameters(tmp_path, backbone):
    """load_from_checkpoint of a CLI run re-parses the hyperparameters with LightningCLI's
    instantiate_module; jsonargparse then hands the backbone over as a deferred class
    (``partial(call_without_instantiate_context, instantiator, cls, **init_args)``): SeedNet
    was built as a backbone and wrapped in a classifier head (AttributeError)."""
    from pytorch_lightning.cli import instantiate_module

    init_args = {"adaptive": False} if backbone == "SeedNet" else TINY
    spec = {"class_path": backbone, "init_args": init_args}
    config = {"backbone": spec, "num_classes": 10, "in_channels": 1}
    task = instantiate_module(ClassificationTask, config)
    assert task.hparams.backbone["class_path"].endswith(backbone)  # recorded as a dict again
    if backbone == "SeedNet":
        assert isinstance(task.model, SeedNet) and task.model.features[0].localization is None
    else:
        assert isinstance(task.backbone, DCBNet) and task.backbone.out_channels["c5"] == 32
    task._instantiator = "pytorch_lightning.cli.instantiate_module"  # as LightningCLI sets it
    trainer = _trainer(tmp_path)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "task.ckpt")
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt")
    torch.testing.assert_close(loaded.state_dict(), task.state_dict())


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def _data(task: str) -> SyntheticShapesDataModule:
    return SyntheticShapesDataModule(
        task, image_size=32, num_train=8, num_val=4, num_test=4, batch_size=4
    )


@pytest.mark.parametrize("target", ["fcos", "fpn"])
def test_a_classification_checkpoint_initialises_detection_and_segmentation(tmp_path, target):
    classifier = make("classification")
    trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(classifier, _data("classification"))
    checkpoint = tmp_path / "classifier.ckpt"
    trainer.save_checkpoint(checkpoint)

    task = make(target, backbone_weights=str(checkpoint))
    assert any(  # not the classifier's weights before fitting starts
        not torch.equal(a, b)
        for a, b in zip(
            task.backbone.state_dict().values(), classifier.backbone.state_dict().values()
        )
    )
    data = _data("detection" if target == "fcos" else "segmentation")
    trainer = _trainer(tmp_path, limit_train_batches=0, limit_val_batches=0)
    trainer.fit(task, data)
    torch.testing.assert_close(task.backbone.state_dict(), classifier.backbone.state_dict())

    # A resumed fit keeps its own weights: backbone_weights apply only to a fresh start.
    for tensor in task.backbone.parameters():
        tensor.data.fill_(0.5)
    trainer.save_checkpoint(tmp_path / "own.ckpt")
    resumed = make(target, backbone_weights=str(checkpoint))
    _trainer(tmp_path, max_epochs=2, limit_train_batches=0, limit_val_batches=0).fit(
        resumed, data, ckpt_path=tmp_path / "own.ckpt"
    )
    assert all(bool((p == 0.5).all()) for p in resumed.backbone.parameters())


def test_backbone_weights_report_what_was_not_loaded(tmp_path):
    classifier = make("classification")
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": classifier.state_dict()}, path)
    other = ClassificationTask(
        backbone={"class_path": "dcb_resnet18", "init_args": {**TINY, "widths": [8, 16, 24, 48]}},
        num_classes=6,
    )
    report = other.load_backbone_weights(str(path))
    assert report.source == "checkpoint" and report.loaded and report.other_shape
    assert any(line.startswith("stages.3.0.conv.conv.weight") for line in report.other_shape)
