"""Colormaps in numpy: control points in sRGB, linear interpolation between them.

``inferno`` and ``viridis`` are our own maps in the manner of matplotlib's (black-purple-red-yellow
and purple-blue-green-yellow). Their control points were chosen in CIELAB with the lightness L*
rising in equal steps (from 1 to 97, and from 16 to 91) and then rounded to sRGB, so that equal
steps in the map are equal steps in perceived brightness and the map still reads in greyscale.
They look like matplotlib's maps but are not the same numbers.

``jet`` is the classic rainbow (dark blue, blue, cyan, yellow, red, dark red) that most notebooks
use; its lightness is not monotonic, so it exaggerates some differences and hides others.

``coolwarm`` is diverging, for signed maps: blue for negative, a light neutral grey (232, 232, 232)
at zero, red for positive. Both halves have the same lightness at the same distance from the
middle (L* 92 at zero, 65 at ±0.5, 38 at ±1), so +x and -x look equally strong.

Every map is also available reversed with the suffix ``_r`` (``"inferno_r"``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import OptionError

__all__ = ["Colormap", "colormap", "list_colormaps"]

Kind = Literal["sequential", "diverging"]


@dataclass(frozen=True)
class Colormap:
    """A colormap: colours at positions in [0, 1], linearly interpolated in sRGB.

    Attributes:
        name: the name it is looked up by.
        kind: ``"sequential"`` (low to high) or ``"diverging"`` (negative, neutral at 0.5,
            positive); :func:`backlight.viz.colorize` scales maps symmetrically around zero for
            diverging maps, so that a zero value lands on the neutral colour.
        positions: increasing, from 0 to 1.
        colors: one (r, g, b) triple in [0, 1] per position.

    Example:
        >>> from backlight.viz import Colormap
        >>> red = Colormap("black_red", "sequential", (0.0, 1.0), ((0, 0, 0), (1, 0, 0)))
        >>> red([0.0, 0.5, 1.0]).tolist()
        [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [1.0, 0.0, 0.0]]
    """

    name: str
    kind: Kind
    positions: tuple[float, ...]
    colors: tuple[tuple[float, float, float], ...]

    def __post_init__(self) -> None:
        if self.kind not in ("sequential", "diverging"):
            raise OptionError(f"`kind` must be 'sequential' or 'diverging', not {self.kind!r}")
        positions = np.asarray(self.positions, dtype=np.float64)
        colors = np.asarray(self.colors, dtype=np.float64)
        if positions.ndim != 1 or positions.size < 2:
            raise OptionError(f"`positions` must hold at least two numbers, not {self.positions!r}")
        if positions[0] != 0 or positions[-1] != 1 or not (np.diff(positions) > 0).all():
            raise OptionError(
                f"`positions` must increase strictly from 0 to 1, not {self.positions!r}"
            )
        if colors.shape != (positions.size, 3) or not ((colors >= 0) & (colors <= 1)).all():
            raise OptionError(
                f"`colors` must be {positions.size} (r, g, b) triples in [0, 1] (one per "
                f"position); divide 0-255 colours by 255"
            )
        # normalise the stored tuples, so that maps compare equal however they were written
        object.__setattr__(self, "positions", tuple(float(p) for p in positions))
        object.__setattr__(
            self, "colors", tuple((float(r), float(g), float(b)) for r, g, b in colors)
        )

    def __call__(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Colours for ``values`` in [0, 1] (clipped): an array of shape ``values.shape + (3,)``."""
        v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
        table = np.asarray(self.colors)
        return np.stack([np.interp(v, self.positions, table[:, c]) for c in range(3)], axis=-1)

    def reversed(self) -> Colormap:
        """The same colours in the opposite order, named with ``_r`` added (or removed)."""
        name = self.name[:-2] if self.name.endswith("_r") else f"{self.name}_r"
        positions = tuple(1.0 - p for p in reversed(self.positions))
        return Colormap(name, self.kind, positions, tuple(reversed(self.colors)))


def _from_255(
    name: str, kind: Kind, colors: Sequence[tuple[float, float, float]], positions: Any = None
) -> Colormap:
    if positions is None:  # evenly spaced
        positions = np.linspace(0.0, 1.0, len(colors))
    return Colormap(
        name,
        kind,
        tuple(float(p) for p in positions),
        tuple((r / 255, g / 255, b / 255) for r, g, b in colors),
    )


_MAPS: dict[str, Colormap] = {
    cmap.name: cmap
    for cmap in (
        _from_255(
            "inferno",
            "sequential",
            [
                (3, 3, 8),
                (27, 26, 80),
                (90, 31, 116),
                (159, 28, 119),
                (214, 50, 104),
                (247, 99, 74),
                (255, 154, 86),
                (255, 203, 102),
                (255, 247, 185),
            ],
        ),
        _from_255(
            "viridis",
            "sequential",
            [
                (51, 24, 90),
                (32, 56, 121),
                (28, 86, 126),
                (22, 114, 136),
                (38, 142, 138),
                (62, 171, 123),
                (116, 196, 93),
                (179, 217, 48),
                (238, 236, 50),
            ],
        ),
        _from_255("gray", "sequential", [(0, 0, 0), (255, 255, 255)]),
        # the classic definition: each channel is a trapezoid, 1.5 - |4x - k| clipped to [0, 1]
        _from_255(
            "jet",
            "sequential",
            [(0, 0, 127.5), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (127.5, 0, 0)],
            positions=(0, 1 / 8, 3 / 8, 5 / 8, 7 / 8, 1),
        ),
        _from_255(
            "coolwarm",
            "diverging",
            [(35, 89, 163), (124, 159, 216), (232, 232, 232), (221, 135, 120), (166, 44, 36)],
        ),
    )
}


def list_colormaps() -> tuple[str, ...]:
    """The names :func:`colormap` knows (each also works with ``_r`` for the reversed map).

    Example:
        >>> from backlight.viz import list_colormaps
        >>> list_colormaps()
        ('coolwarm', 'gray', 'inferno', 'jet', 'viridis')
    """
    return tuple(sorted(_MAPS))


def colormap(name: str | Colormap) -> Colormap:
    """The colormap called ``name`` (``"inferno"``, ``"jet"``, ``"coolwarm_r"``, ...).

    Args:
        name: a name from :func:`list_colormaps`, optionally with ``_r``; a :class:`Colormap` is
            returned as it is.

    Returns:
        The :class:`Colormap`.

    Raises:
        OptionError: no colormap has that name.

    Example:
        >>> from backlight.viz import colormap
        >>> (colormap("jet")([0.0, 1.0]) * 255).round().tolist()
        [[0.0, 0.0, 128.0], [128.0, 0.0, 0.0]]
    """
    if isinstance(name, Colormap):
        return name
    if isinstance(name, str):
        key = name.lower()
        base = key[:-2] if key.endswith("_r") else key
        if base in _MAPS:
            return _MAPS[base].reversed() if key.endswith("_r") else _MAPS[base]
    known = list_colormaps()
    close = difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise OptionError(
        f"`cmap` {name!r} is not a colormap{hint} (choose one of "
        f"{', '.join(repr(k) for k in known)}, optionally with '_r', or pass a Colormap)"
    )
