"""Synthetic images with known ground truth: one shape on a cluttered background.

Each image shows one object, a filled shape from :data:`CLASSES`, on a background of smooth
colour fields, faint stripes, thin straight lines and pixel noise. Only the object decides the
class, and the object's pixel mask and bounding box are returned with the image, so a saliency
map can be scored against the truth (pointing game, energy inside the box, ...).

How each item is made, and why the background carries no class information:

- Item ``i`` of a data set with seed ``s`` depends only on ``(s, i)``. Three independent random
  streams are derived from them with :class:`numpy.random.SeedSequence`: one for the label, one
  for the object (position, scale, rotation, texture, colours), one for the background. No
  global random state is read or changed.
- The labels come in blocks of ``len(CLASSES)`` consecutive items, each block a random
  permutation of the classes: any ``len(CLASSES)`` consecutive items starting at a multiple of
  ``len(CLASSES)`` hold every class exactly once.
- The background is drawn from its own stream by a function that is never given the label,
  before the object is placed, so its statistics cannot depend on the class. The clutter is
  made of things that are not shapes of the classes: a smooth colour field (soft, edgeless
  patches of colour), thin (1 to 2 pixels) straight lines, faint stripes and pixel noise. The
  objects are filled shapes whose bounding circle is 20 to 41 pixels across at the default
  size.
- The object's position, scale, rotation, texture (solid, stripes, checks or a gradient) and
  colours are drawn the same way for every class; its colours are chosen to stand out from the
  background under it.

Mask convention: the object is drawn with antialiasing (the coverage of every pixel is measured
with 4x4 samples). The mask holds the pixels that the object covers at least half: it is the
object rasterised at the image's resolution. Pixels outside the mask are the background, except
where the object covers less than half a pixel and is blended in proportionally: a rim one
pixel wide around the mask, two pixels wide at the sharp tips of a star. The box ``(x0, y0, x1, y1)`` is the tight box of the mask in pixel
indices, end exclusive: ``mask[y0:y1, x0:x1]`` holds every pixel of the mask, and each of its
four edges touches the mask.

Determinism: the same seed gives the same images with the same numpy version on every machine
(numpy's ``Generator`` streams are stable for a given numpy version; the drawing is plain float64
arithmetic).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from .._checks import check_memory
from ..errors import OptionError

__all__ = ["CLASSES", "IMAGE_SIZE", "Sample", "SyntheticShapes", "make_batch"]

#: The class names, in label order: label ``k`` is ``CLASSES[k]``.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")

#: The default side of the square images, in pixels. 64 keeps every shape legible (an object's
#: bounding circle is 20 to 41 pixels across) while a forward pass of the demo network costs a quarter of what it would
#: at 128: the methods that run hundreds of forward passes (RISE, extremal perturbation) stay
#: within the demo's time budget on two CPU cores, and viewers enlarge the images anyway.
IMAGE_SIZE = 64

_MIN_SIZE = 32
_MAX_SIZE = 1024

# The random streams derived from (seed, index); each is independent of the others.
_LABEL_STREAM = 0
_OBJECT_STREAM = 1
_BACKGROUND_STREAM = 2

# The object's bounding radius as a fraction of the image side, and the supersampling factor.
_RADIUS_RANGE = (0.16, 0.32)
_SUBSAMPLES = 4
# The object's colours are at least this far (Euclidean, RGB in [0, 1]) from the mean background
# colour under it, whenever one of the candidate colours is.
_MIN_CONTRAST = 0.45
_COLOUR_CANDIDATES = 8

_Array = npt.NDArray[np.float64]
_BoolArray = npt.NDArray[np.bool_]


class Sample(NamedTuple):
    """One item of :class:`SyntheticShapes`.

    A named tuple, so a :class:`torch.utils.data.DataLoader` batches it field by field.

    Attributes:
        image: float32 tensor (3, S, S) with values in [0, 1].
        label: the class index; ``CLASSES[label]`` is its name.
        mask: bool tensor (S, S), True on the object's pixels (those it covers at least half).
        box: the tight box of the mask, ``(x0, y0, x1, y1)`` in pixels, end exclusive.
    """

    image: torch.Tensor
    label: int
    mask: torch.Tensor
    box: tuple[int, int, int, int]


class SyntheticShapes(Dataset[Sample]):
    """A seeded data set of shapes on clutter, with ground-truth masks and boxes.

    Item ``i`` depends only on ``(seed, i)``: it is the same whatever was generated before, in
    any order, in any process. Items are drawn when asked for, so ``length`` costs nothing.

    Args:
        length: the number of items.
        seed: any integer in [0, 2**63); two seeds give unrelated items.
        size: the side of the square images, in pixels (32 to 1024).

    Raises:
        OptionError: an argument is not an integer in its range.

    Example:
        >>> from backlight.data import CLASSES, SyntheticShapes
        >>> shapes = SyntheticShapes(100, seed=0)
        >>> image, label, mask, box = shapes[7]
        >>> image.shape, image.dtype, mask.shape
        (torch.Size([3, 64, 64]), torch.float32, torch.Size([64, 64]))
        >>> CLASSES[label] in CLASSES and bool(mask.any())
        True
        >>> x0, y0, x1, y1 = box
        >>> int(mask[y0:y1, x0:x1].sum()) == int(mask.sum())
        True
    """

    def __init__(self, length: int, *, seed: int = 0, size: int = IMAGE_SIZE) -> None:
        self.length = _check_int("length", length, 0, None)
        self.seed = _check_int("seed", seed, 0, 2**63 - 1)
        self.size = _check_int("size", size, _MIN_SIZE, _MAX_SIZE)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"SyntheticShapes({self.length}, seed={self.seed}, size={self.size})"

    def __getitem__(self, index: int) -> Sample:
        """Item ``index`` (negative indices count from the end)."""
        i = self._index(index)
        label = _label(self.seed, i)
        clutter, noise = _background(_rng(self.seed, i, _BACKGROUND_STREAM), self.size)
        drawn, coverage = _draw_object(_rng(self.seed, i, _OBJECT_STREAM), label, clutter)
        mask = coverage >= 0.5
        return Sample(
            image=_to_tensor(drawn + noise),
            label=label,
            mask=torch.from_numpy(mask),
            box=_box(mask),
        )

    def background(self, index: int) -> torch.Tensor:
        """Item ``index``'s image without its object: float32 (3, S, S), the clutter alone.

        The item's image equals it everywhere but on the mask and its antialiasing rim, so it
        is the reference for checking that an attribution ignores the background.
        """
        clutter, noise = _background(
            _rng(self.seed, self._index(index), _BACKGROUND_STREAM), self.size
        )
        return _to_tensor(clutter + noise)

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(
                f"`index` must be an int, not {type(index).__name__}; "
                "use make_batch or a DataLoader for many items"
            )
        i = int(index) + self.length if index < 0 else int(index)
        if not 0 <= i < self.length:
            raise IndexError(
                f"`index` {index} is out of range for {self!r}; "
                f"use 0 to {self.length - 1}, or a larger `length`"
            )
        return i


def make_batch(
    n: int, *, seed: int = 0, start: int = 0, size: int = IMAGE_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Items ``start`` to ``start + n - 1`` of ``SyntheticShapes(seed=seed, size=size)``, stacked.

    Args:
        n: the number of images (at least 1).
        seed: the data set's seed.
        start: the index of the first item; batches from disjoint ranges share no item.
        size: the side of the images, in pixels.

    Returns:
        ``(images, labels, masks)``: float32 (n, 3, S, S) in [0, 1], int64 (n,), and bool
        (n, 1, S, S).

    Raises:
        OptionError: an argument is not an integer in its range.

    Example:
        >>> from backlight.data import make_batch
        >>> images, labels, masks = make_batch(6, seed=3)
        >>> images.shape, labels.dtype, masks.shape
        (torch.Size([6, 3, 64, 64]), torch.int64, torch.Size([6, 1, 64, 64]))
        >>> sorted(labels.tolist())  # every block of six items holds each class once
        [0, 1, 2, 3, 4, 5]
    """
    n = _check_int("n", n, 1, None)
    start = _check_int("start", start, 0, None)
    data = SyntheticShapes(start + n, seed=seed, size=size)
    check_memory(  # images and masks, each made once and stacked once
        2 * 4 * 4 * n * data.size**2,
        torch.device("cpu"),
        what=f"`n`={n} synthetic images of {data.size}x{data.size}",
        fix="make them in smaller batches (`start` picks where a batch begins)",
    )
    samples = [data[i] for i in range(start, start + n)]
    images = torch.stack([s.image for s in samples])
    labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
    masks = torch.stack([s.mask for s in samples]).unsqueeze(1)
    return images, labels, masks


def _check_int(name: str, value: Any, low: int, high: int | None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return int(value)
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    raise OptionError(f"`{name}` must be {allowed}, not {value!r}")


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def _to_tensor(image: _Array) -> torch.Tensor:
    return torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32))


def _label(seed: int, index: int) -> int:
    block, position = divmod(index, len(CLASSES))
    order = _rng(seed, block, _LABEL_STREAM).permutation(len(CLASSES))
    return int(order[position])


def _box(mask: _BoolArray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --- the background ---------------------------------------------------------------------------


def _smooth_weights(size: int, nodes: int) -> _Array:
    """(size, nodes) weights that interpolate values on a coarse grid smoothly over the pixels."""
    position = (np.arange(size) + 0.5) / size * (nodes - 1)
    distance = np.abs(position[:, None] - np.arange(nodes)[None, :])
    t = np.clip(1.0 - distance, 0.0, 1.0)
    weights = t * t * (3.0 - 2.0 * t)  # smoothstep: no creases at the grid lines
    normalised: _Array = weights / weights.sum(axis=1, keepdims=True)
    return normalised


def _background(rng: np.random.Generator, size: int) -> tuple[_Array, _Array]:
    """Clutter (3, S, S) in [0, 1], and pixel noise (3, S, S) to add once the object is drawn.

    Never given the label: it cannot depend on the class.
    """
    # Smooth colour field: random colours on a coarse grid, interpolated: soft patches, no edges.
    nodes = int(rng.integers(3, 6))
    grid = rng.uniform(0.0, 1.0, (3, nodes, nodes))
    weights = _smooth_weights(size, nodes)
    image: _Array = weights @ grid @ weights.T

    ys, xs = np.mgrid[0:size, 0:size] + 0.5

    # Faint stripes over the whole image.
    angle = rng.uniform(0.0, math.pi)
    period = rng.uniform(3.0, 12.0)
    amplitude = rng.uniform(0.0, 0.1)
    tint = rng.uniform(-1.0, 1.0, 3)
    phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period * 2 * math.pi
    image += amplitude * tint[:, None, None] * np.sin(phase)[None]

    # Thin straight lines, most from edge to edge (endpoints may lie outside the image).
    lines = int(rng.integers(2, 8))
    starts = rng.uniform(-0.2, 1.2, (lines, 2)) * size
    ends = rng.uniform(-0.2, 1.2, (lines, 2)) * size
    half_widths = rng.uniform(0.35, 0.85, lines)
    opacities = rng.uniform(0.5, 1.0, lines)
    colours = rng.uniform(0.0, 1.0, (lines, 3))
    for a, b, half_width, opacity, colour in zip(
        starts, ends, half_widths, opacities, colours, strict=True
    ):
        distance = _segment_distance(xs, ys, a, b)
        alpha = opacity * np.clip(half_width + 0.5 - distance, 0.0, 1.0)
        image += alpha[None] * (colour[:, None, None] - image)

    # Pixel noise, over the object too.
    noise = rng.normal(0.0, 1.0, (3, size, size)) * rng.uniform(0.0, 0.04)
    return np.clip(image, 0.0, 1.0), noise


def _segment_distance(xs: _Array, ys: _Array, a: _Array, b: _Array) -> _Array:
    """Distance from each pixel centre to the segment ``a``-``b``."""
    d = b - a
    length2 = float(d @ d) or 1e-12
    t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0.0, 1.0)
    distance: _Array = np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1])
    return distance


# --- the object -------------------------------------------------------------------------------


def _regular_polygon(corners: int, radius: float, turn: float = 0.0) -> _Array:
    angles = turn + np.arange(corners) * 2 * math.pi / corners
    polygon: _Array = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return polygon


def _star(points: int, outer: float, inner: float) -> _Array:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    star: _Array = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return star


# Outlines in units of the bounding radius (every point within distance 1 of the centre).
_SQUARE = _regular_polygon(4, 0.98, math.pi / 4)
_TRIANGLE = _regular_polygon(3, 1.0, -math.pi / 2)
_STAR = _star(5, 1.0, 0.42)
_CROSS_ARM, _CROSS_HALF_WIDTH = 0.95, 0.3
_CIRCLE_RADIUS = 0.9
_RING_RADII = (0.48, 0.9)


def _inside_polygon(u: _Array, v: _Array, polygon: _Array) -> _BoolArray:
    """Even-odd rule, vectorised over the points: True where (u, v) lies inside ``polygon``."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _inside(label: int, u: _Array, v: _Array) -> _BoolArray:
    """True where the point (u, v), in units of the bounding radius, lies inside the shape."""
    name = CLASSES[label]
    if name == "circle":
        result: _BoolArray = u * u + v * v <= _CIRCLE_RADIUS**2
    elif name == "square":
        result = _inside_polygon(u, v, _SQUARE)
    elif name == "triangle":
        result = _inside_polygon(u, v, _TRIANGLE)
    elif name == "star":
        result = _inside_polygon(u, v, _STAR)
    elif name == "cross":
        au, av = np.abs(u), np.abs(v)
        arm, half = _CROSS_ARM, _CROSS_HALF_WIDTH
        result = ((au <= arm) & (av <= half)) | ((av <= arm) & (au <= half))
    else:  # ring
        r2 = u * u + v * v
        result = (r2 >= _RING_RADII[0] ** 2) & (r2 <= _RING_RADII[1] ** 2)
    return result


def _texture(rng: np.random.Generator, u: _Array, v: _Array, radius: float) -> _Array:
    """Weights in [0, 1] between the object's two colours at local coordinates (u, v)."""
    kind = int(rng.integers(4))  # solid, stripes, checks, gradient: the same odds for all classes
    angle = rng.uniform(0.0, 2 * math.pi)
    period = rng.uniform(5.0, 10.0) / radius  # 5 to 10 pixels, in units of the bounding radius
    along = u * math.cos(angle) + v * math.sin(angle)
    across = -u * math.sin(angle) + v * math.cos(angle)
    if kind == 0:
        weight: _Array = np.zeros_like(u)
    elif kind == 1:
        weight = (np.floor(along / (period / 2)) % 2).astype(np.float64)
    elif kind == 2:
        cells = np.floor(along / (period / 2)) + np.floor(across / (period / 2))
        weight = (cells % 2).astype(np.float64)
    else:
        weight = np.clip((along + 1.0) / 2.0, 0.0, 1.0)
    return weight


def _pick_colour(rng: np.random.Generator, avoid: _Array) -> _Array:
    """The first of a few random colours far enough from ``avoid``, else the farthest one."""
    candidates = rng.uniform(0.0, 1.0, (_COLOUR_CANDIDATES, 3))
    distance = np.linalg.norm(candidates - avoid, axis=1)
    far = np.flatnonzero(distance >= _MIN_CONTRAST)
    colour: _Array = candidates[far[0] if far.size else int(np.argmax(distance))]
    return colour


def _draw_object(rng: np.random.Generator, label: int, background: _Array) -> tuple[_Array, _Array]:
    """The image with the object drawn over ``background``, and the object's coverage (S, S).

    Every random draw happens whatever the label, so that nothing but the shape depends on it.
    """
    size = background.shape[-1]
    radius = rng.uniform(*_RADIUS_RANGE) * size
    margin = radius + 1.0
    cx, cy = rng.uniform(margin, size - margin, 2)
    rotation = rng.uniform(0.0, 2 * math.pi)

    # Coverage of the pixels of the object's bounding square, measured with n x n samples.
    lo_x, hi_x = max(0, int(cx - radius) - 1), min(size, int(cx + radius) + 2)
    lo_y, hi_y = max(0, int(cy - radius) - 1), min(size, int(cy + radius) + 2)
    n = _SUBSAMPLES
    offsets = (np.arange(n) + 0.5) / n
    xs = (np.arange(lo_x, hi_x)[None, :, None, None] + offsets[None, None, None, :]) - cx
    ys = (np.arange(lo_y, hi_y)[:, None, None, None] + offsets[None, None, :, None]) - cy
    cos, sin = math.cos(rotation), math.sin(rotation)
    u = (xs * cos + ys * sin) / radius
    v = (ys * cos - xs * sin) / radius
    u, v = np.broadcast_arrays(u, v)
    inside = _inside(label, u, v)
    coverage = np.zeros((size, size))
    coverage[lo_y:hi_y, lo_x:hi_x] = inside.mean(axis=(2, 3))

    # The object's colours: two colours that stand out from the background under the object.
    under = (background * coverage).sum(axis=(1, 2)) / coverage.sum()
    first = _pick_colour(rng, under)
    second = _pick_colour(rng, under)
    weight = _texture(rng, u.mean(axis=(2, 3)), v.mean(axis=(2, 3)), radius)  # at pixel centres
    colour = first[:, None, None] * (1.0 - weight) + second[:, None, None] * weight

    image = background.copy()
    patch = image[:, lo_y:hi_y, lo_x:hi_x]
    alpha = coverage[None, lo_y:hi_y, lo_x:hi_x]
    image[:, lo_y:hi_y, lo_x:hi_x] = patch + alpha * (colour - patch)
    return image, coverage
