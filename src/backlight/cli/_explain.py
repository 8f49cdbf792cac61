"""Run several methods on a batch of images and write PNGs, a grid and an HTML report.

Everything is computed before anything is written, and each file is written atomically, so a
failure leaves no output at all and a success leaves only complete files.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .. import viz
from .._registry import MethodInfo, call_options, get_method, list_methods, setting_text
from ..data.files import read_image
from ..errors import (
    BacklightError,
    DatasetError,
    OptionError,
)
from ..methods.cam import vit_reshape
from ..targets import Target
from ._errors import Failure, UsageError, cli_error
from ._outputs import staged
from ._targets import TargetSpec, choose_targets, class_index, model_output, read_task
from ._targets import predictions as top_predictions


def parse_methods(text: str) -> list[MethodInfo]:
    """``"grad_cam,guided_backprop"`` or ``"all"`` -> registered methods."""
    if text.strip() == "all":
        return list_methods()
    methods = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        try:
            methods.append(get_method(name))
        except OptionError as e:
            raise UsageError(str(e).replace("unknown method", "unknown --method")) from e
    if not methods:
        raise UsageError("--method names no method; see `backlight methods`")
    return methods


# Options that have flags of their own (or that the command sets itself).
_OWN_FLAGS = {"layer": "--layer", "progress": "--quiet"}
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: Public functions an option can take by name (``--set reshape=vit_reshape``; ``reshape=vit``
#: names the same layout).
_CALLABLES: dict[str, Callable[..., Any]] = {"vit_reshape": vit_reshape}


def parse_settings(
    texts: Sequence[str], methods: Sequence[MethodInfo]
) -> dict[str, dict[str, Any]]:
    """``--set NAME=VALUE`` / ``--set METHOD.NAME=VALUE`` -> options per method name.

    A bare NAME goes to every chosen method that takes it; METHOD.NAME to that method only.
    Values: ``true``/``false``, ``none``, integers, decimals, ``bfloat16``/``float16`` (for
    ``autocast``), ``vit_reshape`` (for ``reshape``), comma-separated lists of these, or else
    the text itself. Whether a value suits the option is the method's own check, when it runs.
    """
    settings: dict[str, dict[str, Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {text!r}: write NAME=VALUE or METHOD.NAME=VALUE")
        prefix, _, name = key.rpartition(".")
        chosen = list(methods)
        if prefix:
            try:
                wanted = get_method(prefix).name
            except OptionError as e:
                raise UsageError(f"--set {text!r}: {e}") from e
            chosen = [m for m in methods if m.name == wanted]
            if not chosen:
                raise UsageError(f"--set {text!r}: {wanted} is not among the --method names")
        if name in _OWN_FLAGS:
            raise UsageError(f"--set {text!r}: use {_OWN_FLAGS[name]} instead")
        takers = [m for m in chosen if name in m.options]
        if not takers:
            known = sorted({o for m in chosen for o in m.options} - set(_OWN_FLAGS))
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = (
                f"; did you mean {', '.join(close)}?"
                if close
                else f"; they take {', '.join(known) or 'none'}"
            )
            names = ", ".join(m.name for m in chosen)
            raise UsageError(f"--set {text!r}: no option {name!r} for {names}{hint}")
        value = _setting_value(raw.strip())
        for method in takers:
            settings.setdefault(method.name, {})[name] = value
    return settings


def _setting_value(text: str) -> Any:
    if "," in text:
        return [_setting_value(part.strip()) for part in text.split(",") if part.strip()]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    if lowered in _DTYPES:
        return _DTYPES[lowered]
    if text.removeprefix("backlight.") in _CALLABLES:
        return _CALLABLES[text.removeprefix("backlight.")]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_target(text: str | None, categories: Sequence[str] | None, classes: int) -> int | None:
    """An index, or a class name (case-insensitive; a unique prefix or substring will do)."""
    return None if text is None else class_index(text, categories, classes)


def load_images(
    paths: Sequence[str], preprocess: Callable[[Image.Image], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Decode every image (all of them, before any work): names, shown images, model inputs."""
    names: list[str] = []
    shown, inputs = [], []
    for text in paths:
        path = Path(text)
        if path.exists() and not path.is_file():
            raise Failure(f"not a file: {path}")
        try:
            image = read_image(path)
        except DatasetError as e:
            raise Failure(str(e)) from e
        a, b = preprocess(image)
        shown.append(a)
        inputs.append(b)
        stem, n = path.stem, 2
        while stem in names:
            stem, n = f"{path.stem}-{n}", n + 1
        names.append(stem)
    return names, torch.stack(shown), torch.stack(inputs)


@dataclass
class Job:
    model: nn.Module
    names: list[str]
    shown: torch.Tensor
    x: torch.Tensor
    categories: list[str] | None
    methods: list[MethodInfo]
    target: TargetSpec | None = None
    layer: str | None = None
    quick: bool = False
    progress: bool = True
    title: str = "backlight report"
    demo: bool = False
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what the report says of the run: model, weights, preprocessing, device
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    maps: dict[str, torch.Tensor]
    settings: dict[str, dict[str, Any]]
    times: dict[str, float]
    predictions: list[list[tuple[str, float]]]
    targets: list[int] | Target


def _options(method: MethodInfo, job: Job) -> dict[str, Any]:
    return call_options(
        method,
        quick=job.quick,
        demo=job.demo,
        layer=job.layer,
        progress=job.progress,  # the slow methods' own bars: passes or iterations, with an ETA
        overrides=job.overrides.get(method.name),
    )


def compute(job: Job) -> Result:
    with torch.inference_mode():
        output = model_output(job.model, job.x)
    task = read_task(output, job.categories)
    categories = job.categories
    if categories and task.classes is not None and len(categories) != task.classes:
        categories = None
    predictions = top_predictions(output, task, categories)
    targets = choose_targets(job.target, output, task, categories, job.names)
    maps: dict[str, torch.Tensor] = {}
    settings: dict[str, dict[str, Any]] = {}
    times: dict[str, float] = {}
    bar = tqdm(job.methods, desc="methods", disable=not job.progress, leave=False)
    for method in bar:
        bar.set_postfix_str(method.name)
        options = _options(method, job)
        start = time.perf_counter()
        try:
            result = method.function(job.model, job.x, targets, **options)
        except BacklightError as e:
            raise cli_error(e, f"{method.name}: ") from e
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
            raise Failure(f"{method.name}: the model raised {type(e).__name__}: {e}") from e
        times[method.name] = time.perf_counter() - start
        tensor = result
        if tensor.shape[1] not in (1, 3):
            tensor = tensor.sum(dim=1, keepdim=True)
        maps[method.name] = tensor.detach().float().cpu()
        # every option it ran with, defaults included, and the layer it chose
        settings[method.name] = {k: v for k, v in result.settings.items() if k != "progress"}
    return Result(maps, settings, times, predictions, targets)


def write(job: Job, result: Result, out: Path) -> list[Path]:
    """One overlay PNG per image and method, ``grid.png`` and ``report.html`` in ``out``: all of
    them, or (on any failure, Ctrl-C included) none (:func:`staged`)."""
    # over the image's luminance: a saturated photo's colours do not compete with the map's
    renders = {
        name: viz.overlay(job.shown, maps, background="gray") for name, maps in result.maps.items()
    }
    titles = [
        f"{name}\n{top[0][0]} {top[0][1]:.2f}"
        for name, top in zip(job.names, result.predictions, strict=True)
    ]
    picture = viz.grid(job.shown, result.maps, row_titles=titles, background="gray")
    names: list[str] = []
    with staged(out) as stage:
        for method, pictures in renders.items():
            for name, image in zip(job.names, pictures, strict=True):
                names.append(viz.save_png(stage / f"{name}_{method}.png", image).name)
        names.append(viz.save_png(stage / "grid.png", picture).name)
        report = viz.report(
            stage / "report.html",
            job.shown,
            result.maps,
            predictions=result.predictions,
            settings={
                method: {k: setting_text(v) for k, v in options.items()}
                for method, options in result.settings.items()
            },
            times=result.times,
            title=job.title,
            image_names=job.names,
            details=job.details,
            background="gray",
            about={m.name: f"{m.summary}. {m.paper}." for m in job.methods},
        )
        names.append(report.name)
    return [Path(out) / name for name in names]
