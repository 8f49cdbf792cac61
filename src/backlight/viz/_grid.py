"""A grid of images × methods with titles, drawn with Pillow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import OptionError
from ._inputs import U8, Images, MapLike, as_images, check_size
from ._overlay import Cmap
from ._panels import Style, check_methods, fit, render_method
from ._scale import Mode

__all__ = ["grid"]

Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont

BACKGROUND = (255, 255, 255)
INK = (25, 25, 25)


def load_font(size: int) -> Font:
    """Pillow's built-in font (DejaVu Sans subset) at ``size`` pixels; no file or network."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def wrap(text: str, font: Font, width: float, max_lines: int) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` (words first, long words by letters)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and font.getlength(word) > width:
                cut = 1
                while cut < len(word) and font.getlength(word[: cut + 1]) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def grid(
    images: Images,
    maps: Mapping[str, MapLike],
    *,
    row_titles: Sequence[str] | None = None,
    show_images: bool = True,
    alpha: float = 0.5,
    cmap: Cmap | Mapping[str, Cmap] = None,
    mode: Mode = "auto",
    percentile: float = 99.0,
    rgb_k: float = 0.15,
    cell_size: int | None = 224,
    font_size: int = 14,
) -> U8:
    """A grid with one row per image and one column per method, with titles.

    Column titles are the method names (and "input" over the images); row titles, on the left,
    are free text, e.g. the explained class and its score. One-channel maps are shown as
    :func:`overlay`; 3-channel gradients (``reduce=None``) as :func:`render_rgb` (``"std"``).
    Save the result with :func:`save_png`.

    Args:
        images: a tensor (N, 3, H, W) in [0, 1], an array (N, H, W, 3), or a list of images
            (sizes may differ).
        maps: method name -> maps (N, 1, h, w) or (N, 3, h, w), one per image; the columns
            follow the mapping's order.
        row_titles: one string per image (``"\\n"`` starts a new line), or ``None``.
        show_images: add a first column with the images themselves.
        alpha: the map's weight in the overlays, in [0, 1].
        cmap: one colormap for every method, or a mapping method name -> colormap (methods
            left out choose by sign); ``None`` as in :func:`colorize`.
        mode: the scaling of :func:`normalize`, chosen once per method for all its images.
        percentile: the clipping of :func:`normalize`.
        rgb_k: the contrast ``k`` of :func:`render_rgb` for 3-channel maps.
        cell_size: every panel is resized (keeping its aspect ratio) so that its longer side
            has this many pixels; ``None`` keeps the images' own sizes.
        font_size: the titles' size in pixels.

    Returns:
        The grid as a uint8 array (height, width, 3) on a white background.

    Raises:
        InputError: images or maps of the wrong shape, count or range, or maps with NaN.
        OptionError: an option out of range, an unknown colormap, or ``row_titles`` of the
            wrong length.

    Example:
        >>> import torch
        >>> from backlight.viz import grid
        >>> images = torch.rand(2, 3, 32, 32)
        >>> maps = {"gradient": torch.rand(2, 1, 32, 32), "guided": torch.randn(2, 3, 32, 32)}
        >>> picture = grid(images, maps, row_titles=["cat 0.91", "dog 0.55"], cell_size=64)
        >>> picture.shape, picture.dtype
        ((174, 291, 3), dtype('uint8'))
    """
    methods = check_methods(maps)
    if not isinstance(show_images, bool):
        raise OptionError(f"`show_images` must be True or False, not {show_images!r}")
    if not methods and not show_images:
        raise OptionError("`maps` is empty and `show_images` is False: the grid would be empty")
    style = Style.checked(
        methods, alpha=alpha, cmap=cmap, mode=mode, percentile=percentile, rgb_k=rgb_k
    )
    if cell_size is not None:
        cell_size = check_size("cell_size", cell_size)
    font_size = check_size("font_size", font_size)
    pictures = [fit(image, cell_size) for image in as_images(images)]
    titles = _check_row_titles(row_titles, len(pictures))

    columns: list[tuple[str, list[U8]]] = [("input", pictures)] if show_images else []
    for name, method_maps in methods.items():
        panels = render_method(name, method_maps, pictures, style, heat_for_rgb=False)
        columns.append((name, panels.rgb or panels.heat or []))
    return _compose(columns, titles, font_size)


def _check_row_titles(row_titles: Any, count: int) -> list[str] | None:
    if row_titles is None:
        return None
    if isinstance(row_titles, str) or not isinstance(row_titles, Sequence):
        raise OptionError(
            f"`row_titles` must be a list of strings, one per image, not {type(row_titles).__name__}"
        )
    if len(row_titles) != count:
        raise OptionError(
            f"`row_titles` has {len(row_titles)} entries for {count} image(s); pass one per image"
        )
    if not all(isinstance(t, str) for t in row_titles):
        raise OptionError("`row_titles` must hold strings; format numbers first, e.g. f'{p:.2f}'")
    return list(row_titles)


def _compose(columns: list[tuple[str, list[U8]]], titles: list[str] | None, font_size: int) -> U8:
    font = load_font(font_size)
    pad = max(4, font_size // 2)
    line = round(font_size * 1.3)
    rows = len(columns[0][1])
    cell_w = max(p.shape[1] for _, panels in columns for p in panels)
    row_h = [max(panels[r].shape[0] for _, panels in columns) for r in range(rows)]

    header_lines = [wrap(name, font, cell_w, 2) for name, _ in columns]
    header_h = max(len(lines) for lines in header_lines) * line + pad
    if titles is None:
        band = 0
        title_lines: list[list[str]] = [[] for _ in range(rows)]
    else:
        widest = max(font.getlength(part) for t in titles for part in t.split("\n"))
        band = int(min(widest, max(cell_w, 10 * font_size))) + 2 * pad
        title_lines = [
            wrap(t, font, band - 2 * pad, max(1, h // line))
            for t, h in zip(titles, row_h, strict=True)
        ]

    width = pad + band + len(columns) * (cell_w + pad)
    height = pad + header_h + sum(h + pad for h in row_h)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for c, lines in enumerate(header_lines):
        left = pad + band + c * (cell_w + pad)
        top = pad + header_h - pad - len(lines) * line
        for i, text in enumerate(lines):
            x = left + (cell_w - font.getlength(text)) / 2
            draw.text((x, top + i * line), text, fill=INK, font=font)

    top = pad + header_h
    for r in range(rows):
        lines = title_lines[r]
        y = top + (row_h[r] - len(lines) * line) / 2
        for i, text in enumerate(lines):
            draw.text((pad, y + i * line), text, fill=INK, font=font)
        for c, (_, panels) in enumerate(columns):
            panel = panels[r]
            left = pad + band + c * (cell_w + pad) + (cell_w - panel.shape[1]) // 2
            canvas.paste(Image.fromarray(panel), (left, top + (row_h[r] - panel.shape[0]) // 2))
        top += row_h[r] + pad
    picture: U8 = np.asarray(canvas).copy()
    return picture
