"""SIGTERM during ``fit`` (no SLURM): last.ckpt is written before exit, the same command resumes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from scaleout_utils import REPO, run, subprocess_env, tiny_args, wait_for


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_and_the_same_command_resumes(tmp_path):
    flag = tmp_path / "at_step_5"
    wait = {
        "class_path": "dck_test_helpers.WaitForSignal",
        "init_args": {"at_step": 5, "flag_file": str(flag)},
    }
    command = [
        sys.executable,
        "-m",
        "dck_lightning.cli",
        "fit",
        *tiny_args(
            tmp_path,
            "--run.version",
            "pre",
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_train_batches",
            "4",
        ),
        "--trainer.callbacks+",
        json.dumps(wait),
    ]
    env = subprocess_env()
    run_dir = tmp_path / "default" / "pre"

    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(flag, process)  # mid-epoch 1 (4 batches per epoch)
    os.kill(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-4000:]  # a clean exit
    last = run_dir / "checkpoints" / "last.ckpt"
    assert (
        f"SIGTERM: saved {last.resolve()} at epoch 1, global step 5; run the same command again to resume from it"
        in err
    )
    assert torch.load(last, weights_only=True)["global_step"] == 5
    rows = len((run_dir / "metrics.csv").read_text().splitlines())

    done = run(command, env)  # the same command, e.g. the rescheduled job
    assert f"Resuming {run_dir.resolve()} from {last.resolve()}" in done.stderr
    final = torch.load(last, weights_only=True)
    assert (
        final["global_step"] == 8
    )  # 2 epochs × 4 batches: the interrupted epoch was finished, none repeated
    metrics = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(metrics) + 1 > rows and {r["epoch"] for r in metrics if r.get("val/acc")} == {
        "0",
        "1",
    }
    assert [p.name for p in (tmp_path / "default").iterdir()] == ["pre"]
