"""The base task every LightningModule of the project subclasses.

As in torchgeo's ``BaseTask``: ``__init__`` saves the hyperparameters and calls
:meth:`configure_models`, :meth:`configure_losses` and :meth:`configure_metrics`; subclasses
override only what differs. ``monitor`` and ``mode`` are class attributes that the CLI's
checkpoint callback reads.

The backbone, the optimiser and the scheduler are injected the LightningCLI way
(``class_path`` + ``init_args`` in the config; see :mod:`dck_lightning.models.registry` for
the backbone). The dynamic parameters (DCK extent and localisation, deformable offsets) get
their own group: no weight decay and ``lr × dynamic_lr_factor``.

**One backbone prefix.** Wherever a task's model keeps the shared backbone (``model.backbone``
in a classifier, ``model.detector.backbone.body`` in a detector…), its tensors are saved and
loaded under ``backbone.`` in the task's state dict (and so in every checkpoint), which is what
``backbone_weights`` reads: a classification checkpoint initialises a detector's backbone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..layers import split_dynamic_parameters
from ..layers.validation import check_choice
from ..models import DCBNet, count_flops, count_parameters
from ..models.registry import CLASSIFIERS, BackboneSpec, backbone_config
from ..models.weights import BACKBONE_PREFIX, WeightsReport, load_backbone_weights
from .schedules import LRSchedulerFactory, build_scheduler, check_resumed_length


def recordable_backbone(spec: BackboneSpec) -> Any:
    """The backbone as the hyperparameters record it: the ``{"class_path", "init_args"}`` dict
    with every argument (a function that is not a class cannot be written as one: kept)."""
    try:
        return backbone_config(spec)
    except TypeError:
        return spec


class BaseTask(pl.LightningModule):
    """Model, loss, metrics and optimiser from init arguments.

    Args:
        num_classes (int): classes (linked from the DataModule by the CLI).
        in_channels (int): image channels (linked from the DataModule by the CLI).
        backbone (BackboneFactory): the backbone class and its arguments, see
            :mod:`dck_lightning.models.registry`; subclasses give the default.
        backbone_weights (str, optional): initialise the backbone from this file when fitting
            starts (not when resuming): any task's checkpoint or a torchvision ResNet state
            dict, see :func:`~dck_lightning.models.weights.load_backbone_weights`.
        optimizer (OptimizerCallable): builds the optimiser from parameter groups.
            Default: :class:`torch.optim.AdamW` with its defaults (lr 1e-3).
        lr_scheduler (LRSchedulerFactory, optional): builds the scheduler from the optimiser;
            its length (``T_max``, ``total_steps``, ``total_iters``) comes from the trainer,
            see :mod:`~dck_lightning.tasks.schedules`.
        dynamic_lr_factor (float): learning-rate factor of the dynamic parameters (kept under
            ``OneCycleLR``/``CyclicLR``).
        lr_scheduler_interval (str): step the scheduler every ``"epoch"`` (default) or every
            optimiser ``"step"`` (warm-up, ``OneCycleLR``; its length is then in steps).
        compile (bool): run the model through :func:`torch.compile` (``nn.Module.compile``:
            the state dict and checkpoints stay as they are). Opt-in: compiling takes minutes
            on a CPU; see BENCHMARKS.md for what it gains.
    """

    monitor = "val/loss"
    mode = "min"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        backbone: Optional[BackboneSpec] = None,
        backbone_weights: Optional[str] = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerFactory] = None,
        dynamic_lr_factor: float = 1.0,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_choice("lr_scheduler_interval", lr_scheduler_interval, ("epoch", "step"))
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if self.hparams.get("backbone") is not None:  # recorded with every argument's value
            self.save_hyperparameters({"backbone": recordable_backbone(self.hparams.backbone)})
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.configure_models()
        if compile:
            self.model.compile()
        self.configure_losses()
        self.configure_metrics()
        self._backbone_name = self._find_backbone()
        self.register_state_dict_post_hook(_backbone_keys_out)
        self.register_load_state_dict_pre_hook(_backbone_keys_in)

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

    # -- the shared backbone -----------------------------------------------------------
    def _find_backbone(self) -> Optional[str]:
        """Attribute path of the backbone: the first :class:`DCBNet` inside the task, else
        ``model`` itself when it is a whole classifier such as SeedNet, else ``None``."""
        for name, module in self.named_modules():
            if isinstance(module, DCBNet):
                return name
        whole = isinstance(getattr(self, "model", None), tuple(CLASSIFIERS.values()))
        return "model" if whole else None

    @property
    def backbone(self) -> nn.Module:
        """The backbone module (saved under ``backbone.`` in the state dict)."""
        if self._backbone_name is None:
            raise AttributeError(f"{type(self).__name__} has no backbone")
        return self.get_submodule(self._backbone_name)

    def load_backbone_weights(self, path: str) -> WeightsReport:
        """Initialise the backbone from ``path`` (see ``backbone_weights``); logs what was loaded."""
        report = load_backbone_weights(self.backbone, path)
        rank_zero_info(str(report))
        return report

    # -- optimisation ------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The regular parameters, and the dynamic ones without weight decay."""
        dynamic, other = split_dynamic_parameters(self)
        groups = [{"params": other, "name": "weights"}]
        if dynamic:
            groups.append({"params": dynamic, "weight_decay": 0.0, "name": "dynamic"})
        return groups

    def scheduler_steps(self) -> int:
        """How many times the scheduler will be stepped: ``trainer.max_epochs`` (per epoch) or
        ``trainer.estimated_stepping_batches`` (per optimiser step) — the length of a schedule
        whose config leaves it out (see :mod:`~dck_lightning.tasks.schedules`)."""
        if self._trainer is None:
            raise RuntimeError(
                "the learning-rate schedule's length comes from the trainer: fit with a Trainer "
                "or give the length (T_max, total_steps, total_iters) in lr_scheduler"
            )
        if self.hparams.lr_scheduler_interval == "step":
            steps = self.trainer.estimated_stepping_batches
        else:
            steps = self.trainer.max_epochs if self.trainer.max_epochs is not None else -1
        if steps < 0 or steps == float("inf"):
            raise ValueError(
                "the learning-rate schedule's length comes from trainer.max_epochs (or max_steps "
                "for a per-step schedule), which is unbounded: set it, or give the length"
            )
        return int(steps)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        base_lr = optimizer.defaults["lr"]
        for group in optimizer.param_groups:
            if group.get("name") == "dynamic":
                group["lr"] = base_lr * self.hparams.dynamic_lr_factor
        if self.scheduler_factory is None:
            return optimizer
        factors = [group["lr"] / base_lr for group in optimizer.param_groups]
        scheduler = build_scheduler(
            self.scheduler_factory, optimizer, self.scheduler_steps, factors
        )
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
        # After a checkpoint was restored (trainer.ckpt_path set): a resumed run keeps its weights.
        if self.hparams.get("backbone_weights") and self.trainer.ckpt_path is None:
            self.load_backbone_weights(self.hparams.backbone_weights)
        self.log_model_size()

    def on_train_start(self) -> None:
        # After the checkpoint's scheduler state is restored: its length must still follow the
        # trainer.
        if self.trainer.ckpt_path is None or self.scheduler_factory is None:
            return
        for config in self.trainer.lr_scheduler_configs:
            check_resumed_length(self.scheduler_factory, config.scheduler, self.scheduler_steps())

    def log_model_size(self) -> None:
        """Print the parameters and GFLOPs per image, and log them (``model/parameters``,
        ``model/gflops``) to every logger, for run tables (``load_runs``, ``dck sweep``)."""
        example = self.example_input()
        parameters = count_parameters(self.model)
        sizes: dict[str, float] = {"model/parameters": float(parameters)}
        flops = ""
        if example is not None:
            try:
                sizes["model/gflops"] = count_flops(self.model, example) / 1e9
                flops = (
                    f", {sizes['model/gflops']:.3f} GFLOPs per {tuple(example.shape[-2:])} image"
                )
            except Exception as error:  # counting must never stop training
                flops = f" (FLOPs not counted: {error})"
        rank_zero_info(f"{type(self).__name__}: {parameters / 1e6:.3f} M parameters{flops}")
        for logger in self.loggers:
            logger.log_metrics(sizes, step=self.global_step)


def _rename(state_dict: "OrderedDict[str, Any]", old: str, new: str) -> None:
    """Rename the keys starting with ``old`` to start with ``new``, in place, keeping the order."""
    if old == new or not any(key.startswith(old) for key in state_dict):
        return
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        state_dict[new + key[len(old) :] if key.startswith(old) else key] = value


def _backbone_keys_out(module: BaseTask, state_dict: Any, prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: ``<prefix><where the backbone is>.*`` → ``<prefix>backbone.*``."""
    if module._backbone_name is not None:
        _rename(state_dict, f"{prefix}{module._backbone_name}.", prefix + BACKBONE_PREFIX)


def _backbone_keys_in(module: BaseTask, state_dict: Any, prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: the inverse of :func:`_backbone_keys_out`."""
    if module._backbone_name is not None:
        _rename(state_dict, prefix + BACKBONE_PREFIX, f"{prefix}{module._backbone_name}.")
