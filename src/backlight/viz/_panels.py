"""The panels shared by the grid and the report: every method's maps rendered for every image."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..errors import InputError, InputTypeError, OptionError
from ._colormaps import Colormap, colormap
from ._inputs import (
    U8,
    as_maps,
    check_alpha,
    check_background,
    check_percentile,
    check_positive,
)
from ._overlay import Cmap, choose, heat_panel, resize_maps
from ._scale import Mode, Scale, check_mode, rgb_sample, to_uint8


@dataclass(frozen=True)
class MethodPanels:
    """One method's rendering, one entry per image.

    ``heat`` holds the overlays (for a 3-channel map, of its channel-wise ``max |g|``), ``rgb``
    the RGB renderings of 3-channel maps (else ``None``).
    """

    name: str
    channels: int
    heat: list[U8] | None
    scales: list[Scale]
    cmap: Colormap
    mode: Literal["minmax", "symmetric"]
    rgb: list[U8] | None


@dataclass(frozen=True)
class Style:
    """The display options shared by :func:`grid` and :func:`report`, checked once."""

    alpha: float
    background: str
    mode: Mode
    percentile: float
    rgb_k: float
    cmaps: Mapping[str, Cmap]
    default_cmap: Cmap

    @classmethod
    def checked(
        cls,
        methods: Mapping[str, Any],
        *,
        alpha: Any,
        cmap: Any,
        mode: Any,
        percentile: Any,
        rgb_k: Any,
    ) -> Style:
        if isinstance(cmap, Mapping):
            unknown = [name for name in cmap if name not in methods]
            if unknown:
                raise OptionError(
                    f"`cmap` names {', '.join(repr(u) for u in unknown)}, which "
                    f"{'is' if len(unknown) == 1 else 'are'} not in `maps` "
                    f"({', '.join(repr(m) for m in methods)}); use the same method names"
                )
            cmaps, default = dict(cmap), None
        else:
            cmaps, default = {}, cmap
        for chosen in (default, *cmaps.values()):  # fail on a bad name before any rendering
            if chosen is not None:
                colormap(chosen)
        return cls(
            alpha=check_alpha(alpha),
            background="image",
            mode=check_mode(mode),
            percentile=check_percentile(percentile),
            rgb_k=check_positive("rgb_k", rgb_k),
            cmaps=cmaps,
            default_cmap=default,
        )

    def over(self, background: Any) -> Style:
        """The same style, blended over ``background`` (``"image"`` or ``"gray"``), checked."""
        return replace(self, background=check_background(background))


def check_methods(maps: Any) -> Mapping[str, Any]:
    if not isinstance(maps, Mapping):
        raise InputTypeError(
            f"`maps` must be a mapping from method name to maps (N, C, h, w), e.g. "
            f"{{'gradient': tensor}}, not {type(maps).__name__}"
        )
    for name in maps:
        if not isinstance(name, str) or not name:
            raise InputError(f"`maps` keys must be method names (non-empty str), not {name!r}")
    return maps


def fit(image: U8, size: int | None) -> U8:
    """Resize (bilinear, antialiased) so that the longer side is ``size``; ``None`` keeps it."""
    height, width = image.shape[:2]
    if size is None or max(height, width) == size:
        return image
    factor = size / max(height, width)
    new = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(new, Image.Resampling.BILINEAR))


def render_method(
    name: str, maps: Any, images: list[U8], style: Style, *, heat_for_rgb: bool
) -> MethodPanels:
    """Render ``maps`` (N, C, h, w) over ``images`` (already at display size)."""
    label = f"maps[{name!r}]"
    array, _ = as_maps(maps, label)
    channels = array.shape[1]
    if channels not in (1, 3):
        raise InputError(
            f"`{label}` has {channels} channels (shape {array.shape}); pass one-channel maps "
            "(N, 1, h, w) or 3-channel gradients of an RGB input (N, 3, h, w): reduce the "
            "channels first, e.g. with reduce='abs_max'"
        )
    if array.shape[0] != len(images):
        raise InputError(
            f"`{label}` holds {array.shape[0]} map(s) but there are {len(images)} image(s); "
            "pass one map per image, in the same order"
        )
    rgb = None
    if channels == 3:
        rgb = [
            to_uint8(rgb_sample(resize_maps(g[None], _size(im))[0], "std", style.rgb_k, 100.0))
            for g, im in zip(array, images, strict=True)
        ]
    heat_maps = np.abs(array).max(axis=1, keepdims=True) if channels == 3 else array
    cmap, mode = choose(heat_maps, style.cmaps.get(name, style.default_cmap), style.mode)
    heat = None
    scales: list[Scale] = []
    if channels == 1 or heat_for_rgb:
        rendered = [
            heat_panel(im, m, cmap, mode, style.alpha, style.percentile, style.background)
            for im, m in zip(images, heat_maps, strict=True)
        ]
        heat = [panel for panel, _ in rendered]
        scales = [scale for _, scale in rendered]
    return MethodPanels(name, channels, heat, scales, cmap, mode, rgb)


def _size(image: U8) -> tuple[int, int]:
    return image.shape[0], image.shape[1]
