"""Run folder names, W&B mode and launcher checks (the run plan, :mod:`dck_lightning.run_plan`,
uses them to decide where a run writes; :mod:`dck_lightning.run_folder` reads the folder).

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pytorch_lightning.utilities import rank_zero_info

RUN_DIR_ENV = "DCK_RUN_DIR"
WandbMode = Literal["auto", "online", "offline", "disabled"]


def next_version(parent: Path) -> int:
    """One more than the highest ``N`` of ``parent/version_N`` (0 when there is none)."""
    existing = [
        int(p.name.split("_", 1)[1])
        for p in parent.glob("version_*")
        if p.name.split("_", 1)[1].isdigit()
    ]
    return max(existing, default=-1) + 1


def next_version_dir(parent: Path) -> Path:
    """Create and return ``parent/version_N`` for the smallest free ``N`` (race-free)."""
    parent.mkdir(parents=True, exist_ok=True)
    n = next_version(parent)
    while True:
        candidate = parent / f"version_{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def is_global_zero_process(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True in the process that decides things before the process group exists."""
    environ = os.environ if environ is None else environ
    return all(
        environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK")
    )


def slurm_job_id(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The SLURM job id of a batch job (``<array job>_<task>`` for array jobs), else ``None``.

    Interactive allocations (job name ``bash`` or ``interactive``, as Lightning treats them)
    do not count: their processes are not started by ``srun`` for this run.
    """
    environ = os.environ if environ is None else environ
    if not environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOB_NAME") in (
        "bash",
        "interactive",
    ):
        return None
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ["SLURM_JOB_ID"]


def job_version(
    version: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
) -> Optional[str]:
    """The run folder name every process of this job agrees on without talking to each other.

    ``version`` when given, else ``slurm-<job id>`` in a SLURM job, ``torchrun-<rdzv id>`` under
    torchrun with an explicit ``--rdzv-id`` (``scripts/torchrun.sh``), else ``None`` (a new
    ``version_N``, only possible in a single process or rank 0 of Lightning's own launcher).
    """
    if version is not None:
        return version
    environ = os.environ if environ is None else environ
    job_id = slurm_job_id(environ)
    if job_id is not None:
        return f"slurm-{job_id}"
    run_id = environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}"
    return None


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


def wandb_online() -> bool:
    """W&B credentials and a reachable server."""
    return has_wandb_credentials() and wandb_reachable()


#: Said when ``auto`` logs offline.
WANDB_OFFLINE_NOTE = (
    "W&B: no credentials or no network, logging offline. Upload later with "
    "`wandb sync <run folder>/wandb/offline-run-*`."
)


def choose_wandb_mode(
    requested: WandbMode,
    environ: Optional[Mapping[str, str]] = None,
    online: Optional[Callable[[], bool]] = None,
) -> str:
    """``online``/``offline``/``disabled`` for this run.

    An explicit ``online``/``offline``/``disabled`` (``--run.wandb``) is used as given. ``auto``
    follows ``WANDB_MODE`` when the environment sets it (a cluster-wide ``offline``, say), else
    it is online only when ``online()`` (default: credentials and a reachable server), else
    offline.
    """
    if requested != "auto":
        return requested
    env = (os.environ if environ is None else environ).get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    return "online" if (online or wandb_online)() else "offline"


def resolve_wandb_mode(requested: WandbMode) -> str:
    """:func:`choose_wandb_mode` for this process, saying so (with the ``wandb sync`` command)
    when ``auto`` falls back to offline."""
    mode = choose_wandb_mode(requested)
    if requested == "auto" and mode == "offline" and os.environ.get("WANDB_MODE") is None:
        rank_zero_info(WANDB_OFFLINE_NOTE)
    return mode


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
