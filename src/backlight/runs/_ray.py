"""The Ray engine (``engine="ray"``, ``backlight run --engine ray``): the local pipeline on Ray Data.

``pip install backlight[ray]`` installs it. The pipeline:

1. **Read** with Ray's readers: a folder with :func:`ray.data.read_binary_files` over the very
   files the local engine picks (:func:`~backlight.runs._sources.folder_records`: the same
   extensions, hidden files and the output folder left out), WebDataset shards with
   :func:`ray.data.read_webdataset` (raw bytes, member suffixes lower-cased and ``__meta__``
   files skipped as ``webdataset`` does, so the ids are the local engine's
   ``<shard name>/<key>`` and the targets its ``.cls``). A CSV or Parquet table is read in the
   driver exactly as the local engine reads it (its id, path, bytes and target columns, unique
   ids checked) and handed to Ray with :func:`ray.data.from_items`; its images are read by the
   actors. Images already done are left out here, before anything is decoded.
2. **Explain** in a pool of ``concurrency`` actors (``map_batches`` with a callable class): each
   loads the model once, in its ``__init__``, then decodes, preprocesses and explains batches
   of ``batch_size`` images with :class:`~backlight.runs._explain.Explainer`, the local engine's
   code, so a bad image is an error row, never a crash. Only the compressed bytes travel
   through Ray's object store. Each actor takes one CPU and runs torch on as many threads as
   Ray gives it CPUs (one); when the cluster has GPUs, each actor takes one as well. Reading
   reserves no CPU (it only moves bytes), so ``concurrency`` may be the cluster's CPU count.
3. **Write** in the driver, as the rows stream back: the same parts as the local engine
   (``DIR/maps/part-NNNNN.parquet``, ``DIR/errors/part-NNNNN.parquet``, see
   :mod:`backlight.runs._store`), each of about ``part_images`` images (or a minute of work),
   each appearing only when complete.

**The same maps.** The rows are those of the local engine, with the same ids, targets and
predictions. Ray cuts the stream into batches at other places (block edges, done images
removed before batching rather than after), and a batched convolution may round in the last
bit differently from the same images in another batch; maps agree to float32 rounding (bit for
bit where the batches are the same). The seeded methods (RISE, SmoothGrad, extremal
perturbation) draw from each image's own seed, so they do not depend on batches at all. A named
model is loaded by every actor (``load_model(spec, weights)``); if an actor's weights differ
from the driver's (random weights without a seed), it takes the driver's state dict. A module
passed as ``model=`` is pickled once into the object store.

**A cluster.** By default :func:`~backlight.runs.run` calls :func:`ray.init`, which joins the
cluster named by ``RAY_ADDRESS`` (``RAY_ADDRESS=ray://head:10001`` or ``auto``) or else starts
a local Ray and stops it at the end. To use another cluster, call
``ray.init(address=...)`` before :func:`~backlight.runs.run`: that Ray is used, and left
running. On several machines, the source must be on a file system every node sees (NFS, a
shared mount); the output folder is written by the driver alone.

**Resume** is the local engine's: every complete part in ``out`` marks its images done, and a
new run (with either engine) skips them by id. Parts hold whatever batches finished, in the
order they finished; the batches in flight when a run is stopped (Ctrl-C writes the finished
ones first; ``kill -9`` loses at most one part) are computed again.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import re
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import BacklightError, DatasetError, ModelError, OptionError
from ._explain import Explainer, Plan, Preprocess, Rows, decode
from ._sources import Record, Source, folder_records, sample_record, table_records
from ._store import PartWriter

logger = logging.getLogger("backlight")

INSTALL = "pip install backlight[ray]"
#: The columns of a record as it goes from the readers to the actors.
RECORD_COLUMNS = ("id", "path", "data", "target", "problem")
#: webdataset's ``skip_meta``: tar members such as ``__info__`` that belong to no sample.
_META = re.compile(r"__[^/]*__($|/)")
_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def import_ray() -> Any:
    """``ray`` with Ray Data, or an :class:`OptionError` saying how to install it."""
    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.data")
    except ImportError as e:
        raise OptionError(
            f"engine='ray' needs Ray Data, which is not installed ({e}); install it with: {INSTALL}"
        ) from e
    return ray


def run_ray(
    writer: PartWriter,
    where: Source,
    plan: Plan,
    loaded: dict[str, Any],
    done: set[str],
    *,
    batch_size: int,
    concurrency: int,
    target_key: str | None,
    skip: Sequence[str] = (),
) -> dict[str, int]:
    """Explain the images of ``where`` not in ``done`` on Ray into ``writer``'s store; returns
    this session's counts (``images``, ``rows``, ``errors``, ``parts``)."""
    ray = import_ray()
    records, total = _records(where, done, target_key, skip)
    if records is not None and not records:
        return {"images": 0, "rows": 0, "errors": 0, "parts": 0}
    started = not ray.is_initialized()
    if started:
        ray.init()  # RAY_ADDRESS if set, else a local instance
    try:
        with _data_context(ray):
            resources = ray.cluster_resources()
            gpus = 1 if float(resources.get("GPU", 0)) >= 1 else 0
            _check_room(concurrency, resources, gpus)
            dataset, batch_format = _read(ray, where, records)
            explained = dataset.map_batches(
                _Explain,
                fn_constructor_kwargs={
                    "plan": plan,
                    "preprocess": loaded["preprocess"],
                    "model": _model_spec(ray, loaded),
                    "gpu": bool(gpus),
                    "source": {
                        "kind": where.kind,
                        "root": where.root,
                        "target_key": target_key,
                        # folders and tables are filtered here, shards in the actors
                        "done": frozenset(done) if where.kind == "shards" else frozenset(),
                    },
                },
                batch_size=batch_size,
                batch_format=batch_format,
                compute=ray.data.ActorPoolStrategy(size=concurrency),
                num_cpus=1,
                num_gpus=gpus,
            )
            writer.expect(total)
            return _collect(explained, writer, where.kind)
    finally:
        if started:
            ray.shutdown()


def _check_room(concurrency: int, resources: dict[str, Any], gpus: int) -> None:
    """A fixed pool larger than the cluster waits for it to grow (an autoscaler may add
    nodes): say so rather than hang in silence."""
    for name, each in (("CPU", 1), ("GPU", gpus)):
        have = float(resources.get(name, 0))
        if each and concurrency * each > have:
            logger.warning(
                "concurrency=%d actors need %d %s(s), the Ray cluster has %g now: the run "
                "waits for more (lower concurrency, or add nodes)",
                concurrency,
                concurrency * each,
                name,
                have,
            )


def _records(
    where: Source, done: set[str], target_key: str | None, skip: Sequence[str]
) -> tuple[list[Record] | None, int | None]:
    """The records still to do and the source's size, as the local engine finds them (for
    shards ``None``: Ray's reader finds them)."""
    if where.kind == "shards":
        return None, None
    if where.kind == "folder":
        records = folder_records(where, skip=skip)
    else:
        from . import _table_target

        records = table_records(where, target_column=_table_target(where, target_key))
    return [r for r in records if r.id not in done], len(records)


@contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data without its own progress bars (backlight shows one), restored afterwards."""
    context = ray.data.DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start")
    saved = {name: getattr(context, name) for name in names if hasattr(context, name)}
    for name in saved:
        setattr(context, name, False)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


def _read(ray: Any, where: Source, records: list[Record] | None) -> tuple[Any, str]:
    """A Ray Dataset of the records to do, and the batch format the actors take it in.

    Only Ray's own code runs in the read tasks (no torch, no backlight to import): the rows
    become records in the actors (:func:`_batch_records`)."""
    if where.kind == "folder":
        assert records is not None
        paths = [r.path for r in records]
        return ray.data.read_binary_files(paths, include_paths=True, num_cpus=0), "pyarrow"
    if where.kind == "table":
        assert records is not None
        return ray.data.from_items([_item(r) for r in records]), "pyarrow"
    samples = ray.data.read_webdataset(
        list(where.shards),
        decoder=None,
        fileselect=_not_meta,
        filerename=_lower_suffix,
        num_cpus=0,
    )
    # shard blocks differ in columns (members); pandas joins them with NaN for the missing
    return samples, "pandas"


def _item(record: Record) -> dict[str, Any]:
    target = None if record.target is None else json.dumps(record.target)
    return {
        "id": record.id,
        "path": record.path,
        "data": record.data,
        "target": target,
        "problem": record.problem,
    }


def _batch_records(
    batch: Any, kind: str, root: str, target_key: str | None, done: frozenset[str]
) -> list[Record]:
    """A batch of the Dataset of :func:`_read` as the records the local engine reads."""
    if kind == "folder":
        return _folder_records(batch, root)
    if kind == "shards":
        return _shard_records(batch, target_key, done)
    columns = [batch.column(name).to_pylist() for name in RECORD_COLUMNS]
    return [
        Record(ident, path, data, None if target is None else json.loads(target), problem)
        for ident, path, data, target, problem in zip(*columns, strict=True)
    ]


def _folder_records(batch: Any, root: str) -> list[Record]:
    """``read_binary_files`` rows (``bytes``, ``path``) as records: the id is the path below
    ``root`` and the target the parent folder's name, as :func:`folder_records` gives them."""
    base = Path(root)
    records = []
    paths, data = batch.column("path").to_pylist(), batch.column("bytes").to_pylist()
    for text, content in zip(paths, data, strict=True):
        path = Path(text)
        parent = path.parent.name if path.parent != base else None
        ident = path.relative_to(base).as_posix()
        records.append(Record(ident, path=text, data=content, target=parent))
    return records


def _not_meta(name: str) -> bool:
    return _META.match(name) is None


def _lower_suffix(name: str) -> str:
    """``a/KEY.JPG`` -> ``a/KEY.jpg``: webdataset lower-cases member suffixes, Ray does not."""
    match = _SPLIT.match(name)
    return name if match is None else f"{match.group(1)}.{match.group(2).lower()}"


def _shard_records(frame: Any, target_key: str | None, done: frozenset[str]) -> list[Record]:
    """``read_webdataset`` samples as records, as :func:`shard_records` gives them; the done
    ones left out."""
    records = []
    for sample in frame.to_dict("records"):
        stem = re.sub(r"\.tar$", "", Path(str(sample["__url__"])).name)
        ident = f"{stem}/{sample['__key__']}"
        if ident in done:
            continue
        # a member this sample lacks and another of the batch has is NaN: bytes only
        records.append(sample_record(ident, sample, target_key))
    return records


def _model_spec(ray: Any, loaded: dict[str, Any]) -> dict[str, Any]:
    """How an actor gets the model: the module itself, or its name, with the driver's weights
    (object refs in lists, so that Ray hands them over unresolved)."""
    from . import _weights_digest

    given = loaded["given"]
    if given is not None:
        return {"given": [ray.put(given)]}
    module = loaded["module"]
    try:
        digest = _weights_digest(module)
        state = [ray.put({k: v.detach().cpu() for k, v in module.state_dict().items()})]
    except Exception:  # a model without a torch state dict (Keras): loaded as named only
        digest, state = None, None
    return {
        "given": None,
        "spec": loaded["spec"],
        "weights": loaded["weights"],
        "size": loaded["size"],
        "digest": digest,
        "state": state,
    }


def _build_model(ray: Any, spec: dict[str, Any]) -> torch.nn.Module:
    if spec["given"] is not None:
        module: torch.nn.Module = ray.get(spec["given"][0])
        return module
    from ..cli._errors import CliError
    from ..cli._models import load_model
    from . import _weights_digest

    try:
        module = load_model(spec["spec"], spec["weights"], size=spec["size"]).model
    except CliError as e:
        raise ModelError(str(e)) from e
    if spec["digest"] is None or _weights_digest(module) == spec["digest"]:
        return module
    try:  # random weights without a seed: take the driver's
        module.load_state_dict(ray.get(spec["state"][0]))
    except (RuntimeError, KeyError, ValueError) as e:
        raise ModelError(f"the model a Ray actor loaded differs from the driver's: {e}") from e
    return module


class _Explain:
    """The callable class of ``map_batches``: one model per actor, loaded in ``__init__``.

    A batch of records becomes one output row: the pickled :class:`Rows` and the number of
    records. An error that stops the run (a bad layer or option, a model that cannot be
    loaded) is sent back in a row too, so that the driver raises it as it is.
    """

    def __init__(
        self,
        plan: Plan,
        preprocess: Preprocess,
        model: dict[str, Any],
        gpu: bool,
        source: dict[str, Any],
    ) -> None:
        ray = importlib.import_module("ray")
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.preprocess, self.source = preprocess, source
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.fatal: BacklightError | None = None
        self.explainer: Explainer | None = None
        try:
            module = _build_model(ray, model)
        except BacklightError as e:
            self.fatal = e
            return
        self.explainer = Explainer(module.to(self.device), plan)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        records = _batch_records(batch, **self.source)
        result: Rows | BacklightError
        if self.explainer is None:
            assert self.fatal is not None
            result = self.fatal
        else:
            decoded = decode(records, self.preprocess, False)  # the explainer moves it
            try:
                result, _ = self.explainer(decoded)
            except BacklightError as e:  # the settings errors: the run stops
                result = e
            else:
                if self.source["kind"] == "folder":
                    _name_files(result)
        blob = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        return pa.table(
            {
                "rows": pa.array([blob], pa.large_binary()),
                "images": pa.array([len(records)], pa.int64()),
            }
        )


def _name_files(rows: Rows) -> None:
    """Name the file, not "the image bytes", in the reasons of a folder's read errors: Ray
    read the file, the local engine's reasons name it."""
    errors = rows.errors
    for i, (path, reason) in enumerate(zip(errors["path"], errors["reason"], strict=True)):
        if path and "the image bytes" in reason:
            errors["reason"][i] = reason.replace("the image bytes", path)


def _collect(explained: Any, writer: PartWriter, kind: str) -> dict[str, int]:
    """Write the rows as they stream back, through ``writer``; on Ctrl-C the finished batches
    first."""
    stream = iter(explained.iter_rows())
    try:
        with writer:
            for row in _translated(stream, kind):
                rows = pickle.loads(row["rows"])
                if isinstance(rows, BacklightError):
                    raise rows
                writer.add(rows, int(row["images"]))
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()  # stops the pipeline and its actors
    return writer.counts


def _translated(stream: Iterator[Any], kind: str) -> Iterator[Any]:
    """``stream``, with a source Ray's readers cannot read raised as a :class:`DatasetError`,
    as the local engine raises it (Ray's errors are instances of the error they wrap)."""
    while True:
        try:
            row = next(stream)
        except StopIteration:
            return
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            read = isinstance(e, (tarfile.TarError, OSError, EOFError)) or (
                kind == "shards" and "tar" in str(e)  # Ray's ValueErrors on bad samples
            )
            if isinstance(e, BacklightError) or not type(e).__module__.startswith("ray"):
                raise
            if not read:
                raise
            what = "a WebDataset shard" if kind == "shards" else "an image file"
            raise DatasetError(f"cannot read {what}: {_reason(e)}") from e
        yield row


def _reason(error: BaseException) -> str:
    """The error a Ray error wraps, in one line."""
    seen = {id(error)}
    while True:
        inner = getattr(error, "cause", None) or error.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        seen.add(id(inner))
        error = inner
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
