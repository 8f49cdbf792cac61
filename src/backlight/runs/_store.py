"""A run's output folder: Parquet parts that appear only when complete, the manifest, resume.

Layout of ``DIR``::

    manifest.json          the model, methods, settings, versions and counts
    maps/part-00000.parquet  one row per (image, method), written as the run goes
    errors/part-00000.parquet  the images of that part that could not be read or explained
    errors.parquet         every error of the run, gathered when it ends
    png/<id>_<method>.png  overlays, with --png

Every part is written to a hidden temporary file and renamed into place (``rename`` is atomic
on POSIX file systems), the error part before its map part: a map part, even an empty one, is
the mark that every image of its batches is done. A resumed run deletes temporary files and
error parts without a map part (left by ``kill -9``), and skips the ids the parts hold. A lock
(``DIR/.lock``, ``flock``) keeps two runs out of one folder at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import OptionError
from ..viz._png import atomic_write
from ._explain import ERROR_COLUMNS, MAP_COLUMNS, Rows

_PART = re.compile(r"^part-(\d+)\.parquet$")
#: Seconds of work after which a part is written even if it holds fewer than part_images.
PART_SECONDS = 60.0


def map_schema(dtype: str) -> Any:
    import pyarrow as pa

    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema(
        [
            ("id", pa.string()),
            ("method", pa.string()),
            ("settings", pa.string()),
            ("target", pa.int64()),
            ("target_name", pa.string()),
            ("predicted", pa.int64()),
            ("predicted_name", pa.string()),
            ("score", pa.float32()),
            ("map", pa.list_(value)),
            ("shape", pa.list_(pa.int32())),
            ("seconds", pa.float64()),
        ]
    )


def error_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in ERROR_COLUMNS])


def tables(rows: Rows, dtype: str) -> tuple[Any, Any]:
    """The map and error tables of ``rows``."""
    import numpy as np
    import pyarrow as pa

    schema = map_schema(dtype)
    columns: dict[str, Any] = {}
    for name in MAP_COLUMNS:
        values = rows.maps[name]
        if name == "map":
            flat = np.concatenate(values) if values else np.zeros(0, dtype)
            offsets = np.zeros(len(values) + 1, np.int64)
            np.cumsum([len(v) for v in values], out=offsets[1:])
            if offsets[-1] < 2**31:
                offsets32 = offsets.astype(np.int32)
                columns[name] = pa.ListArray.from_arrays(
                    pa.array(offsets32), pa.array(flat.astype(dtype, copy=False))
                )
            else:  # pragma: no cover - 2**31 values in one part: the writer splits before this
                raise OptionError("a part holds more than 2**31 map values; lower part_images")
        else:
            columns[name] = pa.array(values, type=schema.field(name).type)
    maps = pa.Table.from_arrays([columns[n] for n in MAP_COLUMNS], schema=schema)
    errors = pa.Table.from_pydict(rows.errors, schema=error_schema())
    return maps, errors


class Store:
    """The output folder of one run, locked while the run lasts."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.maps_dir = self.out / "maps"
        self.errors_dir = self.out / "errors"
        self._lock: BinaryIO | None = None
        self._next = 0

    @contextmanager
    def locked(self) -> Iterator[Store]:
        self.out.mkdir(parents=True, exist_ok=True)
        lock = open(self.out / ".lock", "ab")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            lock.close()
            raise OptionError(
                f"{self.out} is in use by another run; wait for it, or give another --out"
            ) from e
        self._lock = lock
        try:
            self._clean()
            yield self
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            lock.close()
            self._lock = None

    def _clean(self) -> None:
        """Remove what a killed run left: temporary files, error parts without a map part."""
        for folder in (self.maps_dir, self.errors_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)
        # the manifest's and errors.parquet's temporary files, and the overlays' (png/<id>...)
        leftovers = [*self.out.glob(".*.tmp"), *(self.out / "png").rglob(".*.tmp")]
        for path in leftovers:
            path.unlink(missing_ok=True)
        done = set(self._parts(self.maps_dir))
        for number, path in self._parts(self.errors_dir).items():
            if number not in done:
                path.unlink(missing_ok=True)
        self._next = max(done, default=-1) + 1

    @staticmethod
    def _parts(folder: Path) -> dict[int, Path]:
        found = {}
        for path in folder.iterdir():
            match = _PART.match(path.name)
            if match:
                found[int(match.group(1))] = path
        return found

    def manifest(self) -> dict[str, Any] | None:
        path = self.out / "manifest.json"
        if not path.is_file():
            return None
        try:
            loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise OptionError(f"{path} is not a backlight manifest ({e}); use another --out") from e
        return loaded

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        atomic_write(self.out / "manifest.json", lambda stream: _write_all(stream, text))

    def done_ids(self) -> set[str]:
        """The ids the complete parts hold (maps or errors)."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        for folder in (self.maps_dir, self.errors_dir):
            for path in self._parts(folder).values():
                done.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        return done

    def write_part(self, rows: Rows, dtype: str) -> int:
        """Write ``rows`` as the next part (errors first, then the maps, the commit mark)."""
        import pyarrow.parquet as pq

        maps, errors = tables(rows, dtype)
        number, self._next = self._next, self._next + 1
        name = f"part-{number:05d}.parquet"
        if errors.num_rows:
            atomic_write(self.errors_dir / name, lambda s: pq.write_table(errors, s))
        atomic_write(self.maps_dir / name, lambda s: pq.write_table(maps, s))
        return number

    def gather_errors(self) -> int:
        """Write ``errors.parquet`` from every error part; returns the number of errors."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = [pq.read_table(p) for _, p in sorted(self._parts(self.errors_dir).items())]
        table = pa.concat_tables(parts) if parts else error_schema().empty_table()
        atomic_write(self.out / "errors.parquet", lambda s: pq.write_table(table, s))
        return int(table.num_rows)

    def count_rows(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(p).num_rows for p in self._parts(self.maps_dir).values())


class PartWriter:
    """Rows gathered into parts, as either engine hands them over: a part every
    ``part_images`` images or :data:`PART_SECONDS` of work, so that a slow method loses little
    to a crash; :attr:`counts` are this session's. Use as a context manager: on Ctrl-C the
    rows of the finished batches are written before the interrupt goes on, and the progress
    bar (images, with images/s and the time left) is closed whatever happens."""

    def __init__(
        self,
        store: Store,
        *,
        dtype: str,
        part_images: int,
        done: int,
        progress: bool,
    ) -> None:
        from tqdm.auto import tqdm

        self.store, self.dtype, self.part_images = store, dtype, part_images
        self.counts = {"images": 0, "rows": 0, "errors": 0, "parts": 0}
        self.buffer, self.buffered, self.since = Rows(), 0, time.monotonic()
        self.bar = tqdm(
            initial=done, unit="img", desc="explaining", disable=not progress, smoothing=0.1
        )

    def expect(self, total: int | None) -> None:
        """The number of images in the source (done ones included), once the engine knows it."""
        self.bar.total = total
        self.bar.refresh()

    def add(self, rows: Rows, images: int) -> None:
        """The rows of one finished batch of ``images`` images (good and bad)."""
        self.buffer.extend(rows)
        self.buffered += images
        self.counts["images"] += images
        self.counts["rows"] += rows.count
        self.counts["errors"] += len(rows.errors["id"])
        self.bar.update(images)
        if self.buffered >= self.part_images or time.monotonic() - self.since > PART_SECONDS:
            self.flush()

    def flush(self) -> None:
        # emptied before the write: a Ctrl-C during it must not write the same rows twice
        pending, count = self.buffer, self.buffered
        self.buffer, self.buffered, self.since = Rows(), 0, time.monotonic()
        if count:
            self.store.write_part(pending, self.dtype)
            self.counts["parts"] += 1

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        try:
            if kind is None or issubclass(kind, KeyboardInterrupt):
                self.flush()  # whole batches only: the part is as good as any other
        finally:
            self.bar.close()


def _write_all(stream: BinaryIO, text: str) -> None:
    stream.write(text.encode())


def read_maps(out: str | os.PathLike[str], columns: list[str] | None = None) -> Any:
    """The map rows of a run's folder (``columns`` only, if given), as one
    :class:`pyarrow.Table` (see :func:`backlight.runs.run` for an example)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out) / "maps"
    parts = sorted(Store._parts(folder).items()) if folder.is_dir() else []
    if not parts:
        raise OptionError(f"{out} holds no maps (no {folder}/part-*.parquet)")
    return pa.concat_tables([pq.read_table(p, columns=columns) for _, p in parts])
