"""Explain a whole data set: streamed, in Parquet, resumable, on one machine or on Ray.

:func:`run` (and ``backlight run``) reads a folder of images, a CSV or Parquet table, or
WebDataset tar shards, explains every image with every method, and writes one row per (image,
method) to ``out/maps/part-*.parquet`` as it goes (see :mod:`backlight.runs._store` for the
layout). A crash or Ctrl-C loses at most the part being filled; running the same call again
skips what is done and ends with the same rows as an uninterrupted run. Read the output with
:func:`read_maps`, pandas (``pd.read_parquet("out/maps")``), DuckDB or Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._checks import check_device, check_int, check_positive_int, model_device
from .._registry import call_options, get_method, list_methods
from ..errors import ModelError, OptionError
from ._explain import Explainer, Plan, Preprocess
from ._local import _Batches, _ShardBatches, batches, overlays, run_local
from ._report import report
from ._sources import (
    TARGET_COLUMNS,
    Source,
    folder_records,
    open_source,
    table_records,
)
from ._store import PartWriter, Store, read_maps

__all__ = ["RunSummary", "read_maps", "report", "run"]

#: Manifest keys that must agree for a run to resume into an existing folder.
SAME_RUN_KEYS = (
    "source",
    "model",
    "weights",
    "size",
    "classes",
    "methods",
    "settings",
    "target",
    "dtype",  # parts of two dtypes have two schemas: read_maps could not concatenate them
)


@dataclass(frozen=True)
class RunSummary:
    """What a run did.

    Attributes:
        out: the output folder.
        images: images in the source this session went through (read, explained or failed).
        skipped: images already done by an earlier session, not read again.
        rows: map rows written by this session.
        errors: images that could not be read or explained, over the whole run.
        total_rows: map rows in the folder, over the whole run.
        seconds: this session's wall time.
        images_per_second: ``images / seconds``.
    """

    out: Path
    images: int
    skipped: int
    rows: int
    errors: int
    total_rows: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def run(
    source: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    model: str | nn.Module = "resnet50",
    weights: str = "DEFAULT",
    size: int | None = None,
    preprocess: Preprocess | None = None,
    classes: Sequence[str] | None = None,
    methods: str | Sequence[str] = "grad_cam",
    target: int | str | None = None,
    layer: str | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    quick: bool = False,
    batch_size: int = 16,
    workers: int | None = None,
    device: str | torch.device | None = None,
    engine: Literal["local", "ray"] = "local",
    concurrency: int = 2,
    dtype: Literal["float32", "float16"] = "float32",
    png: bool = False,
    part_images: int = 1024,
    progress: bool = True,
) -> RunSummary:
    """Explain every image of ``source`` with every method into ``out``.

    Args:
        source: a folder of images (searched recursively; hidden files and ``out`` left out),
            a ``.csv`` or ``.parquet`` table (a path column such as ``path`` or ``file``, or a
            binary column of image bytes; an optional ``id`` column), or WebDataset tar shards
            (``shards-{000..099}.tar``, a glob, or one ``.tar``).
        out: the output folder; an existing one is resumed if it holds the same run.
        model: a name as ``backlight explain --model`` takes it (torchvision, timm,
            ``file.py:factory``, ``keras:VGG16``, ``model.keras``, ``demo``), or a module.
        weights, size: as for ``backlight explain`` (for a named model).
        preprocess: for a module, ``PIL image -> (shown (3, H, W) in [0, 1], model input)``;
            by default resize 256, centre crop 224 and ImageNet's mean and std.
        classes: the class names in output order (default: the model's own, if it has them).
        methods: method names (a list, or comma-separated text), or ``"all"``.
        target: ``None`` for each image's predicted class; a class index or name for every
            image; ``"folder"`` for the name of each image's parent folder; ``"column"`` (or
            ``"column:NAME"``) for a table's target column (``target``, ``label``, ``class``)
            or a shard's ``.cls`` member (or ``.NAME``).
        layer: the layer of the CAM and excitation methods.
        settings: options per method name, as ``backlight explain --set`` gives them.
        quick: the methods' cheap settings.
        batch_size: images per method call.
        workers: reader processes; 0 reads in the calling process. Default: 0 on a machine
            of two cores or fewer, else one per core but one, at most 4.
        device: where the model runs with ``engine="local"`` (``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ``"mps"``): a named model is moved there; a module you pass runs
            where its parameters are (``None``: there, or the CPU for a named model), and a
            different ``device`` is refused rather than moving your module. Batches go to the
            model's device; maps are stored from the CPU. It may change between sessions of
            one run (maps then equal to float rounding). Ray's actors take a GPU each when the
            cluster has GPUs.
        engine: ``"local"`` or ``"ray"`` (Ray Data; ``pip install backlight[ray]``).
        concurrency: with ``engine="ray"``, the number of model actors.
        dtype: how maps are stored: ``"float32"`` (exact) or ``"float16"`` (half the size).
        png: also write an overlay per image and method under ``out/png``.
        part_images: images per Parquet part (the most a crash can cost).
        progress: show a progress bar with images/s and the time left.

    Returns:
        A :class:`RunSummary`.

    Raises:
        DatasetError: the source cannot be read (a single bad image never raises: it goes to
            ``errors.parquet``).
        OptionError: a bad option, or ``out`` holds a run with other settings.
        ModelError: the model cannot be loaded.

    Example:
        >>> import tempfile
        >>> from backlight.data import make_batch
        >>> from backlight.viz import save_png
        >>> from backlight.runs import read_maps, run
        >>> folder = tempfile.mkdtemp()
        >>> images, _, _ = make_batch(3)
        >>> for i, image in enumerate(images):
        ...     _ = save_png(f"{folder}/images/{i}.png", image)
        >>> summary = run(f"{folder}/images", out=f"{folder}/out", model="demo",
        ...               methods="grad_cam,gradient", progress=False, workers=0)
        >>> summary.rows, summary.errors
        (6, 0)
        >>> read_maps(f"{folder}/out").column("method").to_pylist()[:2]
        ['grad_cam', 'grad_cam']
    """
    started = time.perf_counter()
    batch_size = check_positive_int("batch_size", batch_size)
    part_images = check_positive_int("part_images", part_images)
    concurrency = check_positive_int("concurrency", concurrency)
    if engine not in ("local", "ray"):
        raise OptionError(f"`engine` must be 'local' or 'ray', not {engine!r}")
    if dtype not in ("float32", "float16"):
        raise OptionError(f"`dtype` must be 'float32' or 'float16', not {dtype!r}")
    workers = _workers(workers)
    if device is not None:
        device = check_device("device", device)
    if engine == "ray":
        if device is not None:
            raise OptionError(
                "`device` is for engine='local': Ray's actors take a GPU each when the cluster "
                "has GPUs (leave `device` out)"
            )
        from ._ray import import_ray

        import_ray()  # before anything is loaded or written: says how to install it
        if png:
            raise OptionError(
                "png=True is for engine='local' (Ray's actors do not send the images back); "
                "run `backlight report` on the output, or write overlays from the stored maps"
            )
    where = open_source(source)
    infos = _methods(methods)
    loaded = _model(model, weights, size, preprocess, classes)
    if device is not None:
        loaded["module"] = _placed(loaded["module"], device, given=not isinstance(model, str))
    plan = _plan(infos, loaded, target, layer, settings or {}, quick, dtype, where)
    manifest = {
        "source": os.path.abspath(os.fspath(source)),
        "source_kind": where.kind,
        "model": loaded["spec"],
        "weights": weights if isinstance(model, str) else "given",
        "size": size,
        "classes": _digest(plan.categories),
        "methods": list(plan.methods),
        "settings": plan.requested(),
        "target": target,
        "dtype": dtype,
        "preprocess": loaded["describe"],
        "batch_size": batch_size,
        "engine": engine,
        "device": "each actor's" if engine == "ray" else str(model_device(loaded["module"])),
        "backlight": _version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    store = Store(out)
    with store.locked():
        _check_same_run(store, manifest)
        done = store.done_ids()
        store.write_manifest({**manifest, "status": "running"})
        target_key = _target_key(target, where)
        writer = PartWriter(
            store, dtype=dtype, part_images=part_images, done=len(done), progress=progress
        )
        if engine == "ray":
            from ._ray import run_ray

            counts = run_ray(
                writer,
                where,
                plan,
                loaded,
                done,
                batch_size=batch_size,
                concurrency=concurrency,
                target_key=target_key,
                skip=[os.fspath(out)],
            )
        else:
            dataset, total = _dataset(
                where, batch_size, done, loaded["preprocess"], png, target_key, os.fspath(out)
            )
            counts = run_local(
                writer,
                Explainer(loaded["module"], plan),
                dataset,
                total=total,
                workers=workers,
                on_batch=overlays(Path(out)) if png else None,
            )
        writer.bar.close()  # already closed, unless an engine had nothing to do
        errors = store.gather_errors()
        total_rows = store.count_rows()
        summary = RunSummary(
            out=Path(out),
            images=counts["images"],
            skipped=len(done),
            rows=counts["rows"],
            errors=errors,
            total_rows=total_rows,
            seconds=time.perf_counter() - started,
        )
        store.write_manifest(
            {
                **manifest,
                "status": "complete",
                "counts": {
                    "rows": total_rows,
                    "errors": errors,
                    "images": len(done) + counts["images"],
                },
            }
        )
    return summary


def _workers(workers: int | None) -> int:
    """The reader processes: on two cores or fewer none (a reader competes with the model's
    threads for the cores, which costs the model more than the decoding it takes over:
    measured in BENCHMARKS.md), else one per core but one, at most 4."""
    if workers is None:
        cores = os.cpu_count() or 1
        return 0 if cores <= 2 else min(4, cores - 1)
    return check_int("workers", workers, low=0)  # 0: read in this process


def _methods(methods: str | Sequence[str]) -> list[Any]:
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list_methods()
    if not names:
        raise OptionError("`methods` names no method; see backlight.list_methods()")
    return [get_method(n) for n in names]


def _model(
    model: str | nn.Module,
    weights: str,
    size: int | None,
    preprocess: Preprocess | None,
    classes: Sequence[str] | None,
) -> dict[str, Any]:
    """The module, its preprocessing and class names, and how to load it again (for Ray)."""
    if isinstance(model, str):
        from ..cli._errors import CliError
        from ..cli._models import load_model

        try:
            loaded = load_model(model, weights, size=size)
        except CliError as e:
            raise ModelError(str(e)) from e
        module, chosen, names = loaded.model, loaded.preprocess, loaded.categories
        spec = model
    elif isinstance(model, nn.Module):
        from ..cli._models import Preprocess as Recipe

        module, chosen = model, preprocess or Recipe(resize=256, crop=224)
        names = getattr(model, "classes", None)
        spec = f"{type(model).__module__}.{type(model).__qualname__} {_weights_digest(model)}"
    else:
        raise OptionError(
            f"`model` must be a model name or a torch.nn.Module, not {type(model).__name__}"
        )
    if preprocess is not None:
        chosen = preprocess
    if classes is not None:
        names = [str(c) for c in classes]
    from ..cli._models import describe

    return {
        "module": module,
        "preprocess": chosen,
        "categories": list(names) if names else None,
        "spec": spec,
        "weights": weights,
        "size": size,
        "given": None if isinstance(model, str) else model,
        "describe": describe(chosen),
    }


def _plan(
    infos: list[Any],
    loaded: dict[str, Any],
    target: int | str | None,
    layer: str | None,
    settings: dict[str, dict[str, Any]],
    quick: bool,
    dtype: str,
    where: Source,
) -> Plan:
    known = {info.name for info in infos}
    unknown = [name for name in settings if get_method(name).name not in known]
    if unknown:
        raise OptionError(f"`settings` names methods that are not run: {', '.join(unknown)}")
    chosen = {get_method(name).name: values for name, values in settings.items()}
    options = {
        info.name: call_options(
            info, quick=quick, layer=layer, progress=False, overrides=chosen.get(info.name)
        )
        for info in infos
    }
    categories = loaded["categories"]
    fixed: int | str | None
    if target is None or target == "predicted":
        fixed = None
    elif target == "folder":
        if where.kind != "folder":
            raise OptionError(f"target='folder' needs a folder source, not a {where.kind}")
        fixed = "source"
    elif isinstance(target, str) and (target == "column" or target.startswith("column:")):
        if where.kind == "folder":
            raise OptionError("target='column' needs a table or shards; for a folder use 'folder'")
        fixed = "source"
    else:
        fixed = _fixed_target(target, categories)
    return Plan(tuple(options), options, fixed, categories, dtype)


def _fixed_target(target: int | str, categories: list[str] | None) -> int:
    """A class index, or a name as ``backlight explain --target`` takes it (a unique prefix or
    part of a name will do)."""
    from ..cli._errors import UsageError
    from ..cli._explain import parse_target

    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise OptionError(f"`target` must be None, a class index or name, not {target!r}")
    classes = len(categories) if categories else 2**31
    try:
        index = parse_target(str(target), categories, classes)
    except UsageError as e:
        raise OptionError(str(e).replace("--target", "`target`")) from e
    assert index is not None  # a text was given
    return index


def _target_key(target: int | str | None, where: Source) -> str | None:
    """The table column or shard member the targets are read from, if any."""
    if not (isinstance(target, str) and (target == "column" or target.startswith("column:"))):
        return None
    _, _, name = target.partition(":")
    if name:
        return name
    return None if where.kind == "shards" else ""


def _dataset(
    where: Source,
    batch_size: int,
    done: set[str],
    preprocess: Preprocess,
    png: bool,
    target_key: str | None,
    out: str,
) -> tuple[Any, int | None]:
    if where.kind == "shards":
        shards = _ShardBatches(where.shards, batch_size, done, preprocess, png, target_key)
        return shards, None
    records = (
        folder_records(where, skip=[out])
        if where.kind == "folder"
        else table_records(where, target_column=_table_target(where, target_key))
    )
    return _Batches(batches(records, batch_size, done), preprocess, png), len(records)


def _table_target(where: Source, key: str | None) -> str | None:
    if key is None:
        return None
    if key:
        return key
    import pyarrow.csv
    import pyarrow.parquet

    path = Path(where.spec)
    names = (
        pyarrow.csv.read_csv(path).column_names
        if path.suffix.lower() == ".csv"
        else pyarrow.parquet.read_schema(path).names
    )
    lowered = {n.lower(): n for n in names}
    found: str | None = next((lowered[c] for c in TARGET_COLUMNS if c in lowered), None)
    if found is None:
        raise OptionError(
            f"target='column': the table has no column {', '.join(TARGET_COLUMNS)}; name it "
            f"with 'column:NAME' (it has {', '.join(names)})"
        )
    return found


def _placed(module: nn.Module, device: torch.device, *, given: bool) -> nn.Module:
    """The model on ``device``: a loaded one moved there; the caller's module left where it is
    (refused if that is elsewhere)."""
    if not given:
        return module.to(device)
    where = model_device(module)
    if where != device and not (where.type == device.type and device.index is None):
        raise OptionError(
            f"`device` is {str(device)!r} but the model you pass is on {str(where)!r}; run() "
            f"does not move your module: move it first (model.to({str(device)!r})) and leave "
            "`device` out, or pass the model's name"
        )
    return module


def _check_same_run(store: Store, manifest: dict[str, Any]) -> None:
    old = store.manifest()
    if old is None:
        if any(store.maps_dir.glob("part-*.parquet")):
            raise OptionError(f"{store.out} holds parts but no manifest.json; use another --out")
        return
    differ = [k for k in SAME_RUN_KEYS if _canonical(old.get(k)) != _canonical(manifest.get(k))]
    if differ:
        details = "; ".join(f"{k}: {old.get(k)!r} there, {manifest.get(k)!r} now" for k in differ)
        raise OptionError(
            f"{store.out} holds a run with other settings ({details}); give another --out, or "
            "delete the folder to start over"
        )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _digest(names: list[str] | None) -> str | None:
    if not names:
        return None
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return digest.hexdigest()[:16]


def _version() -> str:
    from .. import __version__

    return __version__
