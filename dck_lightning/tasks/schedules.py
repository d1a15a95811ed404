"""Learning-rate schedules whose length follows the trainer.

A config names the scheduler and its shape, never its length::

    lr_scheduler:
      class_path: torch.optim.lr_scheduler.OneCycleLR
      init_args: {max_lr: 0.004, pct_start: 0.1}

The tasks' ``lr_scheduler`` argument is an :class:`LRSchedulerFactory`: LightningCLI's
``class_path`` + ``init_args`` of a scheduler whose length arguments — ``T_max``
(``CosineAnnealingLR``), ``total_iters`` (``PolynomialLR``, ``LinearLR``, ``ConstantLR``),
``total_steps`` (``OneCycleLR``) — are not part of the config (a config that sets one stops
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
from collections.abc import Sequence
from typing import Any, Callable, Optional, Protocol, Union

from pytorch_lightning.cli import ReduceLROnPlateau
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR

__all__ = [
    "LENGTH_ARGUMENTS",
    "PER_GROUP_ARGUMENTS",
    "LRSchedulerFactory",
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


def _check_one_cycle(pct_start: float, total_steps: int) -> None:
    """torch's ``OneCycleLR`` divides by zero when its warm-up is exactly one step long."""
    if float(pct_start * total_steps) == 1.0:
        raise ValueError(
            f"OneCycleLR with pct_start={pct_start} over {total_steps} scheduler steps has a "
            "one-step warm-up, which torch cannot compute: step it per optimiser step "
            "(lr_scheduler_interval: step), train longer, or change pct_start"
        )


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
            _check_one_cycle(given.get("pct_start", 0.3), steps)
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
