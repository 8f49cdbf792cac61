"""One self-contained HTML file: every image, its top-5 prediction and every method's maps."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image

from ..errors import InputError, OptionError
from ._colormaps import Colormap
from ._inputs import U8, Images, MapLike, as_images, check_size
from ._overlay import Cmap
from ._panels import MethodPanels, Style, check_methods, fit, render_method
from ._png import atomic_write
from ._scale import Mode, Scale

__all__ = ["report"]

#: Top-k predictions of one image: (class name, probability) pairs, best first.
Prediction = Sequence[tuple[str, float]]

# Nothing may be fetched: images are data URIs, styles inline, no script runs.
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
:root { color-scheme: light; }
body { margin: 24px; color: #1b1b1b; background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 10px; }
.note { color: #555; margin: 0 0 16px; }
table { border-collapse: collapse; }
.methods th, .methods td { text-align: left; vertical-align: top; padding: 4px 18px 4px 0;
  border-bottom: 1px solid #e3e3e3; }
.methods th { font-weight: 600; }
.details { margin: 0 0 16px; }
.details th, .details td { text-align: left; padding: 1px 14px 1px 0; font-size: 13px; }
.details th { font-weight: 600; color: #444; }
.about { color: #555; font-size: 12px; max-width: 28em; margin-top: 2px; }
.settings { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px;
  white-space: nowrap; }
.time { white-space: nowrap; }
.sample { border-top: 2px solid #dedede; padding-top: 14px; margin-top: 22px; }
.panels { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; }
figure img { display: block; }
figcaption { font-size: 13px; margin-top: 4px; }
.muted { color: #666; font-size: 12px; }
.bar { display: block; height: 10px; border-radius: 2px; margin-top: 3px; }
.range { display: flex; justify-content: space-between; color: #666; font-size: 11px; }
.top5 td { padding: 2px 10px 2px 0; vertical-align: middle; }
.top5 .p { text-align: right; font-variant-numeric: tabular-nums; }
.top5 .meter { width: 90px; background: #eee; height: 8px; border-radius: 2px; }
.top5 .meter span { display: block; height: 8px; background: #4a7ab8; border-radius: 2px; }
.top5 tr:first-child td { font-weight: 600; }
footer { margin-top: 28px; color: #666; font-size: 12px; }
"""


def report(
    path: str | os.PathLike[str],
    images: Images,
    maps: Mapping[str, MapLike],
    *,
    predictions: Sequence[Prediction] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    times: Mapping[str, float] | None = None,
    title: str = "backlight report",
    image_names: Sequence[str] | None = None,
    details: Mapping[str, str] | None = None,
    about: Mapping[str, str] | None = None,
    alpha: float = 0.5,
    background: Literal["image", "gray"] = "image",
    cmap: Cmap | Mapping[str, Cmap] = None,
    mode: Mode = "auto",
    percentile: float = 99.0,
    rgb_k: float = 0.15,
    panel_size: int | None = 224,
) -> Path:
    """Write one self-contained HTML report of every image and every method's maps.

    For each image: the image, its top-k prediction, and each method's map as an overlay; a
    3-channel map (``reduce=None``) is shown twice, as the overlay of its channel-wise
    ``max |g|`` and as the RGB rendering of :func:`render_rgb`. A table at the top lists each
    method with its settings, its time and how its maps are coloured. Each panel has a colour
    bar with the values at its ends.

    The file needs nothing else: images are inlined as base64 PNG data URIs, the style sheet is
    inline, there is no script, web font or link, and a Content-Security-Policy forbids any
    fetch, so it opens the same offline, from an e-mail attachment or a CI artifact. It is
    written atomically (a temporary file in the same folder, then a rename).

    Args:
        path: the HTML file to write; missing folders are created.
        images: a tensor (N, 3, H, W) in [0, 1], an array (N, H, W, 3), or a list of images
            (the un-normalised inputs; sizes may differ).
        maps: method name -> maps (N, 1, h, w) or (N, 3, h, w), one per image, as the methods
            return them; shown in the mapping's order.
        predictions: per image, its top classes as ``(class name, probability)`` pairs, best
            first (any k; 5 is usual); probabilities in [0, 1].
        settings: method name -> the options it ran with (``{"layer": "layer4"}``).
        times: method name -> seconds it took (for the whole batch).
        title: the page's title and heading.
        image_names: one label per image (e.g. the file name); default "image 1", ...
        details: what the run was, shown under the title: name -> text (``{"model":
            "resnet50", "preprocessing": "centre crop 224, ..."}``).
        about: method name -> what the method computes and its paper, shown in the table.
        alpha: the map's weight in the overlays, in [0, 1].
        background: what the maps are blended over: ``"image"`` (as it is) or ``"gray"`` (its
            luminance, easier to read over saturated photos; the command line's choice).
        cmap: one colormap for all methods or method name -> colormap, any matplotlib
            colormap as in :func:`colorize`; ``None`` picks ``"coolwarm"`` for signed maps and
            ``"inferno"`` otherwise.
        mode: the scaling of :func:`normalize`, chosen once per method for all its images.
        percentile: the clipping of :func:`normalize`.
        rgb_k: the contrast ``k`` of :func:`render_rgb`.
        panel_size: each panel's longer side in pixels (images are resized to it); ``None``
            keeps the images' sizes.

    Returns:
        The path written.

    Raises:
        InputError: images or maps of the wrong shape, count or range, maps with NaN, or
            predictions that are not (name, probability) pairs.
        OptionError: an option out of range, an unknown colormap, or settings, times, names
            that do not match the methods or images.

    Example:
        >>> import tempfile, torch
        >>> from backlight.viz import report
        >>> images = torch.rand(2, 3, 32, 32)
        >>> maps = {"gradient": torch.rand(2, 1, 32, 32), "guided": torch.randn(2, 3, 32, 32)}
        >>> top = [[("tabby", 0.81), ("tiger cat", 0.12)], [("beagle", 0.64)]]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = report(
        ...         f"{folder}/report.html", images, maps, predictions=top,
        ...         settings={"guided": {"reduce": None}}, times={"gradient": 0.012},
        ...     )
        ...     page = path.read_text(encoding="utf-8")
        >>> page.count("<img "), "tabby" in page, "://" in page
        (8, True, False)
    """
    methods = check_methods(maps)
    style = Style.checked(
        methods, alpha=alpha, cmap=cmap, mode=mode, percentile=percentile, rgb_k=rgb_k
    ).over(background)
    if panel_size is not None:
        panel_size = check_size("panel_size", panel_size)
    originals = as_images(images)
    count = len(originals)
    names = _check_names(image_names, count)
    top = _check_predictions(predictions, count)
    method_settings = _check_per_method("settings", settings, methods)
    method_times = _check_per_method("times", times, methods)
    method_about = _check_per_method("about", about, methods)
    run_details = _check_texts("details", details)
    for name, text in method_about.items():
        if not isinstance(text, str):
            raise OptionError(f"`about[{name!r}]` must be a string, not {type(text).__name__}")
    for name, seconds in method_times.items():
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not (math.isfinite(seconds) and seconds >= 0)
        ):
            raise OptionError(
                f"`times[{name!r}]` must be a number of seconds >= 0, not {seconds!r}"
            )
    if not isinstance(title, str):
        raise OptionError(f"`title` must be a string, not {type(title).__name__}")

    pictures = [fit(image, panel_size) for image in originals]
    rendered = [
        render_method(name, method_maps, pictures, style, heat_for_rgb=True)
        for name, method_maps in methods.items()
    ]

    from .. import __version__  # here, not at import: the package may still be importing viz

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="backlight {_e(__version__)}">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{count} image{"s" if count != 1 else ""} × {len(rendered)} '
        f"method{'s' if len(rendered) != 1 else ''}. Each map is scaled on its own: colours "
        "compare places within one map, not values across maps.</p>",
    ]
    if run_details:
        parts.append(_details_table(run_details))
    if rendered:
        parts.append(_methods_table(rendered, method_settings, method_times, method_about, style))
    for i in range(count):
        parts.append(
            _sample(i, names[i], originals[i], pictures[i], top[i] if top else None, rendered)
        )
    parts += [
        f"<footer>Made with backlight {_e(__version__)}. Overlays: (1 − α) · "
        f"{'luminance(image)' if style.background == 'gray' else 'image'} + α · "
        f"colormap(map), α = {style.alpha:g}; maps are resized bilinearly to the image. "
        f"RGB: clip(0.5 + {style.rgb_k:g} · (g − mean) / std, 0, 1).</footer>",
        "</body>",
        "</html>",
        "",
    ]
    page = "\n".join(parts)
    encoded = page.encode("utf-8")

    def write(stream: BinaryIO) -> None:
        stream.write(encoded)

    return atomic_write(path, write)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(image: U8) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(image: U8, alt: str) -> str:
    height, width = image.shape[:2]
    return f'<img src="{_data_uri(image)}" width="{width}" height="{height}" alt="{_e(alt)}">'


def _number(value: float, digits: int = 3) -> str:
    text = f"{value:.{digits}g}"
    return "−" + text[1:] if text.startswith("-") else text  # a typographic minus


def _seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _gradient_css(cmap: Colormap) -> str:
    stops = np.linspace(0.0, 1.0, 11)
    colours = np.rint(cmap(stops) * 255).astype(int)
    spec = ", ".join(
        f"rgb({r}, {g}, {b}) {100 * s:.0f}%"
        for (r, g, b), s in zip(colours.tolist(), stops, strict=True)
    )
    return f"background: linear-gradient(to right, {spec})"


def _legend(cmap: Colormap, scale: Scale | None) -> str:
    bar = f'<span class="bar" style="{_gradient_css(cmap)}"></span>'
    if scale is None:
        return bar
    if scale.low == scale.high:
        return f'{bar}<span class="range"><span>constant {_e(_number(scale.low))}</span></span>'
    digits = 3  # enough digits to tell the ends apart (up to 7)
    while digits < 7 and _number(scale.low, digits) == _number(scale.high, digits):
        digits += 1
    low, high = _number(scale.low, digits), _number(scale.high, digits)
    ends = [low, "0", high] if scale.mode == "symmetric" else [low, high]
    labels = "".join(f"<span>{_e(end)}</span>" for end in ends)
    return f'{bar}<span class="range">{labels}</span>'


def _how(panels: MethodPanels, style: Style) -> str:
    clip = (
        "no clipping"
        if style.percentile >= 100
        else f"clipped at the {style.percentile:g}th percentile"
    )
    if panels.mode == "symmetric":
        scale = f"symmetric around 0 (|v| {clip})"
    else:
        scale = f"min-max ({clip})"
    what = "overlay of max over channels of |g|" if panels.channels == 3 else "overlay"
    text = f"{what}, {panels.cmap.name}, {scale}"
    if panels.channels == 3:
        text += f"; RGB: 0.5 + {style.rgb_k:g} · (g − mean) / std"
    return text


def _details_table(details: Mapping[str, str]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in details.items())
    return f'<table class="details">{rows}</table>'


def _methods_table(
    rendered: list[MethodPanels],
    settings: Mapping[str, Any],
    times: Mapping[str, Any],
    about: Mapping[str, str],
    style: Style,
) -> str:
    rows = ["<tr><th>method</th><th>settings</th><th>time</th><th>shown as</th></tr>"]
    for panels in rendered:
        options = settings.get(panels.name)
        if options:
            shown = "<br>".join(
                f"{_e(key)} = {_e(_value(value))}" for key, value in options.items()
            )
        else:
            shown = '<span class="muted">—</span>'
        seconds = times.get(panels.name)
        time = _e(_seconds(seconds)) if seconds is not None else '<span class="muted">—</span>'
        what = about.get(panels.name)
        name = f"<b>{_e(panels.name)}</b>"
        if what:
            name += f'<div class="about">{_e(what)}</div>'
        rows.append(
            f'<tr><td>{name}</td><td class="settings">{shown}</td>'
            f'<td class="time">{time}</td><td>{_e(_how(panels, style))}</td></tr>'
        )
    return '<table class="methods">' + "".join(rows) + "</table>"


def _predictions_table(top: Prediction) -> str:
    rows = []
    for name, probability in top:
        rows.append(
            f'<tr><td>{_e(name)}</td><td class="p">{probability:.1%}</td>'
            f'<td><div class="meter"><span style="width: {100 * probability:.1f}%"></span>'
            "</div></td></tr>"
        )
    return '<table class="top5">' + "".join(rows) + "</table>"


def _sample(
    index: int,
    name: str,
    original: U8,
    picture: U8,
    top: Prediction | None,
    rendered: list[MethodPanels],
) -> str:
    heading = f"{index + 1} · {_e(name)}"
    if top:
        heading += f' <span class="muted">predicted {_e(top[0][0])} ({top[0][1]:.1%})</span>'
    height, width = original.shape[:2]
    figures = [
        f"<figure>{_img(picture, f'{name}')}<figcaption><b>input</b> "
        f'<span class="muted">{width}×{height}</span></figcaption></figure>'
    ]
    if top:
        figures.append(
            f"<figure><figcaption><b>prediction</b></figcaption>{_predictions_table(top)}</figure>"
        )
    for panels in rendered:
        if panels.heat is not None:
            figures.append(
                f"<figure>{_img(panels.heat[index], f'{panels.name} on {name}')}"
                f"<figcaption><b>{_e(panels.name)}</b>"
                f"{_legend(panels.cmap, panels.scales[index])}</figcaption></figure>"
            )
        if panels.rgb is not None:
            figures.append(
                f"<figure>{_img(panels.rgb[index], f'{panels.name} RGB on {name}')}"
                f'<figcaption><b>{_e(panels.name)}</b> <span class="muted">RGB</span>'
                "</figcaption></figure>"
            )
    return (
        f'<section class="sample" id="image-{index + 1}"><h2>{heading}</h2>'
        f'<div class="panels">{"".join(figures)}</div></section>'
    )


def _check_texts(what: str, texts: Any) -> dict[str, str]:
    if texts is None:
        return {}
    if not isinstance(texts, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in texts.items()
    ):
        raise OptionError(f"`{what}` must map names to strings, such as {{'model': 'resnet50'}}")
    return dict(texts)


def _check_names(image_names: Any, count: int) -> list[str]:
    if image_names is None:
        return [f"image {i + 1}" for i in range(count)]
    if isinstance(image_names, str) or not isinstance(image_names, Sequence):
        raise OptionError(
            f"`image_names` must be a list of strings, one per image, not "
            f"{type(image_names).__name__}"
        )
    if len(image_names) != count:
        raise OptionError(
            f"`image_names` has {len(image_names)} entries for {count} image(s); pass one per image"
        )
    return [str(n) for n in image_names]


def _check_predictions(predictions: Any, count: int) -> list[list[tuple[str, float]]] | None:
    if predictions is None:
        return None
    if isinstance(predictions, (str, bytes)) or not isinstance(predictions, Sequence):
        raise InputError(
            f"`predictions` must be a list with one list of (class name, probability) pairs "
            f"per image, not {type(predictions).__name__}"
        )
    if len(predictions) != count:
        raise InputError(
            f"`predictions` has {len(predictions)} entries for {count} image(s); pass one list "
            "of (class name, probability) pairs per image"
        )
    checked = []
    for i, top in enumerate(predictions):
        if isinstance(top, (str, bytes)) or not isinstance(top, Sequence):
            raise InputError(
                f"`predictions[{i}]` must be a list of (class name, probability) pairs, "
                f"not {type(top).__name__}"
            )
        pairs = []
        for j, pair in enumerate(top):
            label = f"predictions[{i}][{j}]"
            if (
                isinstance(pair, (str, bytes))
                or not isinstance(pair, Sequence)
                or len(pair) != 2
                or not isinstance(pair[0], str)
            ):
                raise InputError(
                    f"`{label}` must be a (class name, probability) pair, not {pair!r}"
                )
            try:
                probability = float(pair[1])
            except (TypeError, ValueError):
                raise InputError(f"`{label}` has probability {pair[1]!r}, not a number") from None
            if not (math.isfinite(probability) and -1e-6 <= probability <= 1 + 1e-6):
                raise InputError(
                    f"`{label}` has probability {probability!r}, outside [0, 1]; pass "
                    "probabilities (softmax of the logits), not logits"
                )
            pairs.append((pair[0], min(max(probability, 0.0), 1.0)))
        checked.append(pairs)
    return checked


def _check_per_method(
    name: str, values: Mapping[str, Any] | None, methods: Mapping[str, Any]
) -> Mapping[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise OptionError(
            f"`{name}` must be a mapping from method name to value, not {type(values).__name__}"
        )
    unknown = [key for key in values if key not in methods]
    if unknown:
        raise OptionError(
            f"`{name}` names {', '.join(repr(u) for u in unknown)}, not in `maps` "
            f"({', '.join(repr(m) for m in methods)}); use the same method names"
        )
    if name == "settings":
        for key, options in values.items():
            if not isinstance(options, Mapping):
                raise OptionError(
                    f"`settings[{key!r}]` must be a mapping of option name to value, "
                    f"not {type(options).__name__}"
                )
    return values
