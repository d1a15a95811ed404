"""Run folders and W&B mode: where a run writes, and whether W&B is online.

Layout of one run (``runs/<name>/<version>/``)::

    config.yaml          the full resolved config (config_1.yaml, … on resume: never overwritten)
    metrics.csv          every logged metric (CSVLogger), read by the notebooks
    hparams.yaml         the task's hyperparameters
    checkpoints/         best-*.ckpt, last.ckpt
    wandb/               the W&B run (offline runs: upload with ``wandb sync``)
    wandb_run_id.txt     the W&B run id, so a resumed run continues the same W&B run

A new run never reuses a folder: versions count up (``version_0``, ``version_1``…), created
atomically. A SLURM job uses ``slurm-<job id>`` and a torchrun job ``torchrun-<rdzv id>``
(``scripts/torchrun.sh`` sets it), so every rank of the job agrees on the folder and a
requeued or restarted job finds its own folder and resumes. ``DCK_RUN_DIR`` (set for the DDP
processes Lightning starts itself) wins over all of these.

:func:`check_launcher` compares the processes an external launcher started (srun, torchrun)
with the trainer's ``devices`` × ``num_nodes`` before anything else runs: a mismatch would
otherwise hang at start-up, waiting for processes that never come.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Any, Literal, Optional

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
    return all(
        os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK")
    )


def slurm_job_id() -> Optional[str]:
    """The SLURM job id of a batch job (``<array job>_<task>`` for array jobs), else ``None``.

    Interactive allocations (job name ``bash`` or ``interactive``, as Lightning treats them)
    do not count: their processes are not started by ``srun`` for this run.
    """
    if not os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOB_NAME") in (
        "bash",
        "interactive",
    ):
        return None
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def job_version(version: Optional[str] = None) -> Optional[str]:
    """The run folder name every process of this job agrees on without talking to each other.

    ``version`` when given, else ``slurm-<job id>`` in a SLURM job, ``torchrun-<rdzv id>`` under
    torchrun with an explicit ``--rdzv-id`` (``scripts/torchrun.sh``), else ``None`` (a new
    ``version_N``, only possible in a single process or rank 0 of Lightning's own launcher).
    """
    if version is not None:
        return version
    job_id = slurm_job_id()
    if job_id is not None:
        return f"slurm-{job_id}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}"
    return None


def resolve_run_dir(root: str, name: str, version: Optional[str] = None) -> Path:
    """The run folder for this process (see the module docstring for the rules)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    parent = Path(root) / name
    version = job_version(version)
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

    An explicit ``online``/``offline``/``disabled`` (``--run.wandb``) is used as given. ``auto``
    follows ``WANDB_MODE`` when the environment sets it (a cluster-wide ``offline``, say), else
    it is online only with credentials and a reachable server, else offline (said once, with
    the ``wandb sync`` command).
    """
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
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


# -- launchers ---------------------------------------------------------------------------------


class LauncherMismatchError(RuntimeError):
    """The processes a launcher started do not match the trainer's ``devices`` × ``num_nodes``."""


def launcher_processes() -> Optional[tuple[str, int, int]]:
    """``(launcher, processes per node, nodes)`` when an external launcher started this process.

    torchrun (``LOCAL_WORLD_SIZE``, ``WORLD_SIZE``) or ``srun`` in a SLURM batch job
    (``SLURM_NTASKS_PER_NODE``, ``SLURM_NNODES``); ``None`` otherwise — including the processes
    Lightning's own DDP launcher starts, which copy the trainer's settings.
    """
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None and os.environ.get("LOCAL_WORLD_SIZE"):
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        world = int(os.environ.get("WORLD_SIZE", per_node))
        return "torchrun", per_node, max(1, world // max(1, per_node))
    if slurm_job_id() is not None and os.environ.get("SLURM_NTASKS"):
        nodes = int(os.environ.get("SLURM_NNODES", "1"))
        per_node_text = os.environ.get("SLURM_NTASKS_PER_NODE", "")
        per_node = (
            int(per_node_text)
            if per_node_text.isdigit()
            else int(os.environ["SLURM_NTASKS"]) // max(1, nodes)
        )
        return "srun", per_node, nodes
    return None


def count_devices(devices: Any, accelerator: Any = "auto") -> Optional[int]:
    """How many devices per node a trainer's ``devices`` setting means (``None``: cannot tell)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        if text.lstrip("-").isdigit():
            devices = int(text)
        elif text != "auto":
            return None
    if isinstance(devices, int) and devices >= 0:
        return devices
    # "auto" or -1: all devices of the accelerator (CPU: one process).
    accelerator = str(accelerator or "auto")
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count() if torch.cuda.is_available() else None
    if accelerator in ("cpu", "auto"):
        return 1 if devices == "auto" else os.cpu_count()
    return None


def check_launcher(devices: Any, num_nodes: Any, accelerator: Any = "auto") -> None:
    """Fail fast when a launcher started a different number of processes than the trainer expects.

    Raises:
        LauncherMismatchError: naming the launcher's count, the trainer's, and the fix.
    """
    started = launcher_processes()
    if started is None:
        return
    launcher, per_node, nodes = started
    expected = count_devices(devices, accelerator)
    flag = "--nproc-per-node" if launcher == "torchrun" else "--ntasks-per-node"
    node_flag = "--nnodes" if launcher == "torchrun" else "--nodes"
    script = "scripts/torchrun.sh" if launcher == "torchrun" else "scripts/slurm/train.sbatch"
    if expected is not None and expected != per_node:
        raise LauncherMismatchError(
            f"{launcher} started {per_node} process(es) per node ({flag}={per_node}) but "
            f"trainer.devices={devices} means {expected} per node: one process drives one device, "
            f"so they must match (a mismatch hangs at start-up). Pass --trainer.devices {per_node} "
            f"({script} does this) or change {flag}."
        )
    try:
        wanted_nodes = int(num_nodes)
    except (TypeError, ValueError):
        return
    if wanted_nodes != nodes:
        raise LauncherMismatchError(
            f"{launcher} started processes on {nodes} node(s) ({node_flag}={nodes}) but "
            f"trainer.num_nodes={num_nodes}: they must match (a mismatch hangs at start-up). "
            f"Pass --trainer.num_nodes {nodes} ({script} does this) or change {node_flag}."
        )
