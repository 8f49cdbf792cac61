"""Colormaps: matplotlib's own, looked up by name, and whether backlight scales them around zero.

Any colormap matplotlib knows works, by name (``"inferno"``, ``"jet"``, ``"RdBu"``; the case may
differ, ``"rdbu"``, where that is unambiguous) and reversed with ``_r`` (``"inferno_r"``), and so
does a :class:`matplotlib.colors.Colormap` object (``LinearSegmentedColormap.from_list(...)``,
``matplotlib.colormaps["jet"].resampled(8)``) or a map registered with
``matplotlib.colormaps.register``. The colours are matplotlib's numbers: a value ``v`` in [0, 1]
takes entry ``floor(v · N)`` of the map's table (N = 256 for the built-in maps), in 8 bits as
matplotlib makes them (``cmap(v, bytes=True)``, which truncates rather than rounds), so a
colourised map is, pixel for pixel, what ``matplotlib.pyplot.imsave`` writes for the same scaled
values. The map's alpha channel is not used.

Diverging maps. matplotlib does not mark which maps diverge, so backlight keeps the list,
:data:`DIVERGING`: the maps matplotlib's colormap reference files as diverging (``BrBG``,
``PRGn``, ``PiYG``, ``PuOr``, ``RdBu``, ``RdGy``, ``RdYlBu``, ``RdYlGn``, ``Spectral``, ``berlin``,
``bwr``, ``coolwarm``, ``managua``, ``seismic``, ``vanimo``) and their ``_r``. A map of one of
these names (a matplotlib object too, by its ``.name``) is scaled symmetrically around zero with
``mode="auto"``, so that zero lands on the neutral middle colour (``cmap(0.5)``) and ``+x`` and
``-x`` at equal distances from it; every other map is scaled min-max. For a diverging map of your
own, pass ``mode="symmetric"`` or wrap it as ``Colormap(cmap, "diverging")``.

The public names, and why. :func:`list_colormaps` returns the names matplotlib has registered,
``_r`` ones included, because those are exactly the names ``cmap=`` accepts (maps a user
registers appear too). :class:`Colormap` is kept, but no longer holds colours of its own: it is
what :func:`colormap` returns, a matplotlib colormap together with its kind, and calling it gives
RGB colours as backlight draws them. A bare matplotlib colormap cannot say that it diverges and
gives RGBA; the pair can, and wrapping a custom map is the one way to mark it diverging. Custom
colours are made the matplotlib way (the old control-point constructor is gone: a second way to
build a colormap would only be a weaker copy of matplotlib's).

matplotlib is imported when a colormap is first needed (in :func:`colormap`, when a
:class:`Colormap` is made, in :func:`list_colormaps`), never by ``import backlight.viz``: that
takes about 0.1 s (and matplotlib's figure machinery, for :func:`grid`, about 0.5 s more).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from .._choices import is_choice
from ..errors import OptionError

if TYPE_CHECKING:
    import matplotlib.colors

__all__ = ["DIVERGING", "Colormap", "colormap", "list_colormaps"]

Kind = Literal["sequential", "diverging"]

_KINDS = ("sequential", "diverging")

_DIVERGING_MAPS = (
    "BrBG",
    "PRGn",
    "PiYG",
    "PuOr",
    "RdBu",
    "RdGy",
    "RdYlBu",
    "RdYlGn",
    "Spectral",
    "berlin",
    "bwr",
    "coolwarm",
    "managua",
    "seismic",
    "vanimo",
)

#: The names of matplotlib's diverging colormaps, each also reversed (``"RdBu_r"``).
DIVERGING: frozenset[str] = frozenset((*_DIVERGING_MAPS, *(f"{n}_r" for n in _DIVERGING_MAPS)))


@dataclass(frozen=True)
class Colormap:
    """A matplotlib colormap as backlight draws with it: RGB colours and a kind.

    :func:`colormap` makes these from names and matplotlib objects (with the kind from
    :data:`DIVERGING`); make one yourself to mark a custom matplotlib map as diverging. Anywhere
    ``cmap=`` is accepted, so is a :class:`Colormap`.

    Attributes:
        cmap: the :class:`matplotlib.colors.Colormap`.
        kind: ``"sequential"`` (low to high) or ``"diverging"`` (negative, neutral at 0.5,
            positive); :func:`backlight.viz.colorize` scales maps symmetrically around zero for
            diverging maps, so that a zero value lands on the neutral colour.

    Example:
        >>> import torch
        >>> from matplotlib.colors import LinearSegmentedColormap
        >>> from backlight.viz import Colormap, colorize
        >>> fade = LinearSegmentedColormap.from_list("blue_white_red", ["blue", "white", "red"])
        >>> signed = Colormap(fade, "diverging")
        >>> signed.name, signed([0.0, 0.5, 1.0]).round(3).tolist()
        ('blue_white_red', [[0.0, 0.0, 1.0], [1.0, 0.996, 0.996], [1.0, 0.0, 0.0]])
        >>> colorize(torch.tensor([[0.0, 2.0]]), signed)[0, 0].tolist()  # zero is the middle
        [255, 254, 254]
    """

    cmap: matplotlib.colors.Colormap
    kind: Kind

    def __post_init__(self) -> None:
        import matplotlib.colors

        if not isinstance(self.cmap, matplotlib.colors.Colormap):
            raise OptionError(
                f"`cmap` must be a matplotlib.colors.Colormap, not {type(self.cmap).__name__}; "
                "look a name up with backlight.viz.colormap('inferno')"
            )
        if not is_choice(self.kind, _KINDS):
            raise OptionError(f"`kind` must be 'sequential' or 'diverging', not {self.kind!r}")

    @property
    def name(self) -> str:
        """The matplotlib colormap's name (``"inferno_r"``)."""
        return self.cmap.name

    def __call__(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Colours for ``values`` in [0, 1] (clipped): an array of shape ``values.shape + (3,)``.

        The colours are matplotlib's 8-bit ones, ``cmap(v, bytes=True)``, divided by 255.
        """
        v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
        rgba = np.asarray(self.cmap(v, bytes=True), dtype=np.float64)
        rgb: npt.NDArray[np.float64] = rgba[..., :3] / 255
        return rgb

    def reversed(self) -> Colormap:
        """The same colours in the opposite order, named with ``_r`` added (or removed)."""
        name = self.name[:-2] if self.name.endswith("_r") else f"{self.name}_r"
        return Colormap(self.cmap.reversed(name=name), self.kind)  # matplotlib would add "_r_r"


def list_colormaps() -> tuple[str, ...]:
    """The names :func:`colormap` knows: every colormap matplotlib has registered.

    Reversed maps are in the list as well (``"inferno_r"``), and so are maps registered with
    ``matplotlib.colormaps.register``; the order is alphabetical, ignoring case.

    Example:
        >>> from backlight.viz import list_colormaps
        >>> names = list_colormaps()
        >>> "inferno" in names, "RdBu_r" in names, len(names) > 100
        (True, True, True)
    """
    import matplotlib

    return tuple(sorted(matplotlib.colormaps, key=lambda n: (n.lower(), n)))


def colormap(name: str | Colormap | matplotlib.colors.Colormap) -> Colormap:
    """The colormap called ``name`` (``"inferno"``, ``"jet"``, ``"RdBu_r"``, ...).

    Args:
        name: a name from :func:`list_colormaps` (matplotlib's names; the case may differ where
            that is unambiguous), a :class:`matplotlib.colors.Colormap` (diverging if its name
            is in :data:`DIVERGING`), or a :class:`Colormap`, which is returned as it is.

    Returns:
        The :class:`Colormap`.

    Raises:
        OptionError: no colormap has that name, or ``name`` is neither a name nor a colormap.

    Example:
        >>> from backlight.viz import colormap
        >>> (colormap("jet")([0.0, 1.0]) * 255).round().tolist()  # as matplotlib draws them
        [[0.0, 0.0, 127.0], [127.0, 0.0, 0.0]]
        >>> colormap("RdBu_r").kind, colormap("viridis").kind
        ('diverging', 'sequential')
    """
    if isinstance(name, Colormap):
        return name
    import matplotlib
    import matplotlib.colors

    if isinstance(name, matplotlib.colors.Colormap):
        return Colormap(name, _kind(name.name))
    if not isinstance(name, str):
        raise OptionError(
            f"`cmap` must be a colormap name such as 'inferno' or a matplotlib.colors.Colormap, "
            f"not {type(name).__name__}"
        )
    names = list(matplotlib.colormaps)
    found = _lookup(name, names)
    if found is None:
        raise OptionError(
            f"`cmap` {name!r} is not a colormap{_hint(name, names)} (any of matplotlib's "
            "colormaps works, see backlight.viz.list_colormaps(), each also reversed with "
            "'_r'; or pass a matplotlib.colors.Colormap)"
        )
    return Colormap(matplotlib.colormaps[found], _kind(found))


def _kind(name: str) -> Kind:
    return "diverging" if name in DIVERGING else "sequential"


def _lookup(name: str, names: list[str]) -> str | None:
    """``name`` itself if registered, else the one registered name equal to it ignoring case."""
    if name in names:
        return name
    folded = [n for n in names if n.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def _hint(name: str, names: Iterable[str]) -> str:
    """``"; did you mean 'inferno'?"``: the closest names (up to three, as close as the best), or
    nothing when no name is close."""
    by_folded = {n.lower(): n for n in names}
    query = name.lower()
    close = difflib.get_close_matches(query, by_folded, n=6, cutoff=0.6)
    if not close:
        return ""
    best = difflib.SequenceMatcher(None, query, close[0]).ratio()
    close = [c for c in close if difflib.SequenceMatcher(None, query, c).ratio() >= best - 0.1]
    if not query.endswith("_r"):  # 'inferno' is the answer to 'infern', not 'inferno_r' too
        close = [c for c in close if not (c.endswith("_r") and c[:-2] in close)]
    quoted = [repr(by_folded[c]) for c in close[:3]]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"; did you mean {listed}?"
