"""The local engine: readers in DataLoader worker processes, the model in this one.

The source's records are cut into batches of ``batch_size`` in the source's order (per shard
for tar shards); batches whose every image is done are skipped before anything is read. Worker
processes read, decode and preprocess a batch each; this process runs every method on it and
hands the rows to the store, which writes a part every ``part_images`` images (or every minute
of work, so that a slow method loses little to a crash). Memory holds ``workers`` x
``prefetch`` batches and one part, whatever the size of the data set.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ._explain import Decoded, Explainer, Maps, Preprocess, decode
from ._sources import Record, shard_records
from ._store import PartWriter


def batches(records: Sequence[Record], size: int, done: set[str]) -> list[list[Record]]:
    """``records`` cut into batches of ``size`` in order, done records left out, empty batches
    dropped: the same batches in every run over the same records."""
    cut = (records[i : i + size] for i in range(0, len(records), size))
    kept = ([r for r in batch if r.id not in done] for batch in cut)
    return [batch for batch in kept if batch]


class _Batches(Dataset[Decoded]):
    """Map-style: item ``i`` is batch ``i`` read and preprocessed (in a worker)."""

    def __init__(self, batches: list[list[Record]], preprocess: Preprocess, shown: bool):
        self.batches, self.preprocess, self.shown = batches, preprocess, shown

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Decoded:
        return decode(self.batches[index], self.preprocess, self.shown)


class _ShardBatches(IterableDataset[Decoded]):
    """Tar shards, each worker reading its share of the shards, batches cut per shard."""

    def __init__(
        self,
        shards: Sequence[str],
        size: int,
        done: set[str],
        preprocess: Preprocess,
        shown: bool,
        target_key: str | None,
    ) -> None:
        self.shards, self.size, self.done = list(shards), size, done
        self.preprocess, self.shown, self.target_key = preprocess, shown, target_key

    def __iter__(self) -> Iterator[Decoded]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for shard in mine:
            records = list(shard_records(shard, target_key=self.target_key))
            for batch in batches(records, self.size, self.done):
                yield decode(batch, self.preprocess, self.shown)


def _start_method(workers: int) -> Any:
    """How reader processes start: forked (fast; Linux's default), unless JAX is loaded in this
    process: it runs threads of its own and warns that a fork may deadlock, so the readers
    start from a fork server (the dataset and preprocessing are then pickled to them)."""
    if workers and "jax" in sys.modules:
        return multiprocessing.get_context("forkserver")
    return None


def _same(batch: Any) -> Any:
    """The DataLoader's collate function: each item is a batch already."""
    return batch


def run_local(
    writer: PartWriter,
    explainer: Explainer,
    dataset: Dataset[Decoded] | IterableDataset[Decoded],
    *,
    total: int | None,
    workers: int,
    on_batch: Callable[[Decoded, Maps], None] | None = None,
) -> dict[str, int]:
    """Explain every batch of ``dataset`` into ``writer``'s store; returns the counts of this
    session. On Ctrl-C the complete batches explained so far are written before the interrupt
    goes on, so that a resumed run starts where this one stopped."""
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_same,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        multiprocessing_context=_start_method(workers),
    )
    writer.expect(total)
    with writer:
        for batch in loader:
            rows, maps = explainer(batch)
            if on_batch is not None:
                on_batch(batch, maps)
            writer.add(rows, batch.size)
    return writer.counts


def folder_png(out: Path, image_id: str, method: str) -> Path:
    """Where ``--png`` puts the overlay of one image and method: the id's folders kept."""
    stem = image_id.rsplit(".", 1)[0] if "." in Path(image_id).name else image_id
    return out / "png" / f"{stem}_{method}.png"


def overlays(out: Path) -> Callable[[Decoded, Maps], None]:
    """Write each batch's overlays (atomically, one file each) under ``out/png``."""
    from .. import viz

    def write(batch: Decoded, maps: Maps) -> None:
        if batch.shown is None:
            return
        index = {ident: i for i, ident in enumerate(batch.ids)}
        for method, (ids, tensor) in maps.items():
            shown = batch.shown[[index[i] for i in ids]]
            for ident, picture in zip(ids, viz.overlay(shown, tensor.cpu()), strict=True):
                viz.save_png(folder_png(out, ident, method), picture)

    return write
