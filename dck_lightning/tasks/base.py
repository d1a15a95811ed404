"""The base task every LightningModule of the project subclasses.

As in torchgeo's ``BaseTask``: ``__init__`` saves the hyperparameters and calls
:meth:`configure_models`, :meth:`configure_losses` and :meth:`configure_metrics`; subclasses
override only what differs. ``monitor`` and ``mode`` are class attributes that the CLI's
checkpoint callback reads.

The optimiser and scheduler are injected the LightningCLI way (``OptimizerCallable`` /
``LRSchedulerCallable``, i.e. ``class_path`` + ``init_args`` in the config). The dynamic
parameters (DCK extent and localisation, deformable offsets) get their own group: no weight
decay and ``lr × dynamic_lr_factor``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..layers import split_dynamic_parameters
from ..layers.validation import check_choice
from ..models import count_flops, count_parameters


class BaseTask(pl.LightningModule):
    """Model, loss, metrics and optimiser from init arguments.

    Args:
        num_classes (int): classes (linked from the DataModule by the CLI).
        in_channels (int): image channels (linked from the DataModule by the CLI).
        optimizer (OptimizerCallable): builds the optimiser from parameter groups.
            Default: :class:`torch.optim.AdamW` with its defaults (lr 1e-3).
        lr_scheduler (LRSchedulerCallable, optional): builds the scheduler from the optimiser.
        dynamic_lr_factor (float): learning-rate factor of the dynamic parameters.
        lr_scheduler_interval (str): step the scheduler every ``"epoch"`` (default) or every
            optimiser ``"step"`` (warm-up, ``OneCycleLR``; its length is then in steps).
    """

    monitor = "val/loss"
    mode = "min"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        dynamic_lr_factor: float = 1.0,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        super().__init__()
        check_choice("lr_scheduler_interval", lr_scheduler_interval, ("epoch", "step"))
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    # -- what subclasses provide ---------------------------------------------------------
    def configure_models(self) -> None:
        """Create ``self.model``."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_models()")

    def configure_losses(self) -> None:
        """Create the loss(es); tasks whose model computes its own loss need nothing."""

    def configure_metrics(self) -> None:
        """Create ``self.train_metrics``, ``self.val_metrics``, ``self.test_metrics``."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # -- optimisation ------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The regular parameters, and the dynamic ones without weight decay."""
        dynamic, other = split_dynamic_parameters(self)
        groups = [{"params": other, "name": "weights"}]
        if dynamic:
            groups.append({"params": dynamic, "weight_decay": 0.0, "name": "dynamic"})
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            if group.get("name") == "dynamic":
                group["lr"] = optimizer.defaults["lr"] * self.hparams.dynamic_lr_factor
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": self.hparams.lr_scheduler_interval}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    # -- reporting ---------------------------------------------------------------------
    def example_input(self) -> Optional[torch.Tensor]:
        """A one-image input shaped like the DataModule's images, for FLOP counting."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        size = getattr(datamodule, "image_size", None)
        if size is None:
            return None
        size = (size, size) if isinstance(size, int) else tuple(size)
        return torch.zeros(1, self.hparams.in_channels, *size, device=self.device)

    def on_fit_start(self) -> None:
        example = self.example_input()
        flops = ""
        if example is not None:
            try:
                flops = f", {count_flops(self.model, example) / 1e9:.3f} GFLOPs per {tuple(example.shape[-2:])} image"
            except Exception as error:  # counting must never stop training
                flops = f" (FLOPs not counted: {error})"
        rank_zero_info(
            f"{type(self).__name__}: {count_parameters(self.model) / 1e6:.3f} M parameters{flops}"
        )
