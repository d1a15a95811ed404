"""Which parameters are the "dynamic" ones (DCK extent and localisation, deformable offsets).

Tasks put them in their own optimiser group (no weight decay, own learning-rate factor):
they steer where and how far the kernels look, not what they compute.
"""

from __future__ import annotations

from torch import nn

from .deform import DeformConv2d
from .dynamic import DynamicConv2d


def dynamic_parameter_names(model: nn.Module) -> set[str]:
    """Qualified names of the extent, localisation and offset/mask parameters in ``model``."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, DynamicConv2d):
            names.add(f"{prefix}extent")
            if module.localization is not None:
                names.update(
                    f"{prefix}localization.{n}" for n, _ in module.localization.named_parameters()
                )
        elif isinstance(module, DeformConv2d):
            names.update(
                f"{prefix}offset_conv.{n}" for n, _ in module.offset_conv.named_parameters()
            )
    return names


def split_dynamic_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(dynamic, other)`` trainable parameters of ``model``."""
    dynamic_names = dynamic_parameter_names(model)
    dynamic, other = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (dynamic if name in dynamic_names else other).append(param)
    return dynamic, other
