"""The run plan: which folder a command writes, which checkpoint it loads, which W&B run it logs.

:func:`plan_run` decides it from the command's settings and the process environment alone: it
reads run folders but writes nothing and imports no Lightning class, so every rule below is
tested with plain dicts and folders. The CLI (:mod:`dck_lightning.cli`) applies the plan.

**Folder** (``<root>/<name>/<version>``; ``root`` is ``trainer.default_root_dir`` when given,
else ``run.root``; ``name`` is ``run.name``, else the first config file's stem, else
``default``):

1. a fixed folder: ``DCK_RUN_DIR`` (the DDP processes Lightning starts), else the job's
   version (``run.version``, ``slurm-<job id>``, ``torchrun-<rdzv id>``, see
   :func:`~dck_lightning.runs.job_version`);
2. else, for ``fit`` from a checkpoint: that checkpoint's run folder (``--ckpt_path last|best|hpc``:
   the experiment's run whose checkpoint was written last);
3. else a new ``version_N`` (created by :func:`make_run_folder`; only rank 0 may make one).

**Checkpoint**: ``--ckpt_path`` (a file, or an alias resolved in the folder of step 2 — or
the fixed folder — by :class:`~dck_lightning.run_folder.RunFolder`). ``fit`` into a folder
that already has its own ``last``/``hpc`` checkpoint resumes from it (never overwriting it),
unless the given checkpoint is an earlier one of that very folder; with ``run.resume: false``
that is an error instead.

**Starting over**: ``fit`` into an existing run folder that it neither resumes nor continues
from one of the folder's own checkpoints (an earlier attempt failed before its first
checkpoint, or ``--ckpt_path`` names another run's) moves the earlier attempt's files into
``attempts/<n>/`` (:meth:`~dck_lightning.run_folder.RunFolder.archive_attempt`), so the
folder's ``config.yaml``, ``metrics.csv`` and W&B run are those of the attempt that produced
its results, and nothing is lost.

**W&B**: the mode is :func:`~dck_lightning.runs.choose_wandb_mode`'s (``None`` when the
config brings its own ``trainer.logger``). The run id is the folder's ``wandb_run_id.txt``
(not when starting over), else (``fit`` from a checkpoint) the checkpoint's, else a new one
when W&B logs.

**Applying it**: :class:`RunSession` creates the folder (:func:`make_run_folder`), holds its
lock (:class:`~dck_lightning.locking.RunFolderLock`, global rank 0 only), starts over, records
the W&B id and the command in ``run.json`` (``running``), and at the end its outcome.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .checkpoints import CheckpointError
from .locking import RunFolderBusyError, RunFolderLock
from .run_folder import CHECKPOINT_ALIASES, RunFolder, newest_run
from .runs import (
    RUN_DIR_ENV,
    WANDB_OFFLINE_NOTE,
    choose_wandb_mode,
    is_global_zero_process,
    job_version,
    next_version,
    next_version_dir,
    wandb_online,
)

__all__ = [
    "RunEnvironment",
    "RunFolderError",
    "RunPlan",
    "RunSession",
    "make_run_folder",
    "plan_run",
]


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (it would overwrite an earlier run)."""


def _new_wandb_id() -> str:
    return secrets.token_hex(4)  # W&B ids are short lowercase alphanumerics


@dataclass(frozen=True)
class RunEnvironment:
    """What :func:`plan_run` reads besides the config.

    Args:
        environ: the process environment (``DCK_RUN_DIR``, SLURM/torchrun variables,
            ``WANDB_MODE``, ranks).
        checkpoint_wandb_id: the W&B run id a checkpoint file recorded (``None``: none).
        wandb_online: whether W&B can log online (asked only for ``run.wandb: auto``).
        new_wandb_id: a fresh W&B run id.
    """

    environ: Mapping[str, str]
    checkpoint_wandb_id: Callable[[Path], Optional[str]]
    wandb_online: Callable[[], bool] = wandb_online
    new_wandb_id: Callable[[], str] = _new_wandb_id

    @classmethod
    def of_process(cls, checkpoint_wandb_id: Callable[[Path], Optional[str]]) -> RunEnvironment:
        return cls(dict(os.environ), checkpoint_wandb_id)


@dataclass(frozen=True)
class RunPlan:
    """Where a command writes and what it loads (see the module docstring).

    Attributes:
        folder: the run folder, absolute. For a new version it is the next free
            ``version_N`` now; :func:`make_run_folder` creates the one free then.
        new_version: the folder is a new ``version_N``.
        checkpoint: the checkpoint the command loads (``--ckpt_path``, or the folder's own
            when ``fit`` resumes), or ``None``.
        resumes: ``fit`` continues the folder's own checkpoint.
        wandb_mode: ``online``, ``offline``, ``disabled``, or ``None`` (the config's loggers).
        wandb_id: the W&B run id to record in ``wandb_run_id.txt`` and log to, or ``None``.
        info, warnings: what to tell the user.
        starts_over: ``fit`` moves the folder's earlier attempt aside first (see the module
            docstring).
    """

    folder: Path
    new_version: bool = False
    checkpoint: Optional[Path] = None
    resumes: bool = False
    wandb_mode: Optional[str] = None
    wandb_id: Optional[str] = None
    info: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    starts_over: bool = False

    @property
    def version(self) -> str:
        return self.folder.name


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a dict or a jsonargparse Namespace, or ``default``."""
    if config is None:
        return default
    value = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
    return default if value is None else value


def _experiment_name(run: Any, config_files: Sequence[Any]) -> str:
    # trainer/ and logger/ configs are add-ons; the experiment is named after the main config.
    files = [Path(str(c)) for c in config_files if c is not None]
    files = [f for f in files if f.parent.name not in ("trainer", "logger")]
    return _get(run, "name") or (files[0].stem if files else "default")


def plan_run(config: Mapping[str, Any], environment: RunEnvironment) -> RunPlan:
    """The run plan of one command.

    Args:
        config: the command's settings: ``subcommand`` (``fit``, ``validate``…), ``run``
            (:class:`~dck_lightning.cli.RunConfig` fields), ``trainer`` (``default_root_dir``,
            ``logger``), ``ckpt_path`` and ``config`` (the config files given). Plain dicts or
            jsonargparse Namespaces.
        environment: the process environment, see :class:`RunEnvironment`.

    Raises:
        CheckpointError: a ``--ckpt_path`` alias no run folder has a checkpoint for.
        RunFolderError: ``fit`` would restart a folder that has checkpoints and
            ``run.resume`` is false.
        RuntimeError: a distributed rank without a fixed run folder.
    """
    environ = environment.environ
    run, trainer = _get(config, "run", {}), _get(config, "trainer", {})
    fit = _get(config, "subcommand") == "fit"
    name = _experiment_name(run, _get(config, "config", []))
    experiment = Path(_get(trainer, "default_root_dir") or _get(run, "root", "runs")) / name
    ckpt_path = _get(config, "ckpt_path")
    ckpt_path = None if ckpt_path is None else str(ckpt_path)
    alias = ckpt_path if ckpt_path in CHECKPOINT_ALIASES else None
    version = job_version(_get(run, "version"), environ)
    fixed: Optional[Path] = None
    if environ.get(RUN_DIR_ENV):
        fixed = Path(environ[RUN_DIR_ENV])
    elif version is not None:
        fixed = experiment / version

    # The folder an alias is looked up in, and the folder of a checkpoint fit continues.
    source: Optional[RunFolder] = None
    if alias is not None and fixed is None:
        source = newest_run(map(RunFolder, experiment.glob("*")), alias)
        if source is None:
            raise CheckpointError(
                f"--ckpt_path {alias}: no run of {name!r} under {experiment.parent.resolve()} "
                f"has a {alias} checkpoint; give the checkpoint file instead"
            )
    elif ckpt_path is not None and alias is None and fit and fixed is None:
        source = RunFolder.of_checkpoint(ckpt_path)

    new_version = False
    if fixed is not None:
        folder = fixed
    elif fit and source is not None:
        folder = source.path
    else:
        if not is_global_zero_process(environ):
            raise RuntimeError(
                f"this process is a distributed rank but {RUN_DIR_ENV} is not set: launch with "
                "scripts/torchrun.sh or scripts/slurm/train.sbatch, or pass --run.version"
            )
        folder, new_version = experiment / f"version_{next_version(experiment)}", True
    folder = folder.resolve()

    checkpoint: Optional[Path] = None
    if alias is not None:
        checkpoint = (source or RunFolder(folder)).checkpoint(alias)
        if checkpoint is None:
            raise CheckpointError(
                f"--ckpt_path {alias}: the run folder {folder} has no {alias} checkpoint"
            )
    elif ckpt_path is not None:
        checkpoint = Path(ckpt_path)

    info: list[str] = []
    warnings: list[str] = []
    resumes = False
    own = RunFolder(folder).last if fit and not new_version else None
    if own is not None and not _is_own(checkpoint, own, folder):
        if not _get(run, "resume", True):
            raise RunFolderError(
                f"the run folder {folder} already has checkpoints ({own.name}) and "
                "--run.resume is false: starting again there would overwrite them. Give another "
                "--run.version (or none, for a new version_N), or --run.resume true to continue it."
            )
        if checkpoint is not None:
            warnings.append(
                f"the run folder {folder} already has its own checkpoint {own.name}: resuming "
                f"from it, not from --ckpt_path {checkpoint} (it started from that one; give a new "
                "--run.version to start over from it)"
            )
        info.append(f"Resuming {folder} from {own}")
        checkpoint, resumes = own, True

    wandb_mode = None
    if _get(trainer, "logger") in (None, True):  # the CLI's loggers, W&B among them
        requested = _get(run, "wandb", "auto")
        wandb_mode = choose_wandb_mode(requested, environ, environment.wandb_online)
        if requested == "auto" and wandb_mode == "offline" and environ.get("WANDB_MODE") is None:
            info.append(WANDB_OFFLINE_NOTE)
    starts_over = (
        fit
        and not new_version
        and not resumes
        and RunFolder(folder).exists
        and (checkpoint is None or not _inside(checkpoint, folder))
    )
    if starts_over:
        info.append(f"Starting {folder} over: its earlier attempt goes to attempts/")
    wandb_id = None if new_version or starts_over else RunFolder(folder).wandb_run_id()
    if wandb_id is None and fit and checkpoint is not None:
        wandb_id = environment.checkpoint_wandb_id(checkpoint)
    if wandb_id is None and wandb_mode not in (None, "disabled"):
        wandb_id = environment.new_wandb_id()
    return RunPlan(
        folder,
        new_version,
        checkpoint,
        resumes,
        wandb_mode,
        wandb_id,
        tuple(info),
        tuple(warnings),
        starts_over,
    )


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in Path(path).resolve().parents


def _is_own(checkpoint: Optional[Path], own: Path, folder: Path) -> bool:
    """Whether the given checkpoint is the folder's newest, or an earlier one of that folder."""
    if checkpoint is None:
        return False
    if checkpoint.resolve() == own.resolve():
        return True
    given = RunFolder.of_checkpoint(checkpoint)
    return given is not None and given.path.resolve() == folder


def _create(plan: RunPlan) -> Path:
    """Create the plan's folder (a new ``version_N``: the one free now, race-free)."""
    try:
        if plan.new_version:
            return next_version_dir(plan.folder.parent).resolve()
        plan.folder.mkdir(parents=True, exist_ok=True)
        return plan.folder
    except OSError as error:
        where = plan.folder.parent if plan.new_version else plan.folder
        raise RunFolderError(
            f"cannot create the run folder {where} ({error.strerror or error}): give a "
            "writable --run.root (or --trainer.default_root_dir)"
        ) from error


def _record_wandb_id(plan: RunPlan, folder: Path, environ: Optional[Mapping[str, str]]) -> None:
    id_file = folder / "wandb_run_id.txt"
    if plan.wandb_id and not id_file.exists() and is_global_zero_process(environ):
        id_file.write_text(plan.wandb_id + "\n")


def make_run_folder(plan: RunPlan, environ: Optional[Mapping[str, str]] = None) -> Path:
    """Create the plan's run folder (a new ``version_N``: the one free now, race-free) and, on
    global rank 0, record its W&B run id. Returns the folder. (:class:`RunSession` does this
    under the folder's lock.)"""
    folder = _create(plan)
    _record_wandb_id(plan, folder, environ)
    return folder


def _free_name(folder: Path, filename: str) -> str:
    """``config.yaml``, else ``config_1.yaml``, … : the name the command's config file gets
    (:class:`~dck_lightning.callbacks.SaveRunConfig` picks it the same way)."""
    stem, suffix = Path(filename).stem, Path(filename).suffix
    name, n = filename, 0
    while (folder / name).exists():
        n += 1
        name = f"{stem}_{n}{suffix}"
    return name


class RunSession:
    """One command's hold on its run folder, from its lock to its recorded outcome.

    :meth:`hold` takes the folder's lock (``fit`` into a fixed folder takes it before planning
    again, so the plan reads a folder no other process writes); :meth:`start` creates the folder
    if needed, starts over, writes the W&B id and records the command as ``running``;
    :meth:`close` records ``finished``/``failed``/``interrupted`` and releases the lock, and
    removes a folder it created that stayed empty (a command that failed before it started).
    Only global rank 0 locks and records; the other ranks of a job write nothing.

    Args:
        command: ``fit``, ``validate``, ``test`` or ``predict``.
        environ: the environment (ranks, SLURM job). Default: ``os.environ``.
    """

    def __init__(self, command: str, environ: Optional[Mapping[str, str]] = None) -> None:
        self.command = command
        self.environ = os.environ if environ is None else environ
        self.rank_zero = is_global_zero_process(self.environ)
        self.folder: Optional[Path] = None
        self.lock: Optional[RunFolderLock] = None
        self.index: Optional[int] = None
        self.created = False
        #: set by the CLI: the trainer, to tell an interrupted run (Ctrl-C) from a failed one.
        self.trainer: Any = None

    def hold(self, folder: Path) -> None:
        """Lock ``folder`` (created when missing) for this command, once."""
        if self.folder is not None:
            return
        existed = folder.exists()
        folder = _create(RunPlan(folder))
        self.folder, self.created = folder, not existed
        if not self.rank_zero:
            return
        lock = RunFolderLock(folder, f"dck {self.command}", self.environ)
        try:
            lock.acquire()
        except RunFolderBusyError as error:
            self._remove_if_empty()
            self.folder = None
            raise RunFolderError(str(error)) from error
        self.lock = lock

    def start(self, plan: RunPlan, config: Optional[str] = None) -> Path:
        """Create and hold the plan's folder, start over if the plan says so, record the W&B id
        and the command (``config``: the config file it will write). Returns the folder."""
        if self.folder is None:
            if plan.new_version:
                folder = _create(plan)
                self.folder, self.created = None, True
                self.hold(folder)
                self.created = True
            else:
                self.hold(plan.folder)
        assert self.folder is not None
        if self.rank_zero:
            run = RunFolder(self.folder)
            if plan.starts_over:
                run.archive_attempt()
            _record_wandb_id(plan, self.folder, self.environ)
            config = None if config is None else _free_name(self.folder, config)
            self.index = run.start_command(self.command, config, plan.checkpoint)
        return self.folder

    def close(self, status: str, exit_code: Optional[int], error: Optional[str] = None) -> None:
        """Record the outcome (when the command started) and release the folder."""
        if self.folder is None:
            return
        try:
            if self.index is not None:
                RunFolder(self.folder).end_command(self.index, status, exit_code, error)
        finally:
            if self.lock is not None:
                self.lock.release()
            self._remove_if_empty()
            self.folder, self.lock, self.index = None, None, None

    def _remove_if_empty(self) -> None:
        if self.created and self.folder is not None and self.index is None:
            leftovers = [p for p in self.folder.iterdir() if not p.name.startswith(".run.lock")]
            if not leftovers:
                for path in self.folder.iterdir():
                    path.unlink(missing_ok=True)
                self.folder.rmdir()
