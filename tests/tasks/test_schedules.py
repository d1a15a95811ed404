"""Schedules whose length follows the trainer, and the dynamic parameters' lr factor under
schedulers that set every group's learning rate."""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CyclicLR,
    LinearLR,
    OneCycleLR,
    PolynomialLR,
    StepLR,
)

from dck_lightning.data import SyntheticShapesDataModule
from dck_lightning.tasks import ClassificationTask
from dck_lightning.tasks.schedules import WarmupCosineLR, build_scheduler, scheduler_class

BACKBONE = {
    "class_path": "dcb_small",
    "init_args": {"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3},
}


def optimizer(lrs=(1.0, 0.1)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def test_scheduler_class_is_read_off_classes_and_partials():
    assert scheduler_class(OneCycleLR) is OneCycleLR
    assert scheduler_class(functools.partial(CosineAnnealingLR, T_max=3)) is CosineAnnealingLR
    wrapped = functools.partial(lambda f, cls, **k: cls, None, PolynomialLR)  # LightningCLI's shape
    assert scheduler_class(wrapped) is PolynomialLR
    assert scheduler_class(lambda o: StepLR(o, 1)) is None


@pytest.mark.parametrize(
    ("factory", "attribute"),
    [
        (CosineAnnealingLR, "T_max"),
        (functools.partial(PolynomialLR, power=0.9), "total_iters"),
        (functools.partial(LinearLR, start_factor=1.0, end_factor=0.0), "total_iters"),
        (functools.partial(OneCycleLR, max_lr=1.0), "total_steps"),
    ],
)
def test_a_missing_length_comes_from_the_trainer(factory, attribute):
    scheduler = build_scheduler(factory, optimizer(), lambda: 7, [1.0, 0.1])
    assert getattr(scheduler, attribute) == 7


def test_a_given_length_is_kept_and_not_asked_for():
    def no_length() -> int:
        raise AssertionError("the length was asked for")

    given = functools.partial(CosineAnnealingLR, T_max=3)
    assert build_scheduler(given, optimizer(), no_length, [1.0, 1.0]).T_max == 3
    by_epochs = functools.partial(OneCycleLR, max_lr=1.0, epochs=2, steps_per_epoch=5)
    assert build_scheduler(by_epochs, optimizer(), no_length, [1.0, 1.0]).total_steps == 10
    assert isinstance(
        build_scheduler(lambda o: StepLR(o, 1), optimizer(), no_length, [1.0]), StepLR
    )


@pytest.mark.parametrize(
    "factory",
    [
        functools.partial(OneCycleLR, max_lr=0.5, pct_start=0.3),
        functools.partial(CyclicLR, base_lr=0.01, max_lr=0.5, step_size_up=3),
    ],
    ids=["OneCycleLR", "CyclicLR"],
)
def test_group_ratios_hold_under_schedulers_that_set_every_group(factory):
    opt = optimizer((1.0, 0.1))
    scheduler = build_scheduler(factory, opt, lambda: 10, [1.0, 0.1])
    ratios = []
    for _ in range(9):
        weights, dynamic = (group["lr"] for group in opt.param_groups)
        ratios.append(dynamic / weights)
        opt.step()
        scheduler.step()
    assert ratios == pytest.approx([0.1] * 9)
    assert max(group["lr"] for group in opt.param_groups) <= 0.5 + 1e-12


class RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])


@pytest.mark.parametrize(("interval", "epochs"), [("epoch", 2), ("epoch", 5), ("step", 3)])
def test_one_cycle_from_the_trainer_ends_at_its_final_lr_with_the_dynamic_factor(
    tmp_path, interval, epochs
):
    """total_steps = max_epochs (per epoch) or the optimiser steps (per step): the last step
    trains at max_lr / (div_factor × final_div_factor), dynamic parameters at 0.1 × that."""
    data = SyntheticShapesDataModule(image_size=16, num_train=24, num_val=0, batch_size=8)
    task = ClassificationTask(
        backbone=BACKBONE,
        num_classes=6,
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.01),
        lr_scheduler=functools.partial(OneCycleLR, max_lr=0.01),
        lr_scheduler_interval=interval,
        dynamic_lr_factor=0.1,
    )
    record = RecordLR()
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[record],
    )
    trainer.fit(task, data)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    steps = epochs * 3 if interval == "step" else epochs
    assert scheduler.total_steps == steps and scheduler.last_epoch == steps
    final = 0.01 / (25.0 * 1e4)
    assert record.lrs[-1] == pytest.approx([final, 0.1 * final])
    assert all(math.isclose(d, 0.1 * w) for w, d in record.lrs)


def test_without_a_trainer_a_missing_length_is_a_clear_error():
    task = ClassificationTask(backbone=BACKBONE, num_classes=6, lr_scheduler=CosineAnnealingLR)
    with pytest.raises(RuntimeError, match="length comes from the trainer"):
        task.configure_optimizers()


def test_a_config_cannot_hold_a_schedule_length(capsys):
    """The length is not a config argument: setting it stops with the CLI's message."""
    from dck_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.init_args.lr_scheduler", "CosineAnnealingLR",
              "--model.init_args.lr_scheduler.T_max", "10", "--print_config"])  # fmt: skip
    assert exit_info.value.code == 2 and "T_max" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.init_args.lr_scheduler", "CosineAnnealingLR", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "T_max" not in capsys.readouterr().out


def test_a_one_step_one_cycle_warm_up_warns_and_runs():
    """torch's OneCycleLR divides by zero when pct_start × total_steps == 1 (a 5-step smoke run of
    the default's 0.2): it warns, trains one step at the initial lr, then anneals to the end
    (from just below max_lr: the annealing's first step is a quarter of the way down)."""
    factory = functools.partial(OneCycleLR, max_lr=1.0, pct_start=0.2)
    opt = optimizer((1.0,))
    with pytest.warns(UserWarning, match="warms up for 1 step"):
        scheduler = build_scheduler(factory, opt, lambda: 5, [1.0])
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(4):
        opt.step()
        scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1.0 / 25) and lrs[1] > 0.5
    assert lrs[-1] == pytest.approx(1.0 / (25 * 1e4))
    assert lrs[1:] == sorted(lrs[1:], reverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real warm-up is silent
        assert build_scheduler(factory, optimizer(), lambda: 23, [1.0, 1.0]).total_steps == 23


def run_warmup_cosine(steps: int, warmup: float, lrs=(0.1, 0.01)) -> list[list[float]]:
    opt = optimizer(lrs)
    scheduler = build_scheduler(
        functools.partial(WarmupCosineLR, warmup=warmup), opt, lambda: steps, [1.0, 0.1]
    )
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in opt.param_groups])
        opt.step()
        scheduler.step()
    return seen + [[group["lr"] for group in opt.param_groups]]


def test_warmup_cosine_ramps_linearly_then_anneals_to_eta_min_per_group():
    """lr(t) = base·(t+1)/W for t < W, then the cosine from base to 0 over the other T − W."""
    lrs = run_warmup_cosine(steps=20, warmup=0.2)  # W = 4
    weights = [w for w, _ in lrs]
    assert weights[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert weights[4] == pytest.approx(0.1)
    expected = [0.05 * (1 + math.cos(math.pi * t / 16)) for t in range(17)]
    assert weights[4:] == pytest.approx(expected, abs=1e-12)
    assert weights[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(d == pytest.approx(0.1 * w) for w, d in lrs)  # dynamic_lr_factor kept


def test_warmup_cosine_without_warm_up_is_torch_cosine_and_refuses_a_bad_share():
    plain_opt = optimizer((0.1,))
    plain = CosineAnnealingLR(plain_opt, T_max=10)
    for step, (lr, _) in enumerate(run_warmup_cosine(steps=10, warmup=0.0)):
        assert lr == pytest.approx(plain_opt.param_groups[0]["lr"], abs=1e-12), step
        plain_opt.step()
        plain.step()
    with pytest.raises(ValueError, match="warmup must be in"):
        WarmupCosineLR(optimizer(), T_max=10, warmup=1.0)
