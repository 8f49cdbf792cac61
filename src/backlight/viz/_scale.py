"""Scaling maps to [0, 1] for display, and the RGB rendering of (3, h, w) gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np

from .._choices import is_choice
from ..errors import OptionError
from ._inputs import F64, U8, MapLike, as_maps, check_percentile, check_positive, require_channels

__all__ = ["normalize", "render_rgb"]

#: How a map is scaled to [0, 1]: ``"minmax"``, ``"symmetric"`` around zero, or ``"auto"``.
Mode: TypeAlias = Literal["auto", "minmax", "symmetric"]

#: How a (3, h, w) gradient becomes an RGB image: ``"std"`` or ``"minmax"``.
RGBMode: TypeAlias = Literal["std", "minmax"]

_MODES = ("auto", "minmax", "symmetric")
_RGB_MODES = ("std", "minmax")

# Relative spread below which a map counts as constant. Resizing a constant float32 map in
# float64 leaves differences of about 1e-16 of its value; real float32 data differ by >= 1e-7.
_FLAT = 1e-9


@dataclass(frozen=True)
class Scale:
    """How one sample was scaled: values ``low`` and ``high`` went to 0 and 1.

    ``low == high`` marks a constant map (``low`` is its value).
    """

    mode: Literal["minmax", "symmetric"]
    low: float
    high: float


def check_mode(mode: Any) -> Mode:
    if not is_choice(mode, _MODES):
        raise OptionError(
            f"`mode` must be one of {', '.join(repr(m) for m in _MODES)}, not {mode!r}"
        )
    return mode  # type: ignore[no-any-return]


def resolve_mode(maps: F64, mode: Mode) -> Literal["minmax", "symmetric"]:
    """``"auto"`` is symmetric when any value of ``maps`` is negative: one rule for a batch."""
    if mode == "auto":
        return "symmetric" if bool((maps < 0).any()) else "minmax"
    return mode


def _flat(low: float, high: float) -> bool:
    """No range to show: ``high - low`` is zero or rounding noise (resizing a constant map)."""
    return high - low <= _FLAT * max(abs(low), abs(high))


def scale_sample(
    values: F64, mode: Literal["minmax", "symmetric"], percentile: float
) -> tuple[F64, Scale]:
    """One sample (any shape) to [0, 1], with the range used."""
    if mode == "symmetric":
        magnitude = np.abs(values)
        bound = float(np.percentile(magnitude, percentile))
        if bound <= 0:  # fewer non-zeros than the clipped tail: fall back to the maximum
            bound = float(magnitude.max())
        if bound <= 0:  # all zeros: everything is neutral
            return np.full_like(values, 0.5), Scale(mode, 0.0, 0.0)
        scaled = 0.5 + 0.5 * np.clip(values / bound, -1.0, 1.0)
        return scaled, Scale(mode, -bound, bound)
    low, high = (float(v) for v in np.percentile(values, [100 - percentile, percentile]))
    if _flat(low, high):  # the clipped range collapsed (mostly one value): use the full range
        low, high = float(values.min()), float(values.max())
    if _flat(low, high):  # constant map (e.g. an all-zero Grad-CAM): the bottom of the colormap
        return np.zeros_like(values), Scale(mode, low, low)
    return np.clip((values - low) / (high - low), 0.0, 1.0), Scale(mode, low, high)


def scale_maps(maps: F64, mode: Mode, percentile: float) -> tuple[F64, list[Scale]]:
    """Every sample of (N, C, h, w) ``maps`` to [0, 1] on its own, with the mode chosen once."""
    resolved = resolve_mode(maps, mode)
    out = np.empty_like(maps)
    scales = []
    for i, sample in enumerate(maps):
        out[i], scale = scale_sample(sample, resolved, percentile)
        scales.append(scale)
    return out, scales


def normalize(maps: MapLike, *, mode: Mode = "auto", percentile: float = 99.0) -> F64:
    """Scale maps to [0, 1] for display, each sample on its own.

    ``"minmax"``: values below the ``(100 - percentile)``-th and above the ``percentile``-th
    percentile of the sample are clipped, then ``(v - low) / (high - low)``. With the default 99 a
    few extreme pixels (common in gradients) no longer squeeze everything else into the dark end.

    ``"symmetric"``: for signed maps; ``s`` is the ``percentile``-th percentile of ``|v|`` and
    ``0.5 + 0.5 · clip(v / s, -1, 1)``, so zero maps to 0.5 (the neutral colour of a diverging
    colormap) and ``+x`` and ``-x`` land at equal distances from it.

    ``"auto"``: ``"symmetric"`` if any value in ``maps`` is negative, else ``"minmax"``; decided
    once for the whole batch so its samples are shown the same way.

    A constant map does not divide by zero: it becomes all 0 (``"minmax"``) or all 0.5
    (``"symmetric"``); "constant" allows rounding noise (a spread below 1e-9 of the values),
    as resizing a constant map leaves. If the clipped range is empty because nearly every value is equal (a
    sparse map), the full range is used instead.

    Args:
        maps: a map (h, w), (C, h, w) or a batch (N, C, h, w); tensor or array. In a batch each
            sample (all its channels together) is scaled on its own.
        mode: ``"auto"``, ``"minmax"`` or ``"symmetric"``.
        percentile: in (50, 100]; 100 turns clipping off.

    Returns:
        A float64 array of the same shape, in [0, 1].

    Raises:
        InputError: the map has a wrong shape, or holds NaN or infinite values.
        OptionError: ``mode`` or ``percentile`` is not accepted.

    Example:
        >>> import torch
        >>> from backlight.viz import normalize
        >>> normalize(torch.tensor([[0.0, 1.0], [2.0, 4.0]]), percentile=100).tolist()
        [[0.0, 0.25], [0.5, 1.0]]
        >>> normalize(torch.tensor([[-2.0, 0.0], [1.0, 2.0]]), percentile=100).tolist()
        [[0.0, 0.5], [0.75, 1.0]]
    """
    mode = check_mode(mode)
    percentile = check_percentile(percentile)
    array, _ = as_maps(maps, "maps")
    scaled, _ = scale_maps(array, mode, percentile)
    return scaled.reshape(tuple(maps.shape))


def to_uint8(values: F64) -> U8:
    """[0, 1] floats to 0-255, rounding to the nearest integer."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def rgb_sample(gradient: F64, mode: RGBMode, k: float, percentile: float) -> F64:
    """One (3, h, w) gradient to a float image (h, w, 3) in [0, 1]."""
    if mode == "std":
        std = float(gradient.std())
        if std > _FLAT * float(np.abs(gradient).max()):
            image = 0.5 + k * (gradient - gradient.mean()) / std
        else:  # a constant gradient carries no signal: mid grey
            image = np.full_like(gradient, 0.5)
        image = np.clip(image, 0.0, 1.0)
    else:
        image, _ = scale_sample(gradient, "minmax", percentile)
    channels_last: F64 = image.transpose(1, 2, 0)
    return channels_last


def render_rgb(
    gradient: MapLike,
    *,
    mode: RGBMode = "std",
    k: float = 0.15,
    percentile: float = 99.0,
) -> U8:
    """Render a 3-channel gradient as an RGB image, the way guided backprop is usually shown.

    ``"std"`` (the default): ``clip(0.5 + k · (g - mean(g)) / std(g), 0, 1)`` with the mean and
    standard deviation over all channels and pixels of the sample. Zero evidence is mid grey and
    one standard deviation moves a channel by ``k``; ``k = 0.15`` puts about 3.3 standard
    deviations on either side of grey before clipping (the Keras examples use 0.1, which is
    softer). ``"minmax"``: :func:`normalize` with ``mode="minmax"`` over all channels, which keeps
    the true extremes but is sensitive to a few large values (``percentile`` clips them).

    Args:
        gradient: (3, h, w) or a batch (N, 3, h, w), e.g. ``backlight.guided_backprop(...,
            reduce=None)`` on an RGB input.
        mode: ``"std"`` or ``"minmax"``.
        k: the contrast of ``"std"``, a positive number.
        percentile: the clipping of ``"minmax"``, in (50, 100].

    Returns:
        uint8 (h, w, 3), or (N, h, w, 3) for a batch.

    Raises:
        InputError: not 3 channels, a wrong shape, NaN or infinite values.
        OptionError: ``mode``, ``k`` or ``percentile`` is not accepted.

    Example:
        >>> import torch
        >>> from backlight.viz import render_rgb
        >>> g = torch.zeros(3, 2, 2)
        >>> g[0, 0, 0] = 1.0  # one red-ish pixel on a grey field
        >>> render_rgb(g)[0, 0].tolist(), render_rgb(g)[1, 1].tolist()
        ([254, 116, 116], [116, 116, 116])
    """
    if not is_choice(mode, _RGB_MODES):
        raise OptionError(
            f"`mode` must be one of {', '.join(repr(m) for m in _RGB_MODES)}, not {mode!r}"
        )
    k = check_positive("k", k)
    percentile = check_percentile(percentile)
    array, batched = as_maps(gradient, "gradient")
    require_channels(
        array,
        3,
        "gradient",
        "render_rgb shows one gradient channel per colour; "
        "for a one-channel map use colorize or overlay",
    )
    images = np.stack([to_uint8(rgb_sample(g, mode, k, percentile)) for g in array])
    return images if batched else images[0]
