"""How much faster than TorchRay can RISE be on this machine? The ceiling set by the network.

RISE's cost is its masked forward passes. This script times the same masked batches through
ResNet-18 run in every way this machine offers, next to TorchRay's ``rise`` and
``backlight.rise`` with the same masks count, and reports TorchRay's time over each: for a bare
row, the speed-up over TorchRay that a RISE with no cost of its own would have if it ran the
network that way. The float32 ways:

- NCHW: the model as torchvision defines it, the usual layout;
- channels-last: oneDNN's preferred layout (what ``backlight.rise`` uses);
- channels-last with batch norm folded into the convolutions (``torch.fx`` fusion);
- TorchScript, frozen and optimised for inference (folding, fused convolution and ReLU,
  oneDNN layouts);
- ``torch.compile`` (inductor, freezing), its compile time reported apart (``--no-compile`` to
  skip it: it needs a C++ compiler and tens of seconds).

and, in reduced precision, channels-last under ``autocast(bfloat16)``. All contenders are
interleaved round by round, so that drift in the machine's speed hits all alike.

    python benchmarks/forward_ceiling.py                  # 224x224, batches of 32, 2 threads
    python benchmarks/forward_ceiling.py --markdown BENCHMARKS.md

Needs the benchmark dependencies: ``pip install torchray``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.fx.experimental.optimization as fx_optimization
import torchvision

from _timing import interleave, median_table, publish, stamp
from perturbation import bare_forward, masked_batches, rise_contenders

TORCHRAY = "torchray rise"


def bare_bfloat16(model: torch.nn.Module, batches: list[torch.Tensor]) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return [model(b) for b in batches]

    return run


def ceiling_contenders(
    model: torch.nn.Module, x: torch.Tensor, num_masks: int, batch_size: int, with_compile: bool
) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """The contenders, and the one-off cost (seconds) of the ways that have one."""
    batches = masked_batches(x, num_masks, batch_size)
    runs = rise_contenders(model, x, num_masks, batch_size, batches)
    nchw = runs.pop("bare: masked forward passes (NCHW)")
    last = runs.pop("bare: masked forward passes (channels-last)")
    cl = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    frozen = copy.deepcopy(model).eval()
    folded = fx_optimization.fuse(copy.deepcopy(frozen)).to(memory_format=torch.channels_last)
    setup: dict[str, float] = {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation warnings
        start = time.perf_counter()
        script = torch.jit.optimize_for_inference(torch.jit.trace(frozen, batches[0]))
        script(batches[0])
        setup["TorchScript"] = time.perf_counter() - start
    ordered: dict[str, Callable[[], object]] = {
        TORCHRAY: runs.pop(TORCHRAY),
        "bare float32: NCHW": nchw,
        "bare float32: channels-last": last,
        "bare float32: channels-last, batch norm folded (torch.fx)": bare_forward(folded, cl),
        "bare float32: TorchScript frozen, optimize_for_inference": bare_forward(script, batches),
    }
    if with_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(copy.deepcopy(frozen))
        start = time.perf_counter()
        with torch.no_grad():
            compiled(batches[0])
        setup["torch.compile"] = time.perf_counter() - start
        ordered["bare float32: torch.compile (inductor, freezing)"] = bare_forward(
            compiled, batches
        )
    ordered["bare bfloat16 autocast: channels-last"] = bare_bfloat16(frozen, cl)
    ordered.update(runs)  # backlight.rise in float32 and in bfloat16
    return ordered, setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--masks", type=int, default=256, help="masks per contender run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--markdown", help="append the result table to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")  # TorchRay's deprecation warnings
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    header = stamp("forward_ceiling.py", argv)
    runs, setup = ceiling_contenders(
        model, x, args.masks, args.batch_size, with_compile=not args.no_compile
    )
    times = interleave(runs, args.rounds, model)
    reference = statistics.median(times[TORCHRAY])
    lines = [
        f"### RISE's ceiling: ResNet-18, {args.masks} masks in batches of {args.batch_size}, "
        f"{args.size}x{args.size}, CPU ({args.threads} threads), {args.rounds} rounds",
        "",
        header,
        "",
        *median_table(
            times,
            "median time (s)",
            {"ratio: TorchRay's time over this": lambda t: f"{reference / t:.2f}"},
        ),
        "",
    ]
    lines.append(
        "One-off costs, not in the table: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in setup.items())
        + "."
    )
    publish("\n".join(lines) + "\n", args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
