"""``backlight run`` (a whole data set, into Parquet) and ``backlight report DIR``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..errors import BacklightError
from ._errors import cli_error
from ._explain import parse_methods, parse_settings
from ._models import adjusted, load_model, parse_device


def add_commands(commands: Any, model_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``run`` and ``report`` sub-commands."""
    run = commands.add_parser(
        "run",
        help="explain a whole data set (folder, CSV/Parquet table or tar shards) into Parquet",
    )
    run.add_argument(
        "source",
        metavar="SOURCE",
        help="a folder of images, a .csv/.parquet table, or WebDataset shards (a-{000..009}.tar)",
    )
    model_options(run)
    run.add_argument(
        "--method", default="grad_cam", help="comma-separated method names, or 'all' (grad_cam)"
    )
    run.add_argument(
        "--target",
        help="class index or name for every image; 'folder' (the parent folder's name), "
        "'column' or 'column:NAME' (a table's target column, a shard's .cls); default: each "
        "image's top class",
    )
    run.add_argument("--layer", help="layer for CAM and excitation methods")
    run.add_argument("--out", default="backlight-run", help="output folder (resumed if it exists)")
    run.add_argument("--quick", action="store_true", help="cheap settings for the slow methods")
    run.add_argument(
        "--set", action="append", default=[], metavar="[METHOD.]NAME=VALUE", help="a method option"
    )
    run.add_argument("--batch-size", type=int, default=16, help="images per method call (16)")
    run.add_argument(
        "--workers",
        type=int,
        help="reader processes (default: 0 on 2 cores or fewer, else cores - 1, at most 4)",
    )
    run.add_argument(
        "--device", help="where the model runs with --engine local: cpu, cuda, cuda:1, mps (cpu)"
    )
    run.add_argument("--engine", choices=("local", "ray"), default="local", help="local or ray")
    run.add_argument("--concurrency", type=int, default=2, help="model actors with --engine ray")
    run.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="how maps are stored"
    )
    run.add_argument("--png", action="store_true", help="also write an overlay per image/method")
    run.add_argument("--part-images", type=int, default=1024, help="images per Parquet part (1024)")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    report = commands.add_parser("report", help="the HTML report of a `backlight run` folder")
    report.add_argument("folder", metavar="DIR", help="the --out folder of a run")
    report.add_argument("--images", type=int, default=24, help="the most images shown (24)")
    report.add_argument("--out", help="where to write it (default DIR/report.html)")


def run_command(args: argparse.Namespace, classes: list[str] | None) -> int:
    """``backlight run``; ``classes`` from ``--classes``, if given."""
    from ..runs import run

    methods = parse_methods(args.method)
    settings = parse_settings(args.set, methods)
    device = None if args.device is None else parse_device(args.device)
    preprocess = None
    if args.crop is not None or args.mean is not None or args.std is not None:
        recipe = load_model(args.model, args.weights, size=args.size).preprocess
        preprocess = adjusted(recipe, crop=args.crop, mean=args.mean, std=args.std)
    try:
        summary = run(
            args.source,
            out=args.out,
            model=args.model,
            weights=args.weights,
            size=args.size,
            preprocess=preprocess,  # the model's own, with --crop, --mean, --std
            classes=classes,
            methods=[m.name for m in methods],
            target=args.target,
            layer=args.layer,
            settings=settings,
            quick=args.quick,
            batch_size=args.batch_size,
            workers=args.workers,
            device=device,
            engine=args.engine,
            concurrency=args.concurrency,
            dtype=args.dtype,
            png=args.png,
            part_images=args.part_images,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(
            "backlight: interrupted; the finished parts are kept: run the same command again "
            "to go on from there",
            file=sys.stderr,
        )
        return 130
    except BacklightError as e:
        raise cli_error(e) from e
    if not args.quiet:
        print(
            f"{summary.images} images this time ({summary.skipped} done before), "
            f"{summary.images_per_second:.1f} images/s; {summary.out}/ holds "
            f"{summary.total_rows} map rows and {summary.errors} errors (errors.parquet)"
        )
    return 0


def report_command(args: argparse.Namespace) -> int:
    from ..runs import report

    try:
        path = report(args.folder, path=args.out, images=args.images)
    except BacklightError as e:
        raise cli_error(e) from e
    print(f"wrote {path}")
    return 0
