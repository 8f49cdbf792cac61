"""Colourising maps and blending them over images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from ..errors import InputError
from ._colormaps import Colormap, colormap
from ._inputs import (
    F64,
    U8,
    ImageLike,
    MapLike,
    as_image,
    as_maps,
    check_alpha,
    check_background,
    check_percentile,
    is_tensor,
    require_channels,
)
from ._scale import Mode, Scale, check_mode, resolve_mode, scale_sample, to_uint8

if TYPE_CHECKING:
    import matplotlib.colors

__all__ = ["colorize", "overlay"]

#: A colormap: a matplotlib name (``"jet"``, ``"RdBu_r"``), a matplotlib colormap, a
#: :class:`Colormap`, or ``None`` to choose by the sign of the map. (A string, so that naming the
#: type does not import matplotlib.)
Cmap: TypeAlias = "str | matplotlib.colors.Colormap | Colormap | None"

ONE_CHANNEL_FIX = (
    "reduce the channels first, e.g. map.abs().amax(dim=-3, keepdim=True) (backlight's "
    "default reduce='abs_max'), or show an RGB gradient with render_rgb; a batch of maps "
    "without a channel dimension (N, h, w) needs maps[:, None]"
)


def choose(maps: F64, cmap: Cmap, mode: Mode) -> tuple[Colormap, Literal["minmax", "symmetric"]]:
    """The colormap and scaling for a batch of maps (one choice for the whole batch).

    With ``cmap=None`` a signed map (or ``mode="symmetric"``) gets ``coolwarm`` and any other map
    ``inferno``; a given colormap decides ``mode="auto"``: symmetric for a diverging one (its
    ``kind``, from the list of matplotlib's diverging maps).
    """
    mode = check_mode(mode)
    if cmap is None:
        resolved = resolve_mode(maps, mode)
        return colormap("coolwarm" if resolved == "symmetric" else "inferno"), resolved
    chosen = colormap(cmap)
    if mode == "auto":
        return chosen, "symmetric" if chosen.kind == "diverging" else "minmax"
    return chosen, mode


def resize_maps(maps: F64, size: tuple[int, int]) -> F64:
    """Bilinear resizing of (N, C, h, w) maps to ``size`` (as backlight's ``resize=True``)."""
    if maps.shape[-2:] == size:
        return maps
    rows = _linear_weights(maps.shape[-2], size[0])
    cols = _linear_weights(maps.shape[-1], size[1])
    resized: F64 = rows @ maps @ cols.T  # two matrix products (a 4-index einsum is O(H·h·w·W))
    return resized


def _linear_weights(n_in: int, n_out: int) -> F64:
    """(n_out, n_in): linear interpolation at half-pixel centres, edges clamped, the formula of
    torch's ``interpolate(mode="bilinear", align_corners=False)`` (without antialiasing)."""
    source = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(int), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = source - low
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), low), 1 - frac)
    np.add.at(weights, (np.arange(n_out), high), frac)
    return weights


def heat_panel(
    image: U8,
    sample: F64,
    cmap: Colormap,
    mode: Literal["minmax", "symmetric"],
    alpha: float,
    percentile: float,
    background: str = "image",
) -> tuple[U8, Scale]:
    """One (1, h, w) map resized to the image, colourised and blended over it (or over its
    luminance, ``background="gray"``)."""
    height, width = image.shape[:2]
    resized = resize_maps(sample[None], (height, width))[0, 0]
    scaled, scale = scale_sample(resized, mode, percentile)
    base = image.astype(np.float64) / 255
    if background == "gray":  # ITU-R 601 luma, as PIL's convert("L")
        base = np.repeat(base @ np.array([0.299, 0.587, 0.114])[:, None], 3, axis=2)
    blended = (1 - alpha) * base + alpha * cmap(scaled)
    return to_uint8(blended), scale


def colorize(
    maps: MapLike, cmap: Cmap = None, *, mode: Mode = "auto", percentile: float = 99.0
) -> U8:
    """Colour one-channel maps: :func:`normalize`, then the colormap.

    Args:
        maps: (h, w), (1, h, w) or a batch (N, 1, h, w); tensor or array.
        cmap: any matplotlib colormap, by name (:func:`list_colormaps`, ``_r`` reverses) or as a
            :class:`matplotlib.colors.Colormap`, or a :class:`Colormap`; ``None`` picks
            ``"coolwarm"`` for signed maps and ``"inferno"`` otherwise. The colours are
            matplotlib's own 8-bit colours.
        mode: the scaling of :func:`normalize`; ``"auto"`` follows the colormap when one is
            given (symmetric around zero for a diverging map such as ``"coolwarm"`` or
            ``"RdBu"``, min-max otherwise) and the sign of the values when not.
        percentile: clipping of :func:`normalize`, in (50, 100].

    Returns:
        uint8 (h, w, 3), or (N, h, w, 3) for a batch.

    Raises:
        InputError: more than one channel, a wrong shape, NaN or infinite values.
        OptionError: unknown colormap, ``mode`` or ``percentile``.

    Example:
        >>> import torch
        >>> from backlight.viz import colorize
        >>> colorize(torch.tensor([[0.0, 1.0]]), "gray", percentile=100).tolist()
        [[[0, 0, 0], [255, 255, 255]]]
        >>> colorize(torch.tensor([[-1.0, 0.0, 1.0]]))[0, 1].tolist()  # zero: coolwarm's grey
        [221, 220, 219]
    """
    array, batched = as_maps(maps, "maps")
    require_channels(array, 1, "maps", ONE_CHANNEL_FIX)
    percentile = check_percentile(percentile)
    chosen, resolved = choose(array, cmap, mode)
    images = np.stack(
        [to_uint8(chosen(scale_sample(m[0], resolved, percentile)[0])) for m in array]
    )
    return images if batched else images[0]


def _images_for_overlay(image: Any) -> tuple[list[U8], bool]:
    if (is_tensor(image) or isinstance(image, np.ndarray)) and image.ndim == 4:
        return [as_image(im, f"image[{i}]") for i, im in enumerate(image)], True
    return [as_image(image, "image")], False


def overlay(
    image: ImageLike,
    map: MapLike,
    *,
    alpha: float = 0.5,
    cmap: Cmap = None,
    mode: Mode = "auto",
    percentile: float = 99.0,
    background: Literal["image", "gray"] = "image",
) -> U8:
    """Blend a colourised map over its image: ``(1 - alpha) · image + alpha · cmap(map)``.

    The map is resized bilinearly to the image (as backlight's ``resize=True``), scaled with
    :func:`normalize` after resizing, coloured, and blended pixel by pixel in [0, 1].

    Args:
        image: a float tensor (3, H, W) in [0, 1], a uint8 or [0, 1] float array (H, W, 3), a PIL
            image; or a batch (N, 3, H, W) tensor / (N, H, W, 3) array.
        map: (h, w), (1, h, w) or (N, 1, h, w) (a batch of one goes with a single image).
        alpha: the map's weight in [0, 1]: 0 shows only the image, 1 only the map.
        cmap: as for :func:`colorize`.
        mode: as for :func:`colorize`; for a batch the choice is made once for all samples.
        percentile: as for :func:`normalize`.
        background: ``"image"`` blends over the image as it is, ``"gray"`` over its luminance
            (the map's colours then read alone, over a saturated photo too).

    Returns:
        uint8 (H, W, 3), or (N, H, W, 3) for a batch of images.

    Raises:
        InputError: the image or map has a wrong shape, range or count, or the map holds NaN.
        OptionError: ``alpha``, ``cmap``, ``mode`` or ``percentile`` is not accepted.

    Example:
        >>> import torch
        >>> from backlight.viz import overlay
        >>> image = torch.full((3, 4, 4), 0.5)  # a grey image
        >>> heat = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # upsampled to 4x4
        >>> out = overlay(image, heat, alpha=1.0, cmap="gray", percentile=100)
        >>> out.shape, out[0, :, 0].tolist()
        ((4, 4, 3), [0, 64, 192, 255])
    """
    alpha = check_alpha(alpha)
    percentile = check_percentile(percentile)
    background = check_background(background)  # type: ignore[assignment]
    images, batched = _images_for_overlay(image)
    maps, _ = as_maps(map, "map")
    require_channels(maps, 1, "map", ONE_CHANNEL_FIX)
    if maps.shape[0] != len(images):
        raise InputError(
            f"`map` holds {maps.shape[0]} map(s) but `image` {len(images)} image(s); pass one "
            "map per image (index the batch, e.g. maps[i], for a single image)"
        )
    chosen, resolved = choose(maps, cmap, mode)
    panels = np.stack(
        [
            heat_panel(im, m, chosen, resolved, alpha, percentile, background)[0]
            for im, m in zip(images, maps, strict=True)
        ]
    )
    return panels if batched else panels[0]
