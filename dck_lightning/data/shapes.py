"""Rendering of the synthetic shapes images: a pure function of a random generator.

:func:`render_shapes` draws shapes of the given classes over a textured
background (colour gradient, low-frequency sinusoid, optional stripes) plus
pixel noise, and returns the image with its per-object boxes and labels and the
per-pixel class and instance masks — all consistent by construction: a later
shape occludes earlier ones in the image and in both masks, and every box is
the tight box of the object's visible pixels.

Two shape families: the six *regular* shapes of :data:`SHAPE_NAMES` (fixed outlines) and the
*irregular* ones of :data:`IRREGULAR_SHAPE_NAMES`, whose outline is drawn at random for every
object (:func:`draw_outline`): a smooth ``"blob"`` and a ``"star"`` polygon with a random number
of points. Object sizes come from one diameter range or, per object, from one of several
ranges (``size_ranges``, e.g. COCO-style small / medium / large buckets).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

__all__ = [
    "IRREGULAR_SHAPE_NAMES",
    "SHAPE_FAMILIES",
    "SHAPE_NAMES",
    "RadialOutline",
    "RenderedShapes",
    "draw_outline",
    "render_background",
    "render_shapes",
    "shape_mask",
]

#: the regular shape classes (the default family); a label is an index into this tuple.
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
#: the irregular shape classes: every object gets its own random outline (:func:`draw_outline`).
IRREGULAR_SHAPE_NAMES: tuple[str, ...] = ("blob", "star")
#: the class tuples a dataset can draw from, by family name.
SHAPE_FAMILIES: dict[str, tuple[str, ...]] = {
    "regular": SHAPE_NAMES,
    "irregular": IRREGULAR_SHAPE_NAMES,
    "all": SHAPE_NAMES + IRREGULAR_SHAPE_NAMES,
}

# Smallest diameter (pixels) at which a shape is still recognisable (the ring's hole, the cross's arms).
_MIN_DIAMETER = {
    "circle": 3,
    "square": 3,
    "triangle": 4,
    "diamond": 4,
    "cross": 5,
    "ring": 7,
    "blob": 4,
    "star": 7,
}
# Blob outline: harmonics 2..5 of the radius, amplitudes drawn in this range.
_BLOB_HARMONICS = np.arange(2, 6)
_BLOB_AMPLITUDE = (0.06, 0.2)
# Star outline: points, inner/outer radius ratio.
_STAR_POINTS = (4, 8)
_STAR_INNER = (0.3, 0.6)


@dataclass(frozen=True)
class RenderedShapes:
    """One rendered image and its annotations.

    Attributes:
        image: ``uint8[H, W, 3]``.
        boxes: ``float32[N, 4]`` xyxy in pixel-edge coordinates: the tight box
            ``[x_min, y_min, x_max + 1, y_max + 1]`` of the object's visible pixels.
        labels: ``int64[N]`` 0-based indices into :data:`SHAPE_NAMES`, in drawing order.
        mask: ``int64[H, W]`` class mask, 0 = background, ``label + 1`` on an object.
        instances: ``int32[H, W]`` instance mask, 0 = background, ``i + 1`` on object ``i``.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    instances: np.ndarray


@dataclass(frozen=True)
class RadialOutline:
    """The outline of an irregular shape as a radius per angle, ``ρ ≤ R(θ)`` inside.

    * ``"blob"``: ``R(θ) = (1 + Σ_k a_k cos(kθ + φ_k)) / max_θ(…)`` over harmonics ``k = 2..5``
      (a smooth, lumpy disc touching the unit circle).
    * ``"star"``: the polygon through ``2n`` vertices at angles ``α_j = α_0 + jπ/n`` with radii
      alternately 1 and ``r_in``; on the edge from vertex ``j`` to ``j + 1``,
      ``R(θ) = r_j r_{j+1} sin(α_{j+1} − α_j) / (r_j sin(θ − α_j) + r_{j+1} sin(α_{j+1} − θ))``.

    Attributes:
        kind: ``"blob"`` or ``"star"``.
        params: ``float64[K, 2]`` harmonic amplitudes and phases (blob) or ``[2n, 2]`` vertex
            angles and radii (star, angles increasing from ``α_0``).
        scale: blob normalisation ``1 / max_θ(1 + Σ …)`` (1 for a star).
    """

    kind: str
    params: np.ndarray
    scale: float = 1.0

    def radius(self, theta: np.ndarray) -> np.ndarray:
        """``R(θ)`` for angles in radians (any shape)."""
        if self.kind == "blob":
            amplitude, phase = self.params[:, 0], self.params[:, 1]
            waves = amplitude * np.cos(_BLOB_HARMONICS * theta[..., None] + phase)
            return self.scale * (1.0 + waves.sum(-1))
        angles, radii = self.params[:, 0], self.params[:, 1]
        step = angles[1] - angles[0]
        index = np.floor(np.mod(theta - angles[0], 2 * math.pi) / step).astype(np.int64)
        index = np.minimum(index, len(angles) - 1)  # θ - α_0 == 2π by rounding
        nxt = (index + 1) % len(angles)
        a0 = angles[index]
        r0, r1 = radii[index], radii[nxt]
        rel = np.mod(theta - a0, 2 * math.pi)
        return r0 * r1 * math.sin(step) / (r0 * np.sin(rel) + r1 * np.sin(step - rel))

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``u² + v² ≤ R(atan2(v, u))²`` (broadcast)."""
        u, v = np.broadcast_arrays(u, v)
        return np.hypot(u, v) <= self.radius(np.arctan2(v, u))


def draw_outline(name: str, rng: np.random.Generator) -> RadialOutline:
    """A random outline of the irregular shape ``name`` (see :class:`RadialOutline`).

    Blob: amplitudes ``a_k ~ U(0.06, 0.2)``, phases ``U(0, 2π)``. Star: ``n ~ U{4..8}`` points,
    inner radius ``U(0.3, 0.6)``, rotation ``U(0, 2π)``.
    """
    if name == "blob":
        amplitude = rng.uniform(*_BLOB_AMPLITUDE, len(_BLOB_HARMONICS))
        phase = rng.uniform(0.0, 2 * math.pi, len(_BLOB_HARMONICS))
        params = np.stack([amplitude, phase], axis=1)
        outline = RadialOutline("blob", params)
        peak = outline.radius(np.linspace(0.0, 2 * math.pi, 1440, endpoint=False)).max()
        return RadialOutline("blob", params, float(1.0 / peak))
    if name == "star":
        points = int(rng.integers(_STAR_POINTS[0], _STAR_POINTS[1] + 1))
        inner = rng.uniform(*_STAR_INNER)
        rotation = rng.uniform(0.0, 2 * math.pi)
        angles = rotation + np.arange(2 * points) * (math.pi / points)
        radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
        return RadialOutline("star", np.stack([angles, radii], axis=1))
    raise ValueError(f"{name!r} is not an irregular shape; those are {IRREGULAR_SHAPE_NAMES}")


def shape_mask(
    shape: Union[int, str],
    u: np.ndarray,
    v: np.ndarray,
    outline: Optional[RadialOutline] = None,
) -> np.ndarray:
    """Inside test of a shape at normalised coordinates.

    Args:
        shape: a name of :data:`SHAPE_FAMILIES` ``["all"]``, or an index into :data:`SHAPE_NAMES`.
        u, v: horizontal and vertical offsets from the shape's centre divided by its
            radius (broadcastable arrays); the shape fits in ``[-1, 1]^2``.
        outline: the random outline of an irregular shape (required for those).

    Returns:
        Boolean array, ``True`` inside the shape.
    """
    name = SHAPE_NAMES[shape] if isinstance(shape, (int, np.integer)) else shape
    if name in IRREGULAR_SHAPE_NAMES:
        if outline is None or outline.kind != name:
            raise ValueError(f"shape {name!r} needs its outline (draw_outline({name!r}, rng))")
        return outline.inside(u, v)
    au, av = np.abs(u), np.abs(v)
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return (au <= 0.85) & (av <= 0.85)
    if name == "triangle":  # apex up, base at v = 0.8
        return (v <= 0.8) & (v >= 2.0 * au - 1.0)
    if name == "diamond":
        return au + av <= 1.0
    if name == "cross":
        return ((au <= 0.3) | (av <= 0.3)) & (au <= 1.0) & (av <= 1.0)
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPE_FAMILIES['all']}")


def render_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A textured background: base colour + linear gradient + low-frequency sinusoid (+ stripes).

    Returns:
        ``float32[H, W, 3]``, roughly in ``[0, 255]``.
    """
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    yy, xx = coords[:, None], coords[None, :]
    angles = rng.uniform(0.0, 2.0 * math.pi, 3)
    base = rng.uniform(50.0, 205.0, 3)
    gradient = (math.cos(angles[0]) * xx + math.sin(angles[0]) * yy) - 0.5
    wave = np.sin(
        2.0
        * math.pi
        * rng.uniform(0.5, 2.0)
        * (math.cos(angles[1]) * xx + math.sin(angles[1]) * yy)
        + rng.uniform(0.0, 2.0 * math.pi)
    )
    background = (
        base
        + gradient[..., None] * rng.uniform(-60.0, 60.0, 3)
        + wave[..., None] * rng.uniform(-25.0, 25.0, 3)
    )
    if rng.random() < 0.5:
        period = rng.uniform(3.0, 8.0) / image_size  # stripes a few pixels apart
        phase = (math.cos(angles[2]) * xx + math.sin(angles[2]) * yy) / period
        stripes = np.sign(np.sin(2.0 * math.pi * phase))
        background = background + stripes[..., None] * rng.uniform(4.0, 14.0)
    return background.astype(np.float32)


def _contrasting_colour(
    rng: np.random.Generator, reference: np.ndarray, tries: int = 16
) -> np.ndarray:
    """A random RGB colour far from ``reference`` (the best of ``tries`` draws)."""
    colours = rng.uniform(0.0, 255.0, (tries, 3))
    distances = np.linalg.norm(colours - reference, axis=1)
    good = np.flatnonzero(distances >= 100.0)
    return colours[good[0]] if good.size else colours[np.argmax(distances)]


def _sample_placement(
    rng: np.random.Generator,
    name: str,
    outline: Optional[RadialOutline],
    image_size: int,
    min_size: float,
    max_size: float,
    box_area: Optional[tuple[float, float]] = None,
) -> Optional[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Draw a size (log-uniform diameter) and position that keep the shape inside the image.

    Returns:
        ``(y0, x0, inside, u, v)``: top-left of the shape's pixel window, its boolean mask and
        the normalised coordinates of the window, or ``None`` if no pixel fell inside or the
        tight box of the pixels inside has an area outside ``[box_area[0], box_area[1])``.
    """
    high = float(max_size)
    low = float(min(max(min_size, _MIN_DIAMETER[name]), max_size))
    diameter = math.exp(rng.uniform(math.log(low), math.log(high))) if high > low else high
    radius = diameter / 2.0
    cy, cx = rng.uniform(radius, image_size - radius, 2)
    y0, x0 = max(0, math.floor(cy - radius)), max(0, math.floor(cx - radius))
    y1 = min(image_size, math.ceil(cy + radius))
    x1 = min(image_size, math.ceil(cx + radius))
    v = ((np.arange(y0, y1) + 0.5 - cy) / radius)[:, None]
    u = ((np.arange(x0, x1) + 0.5 - cx) / radius)[None, :]
    inside = shape_mask(name, u, v, outline)
    if not inside.any():
        return None
    if box_area is not None:
        rows, columns = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        area = (rows[-1] - rows[0] + 1) * (columns[-1] - columns[0] + 1)
        if not box_area[0] <= area < box_area[1]:
            return None
    return y0, x0, inside, u, v


def render_shapes(
    rng: np.random.Generator,
    image_size: int,
    labels: Sequence[int],
    min_size: int = 4,
    max_size: Optional[int] = None,
    noise_std: float = 6.0,
    max_overlap: float = 0.25,
    max_tries: int = 30,
    *,
    shapes: Sequence[str] = SHAPE_NAMES,
    size_ranges: Optional[Sequence[tuple[float, float]]] = None,
) -> RenderedShapes:
    """Render shapes of the given classes, in order, onto a textured background.

    Each shape gets a log-uniform diameter in ``[min_size, max_size]`` — or, with
    ``size_ranges``, in one of those ranges drawn uniformly per object — (raised to a
    per-shape minimum at which it stays recognisable), a position keeping it inside the
    image, a colour contrasting with the background and a slight shading. Positions are
    redrawn (up to ``max_tries``) until the new shape covers at most ``max_overlap`` of the
    visible pixels of every earlier shape and of itself; otherwise the least overlapping
    draw is used. Objects left with no visible pixel are dropped.

    Args:
        rng: the only source of randomness: the same generator state gives the same output.
        image_size: height and width in pixels.
        labels: class index of each shape into ``shapes``, in drawing order (empty for a
            background image).
        min_size: smallest diameter in pixels.
        max_size: largest diameter in pixels; ``None`` is half the image.
        shapes: the class names the labels index (default the regular :data:`SHAPE_NAMES`);
            an irregular shape draws its outline (:func:`draw_outline`) once per object.
        size_ranges: ``[(low, high), …]`` size ranges in pixels; each object draws one
            uniformly, then its diameter log-uniformly in ``[low, high)`` (with its position)
            until the tight box of its pixels has an area in ``[low², high²)`` — an object
            whose ``max_tries`` draws all miss is left out (``min_size`` and ``max_size`` are
            then not used). ``None``: one range, ``[min_size, max_size]``, any box.
        noise_std: standard deviation of the Gaussian pixel noise (0-255 scale).
        max_overlap: tolerated occlusion fraction.
        max_tries: placement draws per shape.

    Returns:
        The image and its annotations, see :class:`RenderedShapes`.

    Example:
        >>> out = render_shapes(np.random.default_rng(0), 32, [0, 5])
        >>> out.image.shape, out.boxes.shape, out.labels.tolist()
        ((32, 32, 3), (2, 4), [0, 5])
    """
    if max_size is None:
        max_size = max(min_size, image_size // 2)
    if not 1 <= min_size <= max_size <= image_size:
        raise ValueError(
            f"need 1 <= min_size <= max_size <= image_size, got {min_size}, {max_size}, {image_size}"
        )
    for low, high in size_ranges or ():
        if not 0 < low <= high <= image_size:
            raise ValueError(
                f"size_ranges need 0 < low <= high <= image_size ({image_size}), got {size_ranges}"
            )
    unknown = sorted(set(shapes) - set(SHAPE_FAMILIES["all"]))
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known: {SHAPE_FAMILIES['all']}")
    image = render_background(rng, image_size)
    reference = image.mean(axis=(0, 1))
    instances = np.zeros((image_size, image_size), dtype=np.int32)
    visible: list[int] = []
    placed: list[int] = []
    for label in labels:
        name = shapes[int(label)]
        # Irregular outlines and size buckets are drawn once per object, and only when used, so
        # that regular shapes with one size range consume the generator as they always did.
        outline = draw_outline(name, rng) if name in IRREGULAR_SHAPE_NAMES else None
        low, high = (
            size_ranges[int(rng.integers(len(size_ranges)))]
            if size_ranges
            else (min_size, max_size)
        )
        box_area = (low**2, high**2) if size_ranges else None
        best = None
        for _ in range(max_tries):
            placement = _sample_placement(rng, name, outline, image_size, low, high, box_area)
            if placement is None:
                continue
            y0, x0, inside, _, _ = placement
            covered = instances[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]][inside]
            counts = np.bincount(covered, minlength=len(visible) + 1)[1:]
            ratio = counts.sum() / inside.sum()
            if visible:
                ratio = max(ratio, float((counts / np.maximum(visible, 1)).max()))
            if best is None or ratio < best[0]:
                best = (ratio, placement, counts)
            if ratio <= max_overlap:
                break
        if best is None:  # every draw was empty or (size_ranges) missed the box area
            continue
        _, (y0, x0, inside, u, v), counts = best
        window = (slice(y0, y0 + inside.shape[0]), slice(x0, x0 + inside.shape[1]))
        instances[window][inside] = len(visible) + 1
        visible = [count - int(lost) for count, lost in zip(visible, counts)] + [int(inside.sum())]
        placed.append(int(label))
        colour = _contrasting_colour(rng, reference)
        shade = rng.uniform(-15.0, 15.0, 2)
        pixels = colour + (shade[0] * u + shade[1] * v)[..., None]
        image[window][inside] = np.broadcast_to(pixels, inside.shape + (3,))[inside]
    if noise_std > 0:
        image += rng.normal(0.0, noise_std, image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    boxes, kept = [], []
    for index in range(len(placed)):
        ys, xs = np.nonzero(instances == index + 1)
        if ys.size == 0:
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        kept.append(index)
    # Renumber instances densely after dropping fully occluded objects.
    renumber = np.zeros(len(placed) + 1, dtype=np.int32)
    renumber[np.asarray(kept, dtype=np.int64) + 1] = np.arange(1, len(kept) + 1, dtype=np.int32)
    instances = renumber[instances]
    kept_labels = np.asarray(placed, dtype=np.int64)[np.asarray(kept, dtype=np.int64)]
    class_lut = np.concatenate([[0], kept_labels + 1]).astype(np.int64)
    return RenderedShapes(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=kept_labels,
        mask=class_lut[instances],
        instances=instances,
    )
