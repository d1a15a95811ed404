"""Learning-rate schedules whose length follows the trainer.

A config names the scheduler and its shape, never its length::

    lr_scheduler:
      class_path: torch.optim.lr_scheduler.OneCycleLR
      init_args: {max_lr: 0.004, pct_start: 0.1}

The tasks' ``lr_scheduler`` argument is an :class:`LRSchedulerFactory`: LightningCLI's
``class_path`` + ``init_args`` of a scheduler whose length arguments — ``T_max``
(``CosineAnnealingLR``), ``total_iters`` (``PolynomialLR``, ``LinearLR``, ``ConstantLR``),
``total_steps`` (``OneCycleLR``, :class:`WarmupCosineLR`'s ``T_max``) — are not part of the config (a config that sets one stops
with the CLI's message). :func:`build_scheduler` passes them: the number of times the scheduler
will be stepped, ``trainer.max_epochs`` when it steps per epoch and
``trainer.estimated_stepping_batches`` (limits, accumulation and devices included) when it
steps per optimiser step. So ``--trainer.max_epochs`` alone changes a schedule's length, and a
schedule always ends where it is meant to. In Python, a length given to the factory
(``functools.partial(CosineAnnealingLR, T_max=50)``) is kept.

``OneCycleLR`` and ``CyclicLR`` set every parameter group's learning rate from their own
``max_lr`` (and ``base_lr``), which would erase the ``dynamic_lr_factor`` of the dynamic
parameters; a single value is therefore spread over the groups in proportion to each group's
learning rate (``[max_lr × lr_g / lr]``), as the schedulers accept per-group lists.

The scheduler class and the arguments given are read from the factory: the class itself,
``functools.partial(cls, ...)`` or the CLI's factory (also a partial). Other callables are
called with the optimiser alone.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Optional, Protocol, Union

from pytorch_lightning.cli import ReduceLROnPlateau
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, CyclicLR, LRScheduler, OneCycleLR

__all__ = [
    "LENGTH_ARGUMENTS",
    "PER_GROUP_ARGUMENTS",
    "LRSchedulerFactory",
    "WarmupCosineLR",
    "build_scheduler",
    "check_resumed_length",
    "scheduler_class",
]

#: Arguments that hold a scheduler's length, in scheduler steps.
LENGTH_ARGUMENTS = ("T_max", "total_iters", "total_steps")
#: Arguments that set every group's learning rate, spread over the groups by their lr ratio.
PER_GROUP_ARGUMENTS: dict[type, tuple[str, ...]] = {
    OneCycleLR: ("max_lr",),
    CyclicLR: ("base_lr", "max_lr"),
}


class LRSchedulerFactory(Protocol):
    """A scheduler class and its arguments, less the optimiser and the length (see the module)."""

    def __call__(
        self, optimizer: Optimizer, T_max: int, total_iters: int, total_steps: int
    ) -> Union[LRScheduler, ReduceLROnPlateau]: ...


def scheduler_class(factory: Callable[..., Any]) -> Optional[type]:
    """The ``LRScheduler`` subclass ``factory`` builds, when it can be read off it."""
    if inspect.isclass(factory):
        return factory if issubclass(factory, LRScheduler) else None
    if isinstance(factory, functools.partial):
        for candidate in (factory.func, *factory.args):
            found = scheduler_class(candidate)
            if found is not None:
                return found
    return None


def _given(factory: Callable[..., Any]) -> dict[str, Any]:
    return dict(factory.keywords) if isinstance(factory, functools.partial) else {}


def _subclass_entry(table: dict[type, Any], cls: Optional[type]) -> Any:
    return next((value for base, value in table.items() if cls and issubclass(cls, base)), None)


def _accepted(cls: Optional[type]) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) if cls is not None else set()


def _one_cycle_pct_start(pct_start: float, total_steps: int) -> float:
    """``pct_start``, or a hair more when the warm-up is exactly one step long.

    torch's ``OneCycleLR`` divides by zero when ``pct_start × total_steps == 1`` (a smoke run of
    5 steps at the default's 0.2). A warm-up that short warns and runs: one step at the initial
    learning rate, then the annealing, which is what the nudged ``pct_start`` gives.
    """
    warm_up = float(pct_start * total_steps)
    if warm_up < 2:
        warnings.warn(
            f"OneCycleLR with pct_start={pct_start} over {total_steps} scheduler steps warms up "
            f"for {warm_up:g} step(s): too short to matter (a smoke or short run?); train "
            "longer, or raise pct_start, for a real warm-up",
            UserWarning,
            stacklevel=3,
        )
    return pct_start * (1 + 1e-6) if warm_up == 1.0 else pct_start


class WarmupCosineLR(CosineAnnealingLR):
    r"""Linear warm-up, then cosine annealing to ``eta_min``: the ResNet recipe of Goyal et al.
    ("Accurate, Large Minibatch SGD", 2017) with the cosine of Loshchilov & Hutter (SGDR).

    For step ``t`` of ``T = T_max`` and ``W = round(warmup · T)`` warm-up steps::

        lr(t) = base_lr · (t + 1) / W                                          t < W
        lr(t) = eta_min + (base_lr − eta_min) · ½ (1 + cos(π (t − W) / (T − W)))  t ≥ W

    so the first step already trains at ``base_lr / W`` and the schedule ends at ``eta_min``
    after ``T`` steps. Closed form per parameter group: each group keeps its own base learning
    rate (the dynamic parameters' ``dynamic_lr_factor``). Its length ``T_max`` follows the
    trainer like :class:`~torch.optim.lr_scheduler.CosineAnnealingLR`'s (see the module); step
    it per optimiser step (``lr_scheduler_interval: step``) for a warm-up shorter than an epoch.

    Args:
        optimizer (Optimizer): the optimiser.
        T_max (int): scheduler steps in all (from the trainer when a config leaves it out).
        warmup (float): the warm-up's share of the steps, in ``[0, 1)``. Default: 0.05.
        eta_min (float): the final learning rate. Default: 0.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_max: int,
        warmup: float = 0.05,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if not 0 <= warmup < 1:
            raise ValueError(f"WarmupCosineLR: warmup must be in [0, 1) (a share), got {warmup}")
        self.warmup = warmup
        self.warmup_steps = round(warmup * T_max)
        super().__init__(optimizer, T_max, eta_min=eta_min, last_epoch=last_epoch)

    def _factor(self, step: int) -> float:
        """``lr(step) / base_lr`` with ``eta_min = 0``; the warm-up's share of it."""
        warm = self.warmup_steps
        if step < warm:
            return (step + 1) / warm
        span = max(self.T_max - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, span) / span))

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step < self.warmup_steps:
            return [base * self._factor(step) for base in self.base_lrs]
        return [self.eta_min + (base - self.eta_min) * self._factor(step) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


def build_scheduler(
    factory: Callable[..., Any],
    optimizer: Optimizer,
    length: Callable[[], int],
    group_factors: Sequence[float],
) -> Any:
    """Call ``factory(optimizer, ...)`` with the length and per-group values it leaves open.

    Args:
        factory: the scheduler class, a partial of it, or any callable taking the optimiser.
        optimizer: the optimiser to schedule.
        length: returns how many times the scheduler will be stepped (called only when a
            length is missing).
        group_factors: each parameter group's learning rate relative to the base one.
    """
    cls = scheduler_class(factory)
    given = _given(factory)
    overrides: dict[str, Any] = {}
    by_epochs = cls is not None and issubclass(cls, OneCycleLR) and given.get("epochs")
    missing = [
        name for name in LENGTH_ARGUMENTS if name in _accepted(cls) and given.get(name) is None
    ]
    if missing and not by_epochs:
        steps = length()
        overrides.update(dict.fromkeys(missing, steps))
        if cls is not None and issubclass(cls, OneCycleLR):
            pct_start = given.get("pct_start", 0.3)
            nudged = _one_cycle_pct_start(pct_start, steps)
            if nudged != pct_start:
                overrides["pct_start"] = nudged
    for argument in _subclass_entry(PER_GROUP_ARGUMENTS, cls) or ():
        value = given.get(argument)
        if isinstance(value, (int, float)) and any(f != 1.0 for f in group_factors):
            overrides[argument] = [value * factor for factor in group_factors]
    return factory(optimizer, **overrides)


def check_resumed_length(factory: Callable[..., Any], scheduler: Any, steps: int) -> None:
    """Stop a resumed fit whose schedule length no longer follows the trainer.

    A checkpoint restores the scheduler with the length of the run that saved it: resumed with
    another ``trainer.max_epochs`` (or limits), ``OneCycleLR`` would stop with torch's "Tried to
    step N times", and cosine or polynomial schedules would silently run past their end. A
    length given in ``factory`` (the user's own) is not checked.

    Raises:
        ValueError: a length argument of ``scheduler`` differs from ``steps``, naming both.
    """
    given = _given(factory)
    for name in LENGTH_ARGUMENTS:
        restored = getattr(scheduler, name, None)
        if given.get(name) is None and isinstance(restored, int) and restored != steps:
            raise ValueError(
                f"the checkpoint's {type(scheduler).__name__} runs {name}={restored} scheduler "
                f"steps, but this fit needs {steps}: its length follows trainer.max_epochs (and "
                "the batch limits), which differ from the run that saved it. Resume with the "
                "first run's trainer settings, or start a new run from the checkpoint's weights "
                "(--model.init_args.backbone_weights CKPT) with the longer schedule."
            )
