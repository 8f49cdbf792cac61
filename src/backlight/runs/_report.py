"""``backlight report DIR``: the HTML report of a run, from its stored maps.

The maps come from ``DIR/maps``; the images are read again from the run's source (by id) and
preprocessed as the model's recipe does, so that each overlay lies on the crop the map refers
to. A large run gets a sample: ``images`` ids spread evenly over the sorted ids.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int
from ..data.files import read_image
from ..errors import DatasetError, OptionError
from ._explain import Preprocess
from ._sources import Record, folder_records, open_source, shard_records, table_records
from ._store import Store, read_maps


def report(
    out: str | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    images: int = 24,
    preprocess: Preprocess | None = None,
) -> Path:
    """Write the HTML report of the run in ``out`` (default ``out/report.html``).

    Args:
        out: the run's folder.
        path: where to write the report.
        images: the most images shown; a larger run is sampled evenly over its sorted ids.
        preprocess: the run's preprocessing; by default the named model's own recipe (loaded
            with random weights, nothing downloaded). Needed for a run on a given module.

    Returns:
        The report's path.

    Example:
        >>> import tempfile
        >>> from backlight.data import make_batch
        >>> from backlight.viz import save_png
        >>> from backlight.runs import report, run
        >>> folder = tempfile.mkdtemp()
        >>> for i, image in enumerate(make_batch(2)[0]):
        ...     _ = save_png(f"{folder}/images/{i}.png", image)
        >>> _ = run(f"{folder}/images", out=f"{folder}/out", model="demo", progress=False,
        ...         workers=0)
        >>> report(f"{folder}/out").name
        'report.html'
    """
    from .. import viz

    images = check_positive_int("images", images)
    manifest = Store(out).manifest()
    if manifest is None:
        raise OptionError(f"{out} holds no run (no manifest.json); give the folder of a run")
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    maps_dir = Path(out) / "maps"
    index = read_maps(out, columns=["id", "method", "seconds"])
    methods_of: dict[str, set[str]] = defaultdict(set)
    for ident, method in zip(
        index.column("id").to_pylist(), index.column("method").to_pylist(), strict=True
    ):
        methods_of[ident].add(method)
    found = set().union(*methods_of.values()) if methods_of else set()
    methods = [m for m in manifest["methods"] if m in found]
    complete = sorted(i for i, got in methods_of.items() if all(m in got for m in methods))
    if not complete:
        raise OptionError(f"{out} holds no image explained by every method; nothing to show")
    picked = _spread(complete, images)
    chosen = ds.dataset(maps_dir, format="parquet").to_table(filter=pc.field("id").isin(picked))
    by_id: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in chosen.to_pylist():
        by_id[row["id"]][row["method"]] = row
    recipe = preprocess if preprocess is not None else _recipe(manifest)
    records = _records(manifest["source"], set(picked))
    shown = []
    for ident in picked:
        record = records.get(ident)
        if record is None:
            raise DatasetError(f"image {ident!r} is no longer in the source {manifest['source']}")
        image = read_image(record.data if record.data is not None else record.path or "")
        shown.append(recipe(image)[0])
    maps = {method: torch.stack([_map(by_id[i][method]) for i in picked]) for method in methods}
    predictions = [
        [(_label(by_id[i][methods[0]]), float(by_id[i][methods[0]]["score"]))] for i in picked
    ]
    seconds = {
        method: float(
            pc.mean(index.filter(pc.equal(index.column("method"), method))["seconds"]).as_py()
        )
        for method in methods
    }
    used = {m: json.loads(by_id[picked[0]][m]["settings"]) for m in methods}
    count = manifest.get("counts", {})
    title = (
        f"backlight run: {manifest['model']} on {manifest['source']} "
        f"({len(picked)} of {count.get('images', len(by_id))} images)"
    )
    return viz.report(
        Path(path) if path is not None else Path(out) / "report.html",
        torch.stack(shown),
        maps,
        predictions=predictions,
        settings=used,
        times=seconds,
        title=title,
        image_names=picked,
    )


def _spread(ids: list[str], k: int) -> list[str]:
    if len(ids) <= k:
        return ids
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, k).round()]


def _map(row: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(np.asarray(row["map"], np.float32).reshape(row["shape"]))


def _label(row: dict[str, Any]) -> str:
    name = row.get("predicted_name")
    return str(name) if name else f"class {row['predicted']}"


def _recipe(manifest: dict[str, Any]) -> Preprocess:
    from ..cli._errors import CliError
    from ..cli._models import load_model

    try:
        return load_model(manifest["model"], "random", size=manifest.get("size")).preprocess
    except CliError as e:
        raise OptionError(
            f"cannot rebuild the preprocessing of model {manifest['model']!r} ({e}); pass "
            "preprocess= to report()"
        ) from e


def _records(spec: str, wanted: set[str]) -> dict[str, Record]:
    source = open_source(spec)
    if source.kind == "folder":
        found = folder_records(source)
    elif source.kind == "table":
        found = table_records(source)
    else:
        found = []
        for shard in source.shards:
            found.extend(r for r in shard_records(shard) if r.id in wanted)
    return {r.id: r for r in found if r.id in wanted}
