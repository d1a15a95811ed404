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

**A mid-epoch checkpoint resumes exactly** (one process): the DataModules' training loader
continues the interrupted epoch's sample order from the next batch
(:mod:`~dck_lightning.data.resumable`), and the checkpoint also keeps what the epoch has
accumulated so far — Lightning's running sums of the epoch-level values logged in training
(``train/loss_epoch``) and the states of the task's torchmetrics (``train/acc``) — which the
resumed run adds back after its first batch, so the epoch's values are those of the
uninterrupted run. (Under DDP each rank's accumulations are its own and the checkpoint holds
rank 0's: the resumed epoch's epoch-level values then cover the batches after the resume.)

**Logged steps are never duplicated.** A process killed after its last checkpoint (``kill -9``,
a node failure) has logged steps the resumed run logs again. When ``fit`` resumes, the rows of
each CSV logger's ``metrics.csv`` at or after the checkpoint's step go to
``metrics.dropped-<n>.csv`` (a backup, nothing is lost) before the resumed run logs anything
(:meth:`~dck_lightning.run_folder.RunFolder.drop_metrics_after`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info
from torchmetrics import Metric

from ..run_folder import RunFolder
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
        self._epoch_state: Optional[dict[str, Any]] = None  # to add back after a resume

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
        state = epoch_state(trainer, pl_module)
        if state is not None:
            checkpoint["dck"]["epoch_state"] = state
        for key in (pl_module.CHECKPOINT_HYPER_PARAMS_KEY, "datamodule_hyper_parameters"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint[key] = redact_secrets(dict(checkpoint[key]))

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = (checkpoint.get("dck") or {}).get("rng")
        if self.restore_rng and states:
            set_rng_states(states)
        if trainer.state.fn == "fit" and trainer.is_global_zero:
            drop_logged_steps_after(trainer, checkpoint_step(checkpoint))
        loops = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        loaders = (loops.get("state_dict") or {}).get("combined_loader") or []
        datamodule = getattr(trainer, "datamodule", None)
        if trainer.state.fn == "fit" and loaders and hasattr(datamodule, "resume_train_loader"):
            datamodule.resume_train_loader(loaders[0])
        state = (checkpoint.get("dck") or {}).get("epoch_state")
        self._epoch_state = state if trainer.state.fn == "fit" and trainer.world_size == 1 else None

    def _resumes_here(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        state = self._epoch_state
        return (
            state is not None
            and trainer.current_epoch == state["epoch"]
            and batch_idx == state["batches"]
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._resumes_here(trainer, batch_idx):
            set_metric_states(pl_module, self._epoch_state["metrics"])  # type: ignore[index]
        elif self._epoch_state is not None:
            self._epoch_state = None  # resumed elsewhere (an epoch's end): nothing to add

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._resumes_here(trainer, batch_idx):
            add_result_states(trainer.fit_loop.epoch_loop._results, self._epoch_state["results"])  # type: ignore[index]
        self._epoch_state = None


def epoch_state(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[dict[str, Any]]:
    """What a checkpoint written in the middle of a training epoch needs to finish the epoch's
    values exactly: the epoch, the batches trained, Lightning's running epoch-level sums
    (``trainer.fit_loop.epoch_loop._results``: Lightning keeps them in no checkpoint) and the
    task's torchmetrics states. ``None`` outside the middle of a training epoch."""
    if trainer.state.fn != "fit" or trainer.sanity_checking:
        return None
    loop = trainer.fit_loop.epoch_loop
    batches = loop.batch_progress.current.processed
    if not 0 < batches < trainer.num_training_batches:
        return None
    return {
        "epoch": int(trainer.current_epoch),
        "batches": int(batches),
        "results": result_states(loop._results),
        "metrics": metric_states(pl_module),
    }


def result_states(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The accumulated epoch-level tensor values of a Lightning result collection."""
    out = {}
    for key, metric in results.items():
        if not getattr(metric, "is_tensor", False) or not metric.meta.on_epoch:
            continue
        meta = metric.meta
        reduce = (
            "mean" if meta.is_mean_reduction else "sum" if meta.is_sum_reduction
            else "max" if meta.is_max_reduction else "min" if meta.is_min_reduction else None
        )  # fmt: skip
        if reduce is None:
            continue
        entry = {"reduce": reduce, "value": metric.value.detach().cpu().clone()}
        if reduce == "mean":
            entry["cumulated_batch_size"] = metric.cumulated_batch_size.detach().cpu().clone()
        out[key] = entry
    return out


def add_result_states(results: Mapping[str, Any], saved: Mapping[str, Mapping[str, Any]]) -> None:
    """Combine saved accumulations (:func:`result_states`) into a result collection's."""
    for key, entry in saved.items():
        metric = results.get(key)
        if metric is None or not getattr(metric, "is_tensor", False):
            continue
        value = entry["value"].to(metric.value.device, metric.value.dtype)
        if entry["reduce"] in ("mean", "sum"):
            metric.value = metric.value + value
        elif entry["reduce"] == "max":
            metric.value = torch.maximum(metric.value, value)
        else:
            metric.value = torch.minimum(metric.value, value)
        if entry["reduce"] == "mean":
            metric.cumulated_batch_size = metric.cumulated_batch_size + entry[
                "cumulated_batch_size"
            ].to(metric.cumulated_batch_size.device)


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_cpu(v) for v in value]
    return value


def metric_states(module: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """The states of the torchmetrics metrics of ``module`` that have been updated."""
    out = {}
    for name, metric in module.named_modules():
        if isinstance(metric, Metric) and metric.update_count > 0:
            state = {key: _cpu(getattr(metric, key)) for key in metric._defaults}
            state["_update_count"] = int(metric.update_count)
            out[name] = state
    return out


def set_metric_states(module: torch.nn.Module, saved: Mapping[str, Mapping[str, Any]]) -> None:
    """Put saved metric states (:func:`metric_states`) back into ``module``'s metrics."""
    metrics = dict(module.named_modules())
    for name, state in saved.items():
        metric = metrics.get(name)
        if not isinstance(metric, Metric):
            continue
        device = metric.device
        for key, value in state.items():
            if key == "_update_count":
                metric._update_count = int(value)
            elif isinstance(value, list):
                setattr(metric, key, [v.to(device) for v in value])
            else:
                setattr(metric, key, value.to(device))
        metric._computed = None


def checkpoint_step(checkpoint: dict[str, Any]) -> int:
    """The logger step a checkpoint resumes at (Lightning's ``_batches_that_stepped``; the
    global step for checkpoints without loop state)."""
    loops = checkpoint.get("loops") or {}
    epoch_loop = (loops.get("fit_loop") or {}).get("epoch_loop.state_dict") or {}
    return int(epoch_loop.get("_batches_that_stepped", checkpoint.get("global_step", 0)))


def drop_logged_steps_after(trainer: pl.Trainer, step: int) -> None:
    """Move the rows at ``step`` or later of every CSV logger's ``metrics.csv`` to a backup."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger) and logger.log_dir:
            backup = RunFolder(logger.log_dir).drop_metrics_after(step)
            if backup is not None:
                rank_zero_info(
                    f"Resuming at step {step}: the rows logged at that step or later (by the "
                    f"interrupted process) moved from metrics.csv to {backup}"
                )
