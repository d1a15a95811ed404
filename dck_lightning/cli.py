"""The ``dck`` command: LightningCLI with ``fit | validate | test | predict``, and ``sweep``
(:mod:`dck_lightning.sweep`) and ``export`` (:mod:`dck_lightning.export`); ``python -m
dck_lightning`` is the same command.

::

    dck fit                                   # the embedded default: synthetic shapes, dcb_small
    dck fit -c configs/mnist_seed.yaml        # a config
    dck fit -c configs/cifar10_dcb_resnet18.yaml -c configs/trainer/gpu.yaml -c configs/logger/wandb.yaml
    dck test -c configs/mnist_seed.yaml --ckpt_path runs/mnist_seed/version_0/checkpoints/last.ckpt
    dck test -c configs/mnist_seed.yaml --ckpt_path runs/mnist_seed/version_0   # its best checkpoint

Model and data are chosen by ``class_path`` (subclass mode); ``num_classes`` and
``in_channels`` are linked from the DataModule. Besides ``trainer``, ``model`` and ``data``
the config has a ``run`` section: where the run folder goes, how W&B logs, and how faults are
handled. Which folder, which checkpoint and which W&B run is decided by
:func:`dck_lightning.run_plan.plan_run` (a plain function, its rules are documented there); this
module applies the plan. Loggers and the checkpoint callback are added here
unless the config sets its own ``trainer.logger`` / ``ModelCheckpoint``.

Scale-out and fault tolerance (see README, "Clusters: DDP, SLURM, torchrun"):

- the processes an external launcher started (``srun``, ``torchrun``) are checked against
  ``trainer.devices`` × ``trainer.num_nodes`` before anything runs;
- every rank of a job uses the same run folder; only rank 0 writes files and the W&B run;
- ``fit`` into a run folder that already has a checkpoint resumes from its newest ``last.ckpt``
  / ``hpc_ckpt_N.ckpt`` (so a requeued job, or the same command started again, continues);
  ``--ckpt_path last|hpc|best`` means that run folder's (or, without a fixed run folder, the
  experiment's latest run's) checkpoint (``best`` without a ``best-*.ckpt``: its last one);
- a checkpoint given to any command is checked first (readable, undamaged, same task,
  backbone and tensor shapes) and loaded with ``weights_only=True`` unless
  ``--weights_only false``;
- SIGTERM writes ``last.ckpt`` before exiting; a non-finite loss stops training (or skips
  the batch: ``--run.nonfinite_loss skip``) before it reaches the weights, a non-finite
  validation loss or monitored metric stops it before that epoch's checkpoints;
- one process at a time writes a run folder (its ``run.lock``), and ``run.json`` records each
  command and its outcome (``running``, then ``finished``, ``failed`` or ``interrupted``);
  checkpoints are written to a temporary name and renamed once complete.

Errors in what the user gave (config values, checkpoints, launcher settings, missing data)
end the command with ``dck: error: …`` and exit status 2 (1 for a non-finite loss), without
a traceback; set ``DCK_DEBUG=1`` to get the traceback. A misspelt key, a wrong type or an
invalid choice is at most four lines with the nearest valid keys or choices
(:mod:`dck_lightning.cli_errors`); keys are never abbreviated (``--trainer.max_epoch`` is an
error). ``--ckpt_path <run folder>`` takes the folder's best checkpoint (``fit``: its last),
as ``--ckpt_path best`` does; a log line names the file. The result lines (``Finished fit:
<metric>``, checkpoints, run folder) are printed last, after the W&B run is finished.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pytorch_lightning.callbacks import (
    BasePredictionWriter,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
)
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from . import __version__, cli_presets
from .callbacks import RunSummary, SaveRunConfig, TerminalAwareProgressBar
from .callbacks.guards import FiniteModelCheckpoint, NonFiniteLossError, NonFiniteLossGuard
from .callbacks.prediction_writer import PredictionWriter
from .callbacks.preemption import PreemptionCheckpoint
from .callbacks.resume import ResumeState
from .checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    check_compatible,
    check_config_matches,
    read_checkpoint,
)
from .cli_errors import DCKArgumentParser
from .data import BaseDataModule
from .data.errors import DataNotFoundError
from .distributed import exact_mean_reduce
from .loggers import RedactingWandbLogger, ResumableCSVLogger
from .run_folder import CHECKPOINT_ALIASES, RunFolder
from .run_plan import RunEnvironment, RunFolderError, RunSession, plan_run
from .runs import RUN_DIR_ENV, LauncherMismatchError, WandbMode, check_launcher
from .tasks import BaseTask

cli_presets.install()  # another backbone preset brings its own values, see the module

DEFAULT_MODEL = {
    "class_path": "dck_lightning.tasks.ClassificationTask",
    "init_args": {
        # ResNet-D shortcuts: with 1x1 strided ones the deep (DCB) stages read one pixel in
        # four and their gradients hold the whole network back for epochs.
        "backbone": {
            "class_path": "dck_lightning.models.dcb_small",
            "init_args": {"downsample": "avg"},
        },
        # A multi-scale max-pooled head: every stage's features, the fine ones learn first.
        "feature": "all",
        "pool": "max",
        "optimizer": {
            "class_path": "torch.optim.AdamW",
            "init_args": {"lr": 0.003, "weight_decay": 0.05},
        },
        # One cycle per optimiser step (a 20 % warm-up, then cosine annealing): its length
        # follows trainer.max_epochs.
        "lr_scheduler": {
            "class_path": "torch.optim.lr_scheduler.OneCycleLR",
            "init_args": {"max_lr": 0.003, "pct_start": 0.2},
        },
        "lr_scheduler_interval": "step",
    },
}
DEFAULT_DATA = {
    "class_path": "dck_lightning.data.SyntheticShapesDataModule",
    "init_args": {"task": "classification", "image_size": 32, "batch_size": 32},
}
TRAINER_DEFAULTS = {"max_epochs": 7, "log_every_n_steps": 10}
EMBEDDED_DEFAULT = {"model": DEFAULT_MODEL, "data": DEFAULT_DATA}


def chosen_parts(args: Sequence[str]) -> set[str]:
    """The parts of the embedded default (``model``, ``data``) the command line replaces: those
    a config file (``-c``/``--config``) has a section for, and those given a class
    (``--model X``/``--data X``). A trainer-only file (``configs/trainer/ddp.yaml``) keeps both."""
    chosen: set[str] = set()
    for index, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if not value and index + 1 < len(args):
            value = args[index + 1]
        if name in ("-c", "--config"):
            chosen |= set(_config_sections(value)) & set(EMBEDDED_DEFAULT)
        elif name in ("--model", "--data"):
            chosen.add(name[2:])
    return chosen


def _config_sections(source: str) -> list[str]:
    """The top-level keys of a ``--config`` file (or inline YAML); none when it cannot be read
    (the parser then reports the file)."""
    try:
        text = Path(source).read_text() if Path(source).is_file() else source
        loaded = yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return []
    return list(loaded) if isinstance(loaded, dict) else []


@dataclass
class RunConfig:
    """Where the run folder goes and how W&B logs.

    Args:
        root: folder that holds all runs (``--trainer.default_root_dir``, when given, wins).
        name: experiment name (default: the first config file's name, or ``default``).
        version: run folder name inside ``root/name`` (default: the next ``version_N``;
            ``slurm-<job id>`` in a SLURM job). Give it to resume into an existing run.
        wandb: ``auto`` (online with credentials and network, else offline), ``online``,
            ``offline`` or ``disabled`` (CSV only).
        project: W&B project.
        log_model: upload checkpoints as W&B artifacts (``true``, ``false`` or ``all``).
        resume: ``fit`` into a run folder that already has a checkpoint (a requeued job, an
            explicit ``version``) resumes from its newest ``last.ckpt``/``hpc_ckpt_N.ckpt``;
            ``false`` refuses instead. Checkpoints and logs are never overwritten either way.
        nonfinite_loss: on a NaN/infinite training loss ``stop`` (keep the last good
            checkpoint), ``skip`` the batch, or ``off``.
        prepare_data_per_node: run the DataModule's ``prepare_data`` (downloads) on local rank
            0 of every node (``true``) or only on global rank 0 (``false``: a filesystem shared
            by the nodes). Default: the DataModule's (Lightning: ``true``). Always under a file
            lock in the data folder.
    """

    root: str = "runs"
    name: Optional[str] = None
    version: Optional[str] = None
    wandb: WandbMode = "auto"
    project: str = "dck_lightning"
    log_model: Union[bool, str] = False
    resume: bool = True
    nonfinite_loss: Literal["stop", "skip", "off"] = "stop"
    prepare_data_per_node: Optional[bool] = None


class ConfigError(ValueError):
    """A config value the classes refused when they were built."""


#: Errors in what the user gave: reported as ``dck: error: …`` (exit status 2), no traceback.
USER_ERRORS = (
    CheckpointError,
    LauncherMismatchError,
    RunFolderError,
    ConfigError,
    DataNotFoundError,
)


#: The run sessions (folder lock and command record) of the commands this process started;
#: :func:`main` closes those of its command with the outcome.
_SESSIONS: list[RunSession] = []
#: The result lines of the commands running in this process, printed as their last output.
_SUMMARIES: list[RunSummary] = []


def folder_checkpoint(folder: Path, subcommand: str) -> Path:
    """The checkpoint ``--ckpt_path <run folder>`` means: the folder's ``last`` one for
    ``fit`` (it continues), its ``best`` one otherwise (as ``--ckpt_path best``: without a
    ``best-*.ckpt``, its last one). A log line says which file it took."""
    alias = "last" if subcommand == "fit" else "best"
    found = RunFolder(folder).checkpoint(alias)
    if found is None:
        raise CheckpointError(
            f"--ckpt_path {folder}: a folder without checkpoints ({folder / 'checkpoints'} has no "
            "best-*.ckpt or last.ckpt); give a run folder of a trained run or a .ckpt file"
        )
    which = alias if alias == "last" or found.name.startswith("best") else "last (no best-*.ckpt)"
    rank_zero_info(f"--ckpt_path {folder}: the run's {which} checkpoint, {found}")
    return found


#: ``dck`` commands besides LightningCLI's, run by their own modules (see :func:`entry_point`).
OTHER_COMMANDS = {
    "sweep": "Run a grid of configs x seeds as dck fit + dck test runs; one table.",
    "export": "Export a checkpoint as an ONNX, TorchScript or torch.export file.",
}


#: Trainer arguments where an integer is a number of batches and a float a share of them.
BATCH_LIMITS = tuple(
    f"trainer.limit_{stage}_batches" for stage in ("train", "val", "test", "predict")
)


def integer_batch_limits(parser: LightningArgumentParser) -> None:
    """Parse ``--trainer.limit_*_batches 1`` as the integer 1 (one batch), not 1.0 (all).

    Lightning annotates them ``Union[float, int, None]`` and jsonargparse tries a union's types
    in order, so ``1`` became ``1.0`` — a whole epoch (as in plain LightningCLI). The
    arguments' type hint (jsonargparse's ``ActionTypeHint._typehint``) is put in the order
    ``int, float``: ``1`` stays ``1``, ``0.25`` is a quarter. (``Union[int, float, None]`` is
    written out: ``Optional[Union[int, float]]`` is typing's cached, equal-comparing
    ``Union[float, int, None]``.)
    """
    for action in parser._actions:
        if action.dest in BATCH_LIMITS and hasattr(action, "_typehint"):
            action._typehint = Union[int, float, None]


class DCKLightningCLI(LightningCLI):
    """LightningCLI with the project's links, run plan, loggers and checkpoints.

    Public hooks only, but one: ``before_instantiate_classes`` makes the run plan's
    folder, ``instantiate_trainer`` adds the loggers and callbacks; ``_parse_ckpt_path`` stays
    private (see there).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        self.user_args: list[str] = list(sys.argv[1:] if given is None else given)
        super().__init__(*args, **kwargs)

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """LightningCLI's parsers, with ``--version`` and, in ``dck --help``, ``sweep`` and
        ``export`` (handled before LightningCLI, see :func:`main`)."""
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.parser.add_argument(
            "--version",
            action="version",
            version=f"dck_lightning {__version__}",
            help="Print the version and exit.",
        )
        action = getattr(self.parser, "subcommands_action", None)
        for name, description in OTHER_COMMANDS.items() if action is not None else ():
            listed = DCKArgumentParser(description=description, add_help=False)
            action.add_subcommand(name, listed, help=f"{description} (dck {name} --help)")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        integer_batch_limits(parser)
        parser.add_class_arguments(RunConfig, "run")
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.in_channels", "model.init_args.in_channels", apply_on="instantiate"
        )
        # The embedded default only where the user chose nothing: jsonargparse merges a
        # config's init_args into the defaults' (even across classes), so defaults set here
        # would leak the demo's schedule, head and shortcuts into every config that omits them.
        chosen = chosen_parts(self.user_args)
        parser.set_defaults(
            {key: value for key, value in EMBEDDED_DEFAULT.items() if key not in chosen}
        )

    # -- run folder and checkpoint ------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Check a ``--ckpt_path`` file before LightningCLI reads its hyperparameters.

        LightningCLI (2.4+) loads the checkpoint right after parsing and builds the model from
        the checkpoint's hyperparameters. Before that, this checks the file (a clear error for a
        missing, truncated, damaged or non-Lightning file) and that the checkpoint's task class
        and backbone are the ones the config asks for — a checkpoint of another task or backbone
        is refused, not silently swapped in. The loaded checkpoint is reused later.

        A private override (tested with Lightning 2.6.6; setup.cfg stops at 2.7) because no public
        hook runs before Lightning's own, which loads every file with ``weights_only=True``
        (ignoring ``--weights_only``) and checks nothing.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        self._parsed_checkpoint: Optional[tuple[Path, dict[str, Any]]] = None
        if not ckpt_path or str(ckpt_path) in CHECKPOINT_ALIASES:
            return
        if Path(str(ckpt_path)).is_dir():
            ckpt_path = str(folder_checkpoint(Path(str(ckpt_path)), subcommand))
            self.config[subcommand]["ckpt_path"] = ckpt_path
        weights_only = self.config[subcommand].get("weights_only")
        checkpoint = read_checkpoint(
            ckpt_path, weights_only=True if weights_only is None else weights_only
        )
        check_config_matches(checkpoint, ckpt_path, self.config[subcommand].get("model"))
        self._parsed_checkpoint = (Path(ckpt_path), checkpoint)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:  # as LightningCLI._parse_ckpt_path
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _config_files(self) -> list[Path]:
        config = self.config.get(str(self.subcommand), self.config)
        return [Path(str(c)) for c in (config.get("config") or []) if c is not None]

    def _set(self, key: str, value: Any) -> None:
        self.config.get(str(self.subcommand), self.config)[key] = value

    def before_instantiate_classes(self) -> None:
        """Check the launcher, plan the run (under the folder's lock when it is a fixed one) and
        check what the run reads (its checkpoint, ``backbone_weights``) — before anything is
        written: a new ``version_N`` is created only once model and data are built
        (:meth:`instantiate_trainer`), so a command that fails on its input leaves no folder."""
        trainer = self._get(self.config, "trainer")
        check_launcher(
            trainer.get("devices", "auto"),
            trainer.get("num_nodes", 1),
            trainer.get("accelerator", "auto"),
        )
        self._no_sync_batchnorm_on_cpu(trainer)
        self._checkpoint: Optional[dict[str, Any]] = None
        settings = {
            "subcommand": self.subcommand,
            "run": self._get(self.config, "run"),
            "trainer": trainer,
            "ckpt_path": self._get(self.config, "ckpt_path"),
            "config": self._config_files(),
        }
        environment = RunEnvironment.of_process(self._checkpoint_wandb_id)
        self.plan = plan_run(settings, environment)
        self.session = RunSession(str(self.subcommand))
        _SESSIONS.append(self.session)
        if not self.plan.new_version:  # plan again holding the folder: no one else writes it
            self.session.hold(self.plan.folder)
            self.plan = plan_run(settings, environment)
        for message in self.plan.warnings:
            rank_zero_warn(message)
        for message in self.plan.info:
            rank_zero_info(message)
        if self.subcommand == "fit" and self.plan.checkpoint is None:
            self._check_backbone_weights()
        if self.plan.checkpoint is not None:
            self._checkpoint = self._read(self.plan.checkpoint)
            self._parsed_checkpoint = None
            self._set("ckpt_path", str(self.plan.checkpoint))

    def _check_backbone_weights(self) -> None:
        """``model.init_args.backbone_weights`` exists and loads with ``weights_only=True`` (the
        task reads it only when fitting starts, after the run folder and the W&B run exist)."""
        init_args = self._get(self._get(self.config, "model") or {}, "init_args") or {}
        path = init_args.get("backbone_weights") if hasattr(init_args, "get") else None
        if not path:
            return
        from .models.weights import _read as read_backbone_weights

        try:
            read_backbone_weights(Path(str(path)))
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.init_args.{error}") from error

    def _read(self, path: Path) -> dict[str, Any]:
        """The checkpoint at ``path``, read once (``--ckpt_path``'s, when it is that file)."""
        weights_only = self._get(self.config, "weights_only")
        if weights_only is None:
            weights_only = True
            self._set("weights_only", True)
        parsed = getattr(self, "_parsed_checkpoint", None)
        if parsed is not None and parsed[0] == path:
            return parsed[1]
        self._parsed_checkpoint = (path, read_checkpoint(path, weights_only=weights_only))
        return self._parsed_checkpoint[1]

    def _checkpoint_wandb_id(self, path: Path) -> Optional[str]:
        return (self._read(path).get("dck") or {}).get("wandb_run_id")

    def _no_sync_batchnorm_on_cpu(self, trainer: Any) -> None:
        """SyncBatchNorm only runs on GPUs: drop it (with a warning) for CPU runs of a GPU config."""
        import torch

        accelerator = str(trainer.get("accelerator") or "auto")
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        if trainer.get("sync_batchnorm") and on_cpu:
            rank_zero_warn("trainer.sync_batchnorm needs GPUs; turned off for this CPU run")
            trainer["sync_batchnorm"] = False

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except USER_ERRORS:
            raise
        except ValueError as error:  # a class refused a config value (batch_size=0, …)
            cause: BaseException = error  # jsonargparse wraps it (union subtypes…): report the root
            while isinstance(cause.__cause__ or cause.__context__, ValueError):
                cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
            raise ConfigError(f"invalid config: {cause}") from error

    # -- loggers and callbacks ------------------------------------------------------------
    def _loggers(self) -> list[Any]:
        run = self._get(self.config, "run")
        loggers: list[Any] = [
            ResumableCSVLogger(
                save_dir=str(self.run_dir.parent.parent),
                name=self.run_dir.parent.name,
                version=self.run_dir.name,
            )
        ]
        if self.plan.wandb_mode not in (None, "disabled"):
            loggers.append(
                RedactingWandbLogger(
                    save_dir=str(self.run_dir),
                    project=run.project,
                    name=f"{self.run_dir.parent.name}/{self.run_dir.name}",
                    id=self.plan.wandb_id,
                    resume="allow",
                    # `mode` goes to wandb.init; Lightning's `offline=True` would refuse
                    # log_model, but an offline run keeps its artifacts for `wandb sync`.
                    log_model=run.log_model,
                    mode=self.plan.wandb_mode,
                )
            )
        return loggers

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        if getattr(self, "_checkpoint", None) is not None:  # the model exists now, no logger yet
            check_compatible(self._checkpoint, self.plan.checkpoint, self.model)
            self._checkpoint = None
        saves_config = self.save_config_callback is not None
        self.run_dir = self.session.start(self.plan, "config.yaml" if saves_config else None)
        # Stays in os.environ: the DDP processes Lightning starts run this command again.
        os.environ[RUN_DIR_ENV] = str(self.run_dir)
        run = self._get(self.config, "run")
        if run.prepare_data_per_node is not None and self.datamodule is not None:
            self.datamodule.prepare_data_per_node = run.prepare_data_per_node
        trainer_config = self._get(self.config_init, "trainer", default={})
        kwargs["default_root_dir"] = str(self.run_dir)  # hpc_ckpt_N.ckpt (SLURM requeue) go here
        callbacks = list(trainer_config.get("callbacks") or [])
        logger = trainer_config.get("logger")
        if logger is None or logger is True:
            kwargs["logger"] = self._loggers()
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            folder = self.run_dir / "checkpoints"
            callbacks.append(
                FiniteModelCheckpoint(
                    dirpath=folder,
                    filename="best-epoch={epoch}-step={step}",
                    auto_insert_metric_name=False,
                    monitor=getattr(self.model, "monitor", None),
                    mode=getattr(self.model, "mode", "min"),
                    save_top_k=1,
                )
            )
            # last.ckpt at every epoch end. Not ModelCheckpoint(save_last=True): since Lightning
            # 2.6 that writes last.ckpt only when a top-k checkpoint is written (the monitored
            # metric improved), so a resumed run could lose epochs.
            callbacks.append(
                ModelCheckpoint(
                    dirpath=folder,
                    filename="last",
                    monitor=None,
                    save_top_k=1,
                    enable_version_counter=False,
                )
            )
        if logger is not False:
            # At the scheduler's pace: per optimiser step for a per-step schedule.
            interval = (getattr(self.model, "hparams", None) or {}).get("lr_scheduler_interval")
            callbacks.append(LearningRateMonitor(logging_interval=interval or "epoch"))
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(TerminalAwareProgressBar())  # a few lines per epoch in a log file
        if self.subcommand == "predict" and not any(
            isinstance(c, BasePredictionWriter) for c in callbacks
        ):
            callbacks.append(PredictionWriter(str(self.run_dir / "predictions")))
        if run.nonfinite_loss != "off" and not any(
            isinstance(c, NonFiniteLossGuard) for c in callbacks
        ):
            callbacks.append(NonFiniteLossGuard(action=run.nonfinite_loss))
        callbacks.append(PreemptionCheckpoint(self.run_dir / "checkpoints"))
        callbacks.append(ResumeState(str(self.run_dir)))
        summary = RunSummary(str(self.run_dir), defer=True)  # printed last, by main()
        _SUMMARIES.append(summary)
        callbacks.append(summary)
        kwargs["callbacks"] = callbacks
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]  # no truncated checkpoint
        trainer = super().instantiate_trainer(**kwargs)
        exact_mean_reduce(trainer.strategy)
        self.session.trainer = trainer
        return trainer


def _exit_with(error: BaseException, code: int) -> None:
    if os.environ.get("DCK_DEBUG"):
        raise error
    rank = int(
        os.environ.get("RANK", os.environ.get("SLURM_PROCID", os.environ.get("LOCAL_RANK", "0")))
        or 0
    )
    where = f" (rank {rank})" if rank else ""
    print(f"dck: error{where}: {error}", file=sys.stderr, flush=True)
    raise SystemExit(code) from error


def _finish_wandb_run(exit_code: int, preempted: bool) -> None:
    """One command, one W&B run: close it, so the next command in this process (a notebook, a
    test, a script calling :func:`main` again) gets its own and an offline run is flushed to
    its folder. After a SIGTERM it is marked preempting: W&B then expects it to resume."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=exit_code)


def other_command(args: Sequence[str]) -> int:
    """Run ``dck sweep …`` (:mod:`dck_lightning.sweep`, it runs ``dck fit``/``dck test``
    itself) or ``dck export …`` (:mod:`dck_lightning.export`); the exit status."""
    if args[0] == "sweep":
        from .sweep import main as sweep_main

        return sweep_main(list(args[1:]))
    from .export import main as export

    export(list(args[1:]))
    return 0


def main(args: Optional[list[str]] = None) -> DCKLightningCLI:
    """Entry point of ``dck``; ``args`` (a list) makes it usable from Python and tests.

    Errors in the user's input end with ``SystemExit(2)`` and a ``dck: error: …`` line on
    stderr (a non-finite training loss: ``SystemExit(1)``); see the module docstring.
    ``sweep`` and ``export`` end with ``SystemExit`` of their exit status.
    """
    given = sys.argv[1:] if args is None else args
    if given[:1] and given[0] in OTHER_COMMANDS:
        raise SystemExit(other_command(given))
    previous = os.environ.get(RUN_DIR_ENV)
    exit_code, preempted = 1, False
    opened, summaries = len(_SESSIONS), len(_SUMMARIES)
    status, error_line = "failed", None
    try:
        cli = DCKLightningCLI(
            BaseTask,
            BaseDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveRunConfig,
            seed_everything_default=42,
            trainer_defaults=TRAINER_DEFAULTS,
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "dck", "description": "Train DCK/DCB networks (dck_lightning)."},
            parser_class=DCKArgumentParser,
        )
        exit_code, status = 0, "finished"
        return cli
    except SIGTERMException:
        exit_code, preempted, status = 0, True, "interrupted"
        raise
    except USER_ERRORS as error:
        exit_code, error_line = 2, str(error)
        _exit_with(error, 2)
    except NonFiniteLossError as error:
        error_line = str(error)
        _exit_with(error, 1)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except SystemExit as error:  # Lightning ends a Ctrl-C'd fit with exit(1)
        exit_code = error.code if isinstance(error.code, int) else 1
        interrupted = any(getattr(s.trainer, "interrupted", False) for s in _SESSIONS[opened:])
        status = "interrupted" if interrupted else ("finished" if not exit_code else "failed")
        raise
    except BaseException as error:
        error_line = f"{type(error).__name__}: {error}"
        raise
    finally:
        for session in reversed(_SESSIONS[opened:]):
            session.close(status, exit_code, error_line)
        del _SESSIONS[opened:]
        _finish_wandb_run(exit_code, preempted)
        for summary in _SUMMARIES[summaries:]:
            summary.flush()  # after W&B's summary: the result is the last thing printed
        del _SUMMARIES[summaries:]
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
    raise AssertionError("unreachable")


def entry_point() -> None:
    """The ``dck`` console script (and ``python -m dck_lightning``). It returns nothing: the
    script does ``sys.exit(entry_point())`` and any other return value would turn a successful
    run into exit status 1. ``dck sweep``/``dck export`` are handled before LightningCLI
    (:func:`other_command`)."""
    if sys.argv[1:2] and sys.argv[1] in OTHER_COMMANDS:
        code = other_command(sys.argv[1:])
        if code:
            raise SystemExit(code)
        return
    main()


if __name__ == "__main__":
    entry_point()
