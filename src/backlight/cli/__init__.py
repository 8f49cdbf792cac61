"""The ``backlight`` command: explain images or a whole data set, list methods and layers, build
a run's report, run the offline demo.

Exit codes: 0 success; 2 usage error (an unknown method, model, layer or target, a bad option);
1 failure (a missing or unreadable file, no network for weights, a method that cannot apply).
Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .._layers import trace
from .._registry import list_methods, setting_text
from ._errors import CliError, Failure, UsageError
from ._explain import (
    Job,
    compute,
    load_images,
    parse_methods,
    parse_settings,
    write,
)
from ._models import CROPS, adjusted, describe, load_model, parse_device
from ._outputs import file_stems, staged
from ._run import add_commands, report_command, run_command
from ._targets import model_output, parse_target_spec, read_task

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backlight",
        description="What an image classifier looks at: saliency maps, offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    explain = commands.add_parser("explain", help="explain images with one or more methods")
    explain.add_argument("images", nargs="+", metavar="IMAGE")
    _model_options(explain)
    explain.add_argument(
        "--method",
        default="grad_cam,guided_backprop",
        help="comma-separated method names, or 'all' (see `backlight methods`; default "
        "grad_cam,guided_backprop)",
    )
    explain.add_argument(
        "--target",
        help="a class index or name (default: each image's top class); prob:C, sigmoid:C, "
        "margin:C for a classifier; C or seg:C for a segmentation model (its pixels of C); C or "
        "box:x0,y0,x1,y1[:C] for a detector (the detection matching the box, in input pixels)",
    )
    explain.add_argument(
        "--layer", help="layer for CAM and excitation methods (see `backlight layers`)"
    )
    explain.add_argument("--out", default="backlight-out", help="output folder")
    explain.add_argument(
        "--quick",
        action="store_true",
        help="cheap settings for the slow methods (fewer masks, channels or steps; "
        "`backlight methods` gives each one's settings and what they cost in accuracy)",
    )
    explain.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[METHOD.]NAME=VALUE",
        help="a method option, e.g. num_masks=4000, autocast=bfloat16, "
        "extremal_perturbation.areas=0.05,0.1 (repeatable; see `backlight methods`)",
    )
    explain.add_argument(
        "--device",
        help="where the model runs: cpu, cuda, cuda:1, mps (default: cpu)",
    )
    explain.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    add_commands(commands, _model_options)

    commands.add_parser("methods", help="list the methods with their options")

    layers = commands.add_parser("layers", help="list a model's modules with output shapes")
    _model_options(layers, weights="random")

    bench = commands.add_parser(
        "bench", help="score every method on synthetic shapes with ground-truth masks"
    )
    bench.add_argument("--method", default="all", help="comma-separated method names, or 'all'")
    bench.add_argument("--images", type=int, default=200, help="number of synthetic images")
    bench.add_argument("--seed", type=int, default=7, help="seed of the synthetic images")
    bench.add_argument(
        "--full", action="store_true", help="the methods' default settings (slow), not quick"
    )
    bench.add_argument("--out", default="backlight-bench", help="output folder")
    bench.add_argument("--quiet", action="store_true", help="no progress bars or table")

    demo = commands.add_parser("demo", help="run every method on synthetic images, offline")
    demo.add_argument("--out", default="backlight-demo", help="output folder")
    demo.add_argument("--images", type=int, default=6, help="number of images (1 to 24)")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the synthetic images")
    demo.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return parser


def _model_options(parser: argparse.ArgumentParser, weights: str = "DEFAULT") -> None:
    parser.add_argument(
        "--model",
        default="resnet50",
        help="torchvision or timm name (torchvision's segmentation and detection models too: "
        "fcn_resnet50, deeplabv3_*, fasterrcnn_*, retinanet_*, ssd*), path/to/file.py:factory, "
        "keras:VGG16 (keras.applications), model.keras, or demo (the shipped demo network) "
        "(default resnet50)",
    )
    parser.add_argument(
        "--weights",
        default=weights,
        help=f"DEFAULT (downloads once), random, or a state-dict file; for Keras a .weights.h5 "
        f"file (default {weights})",
    )
    parser.add_argument("--size", type=int, help="input side in pixels (default: the weights')")
    parser.add_argument("--classes", help="a text file with one class name per line")
    if weights == "random":
        return  # `layers`: no images
    parser.add_argument(
        "--crop",
        choices=CROPS,
        help="center: the short side resized, the centre cut out (the weights' recipe, the "
        "default); resize: the whole image resized to the square, nothing cut off",
    )
    parser.add_argument(
        "--mean",
        help="per-channel mean to normalise with, e.g. 0.5,0.5,0.5 (default: the weights')",
    )
    parser.add_argument("--std", help="per-channel std to normalise with (default: the weights')")


def _categories(args: argparse.Namespace, default: list[str] | None) -> list[str] | None:
    if not args.classes:
        return default
    path = Path(args.classes)
    if not path.is_file():
        raise Failure(f"classes file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Failure(f"cannot read --classes {path} as UTF-8 text: {e}") from e
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UsageError(f"--classes {path} holds no names; write one class name per line")
    return names


def _explain(args: argparse.Namespace) -> int:
    methods = parse_methods(args.method)
    overrides = parse_settings(args.set, methods)
    loaded = load_model(args.model, args.weights, size=args.size)
    preprocess = adjusted(loaded.preprocess, crop=args.crop, mean=args.mean, std=args.std)
    device = parse_device(args.device)
    names, shown, x = load_images(args.images, preprocess)
    model, x = loaded.model.to(device), x.to(device)
    categories = _categories(args, loaded.categories)
    with torch.inference_mode():
        task = read_task(model_output(model, x[:1]), categories)
    classes = task.classes
    if (
        args.classes
        and categories is not None
        and classes is not None
        and len(categories) != classes
    ):
        raise UsageError(
            f"--classes {args.classes} has {len(categories)} names, but the model has {classes} "
            "classes; give one name per class, in the order of the model's outputs"
        )
    job = Job(
        model=model,
        names=names,
        shown=shown,
        x=x,
        categories=categories,
        methods=methods,
        target=parse_target_spec(args.target, task, categories),
        layer=args.layer,
        quick=args.quick,
        progress=not args.quiet,
        title=f"backlight: {loaded.name} ({loaded.weights})",
        overrides=overrides,
        details={
            "model": loaded.name,
            "weights": loaded.weights,
            "preprocessing": describe(preprocess),
            "device": str(device),
        },
    )
    return _run(job, Path(args.out), args.quiet)


def _run(job: Job, out: Path, quiet: bool) -> int:
    start = time.perf_counter()
    job.names = file_stems(job.names, [m.name for m in job.methods])
    result = compute(job)
    written = write(job, result, out)
    if not quiet:
        for name, top in zip(job.names, result.predictions, strict=True):
            print(f"{name}: {top[0][0]} ({top[0][1]:.2f})")
        for method, options in result.settings.items():
            shown = ", ".join(f"{k}={setting_text(v)}" for k, v in options.items())
            print(f"{method} ({result.times[method]:.1f} s): {shown or 'no options'}")
        took = time.perf_counter() - start
        print(f"wrote {len(written)} files to {out}/ in {took:.1f} s: grid.png, report.html")
    return 0


def _methods() -> int:
    for info in list_methods():
        aliases = f" (also {', '.join(info.aliases)})" if info.aliases else ""
        print(f"{info.name:33s} {info.family:12s} {info.summary}{aliases}")
        print(f"{'':33s} {'':12s} options: {', '.join(info.options) or '-'}")
        quick = {k: v for k, v in info.quick.items() if k != "progress"}
        if quick:
            shown = ", ".join(f"{k}={setting_text(v)}" for k, v in quick.items())
            print(f"{'':33s} {'':12s} --quick: {shown} ({info.quick_note})")
    return 0


def _layers(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, args.weights, size=args.size)
    side = args.size or getattr(loaded.preprocess, "crop", 224)
    height, width = (side, side) if args.size else getattr(loaded.preprocess, "size", (side, side))
    try:
        seen = trace(loaded.model, torch.zeros(1, 3, height, width))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise Failure(
            f"the model raised {type(e).__name__} on a {height}x{width} image: {e}"
        ) from e
    print(f"{'layer':40s} {'type':24s} output (1 image of {height}x{width})")
    for name, module in loaded.model.named_modules():
        if not name:
            continue
        outputs = seen.outputs.get(name)
        if outputs is None:
            text = "not called"
        else:
            shape = tuple(outputs[0]) if isinstance(outputs[0], torch.Size) else outputs[0]
            text = str(shape) if isinstance(outputs[0], torch.Size) else f"({shape}, not a tensor)"
            if len(outputs) > 1:
                text += f" (called {len(outputs)} times: not usable as --layer)"
        print(f"{name:40s} {type(module).__name__:24s} {text}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..data import make_batch
    from ..demo import CAM_LAYER, load_demo_model

    if not 1 <= args.images <= 24:
        raise UsageError(f"--images must be between 1 and 24, not {args.images}")
    model = load_demo_model()
    shown, labels, _ = make_batch(args.images, seed=args.seed)
    job = Job(
        model=model,
        names=[f"shape{i + 1}-{model.classes[int(label)]}" for i, label in enumerate(labels)],
        shown=shown,
        x=shown,
        categories=list(model.classes),
        methods=list_methods(),
        layer=CAM_LAYER,
        quick=True,
        demo=True,
        progress=not args.quiet,
        title="backlight demo: DemoNet on synthetic shapes",
        details={
            "model": "demo (DemoNet, the weights shipped in the package)",
            "preprocessing": "none: the 64x64 synthetic images in [0, 1], as generated",
            "device": "cpu",
        },
    )
    return _run(job, Path(args.out), args.quiet)


def _bench(args: argparse.Namespace) -> int:
    from ..bench import benchmark, write_bench

    methods = parse_methods(args.method)
    if args.images < 1:
        raise UsageError(f"--images must be at least 1, not {args.images}")
    result = benchmark(
        methods,
        images=args.images,
        seed=args.seed,
        quick=not args.full,
        baseline=True,
        progress=not args.quiet,
    )
    with staged(Path(args.out)) as stage:  # all three files, or none
        names = [path.name for path in write_bench(result, stage)]
    if not args.quiet:
        print(result.markdown())
        print(f"wrote {', '.join(names)} to {args.out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    with _log_to_stderr():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "explain":
            return _explain(args)
        if args.command == "methods":
            return _methods()
        if args.command == "layers":
            return _layers(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "run":
            return run_command(args, _categories(args, None))
        if args.command == "report":
            return report_command(args)
        return _demo(args)
    except CliError as e:
        print(f"backlight: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("backlight: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # anything unforeseen is still one line and exit code 1
        if os.environ.get("BACKLIGHT_TRACEBACK"):
            raise
        print(
            f"backlight: error: {type(e).__name__}: {_one_line(str(e))} (set "
            "BACKLIGHT_TRACEBACK=1 to see where)",
            file=sys.stderr,
        )
        return 1


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a line is logged (tests and callers swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
    """backlight's own log lines (the layer it chose, RISE's warnings) on stderr, prefixed
    ``backlight:``, for the command's duration; other libraries' (Hugging Face, Ray) keep their
    own format, and the logger is as it was afterwards (``main`` may run inside a program)."""
    log = logging.getLogger("backlight")
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("backlight: %(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def console() -> None:
    """The console-script entry point."""
    sys.exit(main())
