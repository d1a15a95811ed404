"""Helpers of the scale-out tests: tiny CLI arguments, subprocess environments, ports, waiting.

(A uniquely named module: ``from conftest import …`` would be ambiguous across test folders.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))  # dck_test_helpers, for class_path in in-process runs

TINY_MODEL = '{"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}'

#: Launcher variables a test process may inherit; cleared for every subprocess and in-process run.
LAUNCHER_VARS = (
    "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES",
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
    "SLURM_GPUS_ON_NODE", "SLURM_JOB_NUM_NODES", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK",
    "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
    "DCK_RUN_DIR", "PL_GLOBAL_SEED",
)  # fmt: skip


def tiny_args(root: Path, *extra: str) -> list[str]:
    """A tiny, fast ``fit``: dcb_small at 16×16, 2 batches of 8 per epoch, one val batch, a
    constant learning rate (the default's one-cycle length follows max_epochs, which these
    tests change between a run and its resume)."""
    return [
        "--run.root", str(root),
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--model.init_args.backbone.init_args", TINY_MODEL,
        "--model.init_args.lr_scheduler", "null",
        "--data.init_args.image_size", "16",
        "--data.init_args.num_train", "32",
        "--data.init_args.num_val", "16",
        "--data.init_args.num_test", "16",
        "--data.init_args.batch_size", "8",
        *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(wandb: str = "disabled", **extra: str) -> dict[str, str]:
    """The environment of a ``dck`` subprocess: offline, one thread, the venv on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(
        NO_ALBUMENTATIONS_UPDATE="1",
        WANDB_MODE=wandb,
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
        PYTHON=sys.executable,
    )
    env.update(extra)
    return env


def run(
    cmd: list[str], env: dict[str, str], timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-6000:]}"
        )
    return done


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"exited {process.returncode} before {path.name} appeared:\n{process.stderr.read()[-4000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)
