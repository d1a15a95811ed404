"""Dynamic convolutional kernel (DCK): a convolution whose extent and sampling grid adapt.

The design document's DCK has two mechanisms (see ``DESIGN.md``, "The building blocks"):

*Local receptive field.* A learnable soft mask over the ``k × k`` window,

    M[u, v] = exp(-½ (u² / σ_y² + v² / σ_x²)),   σ = softplus(θ),

with ``(u, v)`` the tap position relative to the centre (per layer or per output channel).
The effective kernel is ``W ⊙ M``. Rows/columns of taps whose mask is below
``crop_threshold`` for every channel are cropped away, so a layer that has learned a small
extent really runs a smaller convolution: the kernel size adjusts itself. The crop is decided
outside the forward pass — after every optimiser step that changed the extent, after loading
a state dict, on :meth:`DynamicConv2d.prune` — so that a forward pass never waits for the
device and :func:`torch.compile` sees the kernel size as a constant.

*Position adaptive.* A localisation network (one 3×3 convolution, zero-initialised)
predicts for each output position a centre shift ``t = c · tanh(r_t)`` (``c`` the centre
constraint, pixels) and a scale ``s = max_scale ** tanh(r_s)`` (``s = 1`` at init). Tap
``p_k`` samples the input at ``p + t + s · p_k``, i.e. a deformable convolution with the
structured offsets ``o_k = t + (s − 1) · p_k`` — 4 predicted channels instead of ``2k²``.
The ``torch`` sampling backend takes these positions directly (an affine copy of the tap
grid per output position); the ``torchvision`` one the offsets.

At initialisation the layer is a plain convolution of the masked weights.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.utils import _pair
from torch.nn.parameter import UninitializedParameter
from torch.optim.optimizer import register_optimizer_step_post_hook

from .sampling import (
    Backend,
    affine_positions,
    affine_sampled_conv2d,
    check_backend,
    deform_conv2d,
    resolve_backend,
)
from .validation import check_choice, check_divisible, check_positive

IntPair = Union[int, tuple[int, int]]


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    return (dilation[0] * (kernel_size[0] - 1) // 2, dilation[1] * (kernel_size[1] - 1) // 2)


def pad_or_crop(x: Tensor, pad: tuple[int, int]) -> Tensor:
    """Pad (positive) or crop (negative) ``x`` symmetrically by ``(pad_y, pad_x)`` pixels."""
    if pad == (0, 0):
        return x
    return F.pad(x, (pad[1], pad[1], pad[0], pad[0]))


def structured_offsets(shift: Tensor, scale: Tensor, tap_y: Tensor, tap_x: Tensor) -> Tensor:
    """Offsets ``o_k = t + (s − 1) · p_k`` in torchvision's interleaved ``(Δy, Δx)`` layout.

    Args:
        shift (Tensor[B, 2, H, W]): centre shift ``t = (t_y, t_x)``.
        scale (Tensor[B, 2, H, W]): scale ``s = (s_y, s_x)``.
        tap_y, tap_x (Tensor[K]): tap positions ``p_k`` relative to the kernel centre, pixels.

    Returns:
        Tensor[B, 2 * K, H, W]
    """
    b, _, h, w = shift.shape
    off_y = shift[:, 0:1] + (scale[:, 0:1] - 1) * tap_y.view(1, -1, 1, 1)
    off_x = shift[:, 1:2] + (scale[:, 1:2] - 1) * tap_x.view(1, -1, 1, 1)
    return torch.stack((off_y, off_x), dim=2).view(b, 2 * tap_y.numel(), h, w)


class Localization(nn.Module):
    """The DCK's localisation network: one 3×3 convolution predicting shift and scale.

    Args:
        in_channels (int): input channels.
        stride (Tuple[int, int]): stride of the DCK, so that one prediction lands on each output.
        center_constraint (Tuple[float, float]): bound ``c`` of the centre shift, pixels.
        max_scale (float): bound of the scale, ``1/max_scale ≤ s ≤ max_scale``.
    """

    def __init__(
        self,
        in_channels: int,
        stride: tuple[int, int],
        center_constraint: tuple[float, float],
        max_scale: float,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=3, stride=stride, padding=1)
        self.register_buffer(
            "center_constraint", torch.tensor(center_constraint).view(1, 2, 1, 1), persistent=False
        )
        self.log_max_scale = math.log(max_scale)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(shift [B, 2, H, W], scale [B, 2, H, W])``, both ``(y, x)``."""
        raw = self.conv(x)
        shift = self.center_constraint.to(raw.dtype) * torch.tanh(raw[:, :2])
        scale = torch.exp(self.log_max_scale * torch.tanh(raw[:, 2:]))
        return shift, scale


class DCKGeometry(nn.Module):
    """What a DCK computes once its kernel is known: the geometry (``kernel_size``, ``stride``,
    ``padding``, ``dilation``, ``groups``), the localisation network (``None``: static) and the
    convolution of the kept taps (:meth:`conv`). Shared by :class:`DynamicConv2d` and its
    inference form :class:`~dck_lightning.deploy.FrozenDynamicConv2d`; subclasses provide
    :meth:`crop_radius`.
    """

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    backend: Optional[str]
    localization: Optional[Localization]
    bias: Optional[Tensor]

    def crop_radius(self) -> tuple[int, int]:
        """Half-size ``(r_y, r_x)`` of the taps the layer runs (each subclass decides: the
        learned extent's crop, or the frozen one)."""
        raise NotImplementedError(f"{type(self).__name__} must implement crop_radius()")

    def _input_padding(self, radius: tuple[int, int]) -> tuple[int, int]:
        """Padding that keeps the output grid of the full kernel for the cropped kernel."""
        return tuple(
            p - d * ((k - 1) // 2 - r)
            for p, d, k, r in zip(self.padding, self.dilation, self.kernel_size, radius)
        )

    def position_parameters(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Centre shift and scale ``[B, 2, H_out, W_out]`` predicted for input ``x``."""
        if self.localization is None:
            raise RuntimeError("position_parameters() needs adaptive=True")
        # Align the 3×3 localisation window with the centre of each output's receptive field.
        align = tuple(
            d * (k - 1) // 2 - p for p, d, k in zip(self.padding, self.dilation, self.kernel_size)
        )
        return self.localization(pad_or_crop(x, (-align[0], -align[1])))

    def _taps(self, radius: tuple[int, int], device, dtype) -> tuple[Tensor, Tensor]:
        """Positions ``p_k`` of the kept taps relative to the centre, pixels, row-major: ``[K]`` each."""
        (r_y, r_x), (d_y, d_x) = radius, self.dilation
        taps_y = torch.arange(-r_y, r_y + 1, device=device, dtype=dtype) * d_y
        taps_x = torch.arange(-r_x, r_x + 1, device=device, dtype=dtype) * d_x
        return taps_y.repeat_interleave(2 * r_x + 1), taps_x.repeat(2 * r_y + 1)

    def offsets(self, x: Tensor, radius: Optional[tuple[int, int]] = None) -> Tensor:
        """Structured deformable offsets ``[B, 2·kh'·kw', H_out, W_out]`` of the kept taps."""
        radius = radius or self.crop_radius()
        shift, scale = self.position_parameters(x)
        return structured_offsets(shift, scale, *self._taps(radius, x.device, shift.dtype))

    def _affine_positions(
        self, x: Tensor, radius: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(base, step, taps)`` of the positions ``p + t + s · p_k``: ``base = p + t`` and
        ``step = s`` ``[B, 2, H_out, W_out]`` (``y, x``), ``taps = p_k`` ``[K, 2]``.

        ``p`` is the centre of the full kernel's window at each output position (pixel
        centres at integers), so the cropped kernel keeps the full kernel's output grid.
        """
        shift, scale = self.position_parameters(x)
        dtype = torch.promote_types(shift.dtype, torch.float32)  # positions in float32 at least
        shift, scale = shift.to(dtype), scale.to(dtype)
        out_h, out_w = shift.shape[-2:]
        centres = [
            torch.arange(size, device=x.device, dtype=dtype) * s + (d * (k - 1) // 2 - p)
            for size, k, s, p, d in zip(
                (out_h, out_w), self.kernel_size, self.stride, self.padding, self.dilation
            )
        ]
        base = shift + torch.stack(torch.meshgrid(*centres, indexing="ij"))
        return base, scale, torch.stack(self._taps(radius, x.device, dtype), dim=1)

    def sample_positions(
        self, x: Tensor, radius: Optional[tuple[int, int]] = None
    ) -> tuple[Tensor, Tensor]:
        """Input coordinates ``p + t + s · p_k`` of every kept tap: ``(y, x) [B, 1, K, H_out, W_out]``."""
        return affine_positions(*self._affine_positions(x, radius or self.crop_radius()))

    def conv(self, x: Tensor, weight: Tensor, radius: tuple[int, int]) -> Tensor:
        """The convolution of ``x`` with the kept taps' kernel ``weight [O, C/groups, 2·r_y+1, 2·r_x+1]``:
        a plain ``conv2d`` without localisation, else the deformable one at ``p + t + s · p_k``."""
        padding = self._input_padding(radius)
        if self.localization is None:
            # Static path: one masked, cropped conv2d (negative padding crops the input).
            inner = pad_or_crop(x, tuple(min(p, 0) for p in padding))
            return F.conv2d(
                inner,
                weight,
                self.bias,
                self.stride,
                tuple(max(p, 0) for p in padding),
                self.dilation,
                self.groups,
            )
        if resolve_backend(self.backend, x) == "torch":
            base, step, taps = self._affine_positions(x, radius)
            return affine_sampled_conv2d(x, base, step, taps, weight, self.bias)
        offset = self.offsets(x, radius)
        inner = pad_or_crop(x, tuple(min(p, 0) for p in padding))
        return deform_conv2d(
            inner,
            offset,
            weight,
            self.bias,
            stride=self.stride,
            padding=tuple(max(p, 0) for p in padding),
            dilation=self.dilation,
            backend=self.backend,
        )


class DynamicConv2d(DCKGeometry):
    r"""Dynamic convolutional kernel (DCK).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int or Tuple[int, int]): largest kernel (odd). Default: 7.
        stride (int or Tuple[int, int]): stride. Default: 1.
        padding (str, int or Tuple[int, int]): ``"same"`` (``d·(k−1)/2``), ``"valid"`` (0) or pixels.
        dilation (int or Tuple[int, int]): spacing of the regular taps. Default: 1.
        groups (int): convolution groups. Default: 1.
        bias (bool): learnable bias. Default: ``True``.
        center_constraint (float or Tuple[float, float]): bound ``c`` of the learned centre
            shift ``t = c·tanh(·)`` in pixels, ``(y, x)``. Default: ``(2, 2)``.
        adaptive (bool): predict shift and scale per position (deformable sampling). ``False``
            is the fast static path: a masked, cropped ``conv2d``. Default: ``True``.
        max_scale (float): bound of the learned scale, ``1/max_scale ≤ s ≤ max_scale``. Default: 2.
        extent (str): ``"layer"`` (one ``σ`` pair) or ``"channel"`` (one per output channel).
        init_extent (float, optional): initial ``σ`` in taps. Default: the kernel size
            (a nearly flat mask: 0.91 at the edge of a 7×7 window).
        crop_threshold (float): taps whose mask is below this for every channel are dropped.
            ``0`` disables cropping. Default: 0.05.
        backend (str, optional): sampling backend of the adaptive path.

    Shape:
        input ``[B, in_channels, H, W]`` → output ``[B, out_channels, H_out, W_out]``, with
        ``H_out`` as for :class:`torch.nn.Conv2d` with the full kernel.

    Examples::
        >>> layer = DynamicConv2d(3, 16, kernel_size=7, center_constraint=(2, 2))
        >>> layer(torch.rand(2, 3, 28, 28)).shape
        torch.Size([2, 16, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = 7,
        stride: IntPair = 1,
        padding: Union[str, IntPair] = "same",
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        center_constraint: Union[float, tuple[float, float]] = (2, 2),
        adaptive: bool = True,
        max_scale: float = 2.0,
        extent: str = "layer",
        init_extent: Optional[float] = None,
        crop_threshold: float = 0.05,
        backend: Optional[Backend] = None,
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        for k in self.kernel_size:
            check_positive("kernel_size", k)
            if k % 2 == 0:
                raise ValueError(
                    f"kernel_size must be odd (the DCK's taps are centred at 0), got {kernel_size}"
                )
        if in_channels != 0:  # 0 only for the lazy subclass, until the first call
            check_positive("in_channels", in_channels)
            check_divisible("in_channels", in_channels, "groups", groups)
        check_positive("out_channels", out_channels)
        check_positive("groups", groups)
        check_divisible("out_channels", out_channels, "groups", groups)
        check_choice("extent", extent, ("layer", "channel"))
        self.center_constraint = tuple(float(c) for c in _pair(center_constraint))
        if any(c < 0 for c in self.center_constraint):
            raise ValueError(
                f"center_constraint must be >= 0 pixels (y, x), got {center_constraint}"
            )
        if max_scale < 1:
            raise ValueError(f"max_scale must be >= 1, got {max_scale}")
        if not 0 <= crop_threshold < 1:
            raise ValueError(f"crop_threshold must be in [0, 1), got {crop_threshold}")
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        if isinstance(padding, str):
            check_choice("padding", padding, ("same", "valid"))
            self.padding = (
                _same_padding(self.kernel_size, self.dilation) if padding == "same" else (0, 0)
            )
        else:
            self.padding = _pair(padding)
        self.padding_mode = padding if isinstance(padding, str) else None
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.adaptive = adaptive
        self.max_scale = float(max_scale)
        self.extent_mode = extent
        self.init_extent = float(max(self.kernel_size) if init_extent is None else init_extent)
        if not self.init_extent > 0:
            raise ValueError(f"init_extent must be > 0 (taps), got {init_extent}")
        self.crop_threshold = float(crop_threshold)
        self.backend = None if backend is None else check_backend(backend)

        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.extent = nn.Parameter(torch.empty(out_channels if extent == "channel" else 1, 2))
        self.localization = (
            self._make_localization(in_channels) if adaptive and in_channels > 0 else None
        )
        self._crop: tuple[int, int] = (
            (self.kernel_size[0] - 1) // 2,
            (self.kernel_size[1] - 1) // 2,
        )
        self._crop_version = -1  # the extent's version counter when the crop was decided
        self.reset_parameters()
        if not self.extent.is_meta:
            self.prune()
        _LAYERS.add(self)
        self.register_load_state_dict_post_hook(_prune_after_load)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        _LAYERS.add(self)  # copies (deepcopy, unpickling) join the optimiser-step hook too

    def _make_localization(self, in_channels: int) -> Localization:
        return Localization(in_channels, self.stride, self.center_constraint, self.max_scale)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.extent, _inverse_softplus(self.init_extent))
        if self.in_channels == 0:
            return
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -(fan_in**-0.5), fan_in**-0.5)
        if self.localization is not None:
            self.localization.reset_parameters()

    # ----------------------------------------------------------------- receptive field
    @property
    def sigma(self) -> Tensor:
        """``σ = softplus(θ)``, shape ``[1 or out_channels, 2]`` (y, x), in taps."""
        return F.softplus(self.extent)

    def _axis_masks(self) -> tuple[Tensor, Tensor]:
        """Separable mask factors ``M_y [E, kh]`` and ``M_x [E, kw]`` (``M = M_y ⊗ M_x``)."""
        sigma = self.sigma
        masks = []
        for axis, k in enumerate(self.kernel_size):
            u = torch.arange(k, device=sigma.device, dtype=sigma.dtype) - (k - 1) / 2
            masks.append(torch.exp(-0.5 * (u[None, :] / sigma[:, axis : axis + 1]) ** 2))
        return masks[0], masks[1]

    def crop_radius(self) -> tuple[int, int]:
        """Half-size ``(r_y, r_x)`` of the taps kept: rows/columns whose mask reaches the threshold.

        The crop decided by :meth:`prune` (Python ints: no device synchronisation). It is
        decided again only if the extent changed since by something else than an optimiser
        step or a loaded state dict (an in-place edit), and never while compiling or exporting.
        """
        if (
            not torch.compiler.is_compiling()
            and self.crop_threshold > 0
            and self.extent._version != self._crop_version
        ):
            self.prune()
        return self._crop

    def prune(self) -> tuple[int, int]:
        """Decide the crop from the current extent (one device synchronisation); returns the
        effective kernel size.

        ``M`` is separable with ``M_x(0) = 1``, so row ``u`` has a tap above the threshold
        exactly when ``max_e M_y[e, u] ≥ τ``; the kept rows form a centred interval. Called
        after every optimiser step that changed the extent (for all layers at once, see
        :func:`decide_crops`) and after ``load_state_dict``.
        """
        decide_crops([self])
        return self.effective_kernel_size

    def _kept_taps(self) -> Tensor:
        """``[rows kept, columns kept]`` on the extent's device (``crop_threshold > 0``)."""
        with torch.no_grad():
            m_y, m_x = self._axis_masks()
            return torch.stack(
                (
                    (m_y.amax(0) >= self.crop_threshold).sum(),
                    (m_x.amax(0) >= self.crop_threshold).sum(),
                )
            )

    @property
    def effective_kernel_size(self) -> tuple[int, int]:
        """The kernel size this layer runs, after cropping."""
        r_y, r_x = self.crop_radius()
        return (2 * r_y + 1, 2 * r_x + 1)

    def receptive_field_mask(self, radius: Optional[tuple[int, int]] = None) -> Tensor:
        """The mask ``M`` over the kept taps, ``[E, 2·r_y + 1, 2·r_x + 1]`` (``E`` = 1 or out_channels)."""
        r_y, r_x = radius or self.crop_radius()
        m_y, m_x = self._axis_masks()
        c_y, c_x = (self.kernel_size[0] - 1) // 2, (self.kernel_size[1] - 1) // 2
        return m_y[:, c_y - r_y : c_y + r_y + 1, None] * m_x[:, None, c_x - r_x : c_x + r_x + 1]

    def effective_weight(self, radius: Optional[tuple[int, int]] = None) -> Tensor:
        """``W ⊙ M`` over the kept taps: ``[out_channels, in_channels // groups, kh', kw']``."""
        r_y, r_x = radius or self.crop_radius()
        c_y, c_x = (self.kernel_size[0] - 1) // 2, (self.kernel_size[1] - 1) // 2
        weight = self.weight[:, :, c_y - r_y : c_y + r_y + 1, c_x - r_x : c_x + r_x + 1]
        return weight * self.receptive_field_mask((r_y, r_x)).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        radius = self.crop_radius()
        return self.conv(x, self.effective_weight(radius), radius)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        s += f", padding={self.padding_mode or self.padding}"
        for name, default in (("dilation", (1, 1)), ("groups", 1), ("backend", None)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.bias is None:
            s += ", bias=False"
        if self.adaptive:
            s += f", center_constraint={self.center_constraint}"
            if self.max_scale != 2.0:
                s += f", max_scale={self.max_scale}"
        else:
            s += ", adaptive=False"
        if self.extent_mode != "layer":
            s += f", extent={self.extent_mode!r}"
        return s


# Every live DCK, so that one optimiser-step hook decides the crops of all of them.
_LAYERS: "weakref.WeakSet[DynamicConv2d]" = weakref.WeakSet()


def decide_crops(layers: Iterable[DynamicConv2d]) -> None:
    """Decide the crop of every layer from its extent, with one device synchronisation."""
    layers = [layer for layer in layers if layer.crop_threshold > 0 and not layer.extent.is_meta]
    if not layers:
        return
    by_device: dict[torch.device, list[DynamicConv2d]] = {}
    for layer in layers:
        by_device.setdefault(layer.extent.device, []).append(layer)
    for group in by_device.values():
        kept = torch.stack([layer._kept_taps() for layer in group]).tolist()
        for layer, (rows, columns) in zip(group, kept):
            layer._crop = (rows // 2, columns // 2)
            layer._crop_version = layer.extent._version


def _prune_after_load(module: DynamicConv2d, incompatible_keys) -> None:
    module.prune()


def _decide_crops_after_step(optimizer, args, kwargs) -> None:
    """Optimiser step post-hook: re-decide the crops whose extent the step changed."""
    decide_crops(layer for layer in _LAYERS if layer.extent._version != layer._crop_version)


register_optimizer_step_post_hook(_decide_crops_after_step)


def _keras_center_constraint(value: Union[float, tuple, list]) -> tuple[float, float]:
    """Read the design document's ``center_constraint=[(2, 2), (2, 2)]``.

    Accepted: a number, ``(c_y, c_x)``, or ``[(−y, +y), (−x, +x)]`` bounds per axis, which
    must be symmetric (the shift is ``c·tanh(·)``, zero at initialisation).
    """
    if isinstance(value, (int, float)):
        return (float(value), float(value))
    value = list(value)
    if len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return (float(value[0]), float(value[1]))
    if len(value) == 2 and all(isinstance(v, (tuple, list)) and len(v) == 2 for v in value):
        for bounds in value:
            if abs(bounds[0]) != abs(bounds[1]):
                raise ValueError(
                    "center_constraint bounds per axis must be symmetric, e.g. [(2, 2), (2, 2)], "
                    f"got {value}"
                )
        return (float(abs(value[0][0])), float(abs(value[1][0])))
    raise ValueError(
        f"center_constraint must be a number, (c_y, c_x) or [(y, y), (x, x)], got {value!r}"
    )


class DynamicConv2D(LazyModuleMixin, DynamicConv2d):
    """Compatibility name: the design document's Keras-style DCK (use :class:`DynamicConv2d`).

    It only differs from :class:`DynamicConv2d` in its arguments and infers ``in_channels`` on
    the first call.

    ``DynamicConv2D(filters=32, kernel_size=(7, 7), center_constraint=[(2, 2), (2, 2)])``
    becomes ``DynamicConv2d(in_channels, 32, kernel_size=7, center_constraint=(2, 2))``
    once it has seen an input (like :class:`torch.nn.LazyConv2d`). Keras' defaults are kept:
    ``padding="valid"``, ``strides=1``; ``trainable=False`` freezes every parameter.
    """

    cls_to_become = DynamicConv2d
    weight: UninitializedParameter

    def __init__(
        self,
        filters: int,
        kernel_size: IntPair,
        center_constraint: Union[float, tuple, list] = ((2, 2), (2, 2)),
        padding: str = "valid",
        strides: IntPair = 1,
        trainable: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            0,
            filters,
            kernel_size,
            stride=strides,
            padding=padding,
            center_constraint=_keras_center_constraint(center_constraint),
            **kwargs,
        )
        self.weight = UninitializedParameter()
        self.trainable = trainable

    def initialize_parameters(self, input: Tensor) -> None:
        if not self.has_uninitialized_params():
            return
        self.in_channels = input.shape[1]
        check_divisible("in_channels", self.in_channels, "groups", self.groups)
        with torch.no_grad():
            self.weight.materialize(
                (self.out_channels, self.in_channels // self.groups, *self.kernel_size),
                device=input.device,
                dtype=input.dtype,
            )
            if self.adaptive:
                self.localization = self._make_localization(self.in_channels).to(input.device)
            self.reset_parameters()
        if not self.trainable:
            self.requires_grad_(False)
