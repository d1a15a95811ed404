"""scripts/slurm/train.sbatch with stub srun/scontrol on PATH: the command it builds, its fast
failures, and the requeue path (SIGUSR1 → hpc checkpoint + scontrol requeue → same script resumes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from scaleout_utils import REPO, run, subprocess_env, tiny_args, wait_for

SCRIPT = REPO / "scripts" / "slurm" / "train.sbatch"


def stubs(folder: Path, execute: bool) -> Path:
    """``srun`` (records its arguments; with ``execute`` then runs them) and ``scontrol``/``sbatch``
    (record their arguments) in ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    run_it = 'echo $$ > "$STUB_DIR/srun.pid"\nexec "$@"\n' if execute else ""
    (folder / "srun").write_text(
        '#!/bin/bash\nprintf "%s\\n" "$@" > "$STUB_DIR/srun.args"\n'
        'while [[ "$1" == --* ]]; do shift; done\n' + run_it
    )
    for name in ("scontrol", "sbatch"):
        (folder / name).write_text(f'#!/bin/bash\necho "{name} $*" >> "$STUB_DIR/calls.log"\n')
    for name in ("srun", "scontrol", "sbatch"):
        (folder / name).chmod(0o755)
    return folder


def slurm_env(stub_dir: Path, **extra: str) -> dict[str, str]:
    env = subprocess_env(
        STUB_DIR=str(stub_dir),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="dck",
        SLURM_NNODES="1",
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        SLURM_NODELIST="localhost",
        SLURM_SUBMIT_DIR=str(REPO),
    )
    env["PATH"] = f"{stub_dir}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def test_the_script_asks_for_requeue_and_the_warning_signal():
    header = [line for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=SIGUSR1@90" in header and "#SBATCH --requeue" in header
    assert any(line.startswith("#SBATCH --ntasks-per-node=") for line in header)


def test_srun_command_passes_the_launcher_layout_to_the_trainer(tmp_path):
    stub_dir = stubs(tmp_path / "bin", execute=False)
    env = slurm_env(
        stub_dir,
        SLURM_NNODES="2",
        SLURM_NTASKS="8",
        SLURM_NTASKS_PER_NODE="4",
        SLURM_GPUS_ON_NODE="4",
    )
    done = run(
        ["bash", str(SCRIPT), "-c", "configs/default.yaml", "--trainer.max_epochs", "3"], env
    )
    args = (stub_dir / "srun.args").read_text().splitlines()
    assert args == [
        "--kill-on-bad-exit=1",
        "dck",
        "fit",
        "-c",
        "configs/default.yaml",
        "--trainer.max_epochs",
        "3",
        "--trainer.devices",
        "4",
        "--trainer.num_nodes",
        "2",
    ]
    assert "job 4242 (restart 0) on 2 node(s) x 4 task(s)" in done.stderr


@pytest.mark.parametrize(
    "env_change,message",
    [
        (
            {"SLURM_GPUS_ON_NODE": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NTASKS": "2"},
            "the job has 4 GPU(s) per node but 2 task(s) per node: request as many tasks per node as GPUs (--ntasks-per-node 4)",
        ),
        ({"SLURM_NTASKS_PER_NODE": ""}, "set --ntasks-per-node (= GPUs per node)"),
        ({"SLURM_JOB_ID": ""}, "not inside a SLURM job: submit it with sbatch"),
    ],
    ids=["gpus-vs-tasks", "no-ntasks-per-node", "not-in-a-job"],
)
def test_the_script_fails_fast_on_a_bad_layout(env_change, message, tmp_path):
    stub_dir = stubs(tmp_path / "bin", execute=False)
    done = run(
        ["bash", str(SCRIPT), "-c", "configs/default.yaml"],
        slurm_env(stub_dir, **env_change),
        check=False,
    )
    assert done.returncode == 2
    assert f"scripts/slurm/train.sbatch: error: {message}" in done.stderr
    assert not (stub_dir / "srun.args").exists()  # srun was never started


@pytest.mark.slow
def test_sigusr1_requeues_and_the_requeued_job_resumes(tmp_path):
    stub_dir = stubs(tmp_path / "bin", execute=True)
    env = slurm_env(stub_dir, DCK="python -m dck_lightning.cli")
    flag = tmp_path / "at_step_3"
    wait = {
        "class_path": "dck_test_helpers.WaitForSignal",
        "init_args": {"at_step": 3, "flag_file": str(flag)},
    }
    command = [
        "bash",
        str(SCRIPT),
        *tiny_args(tmp_path / "runs", "--trainer.max_epochs", "3"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.callbacks+",
        json.dumps(wait),
    ]
    run_dir = tmp_path / "runs" / "default" / "slurm-4242"

    first = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(flag, first)
    pid = int(
        (stub_dir / "srun.pid").read_text()
    )  # the srun stub exec'ed into dck: the training process
    os.kill(pid, signal.SIGUSR1)  # SLURM, 90 s before the time limit
    wait_for(run_dir / "hpc_ckpt_1.ckpt", first)
    deadline = time.monotonic() + 30
    while (
        "scontrol requeue 4242" not in (stub_dir / "calls.log").read_text()
        if (stub_dir / "calls.log").exists()
        else True
    ):
        assert time.monotonic() < deadline, "scontrol requeue was not called"
        time.sleep(0.1)
    os.kill(pid, signal.SIGTERM)  # SLURM stops the requeued job
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err[-4000:]
    assert "SIGTERM: saved" in err
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 3
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3

    # The requeued job: the same script, the same job id, no --ckpt_path.
    done = run(command, env, timeout=120)
    assert "Resuming" in done.stderr and str(run_dir.resolve()) in done.stderr
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (
        final["global_step"] == 6 and final["epoch"] == 2
    )  # 3 epochs × 2 batches: nothing lost or repeated
    assert [p.name for p in (tmp_path / "runs" / "default").iterdir()] == ["slurm-4242"]
    assert (run_dir / "config_1.yaml").is_file()  # the first config kept


def test_the_job_log_gets_a_few_progress_lines_per_epoch_not_one_per_batch(tmp_path):
    """SLURM writes stdout to a file: the progress bar refreshes ~10 times per epoch there."""
    stub_dir = stubs(tmp_path / "bin", execute=True)
    env = slurm_env(stub_dir, DCK="python -m dck_lightning.cli")
    args = tiny_args(tmp_path / "runs", "--trainer.accelerator", "cpu")
    args += ["--trainer.enable_progress_bar", "true", "--trainer.limit_train_batches", "40"]
    args += ["--data.init_args.num_train", "320"]
    done = run(["bash", str(SCRIPT), *args], env, timeout=180)
    shown = [int(n) for n in re.findall(r"Epoch 0:[^\r\n]*?\|\s*(\d+)/40", done.stdout)]
    assert shown and shown[-1] == 40
    assert set(shown) <= {0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40}, shown  # every 40/10 batches
    assert len(done.stdout) < 8000, len(done.stdout)
