"""The shared backbone: a ResNet-shaped network whose later stages are residual DCBs.

One backbone object serves every head: :meth:`DCBNet.forward` returns a dict of feature maps
(``"c2"``…``"c5"``, strides ``stem_stride × (1, 2, 4, 8)`` — 4, 8, 16, 32 by default) and the
backbone publishes ``out_channels`` and ``strides`` per feature, the interface
:class:`torchvision.ops.FeaturePyramidNetwork` and the detectors expect.

Stages listed in ``dcb_stages`` (1-based, default the last two, as DCN uses stages 3–5) are
built from :class:`~dck_lightning.layers.ResidualDCB`; the others from torchvision's ResNet
:class:`~torchvision.models.resnet.BasicBlock`. Every DCB switch (``dck``, ``deform``,
``gcm``) is an argument, so an ablation is one flag.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal, Optional

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from ..layers import ResidualDCB
from ..layers.dcb import dck_mode
from ..layers.sampling import Backend
from ..layers.validation import check_choice

FEATURE_NAMES = ("c2", "c3", "c4", "c5")


Downsample = Literal["conv", "avg"]


class AvgDownConv2d(nn.Conv2d):
    """The shortcut of ResNet-D (He et al., *Bag of Tricks for Image Classification with
    Convolutional Neural Networks*, CVPR 2019): a ``stride × stride`` average pool, then the
    1×1 convolution, in place of a 1×1 convolution of stride 2 that reads one pixel in four.

    It has the parameters of that strided convolution (``weight`` ``[out, in, 1, 1]``), so a
    state dict loads either way. Odd sides round up, as the strided convolution's do.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, 1, bias=False)
        self.pool = stride

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(x, self.pool, self.pool, ceil_mode=True, count_include_pad=False)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, avg_pool={self.pool}"


def _shortcut_conv(in_channels: int, out_channels: int, stride: int, kind: Downsample) -> nn.Conv2d:
    if kind == "avg" and stride > 1:
        return AvgDownConv2d(in_channels, out_channels, stride)
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


def _basic_stage(
    in_channels: int, out_channels: int, depth: int, stride: int, downsample: Downsample
) -> nn.Sequential:
    blocks = []
    for i in range(depth):
        block_in, block_stride = (in_channels, stride) if i == 0 else (out_channels, 1)
        shortcut = None
        if block_stride != 1 or block_in != out_channels:
            shortcut = nn.Sequential(
                _shortcut_conv(block_in, out_channels, block_stride, downsample),
                nn.BatchNorm2d(out_channels),
            )
        blocks.append(BasicBlock(block_in, out_channels, block_stride, shortcut))
    return nn.Sequential(*blocks)


def _dcb_stage(
    in_channels: int,
    out_channels: int,
    depth: int,
    stride: int,
    downsample: Downsample,
    **dcb_kwargs,
) -> nn.Sequential:
    blocks = []
    for i in range(depth):
        block_in, block_stride = (in_channels, stride) if i == 0 else (out_channels, 1)
        block = ResidualDCB(block_in, out_channels, block_stride, **dcb_kwargs)
        if downsample == "avg" and block_stride > 1:  # its 1×1 strided shortcut, ResNet-D style
            block.shortcut[0] = AvgDownConv2d(block_in, out_channels, block_stride)
        blocks.append(block)
    return nn.Sequential(*blocks)


def make_stem(in_channels: int, width: int, stem: str, stride: int) -> nn.Sequential:
    """``"resnet"``: 7×7 conv (stride 2 if ``stride ≥ 2``) + max-pool (if ``stride = 4``);
    ``"small"``: two 3×3 convs, strided as needed — for 28×28 and 32×32 inputs."""
    check_choice("stem", stem, ("resnet", "small"))
    check_choice("stem_stride", stride, (1, 2, 4))
    if stem == "resnet":
        layers = [
            nn.Conv2d(in_channels, width, 7, 2 if stride >= 2 else 1, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        if stride == 4:
            layers.append(nn.MaxPool2d(3, 2, 1))
        return nn.Sequential(*layers)
    first, second = {1: (1, 1), 2: (2, 1), 4: (2, 2)}[stride]
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, first, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, second, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    )


class DCBNet(nn.Module):
    """Multi-scale backbone with residual DCBs in its later stages.

    Args:
        in_channels (int): image channels (1 or 3). Default: 3.
        widths (Sequence[int]): channels of the four stages. Default: ResNet's (64, 128, 256, 512).
        depths (Sequence[int]): blocks per stage. Default: ResNet-18's (2, 2, 2, 2).
        dcb_stages (Sequence[int]): 1-based stages built from ResidualDCBs. Default: (3, 4).
        dck (str): DCK mode of the DCBs: ``"adaptive" | "static" | "off"``.
        deform (bool): deformable convolution in the DCBs.
        gcm (bool): Global Context Module in the DCBs.
        dck_kernel_size (int): largest DCK kernel. Default: 5.
        center_constraint (Tuple[float, float]): DCK centre constraint, pixels.
        dck_init_extent (float, optional): initial extent ``σ`` (taps) of the DCKs. Default:
            the kernel size (mask 0.92 at the edge of a 5×5 window); a large value (e.g. 30)
            starts them from the flat full window.
        stem (str): ``"resnet"`` or ``"small"``, see :func:`make_stem`.
        stem_width (int, optional): stem channels. Default: ``widths[0]``.
        stem_stride (int): 1, 2 or 4; feature strides are ``stem_stride × (1, 2, 4, 8)``.
        backend (str, optional): sampling backend of the DCK/deformable layers.
        downsample (str): the shortcut of a block that halves the resolution: ``"conv"`` (a
            1×1 convolution of stride 2, torchvision's ResNet) or ``"avg"`` (ResNet-D: 2×2
            average pool, then the 1×1 convolution, see :class:`AvgDownConv2d`; the same
            parameters). Reading every pixel, ``"avg"`` lets a multi-scale head learn from the
            deep stages far sooner. Default: ``"conv"``.

    Attributes:
        out_channels (dict[str, int]), strides (dict[str, int]): per returned feature.

    Examples::
        >>> net = DCBNet(widths=(8, 16, 32, 64), depths=(1, 1, 1, 1))
        >>> {k: tuple(v.shape) for k, v in net(torch.rand(1, 3, 64, 64)).items()}
        {'c2': (1, 8, 16, 16), 'c3': (1, 16, 8, 8), 'c4': (1, 32, 4, 4), 'c5': (1, 64, 2, 2)}
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        dcb_stages: Sequence[int] = (3, 4),
        dck: Literal["adaptive", "static", "off"] = "adaptive",
        deform: bool = True,
        gcm: bool = True,
        dck_kernel_size: int = 5,
        center_constraint: tuple[float, float] = (2.0, 2.0),
        dck_init_extent: Optional[float] = None,
        stem: Literal["resnet", "small"] = "resnet",
        stem_width: Optional[int] = None,
        stem_stride: int = 4,
        backend: Optional[Backend] = None,
        downsample: Downsample = "conv",
    ) -> None:
        super().__init__()
        check_choice("downsample", downsample, ("conv", "avg"))
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(
                f"widths and depths need 4 entries (one per stage), got {widths} and {depths}"
            )
        if not set(dcb_stages) <= {1, 2, 3, 4}:
            raise ValueError(f"dcb_stages must be stage numbers in 1..4, got {list(dcb_stages)}")
        dck = dck_mode(dck)
        if in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        self.in_channels = in_channels
        self.dcb_stages = tuple(sorted(dcb_stages))
        stem_width = stem_width or widths[0]
        self.stem = make_stem(in_channels, stem_width, stem, stem_stride)
        dcb_kwargs = {
            "dck": dck,
            "deform": deform,
            "gcm": gcm,
            "dck_kernel_size": dck_kernel_size,
            "center_constraint": tuple(center_constraint),
            "dck_init_extent": dck_init_extent,
            "backend": backend,
        }
        stages = []
        previous = stem_width
        for index, (width, depth) in enumerate(zip(widths, depths), start=1):
            stride = 1 if index == 1 else 2
            if index in self.dcb_stages:
                stages.append(_dcb_stage(previous, width, depth, stride, downsample, **dcb_kwargs))
            else:
                stages.append(_basic_stage(previous, width, depth, stride, downsample))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = dict(zip(FEATURE_NAMES, widths))
        self.strides = {name: stem_stride * 2**i for i, name in enumerate(FEATURE_NAMES)}
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)  # each residual block starts as its shortcut

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = self.stem(x)
        features = OrderedDict()
        for name, stage in zip(FEATURE_NAMES, self.stages):
            x = stage(x)
            features[name] = x
        return features
