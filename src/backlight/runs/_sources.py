"""What a run reads: a folder of images, a CSV or Parquet table, or WebDataset tar shards.

Each source becomes an ordered list of shards, each an ordered list of :class:`Record`: an image
with a stable id and, when the source gives one, its target. A folder or a table is one shard;
tar shards are one each. The order is fixed by the source alone (sorted paths, table rows, the
members of each tar), so batches, and hence every map, are the same in every run.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.files import IMAGE_EXTENSIONS
from ..errors import DatasetError, DatasetNotFoundError, OptionError

#: Column names a table's image paths, image bytes, ids and targets are found under, in order.
PATH_COLUMNS = ("path", "file", "filename", "image_path", "image")
ID_COLUMNS = ("id", "image_id", "key")
TARGET_COLUMNS = ("target", "label", "class", "cls")
#: Member extensions of a WebDataset sample that hold the image, and its class.
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
SHARD_TARGET_KEYS = ("cls", "label", "target")


@dataclass(frozen=True)
class Record:
    """One image of a source.

    Attributes:
        id: stable across runs: the path relative to the folder, the table's id or path, or
            ``shard/key`` for tar shards.
        path: the file to read, or ``None`` when ``data`` holds the bytes.
        data: the image file's bytes (tables with a bytes column, tar shards).
        target: the class the source gives (the parent folder's name, the table's target
            column, the shard's ``.cls``), as text or an int; ``None`` when it gives none.
        problem: why the record holds no image (a shard sample without an image member).
    """

    id: str
    path: str | None = None
    data: bytes | None = None
    target: str | int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Source:
    """A data set to explain.

    Attributes:
        spec: what the user gave (a folder, a table file, a shard pattern), as text.
        kind: ``"folder"``, ``"table"`` or ``"shards"``.
        shards: for ``"shards"``, the tar files in order; else empty.
        root: the folder the ids are relative to.
    """

    spec: str
    kind: str
    shards: tuple[str, ...] = ()
    root: str = ""

    def describe(self) -> str:
        if self.kind == "shards":
            return f"{len(self.shards)} WebDataset shard(s) {self.spec}"
        return f"{self.kind} {self.spec}"


def open_source(spec: str | os.PathLike[str]) -> Source:
    """Recognise a source: a folder, a ``.csv`` / ``.parquet`` table, or tar shards (a ``.tar``
    file, a glob, or a brace pattern ``shard-{000..099}.tar``)."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        return Source(text, "folder", root=str(path.resolve()))
    if text.endswith(".tar") or "{" in text or any(c in text for c in "*?["):
        shards = tuple(_expand_shards(text))
        if not shards:
            raise DatasetNotFoundError(f"no tar shards match {text!r}")
        return Source(text, "shards", shards, root=str(Path(shards[0]).resolve().parent))
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        if not path.is_file():
            raise DatasetNotFoundError(f"table not found: {text}")
        return Source(text, "table", root=str(path.resolve().parent))
    if not path.exists():
        raise DatasetNotFoundError(f"source not found: {text}")
    raise DatasetError(
        f"cannot read {text!r} as a source: give a folder of images, a .csv or .parquet table, "
        "or WebDataset .tar shards"
    )


def _expand_shards(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> three names (the braceexpand syntax WebDataset uses), then globs;
    every name must exist."""
    import braceexpand

    names: list[str] = []
    for name in braceexpand.braceexpand(pattern):
        if any(c in name for c in "*?["):
            names.extend(sorted(glob.glob(name)))
        elif Path(name).is_file():
            names.append(name)
        else:
            raise DatasetNotFoundError(f"shard not found: {name} (from {pattern!r})")
    return names


def folder_records(source: Source, *, skip: Sequence[str] = ()) -> list[Record]:
    """Every file below the folder whose name ends like an image (hidden files and folders, and
    ``skip`` folders such as the run's own output, left out), sorted by id; each one's target
    is the name of its parent folder."""
    root = Path(source.root)
    skipped = {Path(s).resolve() for s in skip}
    records: list[Record] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and here / d not in skipped)
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = here / name
            relative = path.relative_to(root).as_posix()
            parent = path.parent.name if path.parent != root else None
            records.append(Record(relative, path=str(path), target=parent))
    records.sort(key=lambda r: r.id)
    return records


def table_records(source: Source, *, target_column: str | None = None) -> list[Record]:
    """The rows of a CSV or Parquet table, in order: the image from a path column (relative
    paths are read from the table's folder) or a binary column of image bytes, the id from an
    id column (else the path, else ``row-<n>``), and the target from ``target_column``."""
    import pyarrow.csv
    import pyarrow.parquet

    path = Path(source.spec)
    try:
        if path.suffix.lower() == ".csv":
            table = pyarrow.csv.read_csv(path)
        else:
            table = pyarrow.parquet.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"cannot read the table {path}: {e}") from e
    names = list(table.column_names)
    lowered = {n.lower(): n for n in names}
    image_column = _binary_column(table)
    path_column = next((lowered[c] for c in PATH_COLUMNS if c in lowered), None)
    if image_column is None and path_column is None:
        raise DatasetError(
            f"the table {path} has no image column: name one of {', '.join(PATH_COLUMNS)} "
            f"(paths) or give a binary column of image bytes; it has {', '.join(names)}"
        )
    if target_column is not None and target_column not in names:
        raise OptionError(
            f"the table {path} has no column {target_column!r} for the targets; it has "
            f"{', '.join(names)}"
        )
    id_column = next((lowered[c] for c in ID_COLUMNS if c in lowered), None)
    columns = table.to_pydict()
    records = []
    seen: set[str] = set()
    for i in range(table.num_rows):
        file = None if image_column is not None else columns[path_column][i]
        if image_column is None and file is not None:
            file = str(file)
        if id_column is not None:
            ident = str(columns[id_column][i])
        elif file is not None:
            ident = file
        else:
            ident = f"row-{i}"
        if ident in seen:
            raise DatasetError(f"the table {path} holds the id {ident!r} twice; ids must be unique")
        seen.add(ident)
        where = None if file is None else str(Path(source.root, file))
        data = None if image_column is None else columns[image_column][i]
        target = None if target_column is None else columns[target_column][i]
        records.append(Record(ident, path=where, data=data, target=_target_value(target)))
    return records


def _binary_column(table: Any) -> str | None:
    import pyarrow

    for field in table.schema:
        if pyarrow.types.is_binary(field.type) or pyarrow.types.is_large_binary(field.type):
            return str(field.name)
    return None


def _target_value(value: Any) -> str | int | None:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)


def shard_records(shard: str, *, target_key: str | None = None) -> Iterator[Record]:
    """The samples of one WebDataset tar, in order, read with ``webdataset``: the id is
    ``<shard name>/<key>``, the image the first member named like an image, the target the
    ``target_key`` member (by default the first of ``.cls``, ``.label``, ``.target``)."""
    from webdataset import tariterators

    stem = re.sub(r"\.tar$", "", Path(shard).name)
    with open(shard, "rb") as stream:  # closed here: webdataset's own opener leaves it open
        members = (
            {**member, "__url__": shard}
            for member in tariterators.tar_file_iterator(stream, handler=_reraise)
        )
        yield from _shard_samples(
            tariterators.group_by_keys(members, handler=_reraise), stem, target_key
        )


def _shard_samples(samples: Iterator[Any], stem: str, target_key: str | None) -> Iterator[Record]:
    for sample in samples:
        yield sample_record(f"{stem}/{sample['__key__']}", sample, target_key)


def sample_record(ident: str, sample: dict[str, Any], target_key: str | None) -> Record:
    """A WebDataset sample (member extension -> bytes) as a record: the image the first member
    named like an image, the target the ``target_key`` member (by default the first of
    ``.cls``, ``.label``, ``.target``); entries that are not bytes are left out."""
    members = {k: v for k, v in sample.items() if isinstance(v, bytes)}
    image = next((members[k] for k in SHARD_IMAGE_KEYS if k in members), None)
    keys = (target_key,) if target_key else SHARD_TARGET_KEYS
    label = next((members[k] for k in keys if k in members), None)
    target = None if label is None else _target_value(_parse_label(label))
    problem = None
    if image is None:
        names = ", ".join(sorted(k for k in members if not k.startswith("__")))
        problem = f"the sample has no image member (it has {names or 'none'})"
    return Record(ident, data=image, target=target, problem=problem)


def _parse_label(raw: bytes) -> str | int:
    text = raw.decode("utf-8", errors="replace").strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _reraise(exception: BaseException) -> bool:
    raise DatasetError(f"cannot read a WebDataset shard: {exception}") from exception
