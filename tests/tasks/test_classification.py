"""ClassificationTask: parameter groups, metrics per stage, prediction, a short fit."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torchmetrics.classification import MulticlassAccuracy

from dck_lightning.data import SyntheticShapesDataModule
from dck_lightning.layers import dynamic_parameter_names
from dck_lightning.models import backbone_config
from dck_lightning.tasks import ClassificationTask

TINY = {"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}
BACKBONE = {"class_path": "dcb_small", "init_args": TINY}


def make_task(**kwargs) -> ClassificationTask:
    return ClassificationTask(backbone=BACKBONE, num_classes=6, **kwargs)


def test_dynamic_parameters_get_their_own_group():
    task = make_task(
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1), dynamic_lr_factor=0.1
    )
    optimizer = task.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["dynamic"]["weight_decay"] == 0.0 and groups["weights"]["weight_decay"] == 0.1
    assert groups["dynamic"]["lr"] == 1e-4 and groups["weights"]["lr"] == 1e-3
    names = dynamic_parameter_names(task)
    assert any(n.endswith("extent") for n in names) and any("localization" in n for n in names)
    assert any("offset_conv" in n for n in names)
    ids = {id(p) for p in groups["dynamic"]["params"]}
    assert ids == {id(p) for n, p in task.named_parameters() if n in names}


def test_scheduler_is_injected():
    task = make_task(lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1))
    config = task.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


@pytest.mark.parametrize(("interval", "scheduler_steps"), [("epoch", 2), ("step", 6)])
def test_scheduler_steps_per_epoch_or_per_optimiser_step(tmp_path, interval, scheduler_steps):
    dm = SyntheticShapesDataModule(image_size=16, num_train=24, num_val=0, batch_size=8)  # 3 steps
    task = make_task(
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        lr_scheduler_interval=interval,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        enable_model_summary=False,
    )
    trainer.fit(task, dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.5**scheduler_steps


def test_bad_scheduler_interval():
    with pytest.raises(ValueError, match="lr_scheduler_interval must be one of"):
        make_task(lr_scheduler_interval="batch")


def test_metrics_per_stage_and_top5_only_with_enough_classes():
    task = make_task()
    assert set(task.val_metrics.keys()) == {"val/acc", "val/top5"}
    small = ClassificationTask(backbone=BACKBONE, num_classes=3)
    assert set(small.val_metrics.keys()) == {"val/acc"}
    assert isinstance(task.test_per_class, MulticlassAccuracy)


def test_hyperparameters_saved_for_reloading():
    task = make_task(label_smoothing=0.1)
    assert task.hparams.label_smoothing == 0.1 and "optimizer" not in task.hparams
    # The backbone as the CLI records it: class_path and every argument, the preset's included.
    backbone = task.hparams.backbone
    assert backbone["class_path"] == "dck_lightning.models.dcb_small"
    assert backbone["init_args"] == {**backbone_config("dcb_small")["init_args"], **TINY}
    assert backbone["init_args"]["stem"] == "small" and backbone["init_args"]["dck"] == "adaptive"
    reloaded = ClassificationTask(**task.hparams)
    assert reloaded.state_dict().keys() == task.state_dict().keys()


def test_fit_test_predict_on_synthetic_shapes(tmp_path):
    dm = SyntheticShapesDataModule(
        image_size=16, num_train=32, num_val=16, num_test=16, batch_size=8
    )
    task = make_task()
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        enable_model_summary=False,
    )
    trainer.fit(task, dm)
    assert "train/loss_epoch" in trainer.callback_metrics and "val/acc" in trainer.callback_metrics
    trainer.test(task, dm)
    assert task.confusion_matrix.shape == (6, 6) and task.confusion_matrix.sum() == 16
    assert {f"test/acc_class/{name}" for name in dm.class_names} <= set(trainer.callback_metrics)
    probabilities = torch.cat(trainer.predict(task, datamodule=dm))  # predict = the test split
    assert probabilities.shape == (16, 6)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(16))
