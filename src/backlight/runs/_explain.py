"""One batch of decoded images explained by every method of a run: the rows of the output.

Both engines call :class:`Explainer`: the local one in the main process, Ray's in each actor.
It holds the model (loaded once per process) and the plan, and turns a :class:`Decoded` batch
into map rows and error rows. The batches come from the source's fixed order, and the methods
that draw random numbers (those with a ``seed`` option: RISE, extremal perturbation,
SmoothGrad) run one image at a time with a seed derived from the image's id, so every map is
the same whatever the batch size, the engine, or where a resumed run started.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .._checks import model_device
from .._registry import MethodInfo, get_method
from ..data.files import read_image
from ..errors import (
    BacklightError,
    DatasetError,
    LayerError,
    LayerNotFoundError,
    OptionError,
    TargetError,
)
from ._sources import Record

Preprocess = Callable[[Image.Image], tuple[torch.Tensor, torch.Tensor]]
#: Each method's maps of one batch: the ids explained, and their maps (n, C, h, w).
Maps = dict[str, tuple[list[str], torch.Tensor]]

#: Errors of the run's settings, not of one image: they stop the run.
SETTINGS_ERRORS = (LayerNotFoundError, LayerError, OptionError)


@dataclass
class Decoded:
    """A batch as the readers hand it over: the images that decoded, and the ones that did not.

    Attributes:
        ids: the good images' ids, in source order.
        x: their model inputs (n, C, H, W).
        shown: the images as shown (n, 3, H, W) in [0, 1], when overlays are wanted; else None.
        targets: the source's target for each good image (or None).
        errors: ``(id, path, reason)`` for the images that could not be read.
        size: how many records the batch covered (good and bad).
    """

    ids: list[str]
    x: torch.Tensor | None
    shown: torch.Tensor | None
    targets: list[str | int | None]
    errors: list[tuple[str, str, str]]
    size: int


def decode(records: Sequence[Record], preprocess: Preprocess, keep_shown: bool) -> Decoded:
    """Read and preprocess ``records`` (in a reader process); a bad image becomes an error."""
    ids: list[str] = []
    inputs: list[torch.Tensor] = []
    shown: list[torch.Tensor] = []
    targets: list[str | int | None] = []
    errors: list[tuple[str, str, str]] = []
    for record in records:
        where = record.path or ""
        try:
            if record.problem is not None:
                raise DatasetError(record.problem)
            image = read_image(record.data if record.data is not None else where)
            seen, model_input = preprocess(image)
        except DatasetError as e:
            errors.append((record.id, where, str(e)))
            continue
        except (OSError, ValueError, RuntimeError, TypeError) as e:  # the preprocessing's own
            errors.append((record.id, where, f"cannot preprocess: {type(e).__name__}: {e}"))
            continue
        ids.append(record.id)
        inputs.append(model_input)
        targets.append(record.target)
        if keep_shown:
            shown.append(seen)
    return Decoded(
        ids=ids,
        x=torch.stack(inputs) if inputs else None,
        shown=torch.stack(shown) if shown else None,
        targets=targets,
        errors=errors,
        size=len(records),
    )


@dataclass
class Plan:
    """What to compute, picklable (Ray sends it to every actor).

    Attributes:
        methods: registered method names, in order.
        options: each method's options (quick settings, ``--set`` values, the layer).
        target: ``None`` for each image's predicted class, an int for one class for all, or
            ``"source"`` for the class the source gives (folder name, column, ``.cls``).
        categories: the model's class names, to map the source's names and name the classes.
        dtype: ``"float32"`` or ``"float16"``, how maps are stored.
    """

    methods: tuple[str, ...]
    options: dict[str, dict[str, Any]]
    target: int | str | None = None
    categories: list[str] | None = None
    dtype: str = "float32"
    lookup: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.lookup = {name.lower(): i for i, name in enumerate(self.categories or [])}

    def requested(self) -> dict[str, dict[str, Any]]:
        """Each method's settings as requested: its signature's defaults under its options
        (what the manifest records and a resumed run must match)."""
        return {name: settings(get_method(name), self.options[name]) for name in self.methods}


def settings(info: MethodInfo, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``info`` with its value in this run (defaults included), as JSON values;
    ``progress`` left out (it changes no map)."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(info.function).parameters.items()
        if name in info.options and p.default is not inspect.Parameter.empty
    }
    merged = {**defaults, **options}
    merged.pop("progress", None)
    return {key: jsonable(value) for key, value in merged.items()}


def jsonable(value: Any) -> Any:
    """A setting as JSON: numbers, text, lists and dicts as they are; a dtype, a module, a
    function or a tensor by name."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    name = getattr(value, "__qualname__", None) or type(value).__name__
    return f"<{name}>"


def derived_seed(seed: int, image_id: str) -> int:
    """The seed an image's random draws use: from the run's seed and the image's id alone."""
    digest = hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


#: The columns of a map row and of an error row.
MAP_COLUMNS = (
    "id",
    "method",
    "settings",
    "target",
    "target_name",
    "predicted",
    "predicted_name",
    "score",
    "map",
    "shape",
    "seconds",
)
ERROR_COLUMNS = ("id", "path", "stage", "method", "reason")


@dataclass
class Rows:
    """Rows of the two output tables, as columns."""

    maps: dict[str, list[Any]] = field(default_factory=lambda: {name: [] for name in MAP_COLUMNS})
    errors: dict[str, list[Any]] = field(
        default_factory=lambda: {name: [] for name in ERROR_COLUMNS}
    )

    def error(self, ident: str, path: str, stage: str, method: str | None, reason: str) -> None:
        for name, value in zip(ERROR_COLUMNS, (ident, path, stage, method, reason), strict=True):
            self.errors[name].append(value)

    def extend(self, other: Rows) -> None:
        for mine, theirs in ((self.maps, other.maps), (self.errors, other.errors)):
            for name, values in theirs.items():
                mine[name].extend(values)

    @property
    def count(self) -> int:
        return len(self.maps["id"])


class Explainer:
    """Explain batches with every method of ``plan`` on ``model``."""

    def __init__(self, model: nn.Module, plan: Plan) -> None:
        self.model = model
        self.plan = plan
        self.infos = [get_method(name) for name in plan.methods]
        self.device = model_device(model)  # where the batches go

    def __call__(self, batch: Decoded) -> tuple[Rows, Maps]:
        """The rows of ``batch``, and each method's maps with their ids (for overlays)."""
        rows = Rows()
        for ident, path, reason in batch.errors:
            rows.error(ident, path, "read", None, reason)
        if batch.x is None:
            return rows, {}
        x, ids = batch.x.to(self.device), list(batch.ids)
        given: list[int] | None = None  # None: each image's predicted class, as the methods find
        if self.plan.target is not None:
            keep, given = [], []
            for i, ident in enumerate(ids):
                try:
                    given.append(self._target(batch.targets[i]))
                except TargetError as e:
                    rows.error(ident, "", "target", None, str(e))
                    continue
                keep.append(i)
            if not keep:
                return rows, {}
            if len(keep) < len(ids):
                x, ids = x[keep], [ids[i] for i in keep]
        done = {}
        for info in self.infos:
            found = self._method(info, x, ids, given, rows)
            if found is not None:
                done[info.name] = found
        score, predicted = self._predictions(x, done)
        maps: Maps = {}
        for name, (results, seconds, explained) in done.items():
            for one, took, i in zip(results, seconds, explained, strict=True):
                self._row(rows, name, ids[i], one, int(predicted[i]), float(score[i]), took)
            maps[name] = ([ids[i] for i in explained], torch.stack([m.maps for m in results]))
        return rows, maps

    def _predictions(
        self, x: torch.Tensor, done: dict[str, tuple[list[_One], list[float], list[int]]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's top class and its softmax probability: from the outputs the methods
        kept of their pass on the input as given, or, where none did, one more forward pass."""
        outputs: list[torch.Tensor | None] = [None] * x.shape[0]
        for results, _, explained in done.values():
            for one, i in zip(results, explained, strict=True):
                if outputs[i] is None and one.output is not None:
                    outputs[i] = one.output
        if any(o is None for o in outputs):
            with torch.inference_mode():
                logits = self.model(x.clone())
        else:
            logits = torch.stack([o for o in outputs if o is not None])
        score, predicted = logits.float().softmax(dim=1).max(dim=1)
        return score, predicted

    def _target(self, given: str | int | None) -> int:
        wanted = self.plan.target
        classes = len(self.plan.categories) if self.plan.categories else None
        if wanted != "source":
            return int(wanted)  # type: ignore[arg-type]  # None is handled by the caller
        if given is None:
            raise TargetError("the source gives no target for this image")
        if isinstance(given, int):
            if classes is not None and not 0 <= given < classes:
                raise TargetError(f"target {given} is out of range (the model has {classes})")
            return given
        index = self.plan.lookup.get(given.lower())
        if index is None:
            raise TargetError(
                f"target {given!r} is not a class name of the model (give --classes FILE with "
                "the names in the model's output order, or integer targets)"
            )
        return index

    def _method(
        self,
        info: MethodInfo,
        x: torch.Tensor,
        ids: list[str],
        targets: list[int] | None,
        rows: Rows,
    ) -> tuple[list[_One], list[float], list[int]] | None:
        """``info`` on the batch: one call, or one per image for the seeded methods and when
        the batch call fails (so that one bad image does not take its batch with it)."""
        options = self.plan.options[info.name]
        if "seed" not in info.options:
            start = time.perf_counter()
            try:
                result = info.function(self.model, x, targets, **options)
            except SETTINGS_ERRORS:
                raise
            except (BacklightError, RuntimeError, ValueError, TypeError, IndexError):
                pass  # find the image(s) it fails on, one at a time
            else:
                each = (time.perf_counter() - start) / len(ids)
                return _split(result), [each] * len(ids), list(range(len(ids)))
        seed = int(options.get("seed", _default(info, "seed")))
        results, seconds, explained = [], [], []
        for i, ident in enumerate(ids):
            one = dict(options)
            if "seed" in info.options:
                one["seed"] = derived_seed(seed, ident)
            start = time.perf_counter()
            try:
                one_target = None if targets is None else targets[i : i + 1]
                result = info.function(self.model, x[i : i + 1], one_target, **one)
            except SETTINGS_ERRORS:
                raise
            except (BacklightError, RuntimeError, ValueError, TypeError, IndexError) as e:
                rows.error(ident, "", "explain", info.name, f"{type(e).__name__}: {e}")
                continue
            results.extend(_split(result))
            seconds.append(time.perf_counter() - start)
            explained.append(i)
        return (results, seconds, explained) if explained else None

    def _row(
        self,
        rows: Rows,
        method: str,
        ident: str,
        one: _One,
        predicted: int,
        score: float,
        seconds: float,
    ) -> None:
        names = self.plan.categories
        values = one.maps.detach().to(torch.float32).cpu().numpy()
        target = predicted if one.target is None else one.target
        columns = rows.maps
        columns["id"].append(ident)
        columns["method"].append(method)
        columns["settings"].append(json.dumps(one.settings, sort_keys=True))
        columns["target"].append(target)
        columns["target_name"].append(_name(names, target))
        columns["predicted"].append(predicted)
        columns["predicted_name"].append(_name(names, predicted))
        columns["score"].append(score)
        columns["map"].append(values.astype(np.dtype(self.plan.dtype)).ravel())
        columns["shape"].append(list(values.shape))
        columns["seconds"].append(seconds)


@dataclass
class _One:
    """One image's map, the class it explains, the model's output on it, and the settings."""

    maps: torch.Tensor
    target: int | None
    output: torch.Tensor | None
    settings: dict[str, Any]


def _split(result: Any) -> list[_One]:
    used = {k: jsonable(v) for k, v in result.settings.items() if k != "progress"}
    targets, output = result.targets, result.output
    return [
        _One(
            maps=result.maps[i].detach(),
            target=None if targets is None or targets.dim() != 1 else int(targets[i]),
            output=None if output is None or output.dim() != 2 else output[i].detach(),
            settings=used,
        )
        for i in range(result.maps.shape[0])
    ]


def _default(info: MethodInfo, option: str) -> Any:
    return inspect.signature(info.function).parameters[option].default


def _name(names: list[str] | None, index: int) -> str | None:
    return names[index] if names and 0 <= index < len(names) else None
