"""Initialise a backbone from a file: any task's checkpoint, or a torchvision ResNet state dict.

:func:`load_backbone_weights` reads (``weights_only=True``):

- a **dck_lightning checkpoint** of any task: its ``backbone.*`` tensors (every task keeps its
  backbone under that state-dict prefix, so a classification backbone initialises a detector);
- a **torchvision ResNet-18/34 state dict** (``torch.save(resnet18(weights=...).state_dict())``,
  or the ``resnet18-*.pth`` file torchvision downloads): renamed to our layout —
  ``conv1``/``bn1`` → ``stem.0``/``stem.1``, ``layer{i}.{j}.*`` → ``stages.{i-1}.{j}.*``; in a
  DCB stage the BasicBlock's ``conv1, bn1, conv2, bn2, downsample`` map to the residual DCB's
  ``dck.conv, dck.norm, conv.conv, conv.norm, shortcut``; ``fc`` has no counterpart. The plain
  presets (``resnet18``, ``resnet34``) then compute torchvision's features exactly;
- a **bare backbone state dict** (``torch.save(task.backbone.state_dict())``).

Every tensor whose (mapped) name and shape match is loaded; the rest keeps its initialisation,
and the :class:`WeightsReport` says which.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
from torch import Tensor, nn

__all__ = ["BACKBONE_PREFIX", "WeightsReport", "load_backbone_weights", "torchvision_to_dcbnet"]

#: State-dict prefix of the backbone in every task's checkpoint.
BACKBONE_PREFIX = "backbone."

#: BasicBlock tensors → their counterpart in a ResidualDCB (a DCB stage).
BASIC_TO_DCB = {
    "conv1": "dck.conv",
    "bn1": "dck.norm",
    "conv2": "conv.conv",
    "bn2": "conv.norm",
    "downsample.0": "shortcut.0",
    "downsample.1": "shortcut.1",
}
_LAYER = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")


@dataclass
class WeightsReport:
    """What :func:`load_backbone_weights` did (names in the backbone's state dict)."""

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    #: ``name (model shape) vs (file shape)``
    other_shape: list[str] = field(default_factory=list)
    #: in the backbone, absent from the file
    missing: list[str] = field(default_factory=list)
    #: in the file, without a counterpart in the backbone
    unused: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.other_shape) + len(self.missing)
        lines = [
            f"backbone_weights {self.path} ({self.source}): loaded {len(self.loaded)} of the "
            f"backbone's {total} tensors"
        ]
        if self.other_shape:
            lines.append(f"  not loaded, other shape: {', '.join(self.other_shape)}")
        if self.missing:
            lines.append(f"  not loaded, not in the file: {', '.join(self.missing)}")
        if self.unused:
            lines.append(f"  in the file, no counterpart: {', '.join(self.unused)}")
        return "\n".join(lines)


def torchvision_to_dcbnet(state: Mapping[str, Tensor], dcb_stages=()) -> dict[str, Tensor]:
    """Rename a torchvision ResNet state dict to :class:`~dck_lightning.models.DCBNet` names
    (see the module docstring); ``fc.*`` and unknown names keep their name (and so go unused)."""
    renamed: dict[str, Tensor] = {}
    for name, tensor in state.items():
        match = _LAYER.match(name)
        if name.startswith(("conv1.", "bn1.")):
            head, _, rest = name.partition(".")
            name = f"stem.{0 if head == 'conv1' else 1}.{rest}"
        elif match:
            stage, block, rest = int(match[1]), match[2], match[3]
            if stage in dcb_stages:
                for old, new in BASIC_TO_DCB.items():
                    if rest.startswith(old + "."):
                        rest = new + rest[len(old) :]
                        break
            name = f"stages.{stage - 1}.{block}.{rest}"
        renamed[name] = tensor
    return renamed


def _read(path: Path) -> tuple[str, dict[str, Tensor]]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone_weights: no such file {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"backbone_weights: {path} is not a readable torch file ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    if isinstance(data, Mapping) and "state_dict" in data:  # a Lightning checkpoint
        state = {
            k[len(BACKBONE_PREFIX) :]: v
            for k, v in data["state_dict"].items()
            if k.startswith(BACKBONE_PREFIX)
        }
        if not state:
            raise ValueError(
                f"backbone_weights: the checkpoint {path} has no '{BACKBONE_PREFIX}*' tensors; "
                "it was not written by a dck_lightning task (or by one older than the shared "
                "backbone prefix)"
            )
        return "checkpoint", state
    if isinstance(data, Mapping) and all(isinstance(v, Tensor) for v in data.values()):
        if "conv1.weight" in data and any(k.startswith("layer1.") for k in data):
            return "torchvision ResNet", dict(data)
        return "state dict", dict(data)
    raise ValueError(
        f"backbone_weights: {path} holds neither a checkpoint nor a state dict of tensors"
    )


def load_backbone_weights(backbone: nn.Module, path: Union[str, os.PathLike]) -> WeightsReport:
    """Load every tensor of ``path`` whose name and shape fit ``backbone`` (in place).

    Raises:
        FileNotFoundError, ValueError: a missing, unreadable or unsuitable file (named).
    """
    path = Path(path)
    source, state = _read(path)
    if source == "torchvision ResNet":
        state = torchvision_to_dcbnet(state, getattr(backbone, "dcb_stages", ()))
    report = WeightsReport(str(path), source)
    own = backbone.state_dict()
    selected = {}
    for name, tensor in own.items():
        if name not in state:
            report.missing.append(name)
        elif tuple(state[name].shape) != tuple(tensor.shape):
            report.other_shape.append(f"{name} {tuple(tensor.shape)} vs {tuple(state[name].shape)}")
        else:
            selected[name] = state[name]
            report.loaded.append(name)
    report.unused = [name for name in state if name not in own]
    if not selected:
        raise ValueError(
            f"backbone_weights: no tensor of {path} fits this backbone ({len(state)} tensors in "
            f"the file, e.g. {sorted(state)[:3]}; the backbone has e.g. {list(own)[:3]})"
        )
    backbone.load_state_dict(selected, strict=False)
    return report
