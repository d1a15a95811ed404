"""Keep in every checkpoint what an exact resume and a continued W&B run need.

Lightning's checkpoint holds the weights, optimiser, schedulers and loop progress. For a
resumed ``fit`` to be the *same* run as an uninterrupted one it also needs the global random
state (the shuffling of the next epoch and dropout draw from it) — the DataModules' on-device
augmentation generator is saved by the DataModule itself (``BaseDataModule.state_dict``).
:class:`ResumeState` adds a ``"dck"`` entry::

    checkpoint["dck"] = {
        "format": 1,
        "task": "dck_lightning.tasks.classification.ClassificationTask",
        "run_dir": "/…/runs/default/version_0",
        "wandb_run_id": "1a2b3c4d",          # the resumed run continues this W&B run
        "world_size": 1,
        "rng": {"torch": ByteTensor, "torch.cuda": [ByteTensor…], "numpy": {…}, "python": {…}},
    }

in a form ``torch.load(weights_only=True)`` accepts (tensors and plain values), restores the
random state when the checkpoint is loaded, and redacts credential-looking hyperparameters
(``api_key``, ``token``, ``password``, ``secret``) from the checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from .config_saving import redact_secrets

__all__ = ["ResumeState", "collect_rng_states", "set_rng_states"]

FORMAT = 1


def collect_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python random states, as tensors and plain values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss": gauss,
        },
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned (CUDA states only on as many GPUs)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("torch.cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state(
            (
                "MT19937",
                n["keys"].numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["cached_gaussian"],
            )
        )
    if "python" in states:
        p = states["python"]
        random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


class ResumeState(Callback):
    """Save run metadata and random states with every checkpoint; restore the states on load.

    Args:
        run_dir (str, optional): the run folder, recorded in the checkpoint.
        wandb_run_id (str, optional): the W&B run id; default: the attached
            :class:`~pytorch_lightning.loggers.WandbLogger`'s.
        restore_rng (bool): restore the random states when a checkpoint is loaded. Default: True.
    """

    def __init__(
        self,
        run_dir: Optional[Union[str, Path]] = None,
        wandb_run_id: Optional[str] = None,
        restore_rng: bool = True,
    ) -> None:
        self.run_dir = None if run_dir is None else str(run_dir)
        self.wandb_run_id = wandb_run_id
        self.restore_rng = restore_rng

    def _wandb_id(self, trainer: pl.Trainer) -> Optional[str]:
        if self.wandb_run_id:
            return self.wandb_run_id
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return str(logger.version) if logger.version else None
        return None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["dck"] = {
            "format": FORMAT,
            "task": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "run_dir": self.run_dir,
            "wandb_run_id": self._wandb_id(trainer),
            "world_size": trainer.world_size,
            "rng": collect_rng_states(),
        }
        for key in (pl_module.CHECKPOINT_HYPER_PARAMS_KEY, "datamodule_hyper_parameters"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint[key] = redact_secrets(dict(checkpoint[key]))

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = (checkpoint.get("dck") or {}).get("rng")
        if self.restore_rng and states:
            set_rng_states(states)
