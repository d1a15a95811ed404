"""CPU DDP with 2 processes (gloo), launched the way users launch it.

- ``scripts/torchrun.sh`` (torchrun, 2 processes × batch 4) trains exactly what one process
  (``strategy=ddp``, 1 device × batch 8: the same global batches) trains: same weights and
  validation metrics within 1e-5; one run folder, one checkpoint set, one W&B run, one summary.
- ``dck test`` with Lightning's own launcher (``--trainer.devices 2``) on a test set of odd
  size gives exactly the one-process metrics: no sample is padded in or counted twice.
- SIGTERM to torchrun: both ranks stop together, last.ckpt is written once, and the same
  command (same RUN_ID) resumes.

The model has no BatchNorm and no dropout (``BNFreeClassificationTask``): with BatchNorm the
per-device statistics of 4 samples differ from those of 8 (SyncBatchNorm is GPU-only), and the
comparison could only be loose.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scaleout_utils import REPO, free_port, run, subprocess_env, wait_for

pytestmark = pytest.mark.slow

TORCHRUN = str(REPO / "scripts" / "torchrun.sh")
#: Absolute tolerance on weights and metrics: float32 summation order (gradients all-reduced
#: over 2 ranks vs summed in one batch) differs by ~1e-7; after 8 Adam steps ≤ ~1e-6.
ATOL = 1e-5


def args(root: Path, name: str, batch_size: int, *extra: str) -> list[str]:
    return [
        "--model", "dck_test_helpers.BNFreeClassificationTask",
        "--run.root", str(root), "--run.name", name,
        "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--data.init_args.image_size", "16",
        "--data.init_args.num_train", "32",
        "--data.init_args.num_val", "13",
        "--data.init_args.num_test", "13",
        "--data.init_args.augment", "false",
        "--data.init_args.batch_size", str(batch_size),
        *extra,
    ]  # fmt: skip


def metrics(run_dir: Path, prefix: str) -> dict[str, float]:
    """The last logged value of every ``prefix*`` metric in ``metrics.csv``."""
    values: dict[str, float] = {}
    for row in csv.DictReader((run_dir / "metrics.csv").open()):
        values.update({k: float(v) for k, v in row.items() if k.startswith(prefix) and v})
    return values


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    ddp = run(
        [TORCHRUN, "fit", *args(root, "ddp", 4)],
        subprocess_env(
            wandb="offline", NPROC_PER_NODE="2", RUN_ID="job1", MASTER_PORT=str(free_port())
        ),
        timeout=180,
    )
    single = run(
        [
            sys.executable,
            "-m",
            "dck_lightning.cli",
            "fit",
            *args(root, "single", 8, "--trainer.strategy", "ddp", "--trainer.devices", "1"),
        ],
        subprocess_env(),
        timeout=120,
    )
    return {
        "root": root,
        "ddp": root / "ddp" / "torchrun-job1",
        "single": root / "single" / "version_0",
        "ddp_out": ddp.stdout + ddp.stderr,
        "single_out": single.stdout,
    }


def test_torchrun_writes_one_run_folder_one_checkpoint_set_one_wandb_run(trained):
    run_dir = trained["ddp"]
    assert [p.name for p in run_dir.parent.iterdir()] == ["torchrun-job1"]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert (
        checkpoints[-1] == "last.ckpt"
        and len(checkpoints) == 2
        and checkpoints[0].startswith("best-")
    )
    assert not list(run_dir.glob("*.ckpt"))
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert len(offline) == 1 and offline[0].name.endswith(f"-{run_id}")  # rank 0 only
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.yaml"]
    assert trained["ddp_out"].count("Finished fit") == 1  # rank 0 prints, once
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in trained["ddp_out"]


def test_two_processes_train_what_one_process_trains(trained):
    ddp, single = (
        state(trained["ddp"] / "checkpoints" / "last.ckpt"),
        state(trained["single"] / "checkpoints" / "last.ckpt"),
    )
    assert ddp.keys() == single.keys()
    for key in ddp:
        torch.testing.assert_close(ddp[key], single[key], atol=ATOL, rtol=0, msg=key)
    changed = state(trained["ddp"] / "checkpoints" / "last.ckpt")["model.4.weight"]
    assert (
        torch.load(trained["ddp"] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        == 8
    )
    assert changed.abs().sum() > 0
    ddp_val, single_val = metrics(trained["ddp"], "val/"), metrics(trained["single"], "val/")
    assert ddp_val.keys() == single_val.keys() and "val/acc" in ddp_val
    for key in ddp_val:
        assert abs(ddp_val[key] - single_val[key]) <= ATOL, (key, ddp_val[key], single_val[key])


def test_ddp_test_metrics_are_not_skewed_by_sampler_padding(trained):
    """13 test images over 2 ranks: Lightning's DistributedSampler would evaluate 14 (one twice)."""
    checkpoint = trained["ddp"] / "checkpoints" / "last.ckpt"
    root = trained["root"]
    common = ["--ckpt_path", str(checkpoint)]
    run(
        [
            sys.executable,
            "-m",
            "dck_lightning.cli",
            "test",
            *args(root, "test2", 4, "--trainer.strategy", "ddp", "--trainer.devices", "2"),
            *common,
        ],
        subprocess_env(MASTER_PORT=str(free_port())),
        timeout=180,
    )
    run(
        [
            sys.executable,
            "-m",
            "dck_lightning.cli",
            "test",
            *args(root, "test1", 4, "--trainer.devices", "1"),
            *common,
        ],
        subprocess_env(),
    )
    two, one = (
        metrics(root / "test2" / "version_0", "test/"),
        metrics(root / "test1" / "version_0", "test/"),
    )
    assert {"test/acc", "test/loss"} <= two.keys() and two.keys() == one.keys()
    for key in one:
        assert abs(two[key] - one[key]) <= 1e-6, (key, two[key], one[key])


def test_sigterm_to_torchrun_saves_once_and_the_same_command_resumes(tmp_path):
    flag = tmp_path / "at_step_3"
    wait = {
        "class_path": "dck_test_helpers.WaitForSignal",
        "init_args": {"at_step": 3, "flag_file": str(flag)},
    }
    command = [TORCHRUN, "fit", *args(tmp_path, "pre", 4, "--trainer.callbacks+", json.dumps(wait))]
    env = subprocess_env(NPROC_PER_NODE="2", RUN_ID="pre1", MASTER_PORT=str(free_port()))
    run_dir = tmp_path / "pre" / "torchrun-pre1"

    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(flag, process, timeout=120)
    os.kill(
        process.pid, signal.SIGTERM
    )  # the scheduler stops torchrun; torchrun forwards it to the workers
    out, err = process.communicate(timeout=90)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert err.count("SIGTERM: saved") == 1, err[-4000:]  # written once, by rank 0
    assert torch.load(last, weights_only=True)["global_step"] == 3

    env["MASTER_PORT"] = str(free_port())
    done = run(command, env, timeout=180)
    assert "Resuming" in done.stdout + done.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 8
    assert [p.name for p in run_dir.parent.iterdir()] == ["torchrun-pre1"]
