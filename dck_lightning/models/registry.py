"""Backbone presets, the typed backbone argument of every task, and the classifier factory.

**Presets** are :class:`~dck_lightning.models.backbone.DCBNet` subclasses whose only change is
their defaults (torchvision's ``resnet18``/``resnet34`` are lowercase builders too):

==================  =========================  ============  ==========  ================
preset              widths                     depths        DCB stages  stem
==================  =========================  ============  ==========  ================
``dcb_small``       32, 64, 96, 128            1, 1, 1, 1    3, 4        small, stride 2
``dcb_resnet18``    64, 128, 256, 512          2, 2, 2, 2    3, 4        resnet, stride 4
``dcb_resnet34``    64, 128, 256, 512          3, 4, 6, 3    3, 4        resnet, stride 4
``resnet18``        64, 128, 256, 512          2, 2, 2, 2    none        resnet, stride 4
``resnet34``        64, 128, 256, 512          3, 4, 6, 3    none        resnet, stride 4
==================  =========================  ============  ==========  ================

``resnet18``/``resnet34`` are the plain baselines: torchvision's ``BasicBlock`` in every stage,
the same tensors as ``torchvision.models.resnet18`` without ``fc`` (see
:mod:`~dck_lightning.models.weights`).

**The backbone argument.** Every task takes ``backbone`` the LightningCLI way, as a class and
its arguments (``class_path`` + ``init_args``, the way ``optimizer`` is given): a preset name
is one word (``backbone: dcb_small``), every argument is typed and printed with its default by
``--print_config``, and ``config.yaml`` records the effective value of each::

    backbone:
      class_path: dck_lightning.models.dcb_small
      init_args: {widths: [32, 64, 96, 128], depths: [1, 1, 1, 1], dck: adaptive, deform: true, ...}

``in_channels`` (and, for whole classifiers such as :class:`SeedNet`, ``num_classes``) come
from the DataModule, so they are not part of it. In Python a task takes the same spec as a
dict, a preset name, a class or ``functools.partial(class, **arguments)``;
:func:`backbone_config` turns each into the dict recorded in the hyperparameters and
:func:`build_backbone` builds it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Literal, Protocol, Union

from torch import nn

from .backbone import DCBNet
from .classifier import ImageClassifier
from .seednet import SeedNet

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "BackboneFactory",
    "BackboneSpec",
    "ClassifierFactory",
    "backbone_config",
    "build_backbone",
    "create_backbone",
    "create_classifier",
    "dcb_resnet18",
    "dcb_resnet34",
    "dcb_small",
    "list_backbones",
    "resnet18",
    "resnet34",
]

Stem = Literal["resnet", "small"]


class dcb_small(DCBNet):  # noqa: N801 - a preset name, as torchvision's resnet18
    """For 28×28 / 32×32 inputs: narrow, one block per stage, a light stride-2 stem, residual
    DCBs in stages 3–4. Any :class:`DCBNet` argument can be given."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 96, 128),
        depths: Sequence[int] = (1, 1, 1, 1),
        dcb_stages: Sequence[int] = (3, 4),
        stem: Stem = "small",
        stem_stride: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            in_channels, widths, depths, dcb_stages, stem=stem, stem_stride=stem_stride, **kwargs
        )


class dcb_resnet18(DCBNet):  # noqa: N801
    """ResNet-18 layout (ImageNet stem, stride 4) with residual DCBs in stages 3–4."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        dcb_stages: Sequence[int] = (3, 4),
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, widths, depths, dcb_stages, **kwargs)


class dcb_resnet34(DCBNet):  # noqa: N801
    """ResNet-34 layout (ImageNet stem, stride 4) with residual DCBs in stages 3–4."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        dcb_stages: Sequence[int] = (3, 4),
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, widths, depths, dcb_stages, **kwargs)


class resnet18(DCBNet):  # noqa: N801
    """The plain ResNet-18 (torchvision's BasicBlock in every stage): the baseline of the DCB
    presets, and torchvision's ``resnet18`` features exactly with its weights."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        dcb_stages: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, widths, depths, dcb_stages, **kwargs)


class resnet34(DCBNet):  # noqa: N801
    """The plain ResNet-34 (torchvision's BasicBlock in every stage)."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        dcb_stages: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, widths, depths, dcb_stages, **kwargs)


#: The presets by name.
BACKBONES: dict[str, type[DCBNet]] = {
    cls.__name__: cls for cls in (dcb_small, dcb_resnet18, dcb_resnet34, resnet18, resnet34)
}
#: Whole classification networks a :class:`~dck_lightning.tasks.ClassificationTask` takes in
#: place of a backbone (they bring their own head and take ``num_classes``).
CLASSIFIERS: dict[str, type[nn.Module]] = {"seednet": SeedNet}


class BackboneFactory(Protocol):
    """The type of every task's ``backbone`` argument: a :class:`DCBNet` class (a preset) with
    its arguments, called with the DataModule's ``in_channels``."""

    def __call__(self, in_channels: int) -> DCBNet: ...


class ClassifierFactory(Protocol):
    """A whole classifier (:class:`SeedNet`) in place of a backbone: called with the DataModule's
    ``in_channels`` and ``num_classes``."""

    def __call__(self, in_channels: int, num_classes: int) -> SeedNet: ...


#: What a task accepts as ``backbone`` in Python (the CLI gives the dict form).
BackboneSpec = Union[str, Mapping[str, Any], Callable[..., nn.Module]]


def list_backbones() -> list[str]:
    """Names of the backbone presets."""
    return sorted(BACKBONES)


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    if not module:
        raise ValueError(f"backbone class_path must be a full import path, got {class_path!r}")
    return getattr(importlib.import_module(module), name)


def _preset(name: str) -> type[nn.Module]:
    if name in BACKBONES:
        return BACKBONES[name]
    if name.lower() in CLASSIFIERS:
        return CLASSIFIERS[name.lower()]
    raise ValueError(
        f"unknown backbone {name!r}; choose one of {list_backbones()} (classification also "
        f"{sorted(CLASSIFIERS)}) or give a class_path"
    )


def _resolve(spec: BackboneSpec) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """``(class or function, arguments given)`` of a spec."""
    if isinstance(spec, str):
        return (_import(spec) if "." in spec else _preset(spec)), {}
    if isinstance(spec, Mapping):
        if "class_path" not in spec:
            raise ValueError(f"a backbone spec needs a class_path, got {dict(spec)}")
        return _resolve(str(spec["class_path"]))[0], dict(spec.get("init_args") or {})
    if isinstance(spec, functools.partial) and not spec.args:
        return spec.func, dict(spec.keywords)
    if _deferred_class(spec):
        return spec.args[-1], dict(spec.keywords)
    if callable(spec):
        return spec, {}
    raise TypeError(f"backbone must be a preset name, a class_path spec or a class, got {spec!r}")


def _deferred_class(spec: Any) -> bool:
    """Whether ``spec`` is jsonargparse's deferred instantiation of a class,
    ``partial(call_without_instantiate_context, instantiator, cls, **init_args)``: what a
    class-returning callable argument becomes when Lightning re-parses a checkpoint's
    hyperparameters (``load_from_checkpoint`` with the CLI's ``_instantiator``)."""
    return (
        isinstance(spec, functools.partial)
        and getattr(spec.func, "__module__", "").startswith("jsonargparse")
        and len(spec.args) == 2
        and inspect.isclass(spec.args[-1])
    )


def _import_path(obj: Any) -> str:
    """The shortest public import path of ``obj`` (``dck_lightning.models.dcb_small``)."""
    module = obj.__module__
    parts = module.split(".")
    for end in range(1, len(parts)):
        parent = ".".join(parts[:end])
        try:
            if getattr(importlib.import_module(parent), obj.__qualname__, None) is obj:
                return f"{parent}.{obj.__qualname__}"
        except ImportError:
            continue
    return f"{module}.{obj.__qualname__}"


def _full_arguments(target: Callable[..., nn.Module], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every argument of ``target`` (its signature's defaults, then ``given``), following
    ``**kwargs`` to :class:`DCBNet` for the presets."""
    owners = [target]
    if inspect.isclass(target) and issubclass(target, DCBNet):
        owners = [c for c in target.__mro__ if issubclass(c, DCBNet)]
    values: dict[str, Any] = {}
    for owner in reversed(owners):  # DCBNet's defaults first, the preset's win
        function = owner.__init__ if inspect.isclass(owner) else owner
        for parameter in inspect.signature(function).parameters.values():
            if parameter.default is not inspect.Parameter.empty:
                values[parameter.name] = parameter.default
    unknown = sorted(set(given) - set(values))
    if unknown:
        raise ValueError(
            f"{_import_path(target)} has no argument(s) {unknown}; it takes {sorted(values)}"
        )
    values.update(given)
    for key in ("in_channels", "num_classes"):  # the DataModule's
        values.pop(key, None)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def backbone_config(spec: BackboneSpec) -> dict[str, Any]:
    """The ``{"class_path", "init_args"}`` dict of ``spec`` with every argument's effective
    value, as the CLI records it; e.g. ``backbone_config("dcb_small")["init_args"]["widths"]
    == [32, 64, 96, 128]``. Raises ``ValueError`` for an unknown preset or argument."""
    target, given = _resolve(spec)
    if not inspect.isclass(target) and not isinstance(spec, (str, Mapping)):
        raise TypeError(f"cannot record {spec!r} as a config: give a class or a class_path spec")
    return {"class_path": _import_path(target), "init_args": _full_arguments(target, given)}


def is_classifier(spec: BackboneSpec) -> bool:
    """Whether ``spec`` builds a whole classifier (:data:`CLASSIFIERS`) rather than a backbone."""
    target, _ = _resolve(spec)
    return inspect.isclass(target) and issubclass(target, tuple(CLASSIFIERS.values()))


def build_backbone(
    spec: BackboneSpec, in_channels: int, num_classes: Union[int, None] = None
) -> nn.Module:
    """Build ``spec`` for ``in_channels``-channel images (whole classifiers also get
    ``num_classes``)."""
    target, given = _resolve(spec)
    extra = {"num_classes": num_classes} if is_classifier(spec) else {}
    if is_classifier(spec) and num_classes is None:
        raise ValueError(f"{_import_path(target)} is a whole classifier: it needs num_classes")
    return target(in_channels=in_channels, **extra, **given)


def create_backbone(name: str, **kwargs: Any) -> DCBNet:
    """Build the backbone preset ``name`` with ``kwargs`` overriding its arguments."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}")
    return BACKBONES[name](**kwargs)


def create_classifier(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    dropout: float = 0.0,
    pool: str = "avg",
    feature: Union[str, Sequence[str]] = "c5",
    **kwargs: Any,
) -> nn.Module:
    """A classifier: ``"seednet"`` (the design document's model) or a backbone preset + head."""
    if name.lower() in CLASSIFIERS:
        return CLASSIFIERS[name.lower()](in_channels=in_channels, num_classes=num_classes, **kwargs)
    if name not in BACKBONES:
        raise ValueError(
            f"unknown model {name!r}; choose one of {[*CLASSIFIERS, *list_backbones()]}"
        )
    return ImageClassifier(
        create_backbone(name, in_channels=in_channels, **kwargs),
        num_classes,
        feature=feature,
        dropout=dropout,
        pool=pool,
    )
