"""The ``dck`` command: LightningCLI with ``fit | validate | test | predict``.

::

    dck fit                                   # the embedded default: synthetic shapes, dcb_small
    dck fit -c configs/mnist_seed.yaml        # a config
    dck fit -c configs/cifar10_dcb_resnet18.yaml -c configs/trainer/gpu.yaml -c configs/logger/wandb.yaml
    dck test -c configs/mnist_seed.yaml --ckpt_path runs/mnist_seed/version_0/checkpoints/last.ckpt

Model and data are chosen by ``class_path`` (subclass mode); ``num_classes`` and
``in_channels`` are linked from the DataModule. Besides ``trainer``, ``model`` and ``data``
the config has a ``run`` section: where the run folder goes and how W&B logs
(see :mod:`dck_lightning.runs`). Loggers and the checkpoint callback are added here unless
the config sets its own ``trainer.logger`` / ``ModelCheckpoint``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger

from .callbacks import RunSummary, SaveRunConfig
from .data import BaseDataModule
from .loggers import ResumableCSVLogger
from .runs import RUN_DIR_ENV, WandbMode, resolve_run_dir, resolve_wandb_mode, wandb_run_id
from .tasks import BaseTask

DEFAULT_MODEL = {
    "class_path": "dck_lightning.tasks.ClassificationTask",
    "init_args": {
        "model": "dcb_small",
        # A multi-scale max-pooled head: small shapes on textured backgrounds are learned
        # from the fine levels within a few epochs while the DCB stages catch up.
        "model_kwargs": {"feature": "all", "pool": "max"},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.002}},
    },
}
DEFAULT_DATA = {
    "class_path": "dck_lightning.data.SyntheticShapesDataModule",
    "init_args": {"task": "classification", "image_size": 32},
}
TRAINER_DEFAULTS = {"max_epochs": 6, "log_every_n_steps": 10}


@dataclass
class RunConfig:
    """Where the run folder goes and how W&B logs.

    Args:
        root: folder that holds all runs.
        name: experiment name (default: the first config file's name, or ``default``).
        version: run folder name inside ``root/name`` (default: the next ``version_N``;
            ``slurm-<job id>`` in a SLURM job). Give it to resume into an existing run.
        wandb: ``auto`` (online with credentials and network, else offline), ``online``,
            ``offline`` or ``disabled`` (CSV only).
        project: W&B project.
        log_model: upload checkpoints as W&B artifacts (``true``, ``false`` or ``all``).
    """

    root: str = "runs"
    name: Optional[str] = None
    version: Optional[str] = None
    wandb: WandbMode = "auto"
    project: str = "dck_lightning"
    log_model: Union[bool, str] = False


class DCKLightningCLI(LightningCLI):
    """LightningCLI with the project's links, run folders, loggers and checkpoints."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunConfig, "run")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.init_args.in_channels", apply_on="instantiate")
        parser.set_defaults({"model": DEFAULT_MODEL, "data": DEFAULT_DATA})

    # -- run folder --------------------------------------------------------------------
    def _config_files(self) -> list[Path]:
        config = self.config.get(str(self.subcommand), self.config)
        return [Path(str(c)) for c in (config.get("config") or []) if c is not None]

    def before_instantiate_classes(self) -> None:
        run = self._get(self.config, "run")
        ckpt_path = self._get(self.config, "ckpt_path")
        run_dir = self._run_dir_of_checkpoint(ckpt_path) if self.subcommand == "fit" else None
        if run_dir is None:
            configs = [c for c in self._config_files() if c.parent.name not in ("trainer", "logger")]
            name = run.name or (configs[0].stem if configs else "default")
            run_dir = resolve_run_dir(run.root, name, run.version)
        self.run_dir = run_dir.resolve()
        os.environ[RUN_DIR_ENV] = str(self.run_dir)  # DDP processes started by Lightning reuse it

    @staticmethod
    def _run_dir_of_checkpoint(ckpt_path: Optional[str]) -> Optional[Path]:
        """Resuming from ``<run>/checkpoints/x.ckpt`` continues in ``<run>``."""
        if not ckpt_path or ckpt_path in ("last", "best", "hpc"):
            return None
        path = Path(ckpt_path)
        if path.parent.name == "checkpoints" and (path.parent.parent / "wandb_run_id.txt").exists():
            return path.parent.parent
        return None

    # -- loggers and callbacks ------------------------------------------------------------
    def _loggers(self) -> list[Any]:
        run = self._get(self.config, "run")
        loggers: list[Any] = [
            ResumableCSVLogger(save_dir=str(self.run_dir.parent.parent), name=self.run_dir.parent.name, version=self.run_dir.name)
        ]
        mode = resolve_wandb_mode(run.wandb)
        if mode != "disabled":
            loggers.append(
                WandbLogger(
                    save_dir=str(self.run_dir),
                    project=run.project,
                    name=f"{self.run_dir.parent.name}/{self.run_dir.name}",
                    id=wandb_run_id(self.run_dir),
                    resume="allow",
                    offline=mode == "offline",
                    log_model=run.log_model,
                    mode=mode,
                )
            )
        return loggers

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = list(trainer_config.get("callbacks") or [])
        logger = trainer_config.get("logger")
        if logger is None or logger is True:
            kwargs["logger"] = self._loggers()
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(
                ModelCheckpoint(
                    dirpath=self.run_dir / "checkpoints",
                    filename="best-epoch={epoch}-step={step}",
                    auto_insert_metric_name=False,
                    monitor=getattr(self.model, "monitor", None),
                    mode=getattr(self.model, "mode", "min"),
                    save_last=True,
                    save_top_k=1,
                )
            )
        if logger is not False:
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        callbacks.append(RunSummary(str(self.run_dir)))
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def main(args: Optional[list[str]] = None) -> DCKLightningCLI:
    """Entry point of ``dck``; ``args`` (a list) makes it usable from Python and tests."""
    previous = os.environ.get(RUN_DIR_ENV)
    try:
        return DCKLightningCLI(
            BaseTask,
            BaseDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveRunConfig,
            seed_everything_default=42,
            trainer_defaults=TRAINER_DEFAULTS,
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs={"description": "Train DCK/DCB networks (dck_lightning)."},
        )
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


if __name__ == "__main__":
    main()
