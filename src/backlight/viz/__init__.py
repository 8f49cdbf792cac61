"""Showing maps: normalisation, colormaps, overlays, grids, PNG files and an HTML report.

Headless: the colormaps are matplotlib's own (any name, ``_r`` too, or a matplotlib colormap
object) and :func:`grid` is a matplotlib figure drawn with the Agg backend, without pyplot;
matplotlib is imported when a colormap or a figure is first needed, not by ``import
backlight.viz``. Maps are what backlight's methods return, detached tensors (N, 1, h, w) or
(N, 3, h, w) with ``reduce=None``, or numpy arrays; images are float tensors (3, H, W) in
[0, 1], uint8 arrays (H, W, 3) or PIL images. Rendering functions return uint8 arrays
(H, W, 3) ready for :func:`save_png`, ``PIL.Image.fromarray`` or ``plt.imshow``.

Example:
    >>> import tempfile, torch
    >>> from backlight import viz
    >>> image, heat = torch.rand(3, 64, 64), torch.rand(1, 1, 7, 7)  # e.g. a Grad-CAM map
    >>> picture = viz.overlay(image, heat, alpha=0.5, cmap="jet")
    >>> picture.shape, picture.dtype
    ((64, 64, 3), dtype('uint8'))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     print(viz.save_png(f"{folder}/cam.png", picture).name)
    cam.png
"""

from __future__ import annotations

from ._colormaps import Colormap, colormap, list_colormaps
from ._grid import grid
from ._overlay import colorize, overlay
from ._png import save_png
from ._report import report
from ._scale import normalize, render_rgb

__all__ = [
    "Colormap",
    "colorize",
    "colormap",
    "grid",
    "list_colormaps",
    "normalize",
    "overlay",
    "render_rgb",
    "report",
    "save_png",
]
