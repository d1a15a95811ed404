"""Run folders and W&B mode: where a run writes, and whether W&B is online.

Layout of one run (``runs/<name>/<version>/``)::

    config.yaml          the full resolved config (config_1.yaml, … on resume: never overwritten)
    metrics.csv          every logged metric (CSVLogger), read by the notebooks
    hparams.yaml         the task's hyperparameters
    checkpoints/         best-*.ckpt, last.ckpt
    wandb/               the W&B run (offline runs: upload with ``wandb sync``)
    wandb_run_id.txt     the W&B run id, so a resumed run continues the same W&B run

A new run never reuses a folder: versions count up (``version_0``, ``version_1``…), created
atomically. A SLURM job uses ``slurm-<job id>``, so a requeued job finds its own folder
and resumes. ``DCK_RUN_DIR`` (set for the DDP processes a launcher starts) wins over both.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Literal, Optional

from pytorch_lightning.utilities import rank_zero_info

RUN_DIR_ENV = "DCK_RUN_DIR"
WandbMode = Literal["auto", "online", "offline", "disabled"]


def next_version_dir(parent: Path) -> Path:
    """Create and return ``parent/version_N`` for the smallest free ``N`` (race-free)."""
    parent.mkdir(parents=True, exist_ok=True)
    existing = [
        int(p.name.split("_", 1)[1])
        for p in parent.glob("version_*")
        if p.name.split("_", 1)[1].isdigit()
    ]
    n = max(existing, default=-1) + 1
    while True:
        candidate = parent / f"version_{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def is_global_zero_process() -> bool:
    """True in the process that decides things before the process group exists."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def resolve_run_dir(root: str, name: str, version: Optional[str] = None) -> Path:
    """The run folder for this process (see the module docstring for the rules)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    parent = Path(root) / name
    if version is None and os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_JOB_NAME") != "interactive":
        version = f"slurm-{os.environ['SLURM_JOB_ID']}"
    if version is not None:
        path = parent / version
        path.mkdir(parents=True, exist_ok=True)
        return path
    if not is_global_zero_process():
        raise RuntimeError(
            f"this process is a distributed rank but {RUN_DIR_ENV} is not set: launch with "
            "scripts/torchrun.sh or scripts/slurm/train.sbatch, or pass --run.version"
        )
    return next_version_dir(parent)


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = 2.0) -> bool:
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(requested: WandbMode) -> str:
    """``online``/``offline``/``disabled`` for this run.

    ``WANDB_MODE`` in the environment wins; ``auto`` is online only with credentials and a
    reachable server, else offline (said once, with the ``wandb sync`` command).
    """
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    if requested != "auto":
        return requested
    if has_wandb_credentials() and wandb_reachable():
        return "online"
    rank_zero_info(
        "W&B: no credentials or no network, logging offline. Upload later with "
        "`wandb sync <run folder>/wandb/offline-run-*`."
    )
    return "offline"


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of ``run_dir``: read back on resume, created once otherwise."""
    path = run_dir / "wandb_run_id.txt"
    if path.exists():
        return path.read_text().strip()
    import secrets

    run_id = secrets.token_hex(4)  # W&B ids are short lowercase alphanumerics
    if is_global_zero_process():
        path.write_text(run_id + "\n")
    return run_id
