"""Write a checkpoint when the job is told to stop (SIGTERM), so the requeued job resumes from it.

Clusters preempt jobs with a signal and a grace period: SLURM sends ``SIGUSR1`` ahead of the
time limit when the job asks for it (``--signal=SIGUSR1@90``; Lightning's ``SLURMEnvironment``
then writes ``hpc_ckpt_N.ckpt`` and requeues the job) and ``SIGTERM`` when it cancels or
preempts; Kubernetes, torchrun and most schedulers send ``SIGTERM``. Lightning turns SIGTERM
into a clean stop at the next batch boundary (all DDP ranks together), but saves nothing:
:class:`PreemptionCheckpoint` then writes ``<run>/checkpoints/last.ckpt`` — a consistent
state between two optimiser steps — and the process exits with status 0.

The same ``dck fit`` command started again in the same run folder (a requeued SLURM job keeps
its ``slurm-<job id>`` folder; ``scripts/torchrun.sh`` keeps ``torchrun-<RUN_ID>``; or pass
``--run.version``) resumes from the newest of ``last.ckpt`` and ``hpc_ckpt_N.ckpt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

__all__ = ["PreemptionCheckpoint"]


class PreemptionCheckpoint(Callback):
    """On SIGTERM during ``fit``, save ``last.ckpt`` before the process exits.

    Args:
        dirpath (str, optional): where ``last.ckpt`` goes. Default: the ``dirpath`` of the
            trainer's :class:`~pytorch_lightning.callbacks.ModelCheckpoint`, else
            ``<default_root_dir>/checkpoints``.
        filename (str): file name. Default: ``"last.ckpt"`` (what a resumed run looks for).
    """

    def __init__(
        self, dirpath: Optional[Union[str, Path]] = None, filename: str = "last.ckpt"
    ) -> None:
        self.dirpath = dirpath
        self.filename = filename
        #: where the last preemption checkpoint was written (``None`` until then).
        self.saved_path: Optional[Path] = None

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        folder = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        folder = folder or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / self.filename

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if (
            not isinstance(exception, SIGTERMException)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
        ):
            return
        path = self.checkpoint_path(trainer)
        if trainer.is_global_zero and path.is_symlink():
            path.unlink()  # ModelCheckpoint(save_last="link"): never write through the link
        trainer.save_checkpoint(path)
        self.saved_path = path
        rank_zero_info(
            f"SIGTERM: saved {path} at epoch {trainer.current_epoch}, global step {trainer.global_step}; "
            "run the same command again to resume from it"
        )
