"""backlight.viz: numbers checked by hand, colours checked against their definitions, files
written atomically, and a report that needs nothing but itself."""

from __future__ import annotations

import base64
import doctest
import html.parser
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image

from backlight import InputError, InputTypeError, OptionError, viz
from backlight.viz import _colormaps, _grid, _overlay, _png, _report, _scale

DOCUMENTED = {
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
}


def lightness(rgb: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """CIE L* of sRGB colours in [0, 1] (D65), written out from the definitions."""
    c = np.asarray(rgb, dtype=np.float64)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    lstar: npt.NDArray[np.float64] = np.where(
        y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * (29 / 3) ** 3
    )
    return lstar


def u8(values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    rounded: npt.NDArray[np.uint8] = np.rint(
        np.clip(np.asarray(values, dtype=np.float64), 0, 1) * 255
    ).astype(np.uint8)
    return rounded


def solid(color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> npt.NDArray[np.uint8]:
    return np.full((*size, 3), color, dtype=np.uint8)


def box(picture: npt.NDArray[np.uint8], color: npt.ArrayLike) -> tuple[int, int, int, int, int]:
    """(top, left, bottom, right, pixel count) of the pixels of exactly ``color``."""
    mask = (picture == np.asarray(color, dtype=np.uint8)).all(axis=-1)
    rows, cols = np.nonzero(mask)
    assert rows.size, f"colour {np.asarray(color).tolist()} not found"
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1, rows.size


# --- the public surface -------------------------------------------------------------------------


def test_all_is_exactly_the_documented_names() -> None:
    assert set(viz.__all__) == DOCUMENTED
    for name in viz.__all__:
        assert getattr(viz, name).__doc__, name


def test_docstring_examples_run() -> None:
    for module in (viz, _colormaps, _scale, _overlay, _grid, _png, _report):
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in doctest.DocTestFinder().find(module, module.__name__, globs={}):
            runner.run(test)
        assert runner.failures == 0, module.__name__
    for name in DOCUMENTED:
        assert ">>>" in (getattr(viz, name).__doc__ or ""), f"{name} has no example"


# --- normalisation ------------------------------------------------------------------------------


def test_minmax_of_a_small_map() -> None:
    m = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    assert viz.normalize(m, mode="minmax", percentile=100).tolist() == [[0.0, 0.25], [0.5, 1.0]]
    shifted = viz.normalize(m * 3 + 7, mode="minmax", percentile=100)  # min-max is affine-free
    np.testing.assert_allclose(shifted, [[0.0, 0.25], [0.5, 1.0]])


def test_percentile_clipping_of_an_outlier() -> None:
    values = np.arange(101.0)
    values[-1] = 1000.0  # 0, 1, ..., 99 and one outlier
    # percentiles of 101 values fall on samples: the 1st is 1.0 and the 99th is 99.0
    clipped = viz.normalize(values[None], percentile=99)[0]
    assert clipped[0] == 0.0 and clipped[1] == 0.0  # below the 1st percentile: clipped
    assert clipped[50] == pytest.approx(49 / 98)
    assert clipped[99] == 1.0 and clipped[100] == 1.0  # the outlier no longer squeezes the rest
    unclipped = viz.normalize(values[None], percentile=100)[0]
    assert unclipped[50] == pytest.approx(0.05)


def test_symmetric_scaling_keeps_zero_in_the_middle() -> None:
    m = np.array([[-2.0, -1.0, 0.0, 1.0, 4.0]])
    out = viz.normalize(m, mode="symmetric", percentile=100)
    np.testing.assert_allclose(out, [[0.25, 0.375, 0.5, 0.625, 1.0]])
    np.testing.assert_allclose(viz.normalize(-m, mode="symmetric", percentile=100), 1 - out)
    # clipping at a percentile of |v|: |v| = 0, 1, 1, 2, 4 has 75th percentile 2
    np.testing.assert_allclose(
        viz.normalize(m, mode="symmetric", percentile=75), [[0.0, 0.25, 0.5, 0.75, 1.0]]
    )


def test_auto_mode_is_decided_once_per_batch() -> None:
    maps = torch.tensor([[[[0.0, 2.0]]], [[[-1.0, 1.0]]]])  # (2, 1, 1, 2); only sample 1 signed
    out = viz.normalize(maps, percentile=100)
    assert out.shape == (2, 1, 1, 2)
    assert out[0].ravel().tolist() == [0.5, 1.0]  # symmetric: 0 is the middle, not the bottom
    assert out[1].ravel().tolist() == [0.0, 1.0]
    assert viz.normalize(maps[:1], percentile=100).ravel().tolist() == [0.0, 1.0]  # alone: min-max


def test_each_sample_is_scaled_on_its_own() -> None:
    first = torch.rand(1, 1, 6, 6)
    out = viz.normalize(torch.cat([first, 10 * first]))
    np.testing.assert_allclose(out[0], out[1])
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_maps_do_not_divide_by_zero(value: float) -> None:
    # pytest turns warnings (numpy's "invalid value in divide") into errors
    m = np.full((1, 1, 5, 5), value)
    assert (viz.normalize(m, mode="minmax") == 0.0).all()
    assert (
        viz.normalize(m, mode="symmetric") == (0.5 if value == 0 else 0.5 + 0.5 * np.sign(value))
    ).all()
    assert (viz.render_rgb(np.full((3, 4, 4), value)) == 128).all()  # mid grey


def test_a_resized_constant_map_stays_constant() -> None:
    # bilinear resizing in float64 leaves rounding noise that min-max would blow up into stripes
    cam = torch.full((1, 1, 5, 5), 0.0224, dtype=torch.float32)
    picture = viz.overlay(torch.full((3, 160, 160), 0.5), cam, alpha=1.0, cmap="viridis")
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) == 1
    np.testing.assert_array_equal(picture[0, 0], u8(viz.colormap("viridis")(0.0)))


def test_a_sparse_map_falls_back_to_its_full_range() -> None:
    m = np.zeros((20, 20))
    m[3, 4] = 2.0  # 1 non-zero value in 400: the 99th percentile is 0
    out = viz.normalize(m)
    assert out[3, 4] == 1.0 and out.sum() == 1.0


def test_normalize_keeps_shapes_and_accepts_numpy_and_torch() -> None:
    m = np.random.default_rng(0).normal(size=(2, 1, 4, 5))
    for shape in [(4, 5), (1, 4, 5), (2, 1, 4, 5)]:
        array = m[: shape[0]].reshape(shape) if len(shape) == 4 else m[0].reshape(shape)
        out = viz.normalize(array)
        assert out.shape == shape
        np.testing.assert_allclose(out, viz.normalize(torch.from_numpy(array)))


# --- RGB rendering ------------------------------------------------------------------------------


def test_rgb_rendering_formula() -> None:
    g = torch.randn(3, 5, 7, dtype=torch.float64) * 1e-3 + 2e-4
    a = g.numpy()
    for k in (0.15, 0.4):
        expected = u8(0.5 + k * (a - a.mean()) / a.std()).transpose(1, 2, 0)
        np.testing.assert_array_equal(viz.render_rgb(g, k=k), expected)
    assert (viz.render_rgb(g, k=0.4) == 0).any() and (viz.render_rgb(g, k=0.4) == 255).any()


def test_rgb_rendering_minmax() -> None:
    g = np.arange(12.0).reshape(3, 2, 2)
    out = viz.render_rgb(g, mode="minmax", percentile=100)
    np.testing.assert_array_equal(out[:, :, 0], u8([[0 / 11, 1 / 11], [2 / 11, 3 / 11]]))
    np.testing.assert_array_equal(out[1, 1], u8([3 / 11, 7 / 11, 1.0]))


def test_rgb_rendering_of_a_batch_is_per_sample() -> None:
    g = torch.randn(2, 3, 6, 6)
    out = viz.render_rgb(g)
    assert out.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(out[1], viz.render_rgb(g[1]))
    with pytest.raises(InputError, match=r"`gradient` must have 3 channel.*colorize or overlay"):
        viz.render_rgb(torch.rand(1, 1, 6, 6))
    with pytest.raises(OptionError, match=r"`k` must be a positive number"):
        viz.render_rgb(g, k=0)


# --- colormaps ----------------------------------------------------------------------------------


def matplotlib_u8(name: str, values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """matplotlib's own 8-bit colours (what imshow and imsave draw), without the alpha."""
    import matplotlib

    rgba = np.asarray(matplotlib.colormaps[name](values, bytes=True), dtype=np.uint8)
    rgb: npt.NDArray[np.uint8] = rgba[..., :3]
    return rgb


def test_importing_viz_does_not_import_matplotlib() -> None:
    code = (
        "import sys, backlight.viz; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"


def test_every_matplotlib_colormap_gives_matplotlibs_colours() -> None:
    import matplotlib

    names = viz.list_colormaps()
    assert set(names) == set(matplotlib.colormaps) and len(names) > 150  # _r names too
    assert names == tuple(sorted(names, key=lambda n: (n.lower(), n)))
    values = np.linspace(0.0, 1.0, 1001)
    ramp = values[None]  # min 0, max 1: min-max scaling leaves the values as they are
    for name in names:
        colours = viz.colorize(ramp, name, mode="minmax", percentile=100)[0]
        np.testing.assert_array_equal(colours, matplotlib_u8(name, values), err_msg=name)
        # matplotlib truncates to 8 bits; rounding its float colours is never more than 1 off
        exact = matplotlib.colormaps[name](values)[:, :3] * 255
        assert np.abs(colours - exact).max() < 1, name


def test_colorize_is_what_matplotlib_imsave_writes() -> None:
    import matplotlib.image

    heat = np.random.default_rng(4).normal(size=(12, 17))
    for name in ("jet", "viridis", "RdBu_r"):
        buffer = io.BytesIO()
        matplotlib.image.imsave(
            buffer, heat, cmap=name, vmin=heat.min(), vmax=heat.max(), format="png"
        )
        with Image.open(buffer) as png:
            written = np.asarray(png.convert("RGB"))
        ours = viz.colorize(heat, name, mode="minmax", percentile=100)
        np.testing.assert_array_equal(ours, written, err_msg=name)


def test_colormap_endpoints_are_matplotlibs() -> None:
    for name in ("inferno", "gray", "jet", "coolwarm"):
        np.testing.assert_array_equal(
            u8(viz.colormap(name)([0.0, 0.375, 1.0])), matplotlib_u8(name, [0.0, 0.375, 1.0])
        )
    assert u8(viz.colormap("jet")([0.0, 1.0])).tolist() == [[0, 0, 127], [127, 0, 0]]
    # values outside [0, 1] are clipped to the ends
    np.testing.assert_array_equal(
        viz.colormap("viridis")([-3.0, 7.0]), viz.colormap("viridis")([0.0, 1.0])
    )
    assert viz.colormap("viridis")(0.5).shape == (3,)  # RGB, matplotlib's alpha left out


def test_reversed_names() -> None:
    centres = (np.arange(256) + 0.5) / 256  # one value in each of the 256 table entries
    for name in ("inferno", "jet", "RdBu"):
        reversed_ = viz.colormap(f"{name}_r")
        assert reversed_.name == f"{name}_r" and viz.colormap(name).reversed().name == f"{name}_r"
        # matplotlib builds jet_r from reversed segments: its table may differ by one step
        assert np.abs(reversed_(centres) - viz.colormap(name)(1 - centres)).max() < 1.5 / 255
        np.testing.assert_array_equal(viz.colormap(name).reversed()(centres), reversed_(centres))
    twice = viz.colormap("inferno_r").reversed()
    assert twice.name == "inferno"  # not matplotlib's "inferno_r_r"
    np.testing.assert_array_equal(twice(centres), viz.colormap("inferno")(centres))
    assert viz.colormap("coolwarm_r").kind == "diverging"  # reversing keeps the kind


def test_names_are_looked_up_ignoring_case_when_unambiguous() -> None:
    assert viz.colormap("rdbu").name == "RdBu" and viz.colormap("Inferno").name == "inferno"
    assert viz.colormap("GREYS_R").name == "Greys_r"


@pytest.mark.parametrize("name", ["inferno", "viridis", "gray"])
def test_sequential_maps_rise_in_lightness(name: str) -> None:
    stops = lightness(viz.colormap(name)(np.linspace(0, 1, 65)))  # every 4th table entry
    assert (np.diff(stops) > 0).all(), f"{name}: L* falls at {np.argmin(np.diff(stops)) / 64}"
    assert stops[-1] - stops[0] > 70
    # between neighbouring entries 8-bit rounding may dip (viridis by 0.02 L*), never visibly
    assert np.diff(lightness(viz.colormap(name)(np.linspace(0, 1, 1001)))).min() > -0.05
    if name != "gray":  # perceptually uniform: no stretch is 6x as steep as another
        assert np.diff(stops).max() / np.diff(stops).min() < 6
    assert viz.colormap(name).kind == "sequential"


def test_jet_lightness_is_not_monotonic() -> None:  # the reason it is not the default
    assert (np.diff(lightness(viz.colormap("jet")(np.linspace(0, 1, 101)))) < 0).any()


def test_diverging_map_sends_zero_to_neutral_and_opposites_to_mirror_colours() -> None:
    cmap = viz.colormap("coolwarm")
    assert cmap.kind == "diverging"
    centre = matplotlib_u8("coolwarm", 0.5)  # matplotlib's light grey in the middle
    assert centre.tolist() == [221, 220, 219]
    d = np.linspace(0.01, 0.5, 50)
    above, below = cmap(0.5 + d), cmap(0.5 - d)
    np.testing.assert_allclose(lightness(above), lightness(below), atol=0.5)  # equally strong
    assert (above[:, 0] > above[:, 2]).all() and (below[:, 2] > below[:, 0]).all()  # red / blue
    distance = np.linalg.norm(above - cmap(0.5), axis=-1)
    assert (np.diff(distance) > 0).all()  # stronger with |x|
    # through colorize: 0 is neutral, +x and -x equally light, on opposite sides
    colours = viz.colorize(torch.tensor([[-3.0, -1.0, 0.0, 1.0, 3.0]]), percentile=100)[0]
    assert colours[2].tolist() == centre.tolist()
    assert abs(lightness(colours[0] / 255) - lightness(colours[4] / 255)) < 1.0
    assert abs(lightness(colours[1] / 255) - lightness(colours[3] / 255)) < 1.0
    assert colours[0][2] > colours[0][0] and colours[4][0] > colours[4][2]


def test_diverging_maps_are_named_and_scaled_around_zero() -> None:
    import matplotlib

    assert len(_colormaps.DIVERGING) == 30
    for name in _colormaps.DIVERGING:
        assert name in matplotlib.colormaps, name  # every name is one of matplotlib's
        assert viz.colormap(name).kind == "diverging"
    sequential = set(viz.list_colormaps()) - _colormaps.DIVERGING
    assert {"viridis", "inferno", "jet", "gray", "twilight", "turbo"} <= sequential
    assert all(viz.colormap(name).kind == "sequential" for name in sequential)
    # a positive map with a diverging colormap: 0 lands on the middle, the maximum at the top
    positive = torch.tensor([[0.0, 1.0, 2.0]])
    for name in ("RdBu", "seismic_r", "vanimo"):
        colours = viz.colorize(positive, name, percentile=100)[0]
        np.testing.assert_array_equal(colours, matplotlib_u8(name, [0.5, 0.75, 1.0]))
    # the same map with a sequential colormap is scaled min-max; mode="symmetric" overrides
    np.testing.assert_array_equal(
        viz.colorize(positive, "viridis", percentile=100)[0], matplotlib_u8("viridis", [0, 0.5, 1])
    )
    np.testing.assert_array_equal(
        viz.colorize(positive, "viridis", mode="symmetric", percentile=100)[0],
        matplotlib_u8("viridis", [0.5, 0.75, 1.0]),
    )
    # a matplotlib object is diverging by its name
    assert viz.colormap(matplotlib.colormaps["PuOr"]).kind == "diverging"


def test_colorize_picks_the_colormap_by_sign() -> None:
    positive = torch.tensor([[0.0, 1.0]])
    np.testing.assert_array_equal(
        viz.colorize(positive, percentile=100), u8(viz.colormap("inferno")([[0.0, 1.0]]))
    )
    # a diverging map scales symmetrically even when the values are all >= 0
    centre = matplotlib_u8("coolwarm", 0.5).tolist()
    assert viz.colorize(positive, "coolwarm", percentile=100)[0, 0].tolist() == centre
    signed = viz.colorize(torch.tensor([[-1.0, 0.0, 1.0]]), percentile=100)[0]
    np.testing.assert_array_equal(signed, matplotlib_u8("coolwarm", [0.0, 0.5, 1.0]))
    batch = viz.colorize(torch.rand(3, 1, 4, 4), "jet")
    assert batch.shape == (3, 4, 4, 3)


def test_unknown_colormap_names_the_argument_and_suggests() -> None:
    with pytest.raises(
        OptionError, match=r"`cmap` 'infern' is not a colormap; did you mean 'inferno'\? \("
    ):
        viz.colormap("infern")
    with pytest.raises(OptionError, match=r"did you mean 'viridis_r'\?"):  # asked for a _r
        viz.colormap("viridus_r")
    with pytest.raises(OptionError, match=r"did you mean 'RdYl(Gn|Bu)', 'RdYl(Bu|Gn)' or"):
        viz.colormap("RdYl")  # several names as close as the closest
    with pytest.raises(OptionError, match=r"`cmap` 'RdBlu' is not a colormap; did you mean 'RdBu'"):
        viz.overlay(torch.rand(3, 4, 4), torch.rand(4, 4), cmap="RdBlu")
    with pytest.raises(OptionError, match=r"'qwertyuiop' is not a colormap \(any of matplotlib's"):
        viz.colorize(torch.rand(4, 4), "qwertyuiop")  # nothing close: no suggestion
    with pytest.raises(OptionError, match=r"list_colormaps\(\).*'_r'.*matplotlib.colors.Colormap"):
        viz.colormap("infern")
    with pytest.raises(OptionError, match=r"`cmap` must be a colormap name .* not list"):
        viz.colorize(torch.rand(4, 4), ["inferno"])  # type: ignore[arg-type]


def test_matplotlib_colormap_objects_work() -> None:
    import matplotlib
    from matplotlib.colors import LinearSegmentedColormap, ListedColormap

    values = np.linspace(0.0, 1.0, 101)
    made = [
        LinearSegmentedColormap.from_list("black_red", ["black", "red"]),
        ListedColormap(["#000000", "#ff8800", "#ffffff"], name="three"),
        matplotlib.colormaps["magma"].resampled(5),
    ]
    for cmap in made:
        chosen = viz.colormap(cmap)
        assert chosen.cmap is cmap and chosen.kind == "sequential" and chosen.name == cmap.name
        colours = viz.colorize(values[None], cmap, percentile=100)[0]
        np.testing.assert_array_equal(colours, cmap(values, bytes=True)[:, :3])
    red = viz.colorize(np.array([[0.0, 2.0]]), made[0], percentile=100)[0]
    assert red.tolist() == [[0, 0, 0], [255, 0, 0]]
    # wrapped in a Colormap, a custom map can be diverging: zero goes to its middle colour
    signed = viz.Colormap(
        LinearSegmentedColormap.from_list("bwr2", ["blue", "white", "red"]), "diverging"
    )
    assert viz.colormap(signed) is signed
    np.testing.assert_array_equal(
        viz.colorize(np.array([[0.0, 1.0]]), signed, percentile=100)[0],
        signed.cmap([0.5, 1.0], bytes=True)[:, :3],
    )
    with pytest.raises(OptionError, match=r"`cmap` must be a matplotlib.colors.Colormap, not str"):
        viz.Colormap("inferno", "sequential")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"`kind` must be 'sequential' or 'diverging'"):
        viz.Colormap(made[0], "cyclic")  # type: ignore[arg-type]


# --- overlay ------------------------------------------------------------------------------------


def test_overlay_is_the_blend_formula() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    heat = rng.random((6, 8))
    alpha = 0.3
    out = viz.overlay(image, heat, alpha=alpha, cmap="viridis", percentile=100)
    scaled = (heat - heat.min()) / (heat.max() - heat.min())
    peak = divmod(int(heat.argmax()), heat.shape[1])
    for y, x in [(0, 0), (2, 5), (5, 7), peak]:
        colour = viz.colormap("viridis")(scaled[y, x])
        expected = u8((1 - alpha) * image[y, x] / 255 + alpha * colour)
        np.testing.assert_array_equal(out[y, x], expected)
    # alpha 0 is the image itself, alpha 1 the colourised map alone
    np.testing.assert_array_equal(viz.overlay(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(
        viz.overlay(image, heat, alpha=1.0, cmap="viridis", percentile=100),
        u8(viz.colormap("viridis")(scaled)),
    )


def test_overlay_resizes_the_map_bilinearly() -> None:
    image = torch.full((3, 4, 4), 0.5)
    heat = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = viz.overlay(image, heat, alpha=1.0, cmap="gray", percentile=100)
    # half-pixel centres: columns sample the 2-wide map at -0.25, 0.25, 0.75, 1.25 (clamped);
    # matplotlib's gray takes entry floor(v · 256) of its 256 greys: 0.75 is entry 192
    assert out[:, :, 0].tolist() == [[0, 64, 192, 255]] * 4


def test_overlay_accepts_tensors_arrays_pil_and_batches() -> None:
    pixels = torch.rand(2, 3, 10, 12)
    heat = torch.rand(2, 1, 5, 6)
    from_tensor = viz.overlay(pixels[0], heat[0], cmap="jet")
    as_uint8 = np.rint(pixels[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(viz.overlay(as_uint8, heat[0].numpy(), cmap="jet"), from_tensor)
    np.testing.assert_array_equal(
        viz.overlay(Image.fromarray(as_uint8), heat[0], cmap="jet"), from_tensor
    )
    np.testing.assert_array_equal(viz.overlay(pixels[0], heat[:1], cmap="jet"), from_tensor)
    batch = viz.overlay(pixels, heat, cmap="jet")
    assert batch.shape == (2, 10, 12, 3)
    np.testing.assert_array_equal(batch[0], from_tensor)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"alpha": 1.5}, OptionError, r"`alpha` must be a number in \[0, 1\]"),
        ({"alpha": -0.1}, OptionError, r"`alpha`"),
        ({"alpha": True}, OptionError, r"`alpha`"),
        ({"cmap": "magmaa"}, OptionError, r"`cmap` 'magmaa' is not a colormap"),
        ({"mode": "log"}, OptionError, r"`mode` must be one of 'auto', 'minmax', 'symmetric'"),
        ({"percentile": 30}, OptionError, r"`percentile` must be a number in \(50, 100\]"),
        ({"map": torch.full((1, 1, 4, 4), float("nan"))}, InputError, r"`map` contains 16 NaN"),
        ({"map": torch.rand(1, 3, 4, 4)}, InputError, r"`map` must have 1 channel.*abs\(\)\.amax"),
        ({"map": torch.rand(2, 1, 4, 4)}, InputError, r"`map` holds 2 map\(s\) but `image` 1"),
        ({"map": torch.rand(1, 1, 1, 4, 4)}, InputError, r"`map` must have shape .*\(5-D\)"),
        ({"map": [[0.0, 1.0]]}, InputTypeError, r"`map` must be a torch.Tensor or numpy array"),
        ({"image": torch.randn(3, 4, 4) * 2}, InputError, r"`image` has values down to .*normalis"),
        ({"image": torch.rand(3, 4, 4) * 255}, InputError, r"outside \[0, 1\]; divide it by 255"),
        (
            {"image": torch.rand(4, 4, 3)},
            InputError,
            r"`image` must be a tensor \(3, H, W\).*permute",
        ),
        ({"image": "cat.png"}, InputTypeError, r"`image` must be a torch.Tensor"),
    ],
)
def test_overlay_rejects_bad_input(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"image": torch.rand(3, 4, 4), "map": torch.rand(1, 1, 4, 4)}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        viz.overlay(arguments.pop("image"), arguments.pop("map"), **arguments)


# --- grid ---------------------------------------------------------------------------------------

RED, BLUE = (220, 20, 20), (20, 40, 230)


def _solid_grid(**options: Any) -> npt.NDArray[np.uint8]:
    images = [solid(RED), solid(BLUE)]
    maps = {"first": torch.zeros(2, 1, 4, 4), "second": torch.zeros(2, 1, 4, 4)}
    cmaps = {"first": "jet", "second": "viridis"}
    return viz.grid(images, maps, cmap=cmaps, alpha=1.0, **{"cell_size": 64, **options})


def _bar(
    picture: npt.NDArray[np.uint8], left: int, right: int, below: int
) -> npt.NDArray[np.int64]:
    """The colours along the middle of the colour bar under columns ``left:right``, found as the
    rows below ``below`` that are neither white nor ink; empty if there is no bar."""
    strip = picture[below:, left:right].astype(np.int64)
    coloured = (np.abs(strip - strip.mean(axis=-1, keepdims=True)) > 30).any(axis=-1)
    rows = np.nonzero(coloured.sum(axis=1) > (right - left) // 2)[0]
    if rows.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    middle: npt.NDArray[np.int64] = strip[(rows.min() + rows.max()) // 2, 3:-3]
    return middle


def test_grid_layout() -> None:
    picture = _solid_grid()
    jet0, viridis0 = u8(viz.colormap("jet")(0.0)), u8(viz.colormap("viridis")(0.0))
    red, blue = box(picture, RED), box(picture, BLUE)
    panels = picture[: blue[2]]  # down to the last row; the colour bars are below it
    jet, viridis = box(panels, jet0), box(panels, viridis0)
    assert red[4] == blue[4] == 64 * 64  # one 64x64 panel of each image
    assert jet[4] == viridis[4] == 2 * 64 * 64  # one panel per image for each method
    assert red[1] == blue[1] and red[2] < blue[0]  # images in one column, red above blue
    assert jet[0] == red[0] and jet[2] == blue[2] and jet[3] - jet[1] == 64  # one column
    gap = jet[1] - red[3]
    assert gap > 0 and viridis[1] - jet[3] == gap  # equal gaps between columns
    assert picture.shape[1] == viridis[3] + gap and red[1] == gap  # and around the grid
    assert picture.shape[0] > blue[2] + 2 * gap  # the colour bars below the last row
    # a title above every column, in dark ink
    for left, right in ((red[1], red[3]), (jet[1], jet[3]), (viridis[1], viridis[3])):
        assert (picture[: red[0] - 2, left:right].min(axis=-1) < 100).sum() > 20
    # panels keep their aspect ratio and native sizes when asked
    wide = viz.grid([solid(RED, (20, 40))], {}, cell_size=64)
    assert box(wide, RED)[4] == 32 * 64
    native = viz.grid([solid(RED, (20, 40))], {}, cell_size=None)
    assert box(native, RED)[4] == 20 * 40


def test_grid_has_a_colour_bar_under_each_method_column() -> None:
    images = [solid(RED), solid(BLUE), solid(BLUE)]
    ramp = torch.linspace(-1.0, 1.0, 48).reshape(3, 1, 4, 4)
    gradient = torch.zeros(3, 3, 8, 8)
    gradient[:, 0] = 1.0
    maps = {"jet": ramp.abs(), "signed": ramp, "guided": gradient}
    picture = viz.grid(images, maps, cmap={"jet": "jet"}, alpha=1.0, cell_size=96)
    blue = box(picture, BLUE)
    assert blue[4] == 2 * 96 * 96  # three rows: red, then two blue
    step, gap = blue[3] - blue[1], blue[1]  # the cell's width, the margin
    columns = [(gap + c * (step + gap), gap + c * (step + gap) + step) for c in range(4)]
    bars = [_bar(picture, left, right, blue[2]) for left, right in columns]
    assert bars[0].size == 0 and bars[3].size == 0  # no bar for the images nor for RGB
    for bar, name in ((bars[1], "jet"), (bars[2], "coolwarm")):
        assert len(bar) > 80
        # along the bar, the colormap's colours from its low end to its high end
        expected = matplotlib_u8(name, (np.arange(len(bar)) + 3.5) / step).astype(np.int64)
        other = matplotlib_u8("viridis", (np.arange(len(bar)) + 3.5) / step).astype(np.int64)
        assert np.abs(bar - expected).mean() < 6 < np.abs(bar - other).mean(), name
    # labels under the bars: "p1" and "p99" for min-max, "−p99", "0", "+p99" around zero
    ticks, labels = _grid.bar_labels("symmetric", 99.0, lambda text: 6.0 * len(text), 96)
    assert ticks == [0.0, 0.5, 1.0] and labels == ["−p99", "0", "+p99"]
    assert _grid.bar_labels("minmax", 100.0, len, 96) == ([0.0, 1.0], ["min", "max"])
    assert _grid.bar_labels("symmetric", 99.0, lambda text: 10.0 * len(text), 96)[1] == [
        "−p99",
        "",
        "+p99",
    ]  # too narrow for three labels: the middle one goes first
    assert _grid.bar_labels("minmax", 99.0, lambda text: 50.0 * len(text), 96)[1] == ["", ""]
    below = picture[blue[2] :]
    for left, right in columns[1:3]:
        assert (below[:, left:right].min(axis=-1) < 100).sum() > 20  # the labels' ink


def test_grid_draws_titles() -> None:
    plain = _solid_grid()
    titled = _solid_grid(row_titles=["tabby cat 0.93", "beagle 0.41"])
    band = titled.shape[1] - plain.shape[1]
    assert band > 50 and titled.shape[0] == plain.shape[0]
    last_row = box(plain, BLUE)[2]
    np.testing.assert_array_equal(titled[:last_row, band:], plain[:last_row])  # panels unchanged
    # the colour bars are matplotlib's, antialiased at their new place: nearly the same
    assert np.abs(titled[last_row:, band:].astype(int) - plain[last_row:]).max() <= 8
    ink = titled[:, :band].min(axis=-1) < 100
    assert ink.sum() > 100  # the row titles are drawn in dark ink
    first_row, second_row = (
        ink[: titled.shape[0] // 2 + 20].any(),
        ink[titled.shape[0] // 2 + 20 :].any(),
    )
    assert first_row and second_row
    # column titles: other method names give other header pixels, same panels
    renamed = viz.grid(
        [solid(RED), solid(BLUE)],
        {"other": torch.zeros(2, 1, 4, 4), "second": torch.zeros(2, 1, 4, 4)},
        cmap={"other": "jet", "second": "viridis"},
        alpha=1.0,
        cell_size=64,
    )
    top = box(plain, RED)[0]
    assert renamed.shape == plain.shape
    assert (renamed[:top] != plain[:top]).any()
    np.testing.assert_array_equal(renamed[top:], plain[top:])


def test_grid_is_the_same_whatever_the_users_matplotlib_settings() -> None:
    import matplotlib

    images, maps = torch.rand(2, 3, 16, 16), {"m": torch.randn(2, 1, 4, 4)}
    titles = ["price $5 and $6", "snow \N{SNOWMAN} and 猫"]  # a "$" is no math; missing glyphs
    before = matplotlib.rcParams.copy()
    first = viz.grid(images, maps, row_titles=titles, cell_size=48)
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert first.flags.c_contiguous
    style = {
        "font.family": "serif",
        "font.size": 30,
        "text.color": "red",
        "figure.facecolor": "black",
        "xtick.labelsize": 3,
        "text.antialiased": False,
    }
    with matplotlib.rc_context(style):
        np.testing.assert_array_equal(
            viz.grid(images, maps, row_titles=titles, cell_size=48), first
        )
    assert matplotlib.rcParams.copy() == before  # and the user's settings are left alone
    np.testing.assert_array_equal(viz.grid(images, maps, row_titles=titles, cell_size=48), first)
    # a matplotlib colormap object is accepted here too
    cmap = matplotlib.colormaps["magma"]
    grey = torch.full((1, 3, 8, 8), 0.5)
    picture = viz.grid(grey, {"m": torch.zeros(1, 1, 2, 2)}, cmap=cmap, alpha=1.0, cell_size=32)
    assert box(picture[:-20], cmap(0.0, bytes=True)[:3])[4] >= 32 * 32


def test_grid_shows_rgb_gradients_as_rgb() -> None:
    gradient = torch.zeros(1, 3, 8, 8)
    gradient[:, 0] = 1.0
    gradient[:, 2] = -1.0
    picture = viz.grid([solid(RED)], {"guided": gradient}, cell_size=32)
    expected = viz.render_rgb(gradient[0])[0, 0]  # constant per channel: one colour
    assert box(picture, expected)[4] == 32 * 32


def test_grid_rejects_bad_options() -> None:
    images, maps = torch.rand(2, 3, 8, 8), {"gradient": torch.rand(2, 1, 8, 8)}
    with pytest.raises(OptionError, match=r"`row_titles` has 1 entries for 2 image"):
        viz.grid(images, maps, row_titles=["one"])
    with pytest.raises(InputError, match=r"`maps\['gradient'\]` holds 2 map\(s\) but there are 3"):
        viz.grid(torch.rand(3, 3, 8, 8), maps)
    with pytest.raises(InputError, match=r"`maps\['gradient'\]` has 2 channels"):
        viz.grid(images, {"gradient": torch.rand(2, 2, 8, 8)})
    with pytest.raises(OptionError, match=r"`cmap` names 'gradiant'.*not in `maps`"):
        viz.grid(images, maps, cmap={"gradiant": "jet"})
    with pytest.raises(OptionError, match=r"`cell_size` must be a positive integer"):
        viz.grid(images, maps, cell_size=0)
    with pytest.raises(InputTypeError, match=r"`maps` must be a mapping"):
        viz.grid(images, torch.rand(2, 1, 8, 8))  # type: ignore[arg-type]


def test_wrap_breaks_long_titles_and_marks_cuts() -> None:
    with _grid.matplotlib_style():
        measure = _grid.measure_text(14)
    assert measure("") == 0 and 0 < measure("i") < measure("W") < measure("WW")
    lines = _grid.wrap("German shepherd, German shepherd dog, Alsatian", measure, 100, 3)
    assert len(lines) == 3 and all(measure(line) <= 100 for line in lines)
    assert lines[-1].endswith("…")
    assert "".join(_grid.wrap("Supercalifragilistic", measure, 40, 10)) == "Supercalifragilistic"


# --- PNG files ----------------------------------------------------------------------------------


def test_png_round_trip_creates_folders(tmp_path: Path) -> None:
    picture = np.random.default_rng(2).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    path = viz.save_png(tmp_path / "a" / "b" / "maps.png", picture)
    assert path == tmp_path / "a" / "b" / "maps.png"
    with Image.open(path) as reopened:
        assert reopened.format == "PNG"
        np.testing.assert_array_equal(np.asarray(reopened), picture)
    pixels = torch.rand(3, 5, 4)
    with Image.open(viz.save_png(tmp_path / "tensor.png", pixels)) as reopened:
        np.testing.assert_array_equal(np.asarray(reopened), u8(pixels.permute(1, 2, 0).numpy()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "tensor.png"]  # no temp files


def test_png_gets_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = viz.save_png(tmp_path / "x.png", solid(RED))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not the 0o600 of tempfile


def test_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = viz.save_png(tmp_path / "maps.png", solid(RED))
    before = path.read_bytes()

    def broken_save(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        fp.write(b"\x89PNG half of a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        viz.save_png(path, solid(BLUE))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]
    with pytest.raises(InputError):  # a bad image fails before anything is written
        viz.save_png(tmp_path / "new.png", np.zeros((4, 4, 3), dtype=np.int64))
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]


# --- the HTML report ----------------------------------------------------------------------------


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _parse(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def _report_inputs() -> dict[str, Any]:
    torch.manual_seed(3)
    return {
        "images": torch.rand(2, 3, 24, 32),
        "maps": {
            "gradient": torch.rand(2, 1, 24, 32),
            "guided_backprop": torch.randn(2, 3, 24, 32),
            "grad_cam": torch.zeros(2, 1, 3, 4),  # a ReLU'd map that is zero everywhere
        },
        "predictions": [
            [("tabby, tabby cat", 0.8312), ("tiger cat", 0.1), ("<b>bold</b> & co", 0.05)],
            [("beagle", 0.641), ("basset", 0.2)],
        ],
        "settings": {"guided_backprop": {"reduce": None, "layer": "layer4"}},
        "times": {"gradient": 0.012, "grad_cam": 2.5},
        "title": "ResNet-50 on two pictures",
        "image_names": ["cat.jpg", "dog.jpg"],
    }


def test_report_is_one_self_contained_file(tmp_path: Path) -> None:
    inputs = _report_inputs()
    path = viz.report(tmp_path / "out" / "report.html", **inputs)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["report.html"]
    page = path.read_text(encoding="utf-8")
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "DATA", page)
    for reference in ("http://", "https://", 'src="//', "url(", "@import", "@font-face"):
        assert reference not in outside.lower(), reference
    tags = _parse(page)
    names = {tag for tag, _ in tags}
    assert not names & {"link", "script", "iframe", "object", "embed", "base", "video", "audio"}
    assert all("href" not in attrs and "srcset" not in attrs for _, attrs in tags)
    policy = [a["content"] for t, a in tags if t == "meta" and a.get("http-equiv")]
    assert policy == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]

    images = [attrs for tag, attrs in tags if tag == "img"]
    # per image: the input, two one-channel overlays, and overlay + RGB for the 3-channel map
    assert len(images) == 2 * (1 + 2 + 2)
    for attrs in images:
        source = attrs["src"] or ""
        assert source.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as png:
            assert png.format == "PNG"
            assert png.size == (int(attrs["width"] or 0), int(attrs["height"] or 0)) == (224, 168)


def test_report_shows_predictions_settings_and_times(tmp_path: Path) -> None:
    page = viz.report(tmp_path / "report.html", **_report_inputs()).read_text(encoding="utf-8")
    for text in (
        "<title>ResNet-50 on two pictures</title>",
        "tabby, tabby cat",
        "83.1%",
        "tiger cat",
        "10.0%",
        "beagle",
        "64.1%",
        "basset",
        "20.0%",
        "cat.jpg",
        "dog.jpg",
        "reduce = None",
        "layer = layer4",
        "12 ms",
        "2.50 s",
        "constant 0",  # the all-zero map is labelled, not divided by zero
    ):
        assert text in page, text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page and "<b>bold</b>" not in page  # escaped
    assert page.count('class="bar"') == 2 * 3  # one colour bar per overlay


def test_report_rejects_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"predictions": [[("cat", 0.9)]]}, InputError, r"`predictions` has 1 entries for 2"),
        (
            {"predictions": [[("cat", 3.2)], [("dog", 0.5)]]},
            InputError,
            r"`predictions\[0\]\[0\]` has probability 3.2, outside \[0, 1\].*not logits",
        ),
        ({"predictions": [[("cat",)], [("dog", 0.5)]]}, InputError, r"`predictions\[0\]\[0\]`"),
        ({"settings": {"gradiant": {}}}, OptionError, r"`settings` names 'gradiant'"),
        ({"times": {"gradient": -1.0}}, OptionError, r"`times\['gradient'\]` must be a number"),
        ({"image_names": ["one"]}, OptionError, r"`image_names` has 1 entries for 2"),
        ({"panel_size": 2.5}, OptionError, r"`panel_size` must be a positive integer"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            viz.report(path, **{**_report_inputs(), **change})
    inputs = _report_inputs()
    inputs["maps"]["gradient"][1, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match=r"`maps\['gradient'\]` contains 1 NaN"):
        viz.report(path, **inputs)
    assert list(tmp_path.iterdir()) == []


def test_report_replaces_an_old_report_atomically(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text("old report")
    inputs = _report_inputs()
    viz.report(path, **inputs)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_gray_background_blends_over_the_luminance() -> None:
    image = torch.zeros(3, 4, 4)
    image[0] = 1.0  # pure red: luma 0.299
    heat = torch.rand(1, 4, 4)
    under = viz.overlay(image, heat, alpha=0.0, background="gray")
    assert np.all(under == round(0.299 * 255))
    full = viz.overlay(image, heat, alpha=1.0, cmap="viridis", background="gray")
    np.testing.assert_array_equal(full, viz.overlay(image, heat, alpha=1.0, cmap="viridis"))
    half = viz.overlay(image, heat, alpha=0.5, cmap="gray", percentile=100, background="gray")
    expected = 0.5 * 0.299 + 0.5 * np.asarray(viz.normalize(heat, percentile=100))[0]
    np.testing.assert_allclose(half[..., 0] / 255, expected, atol=1 / 255)
    with pytest.raises(OptionError, match="`background` must be 'image'"):
        viz.overlay(image, heat, background="grey")
    maps = {"m": heat[None]}
    gray_grid = viz.grid(image[None], maps, background="gray", cell_size=32)
    assert not np.array_equal(gray_grid, viz.grid(image[None], maps, cell_size=32))
