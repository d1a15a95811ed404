"""The DCK layer family, pure PyTorch (no Lightning import).

* :class:`DynamicConv2d` — the dynamic convolutional kernel (DCK). :class:`DynamicConv2D` is
  the design document's Keras-style compatibility name (lazy ``in_channels``, ``filters=``).
* :class:`DeformConv2d` — DCNv2 with the centre-approximation constraint. Not a drop-in for
  :class:`torchvision.ops.DeformConv2d`: it predicts its own offsets, ``forward(x)``.
* :func:`deform_conv2d` — the deformable sampling op with ``"torch"``/``"torchvision"`` backends.
* :class:`ConvBlock`, :class:`GlobalContextModule`, :class:`DCB`, :class:`ResidualDCB`.
"""

from .conv_block import CONV_ALIASES, CONV_TYPES, ConvBlock, make_conv
from .dcb import DCB, DCK_MODES, ResidualDCB
from .deform import DeformConv2d, bound_offsets
from .dynamic import DynamicConv2D, DynamicConv2d, Localization, structured_offsets
from .global_context import (
    GlobalContextAggregator,
    GlobalContextModule,
    GlobalFeatureExtractor,
    SpatialPyramidPooling,
)
from .parameters import dynamic_parameter_names, split_dynamic_parameters
from .sampling import (
    BACKENDS,
    deform_conv2d,
    get_default_backend,
    resolve_backend,
    sampling_backend,
    set_default_backend,
)

__all__ = [
    "BACKENDS",
    "CONV_ALIASES",
    "CONV_TYPES",
    "DCB",
    "DCK_MODES",
    "ConvBlock",
    "DeformConv2d",
    "DynamicConv2D",
    "DynamicConv2d",
    "GlobalContextAggregator",
    "GlobalContextModule",
    "GlobalFeatureExtractor",
    "Localization",
    "ResidualDCB",
    "SpatialPyramidPooling",
    "bound_offsets",
    "deform_conv2d",
    "dynamic_parameter_names",
    "get_default_backend",
    "make_conv",
    "resolve_backend",
    "sampling_backend",
    "set_default_backend",
    "split_dynamic_parameters",
    "structured_offsets",
]
