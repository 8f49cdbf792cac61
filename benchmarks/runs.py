"""backlight run: images per second against a hand-written ideal loop, Ray against local, and
peak memory as the data set grows.

The ideal loop is what a careful user writes: the model loaded once, every image decoded and
preprocessed beforehand (not timed), then ``backlight.grad_cam`` on each batch of
``--batch-size`` images, maps kept in memory. The engines get the same model, loaded once, and
do everything else on top: read and decode the PNG files (in ``--workers`` DataLoader
workers, by default as many as the library chooses, none on 2 cores; or in Ray's tasks),
find the predictions, write Parquet parts and the manifest. All run on the same files,
interleaved in a new random order each round; each contender's wall time includes all of its
work (the engine's start-up too). Ray is started once, before, as on a cluster.

The memory rows run the local engine in a fresh process on 1,000 and then 10,000 images and
report that process's peak resident memory (``ru_maxrss``), workers included.

    python benchmarks/runs.py --markdown BENCHMARKS.md
    python benchmarks/runs.py --ray --markdown BENCHMARKS.md  # also Ray, 2 actors
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import backlight
from _timing import comparison_table, publish, stamp
from backlight.cli._models import load_model
from backlight.data import make_batch
from backlight.data.files import read_image
from backlight.runs import run
from backlight.viz import save_png


def write_images(folder: Path, n: int, size: int) -> None:
    for start in range(0, n, 256):
        images, _, _ = make_batch(min(256, n - start), seed=5, start=start, size=size)
        for i, image in enumerate(images):
            save_png(folder / f"{start + i:06d}.png", image)


def ideal(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> Callable[[], object]:
    def loop() -> object:
        return [
            backlight.grad_cam(model, x[i : i + batch_size]).maps
            for i in range(0, x.shape[0], batch_size)
        ]

    return loop


def engine(
    folder: Path, loaded: Any, batch_size: int, kind: str, workers: int | None
) -> Callable[[], object]:
    """The engine on the folder, with the model loaded once beforehand, as the ideal loop's."""

    def go() -> object:
        out = Path(tempfile.mkdtemp(prefix="bench-run-"))
        try:
            return run(
                folder,
                out=out / "out",
                model=loaded.model,
                preprocess=loaded.preprocess,
                classes=loaded.categories,
                methods="grad_cam",
                batch_size=batch_size,
                workers=workers,
                engine=kind,  # type: ignore[arg-type]
                concurrency=2,
                progress=False,
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)

    return go


def _readers(workers: int | None) -> int:
    from backlight.runs import _workers

    return _workers(workers)


def throughput(args: argparse.Namespace, spec: str, n: int, size: int) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="bench-images-"))
    try:
        write_images(folder, n, size)
        loaded = load_model(spec, "random" if spec != "demo" else "DEFAULT")
        torch.manual_seed(0)
        paths = sorted(folder.iterdir())
        x = torch.stack([loaded.preprocess(read_image(p))[1] for p in paths])
        runs = {
            "ideal loop (pre-decoded)": ideal(loaded.model, x, args.batch_size),
            "backlight run --engine local": engine(
                folder, loaded, args.batch_size, "local", args.workers
            ),
        }
        if args.ray:
            runs["backlight run --engine ray (2 actors)"] = engine(
                folder, loaded, args.batch_size, "ray", 0
            )
        times: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        for fn in runs.values():
            fn()  # warm-up (Ray's start-up happens here)
        for r in range(args.rounds):
            random.Random(r).shuffle(order)
            for name in order:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
            print(f"{spec}: round {r + 1}/{args.rounds}", file=sys.stderr)
        compared = {
            name: "ideal loop (pre-decoded)" for name in runs if name.startswith("backlight")
        }
        if args.ray:
            compared["backlight run --engine ray (2 actors)"] = "backlight run --engine local"
        rows = [
            f"\n{spec}: Grad-CAM on {n} PNG images of {size}x{size}, batch {args.batch_size}, "
            f"{_readers(args.workers)} reader worker(s); images/s = {n} / median:",
            "",
        ]
        table = comparison_table(times, compared)
        table[0] += " images/s |"
        table[1] += " ---: |"
        for i, name in enumerate(runs):
            table[i + 2] += f" {n / statistics.median(times[name]):.1f} |"
        return rows + table
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_MEMORY_CHILD = """
import json, resource, sys, tempfile
from pathlib import Path
from typing import Any
from backlight.runs import run
folder, out = sys.argv[1], sys.argv[2]
summary = run(folder, out=out, model="demo", methods="grad_cam", batch_size=32, workers=1,
              progress=False, part_images=1024)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rows": summary.rows, "self": own, "children": children,
                  "seconds": summary.seconds}))
"""


def memory(counts: list[int]) -> list[str]:
    rows = [
        "\nPeak memory of `backlight run` (demo model, Grad-CAM, batch 32, 1 reader worker, "
        "64x64 PNGs), each count in a fresh process:",
        "",
        "| images | rows | seconds | peak RSS, main process | peak RSS, largest worker |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in counts:
        folder = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        try:
            write_images(folder / "images", n, 64)
            done = subprocess.run(
                [sys.executable, "-c", _MEMORY_CHILD, str(folder / "images"), str(folder / "out")],
                check=True,
                capture_output=True,
                text=True,
            )
            found = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(
                f"| {n:,} | {found['rows']:,} | {found['seconds']:.1f} | "
                f"{found['self'] / 1024:.0f} MiB | {found['children'] / 1024:.0f} MiB |"
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, help="reader processes (default: the library's)")
    parser.add_argument("--demo-images", type=int, default=2000)
    parser.add_argument("--resnet-images", type=int, default=64)
    parser.add_argument("--memory", default="1000,10000", help="image counts, or '' to skip")
    parser.add_argument("--ray", action="store_true", help="also time the Ray engine")
    parser.add_argument("--markdown", help="append the tables to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.ray:  # started once, as on a cluster: the runs find it and leave it running
        import ray

        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    lines = ["\n### backlight run (a data set)\n", stamp("runs.py", argv)]
    lines += throughput(args, "demo", args.demo_images, 64)
    lines += throughput(args, "resnet50", args.resnet_images, 224)
    if args.memory:
        lines += memory([int(n) for n in args.memory.split(",")])
    publish("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
