"""A grid of images × methods with titles and a colour bar per method, drawn by matplotlib.

The figure is a matplotlib :class:`~matplotlib.figure.Figure` on the Agg canvas (no pyplot: no
window, no global list of figures, no switch of the user's backend), rendered to an RGB array.
It is drawn in matplotlib's default style whatever the user's rcParams say, with its text in
DejaVu Sans, which matplotlib ships, so the same call gives the same pixels on every machine with
the same matplotlib. The layout is computed here in whole pixels at 72 dpi (one point is one
pixel) and the panels are placed with ``figimage``, which does not resample: every panel's pixels
are exactly those of :func:`overlay` or :func:`render_rgb`. matplotlib draws the titles and the
colour bars (``Figure.colorbar``). matplotlib is imported when a grid is drawn.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from ..errors import OptionError
from ._colormaps import Colormap
from ._inputs import U8, Images, MapLike, as_images, check_size
from ._overlay import Cmap
from ._panels import MethodPanels, Style, check_methods, fit, render_method
from ._scale import Mode

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["grid"]

#: The width in pixels of a line of text.
Measure: TypeAlias = Callable[[str], float]

BACKGROUND = (255, 255, 255)
INK = (25, 25, 25)
FONT = "DejaVu Sans"  # matplotlib's own font: the same text on every machine
DPI = 72  # one point is one pixel; w / 72 * 72 == w exactly for every width up to 5e6 pixels


@dataclass(frozen=True)
class Column:
    """One column of the grid: its title, one panel per row, and its colours (``None``: no bar)."""

    title: str
    panels: list[U8]
    colours: MethodPanels | None


def wrap(text: str, measure: Measure, width: float, max_lines: int) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` (words first, long words by letters),
    at most ``max_lines`` of them; a cut is marked with "…"."""
    lines = list(itertools.islice(_lines(text, measure, width), max_lines + 1))
    if len(lines) > max_lines:  # only as many lines are measured as could be shown
        lines = lines[:max_lines]
        last = lines[-1]
        while last and measure(last + "…") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def _lines(text: str, measure: Measure, width: float) -> Iterator[str]:
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if measure(candidate) <= width:
                line = candidate
                continue
            if line:
                yield line
            while len(word) > 1:  # cut by letters; measured one letter longer at a time, so
                cut = 1  # a line's worth, never the whole of a very long word
                while cut < len(word) and measure(word[: cut + 1]) <= width:
                    cut += 1
                if cut == len(word):  # the rest fits
                    break
                yield word[:cut]
                word = word[cut:]
            line = word
        yield line


def bar_labels(
    mode: Literal["minmax", "symmetric"], percentile: float, measure: Measure, width: float
) -> tuple[list[float], list[str]]:
    """Where a column's colour bar is labelled and with what: the ends of each map's own scale.

    Every map is scaled on its own, so the bar names what its ends stand for in each map: the
    percentiles of :func:`normalize` (``"p1"`` and ``"p99"``; ``"min"`` and ``"max"`` without
    clipping), or, scaled around zero, ``"−p99"``, ``"0"`` and ``"+p99"`` (of ``|v|``). Labels
    that would not fit in ``width`` side by side are left out, the middle one first.
    """
    top = "max" if percentile >= 100 else f"p{percentile:g}"
    if mode == "symmetric":
        ticks, labels = [0.0, 0.5, 1.0], [f"−{top}", "0", f"+{top}"]
    else:
        ticks, labels = [0.0, 1.0], ["min" if percentile >= 100 else f"p{100 - percentile:g}", top]
    gap = measure(" ")
    if len(labels) == 3 and sum(map(measure, labels)) + 2 * gap > width:
        labels[1] = ""
    if measure(labels[0]) + measure(labels[-1]) + gap > width:
        labels = [""] * len(labels)
    return ticks, labels


def grid(
    images: Images,
    maps: Mapping[str, MapLike],
    *,
    row_titles: Sequence[str] | None = None,
    show_images: bool = True,
    alpha: float = 0.5,
    background: Literal["image", "gray"] = "image",
    cmap: Cmap | Mapping[str, Cmap] = None,
    mode: Mode = "auto",
    percentile: float = 99.0,
    rgb_k: float = 0.15,
    cell_size: int | None = 224,
    font_size: int = 14,
) -> U8:
    """A grid with one row per image and one column per method, with titles and colour bars.

    Column titles are the method names (and "input" over the images); row titles, on the left,
    are free text, e.g. the explained class and its score. One-channel maps are shown as
    :func:`overlay`; 3-channel gradients (``reduce=None``) as :func:`render_rgb` (``"std"``).
    Under every column of overlays a colour bar shows its colormap; as each map is scaled on
    its own, the bar's ends are labelled with what they stand for in every map (``"p1"`` and
    ``"p99"``, the percentiles of :func:`normalize`; ``"min"`` and ``"max"`` with
    ``percentile=100``; ``"−p99"``, ``"0"`` and ``"+p99"``, of ``|v|``, when scaled around
    zero). The
    figure is matplotlib's, drawn with the Agg backend in matplotlib's default style, the same
    pixels for the same arguments; the panels are placed unresampled. Save the result with
    :func:`save_png`.

    Args:
        images: a tensor (N, 3, H, W) in [0, 1], an array (N, H, W, 3), or a list of images
            (sizes may differ).
        maps: method name -> maps (N, 1, h, w) or (N, 3, h, w), one per image; the columns
            follow the mapping's order.
        row_titles: one string per image (``"\\n"`` starts a new line), or ``None``.
        show_images: add a first column with the images themselves.
        alpha: the map's weight in the overlays, in [0, 1].
        background: what the maps are blended over: ``"image"`` (as it is) or ``"gray"`` (its
            luminance, easier to read over saturated photos; the command line's choice).
        cmap: one colormap for every method, or a mapping method name -> colormap (methods
            left out choose by sign); any matplotlib colormap, as in :func:`colorize`.
        mode: the scaling of :func:`normalize`, chosen once per method for all its images.
        percentile: the clipping of :func:`normalize`.
        rgb_k: the contrast ``k`` of :func:`render_rgb` for 3-channel maps.
        cell_size: every panel is resized (keeping its aspect ratio) so that its longer side
            has this many pixels; ``None`` keeps the images' own sizes.
        font_size: the titles' size in pixels (the bars' labels are a little smaller).

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
        ((208, 296, 3), dtype('uint8'))
    """
    methods = check_methods(maps)
    if not isinstance(show_images, bool):
        raise OptionError(f"`show_images` must be True or False, not {show_images!r}")
    if not methods and not show_images:
        raise OptionError("`maps` is empty and `show_images` is False: the grid would be empty")
    style = Style.checked(
        methods, alpha=alpha, cmap=cmap, mode=mode, percentile=percentile, rgb_k=rgb_k
    ).over(background)
    if cell_size is not None:
        cell_size = check_size("cell_size", cell_size)
    font_size = check_size("font_size", font_size)
    pictures = [fit(image, cell_size) for image in as_images(images)]
    titles = _check_row_titles(row_titles, len(pictures))

    columns = [Column("input", pictures, None)] if show_images else []
    for name, method_maps in methods.items():
        panels = render_method(name, method_maps, pictures, style, heat_for_rgb=False)
        if panels.rgb is not None:
            columns.append(Column(name, panels.rgb, None))
        else:
            columns.append(Column(name, panels.heat or [], panels))
    return _draw(columns, titles, font_size, style.percentile)


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


def measure_text(font_size: float) -> Measure:
    """The width in pixels of a line of text in the grid's font at ``font_size`` pixels.

    Make it inside :func:`matplotlib_style`, as the grid does: the font is chosen then.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(dpi=DPI)
    FigureCanvasAgg(figure)
    probe = figure.text(0, 0, "", fontsize=font_size, parse_math=False)

    def measure(text: str) -> float:
        probe.set_text(text)
        return float(probe.get_window_extent().width)

    return measure


@contextlib.contextmanager
def matplotlib_style() -> Iterator[None]:
    """matplotlib's default style with our font, whatever the user's rcParams, for one drawing.

    Glyphs the font lacks are drawn as boxes, without a warning for each (as Pillow did).
    """
    import matplotlib
    import matplotlib.style

    with (
        warnings.catch_warnings(),
        matplotlib.style.context("default"),
        matplotlib.rc_context({"font.family": [FONT]}),
    ):
        warnings.filterwarnings(
            "ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning
        )
        yield


# rcParams are global: two grids drawn at once in two threads could each restore the other's
# style on the way out and leave the user's settings changed, so grids are drawn one at a time.
_DRAWING = threading.Lock()


@contextlib.contextmanager
def drawing() -> Iterator[None]:
    """One matplotlib drawing in our style (:func:`matplotlib_style`), one at a time."""
    with _DRAWING, matplotlib_style():
        yield


def figure_pixels(figure: Any, dpi: float = DPI) -> U8:
    """The RGB pixels (H, W, 3) of a matplotlib figure, rendered by Agg at ``dpi``."""
    width, height = (round(v * dpi) for v in figure.get_size_inches())
    raw = io.BytesIO()
    figure.savefig(raw, format="rgba", dpi=dpi)  # the Agg canvas's pixels, RGBA row by row
    rgba = np.frombuffer(raw.getbuffer(), dtype=np.uint8).reshape(height, width, 4)
    picture: U8 = np.ascontiguousarray(rgba[:, :, :3])
    return picture


def _draw(columns: list[Column], titles: list[str] | None, font_size: int, percentile: float) -> U8:
    with drawing():
        return _render(columns, titles, font_size, percentile)


def _render(
    columns: list[Column], titles: list[str] | None, font_size: int, percentile: float
) -> U8:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import IdentityTransform

    measure = measure_text(font_size)
    label_size = max(1.0, 0.85 * font_size)
    measure_label = measure_text(label_size)
    pad = max(4, font_size // 2)
    line = round(font_size * 1.3)
    rows = len(columns[0].panels)
    cell_w = max(p.shape[1] for column in columns for p in column.panels)
    row_h = [max(column.panels[r].shape[0] for column in columns) for r in range(rows)]

    header_lines = [wrap(column.title, measure, cell_w, 2) for column in columns]
    header_h = max(len(lines) for lines in header_lines) * line + pad
    if titles is None:
        band = 0
        title_lines: list[list[str]] = [[] for _ in range(rows)]
    else:
        widest = max(measure(part) for t in titles for part in t.split("\n"))
        band = math.ceil(min(widest, max(cell_w, 10 * font_size))) + 2 * pad
        title_lines = [
            wrap(t, measure, band - 2 * pad, max(1, h // line))
            for t, h in zip(titles, row_h, strict=True)
        ]
    bar_h = max(4, round(0.6 * font_size))
    tick = max(2, font_size // 4)
    has_bars = any(column.colours is not None for column in columns)
    bars_h = bar_h + tick + 1 + round(label_size * 1.3) + pad if has_bars else 0

    width = pad + band + len(columns) * (cell_w + pad)
    height = pad + header_h + sum(h + pad for h in row_h) + bars_h
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor=_rgb(BACKGROUND))
    FigureCanvasAgg(figure)
    pixels = IdentityTransform()  # display pixels, from the bottom left

    def text(x: float, top: float, words: str, align: Literal["left", "center"]) -> None:
        figure.text(
            x,
            height - top,
            words,
            transform=pixels,
            ha=align,
            va="top",
            fontsize=font_size,
            color=_rgb(INK),
            parse_math=False,  # a "$" in a title is a dollar sign
        )

    for c, lines in enumerate(header_lines):
        left = pad + band + c * (cell_w + pad)
        top = pad + header_h - pad - len(lines) * line
        for i, words in enumerate(lines):
            text(left + cell_w / 2, top + i * line, words, "center")

    top = pad + header_h
    for r in range(rows):
        lines = title_lines[r]
        y = top + (row_h[r] - len(lines) * line) / 2
        for i, words in enumerate(lines):
            text(pad, y + i * line, words, "left")
        for c, column in enumerate(columns):
            panel = column.panels[r]
            left = pad + band + c * (cell_w + pad) + (cell_w - panel.shape[1]) // 2
            bottom = height - (top + (row_h[r] - panel.shape[0]) // 2 + panel.shape[0])
            figure.figimage(panel, xo=left, yo=bottom, origin="upper")
        top += row_h[r] + pad

    for c, column in enumerate(columns):
        if column.colours is not None:
            left = pad + band + c * (cell_w + pad)
            ticks, labels = bar_labels(column.colours.mode, percentile, measure_label, cell_w)
            rect = (left / width, (height - top - bar_h) / height, cell_w / width, bar_h / height)
            _colour_bar(figure, rect, column.colours.cmap, ticks, labels, tick, label_size)

    return figure_pixels(figure)


def _colour_bar(
    figure: Figure,
    rect: tuple[float, float, float, float],
    cmap: Colormap,
    ticks: list[float],
    labels: list[str],
    tick: int,
    label_size: float,
) -> None:
    """matplotlib's horizontal colour bar of ``cmap`` in ``rect`` (figure fractions)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    axes = figure.add_axes(rect)
    scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap.cmap)
    bar = figure.colorbar(scale, cax=axes, orientation="horizontal")
    bar.set_ticks(ticks, labels=labels)
    bar.outline.set_linewidth(0.8)
    axes.tick_params(length=tick, width=0.8, pad=1, labelsize=label_size, colors=_rgb(INK))
    ends = axes.xaxis.get_major_ticks()
    ends[0].label1.set_horizontalalignment("left")  # the end labels stay under the bar
    ends[-1].label1.set_horizontalalignment("right")


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return (color[0] / 255, color[1] / 255, color[2] / 255)
