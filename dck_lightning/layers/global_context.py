"""Global Context Module (GCM) of the design document.

``GCM(x) = x + GCA(GEF(SPPM(x)))``:

* **SPPM** (:class:`SpatialPyramidPooling`) average-pools ``x`` to bins ``(1, 2, 3, 6)``,
  projects each with a 1×1 conv to ``C/4`` channels (no BatchNorm: a 1×1 bin has one value
  per channel and breaks at batch size 1), upsamples and concatenates with ``x``.
* **GEF** (:class:`GlobalFeatureExtractor`) merges and compresses the pyramid back to ``C``
  channels: 1×1 conv + norm + act.
* **GCA** (:class:`GlobalContextAggregator`) pools the result to one global vector by
  attention (softmax over positions), transforms it with a bottleneck
  (1×1 → LayerNorm → ReLU → 1×1, the last zero-initialised, as in GCNet) and returns it for
  a broadcast add. The module is therefore the identity at initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .validation import check_positive


class SpatialPyramidPooling(nn.Module):
    """``[x, up(conv1x1(avgpool_b(x))) for b in bins]`` concatenated: ``C + len(bins)·C/4`` channels."""

    def __init__(
        self,
        channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        act_layer: Callable[..., nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.branch_channels = max(channels // 4, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, self.branch_channels, 1), act_layer()
            )
            for b in self.bins
        )
        self.out_channels = channels + len(self.bins) * self.branch_channels

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pyramid = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.branches
        ]
        return torch.cat([x, *pyramid], dim=1)


class GlobalFeatureExtractor(nn.Sequential):
    """1×1 conv + norm + act: merges the pyramid and compresses it to ``out_channels``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            norm_layer(out_channels),
            act_layer(),
        )


class GlobalContextAggregator(nn.Module):
    """Attention pooling to a global vector and a bottleneck transform (GCNet's context block).

    ``context = Σ_p softmax_p(w_k · x_p) · x_p``;
    ``out = W_2 · ReLU(LayerNorm(W_1 · context))``, ``[B, C, 1, 1]``, with ``W_2 = 0`` at init.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.attention = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        weights = self.attention(x).flatten(2).softmax(dim=-1)  # [B, 1, HW]
        context = torch.bmm(x.flatten(2), weights.transpose(1, 2)).view(b, c, 1, 1)
        return self.transform(context)


class GlobalContextModule(nn.Module):
    """``x + GCA(GEF(SPPM(x)))`` — see the module docstring.

    Args:
        channels (int): channels of ``x`` (kept).
        bins (Sequence[int]): pyramid bins of the SPPM. Default: ``(1, 2, 3, 6)``.
        reduction (int): bottleneck ratio of the GCA transform. Default: 4.
        norm_layer, act_layer: norm and activation of the GEF.

    Examples::
        >>> gcm = GlobalContextModule(16)
        >>> x = torch.rand(2, 16, 8, 8)
        >>> torch.equal(gcm(x), x)  # identity at initialisation
        True
    """

    def __init__(
        self,
        channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        reduction: int = 4,
        norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        check_positive("channels", channels)
        self.sppm = SpatialPyramidPooling(channels, bins, act_layer)
        self.gef = GlobalFeatureExtractor(
            self.sppm.out_channels, channels, norm_layer or nn.BatchNorm2d, act_layer
        )
        self.gca = GlobalContextAggregator(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gca(self.gef(self.sppm(x)))
