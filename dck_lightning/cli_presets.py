"""Choosing another backbone preset on the command line gives that preset's values.

jsonargparse keeps a subclass's ``init_args`` when its ``class_path`` changes, as long as the
new class accepts them (jsonargparse issue #460). For the backbone presets, which differ only
in their defaults, that would make ``--model.init_args.backbone resnet18`` on top of the
embedded default (``dcb_small``) build a ResNet-18 with ``dcb_small``'s widths, depths and DCB
stages. :func:`install` adds the rule of the proposed upstream fix (jsonargparse PR #942),
for backbone classes only: when the class changes, an argument still at the previous class's
default takes the new class's default; values that were set (``--...init_args.widths``, a
config's ``init_args``) carry over as before.
"""

from __future__ import annotations

import inspect
from typing import Any

from jsonargparse import _typehints

from .models import DCBNet
from .models.registry import backbone_config

__all__ = ["install"]

_ORIGINAL = _typehints.discard_init_args_on_class_path_change


def _backbone_class(class_path: Any) -> Any:
    if not isinstance(class_path, str):
        return None
    try:
        cls = _typehints.import_object(class_path)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if inspect.isclass(cls) and issubclass(cls, DCBNet) else None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _discard_previous_defaults(parser_or_action: Any, prev_val: Any, value: Any) -> None:
    _ORIGINAL(parser_or_action, prev_val, value)
    if not prev_val or "init_args" not in prev_val or not prev_val["init_args"]:
        return
    old, new = _backbone_class(prev_val["class_path"]), _backbone_class(value["class_path"])
    if old is None or new is None or old is new:
        return
    old_defaults = backbone_config(old)["init_args"]
    new_defaults = backbone_config(new)["init_args"]
    init_args = prev_val["init_args"]
    for key, given in list(init_args.items()):
        if (
            key in old_defaults
            and _plain(given) == old_defaults[key]
            and new_defaults.get(key) != old_defaults[key]
        ):
            del init_args[key]


def install() -> None:
    """Apply the rule (idempotent)."""
    _typehints.discard_init_args_on_class_path_change = _discard_previous_defaults
