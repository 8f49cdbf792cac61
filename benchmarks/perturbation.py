"""Time backlight's RISE and extremal perturbation against TorchRay and the bare model cost.

RISE: ``backlight.rise`` and TorchRay's ``rise`` with the same settings (1,000 masks, 7 cells,
p = 0.5, batches of 32, sigmoid scores as TorchRay uses), against the bare cost of the same
1,000 masked forward passes (the forward passes alone, on masked batches computed beforehand),
in the usual NCHW layout and in channels-last.

Extremal perturbation: the time per iteration of backlight and TorchRay at the same areas,
measured as the difference between a run of ``--long`` and a run of ``--short`` iterations
divided by the difference in iterations (so one-off costs such as the blur pyramid drop out),
against the bare cost of one iteration's model work (a forward and an input-gradient pass of
one image per area).

All contenders run on the same model (torchvision ResNet-18, random weights) and image; the
rounds are interleaved (A B C ... A B C ...) so that drift in the machine's speed hits all
alike, and medians are compared.

    python benchmarks/perturbation.py                   # 224x224, CPU, 2 threads, 3 rounds
    python benchmarks/perturbation.py --rounds 5 --markdown BENCHMARKS.md

Needs the benchmark dependencies: ``pip install torchray``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torchvision

import backlight.methods.extremal
import backlight.methods.rise
from _timing import median_table, publish


def masked_batches(x: torch.Tensor, num_masks: int, batch_size: int) -> list[torch.Tensor]:
    """The image times RISE's masks, batch by batch, computed in advance (NCHW)."""
    masks = backlight.methods.rise.RiseMasks(x.shape[-2:], num_masks=num_masks)  # type: ignore[arg-type]
    return [
        x * masks.render(start, min(start + batch_size, num_masks))
        for start in range(0, num_masks, batch_size)
    ]


def bare_forward(model: torch.nn.Module, batches: list[torch.Tensor]) -> Callable[[], object]:
    """The model's forward passes over ``batches``, nothing else, under inference mode."""

    def run() -> object:
        with torch.inference_mode():
            return [model(b) for b in batches]

    return run


def rise_contenders(
    model: torch.nn.Module,
    x: torch.Tensor,
    num_masks: int,
    batch_size: int,
    batches: list[torch.Tensor] | None = None,
) -> dict[str, Callable[[], object]]:
    """The RISE contenders; ``batches`` are the masked batches if already made."""
    from torchray.attribution.rise import rise as torchray_rise

    batches = masked_batches(x, num_masks, batch_size) if batches is None else batches
    last = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    return {
        "bare: masked forward passes (NCHW)": bare_forward(model, batches),
        "bare: masked forward passes (channels-last)": bare_forward(model, last),
        "backlight.rise": lambda: backlight.methods.rise.rise(
            model,
            x,
            7,
            num_masks=num_masks,
            batch_size=batch_size,
            probability="sigmoid",
            progress=False,
        ),
        "torchray rise": lambda: torchray_rise(
            model, x, num_masks=num_masks, batch_size=batch_size
        ),
        "backlight.rise, autocast bfloat16 (an approximation)": lambda: backlight.methods.rise.rise(
            model,
            x,
            7,
            num_masks=num_masks,
            batch_size=batch_size,
            probability="sigmoid",
            autocast=torch.bfloat16,
            progress=False,
        ),
    }


def extremal_contenders(
    model: torch.nn.Module, x: torch.Tensor, areas: list[float]
) -> dict[str, Callable[[int], object]]:
    from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_ep

    images = x.expand(len(areas), *x.shape[1:])
    one_hot = torch.zeros(len(areas), 1000)
    one_hot[:, 7] = 1.0

    def bare(layout: torch.memory_format) -> Callable[[int], object]:
        def run(iterations: int) -> object:
            for _ in range(iterations):
                inp = images.contiguous(memory_format=layout).requires_grad_(True)
                torch.autograd.grad(model(inp), inp, one_hot)
            return None

        return run

    def theirs(iterations: int) -> object:
        # TorchRay leaves the parameters frozen and warns about torch.meshgrid: work on a copy
        return torchray_ep(copy.deepcopy(model), x, 7, areas=areas, max_iter=iterations)

    return {
        "bare: forward + input gradient, one image per area": bare(torch.contiguous_format),
        "bare: the same, channels-last": bare(torch.channels_last),
        "backlight.extremal_perturbation": lambda iterations: (
            backlight.methods.extremal.extremal_perturbation(
                model, x, 7, areas=areas, max_iter=iterations, progress=False
            )
        ),
        "torchray extremal_perturbation": theirs,
        "backlight.extremal_perturbation, autocast bfloat16 (an approximation)": lambda n: (
            backlight.methods.extremal.extremal_perturbation(
                model, x, 7, areas=areas, max_iter=n, autocast=torch.bfloat16, progress=False
            )
        ),
    }


def per_iteration(run: Callable[[int], object], short: int, long: int, tries: int = 5) -> float:
    """Seconds per iteration: (time of ``long`` iterations - time of ``short``) / (long - short),
    so that one-off costs drop out. A difference that noise swamped (another process took the
    cores during the short run) is not a measurement: it is taken again, up to ``tries`` times."""
    for _ in range(tries):
        start = time.perf_counter()
        run(short)
        middle = time.perf_counter()
        run(long)
        end = time.perf_counter()
        difference = (end - middle) - (middle - start)
        if difference > 0:
            return difference / (long - short)
    raise RuntimeError(
        f"the run of {long} iterations was never slower than the run of {short}: the machine is "
        "too noisy for this measurement, or --long is too close to --short"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--masks", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--areas", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--short", type=int, default=2)
    parser.add_argument("--long", type=int, default=8)
    parser.add_argument("--skip", choices=["rise", "extremal"], help="leave one method out")
    parser.add_argument("--markdown", help="append the result tables to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")  # TorchRay's deprecation and meshgrid warnings
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    load = os.getloadavg()[0]

    rise_runs = (
        {} if args.skip == "rise" else rise_contenders(model, x, args.masks, args.batch_size)
    )
    ep_runs = {} if args.skip == "extremal" else extremal_contenders(model, x, args.areas)
    rise_times: dict[str, list[float]] = {name: [] for name in rise_runs}
    ep_times: dict[str, list[float]] = {name: [] for name in ep_runs}
    for fn in ep_runs.values():  # warm-up (RISE warms up in its first round's batches)
        fn(1)
    for r in range(args.rounds):
        for name, rise_fn in rise_runs.items():
            start = time.perf_counter()
            rise_fn()
            rise_times[name].append(time.perf_counter() - start)
        for name, ep_fn in ep_runs.items():
            ep_times[name].append(per_iteration(ep_fn, args.short, args.long))
        print(f"round {r + 1}/{args.rounds} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr)

    command = "python benchmarks/perturbation.py " + " ".join(argv or sys.argv[1:])
    lines = [
        f"### Perturbation methods: ResNet-18, 1 image, {args.size}x{args.size}, CPU "
        f"({args.threads} threads), {args.rounds} interleaved rounds",
        "",
        f"`{command.strip()}` on {platform.machine()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; 1-minute load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end.",
        "",
    ]
    if rise_times:
        bare = statistics.median(rise_times["bare: masked forward passes (NCHW)"])
        bare_last = statistics.median(rise_times["bare: masked forward passes (channels-last)"])
        ours = statistics.median(rise_times["backlight.rise"])
        lines += [
            f"RISE, {args.masks} masks in batches of {args.batch_size}:",
            "",
        ]
        lines += median_table(
            rise_times,
            "median time (s)",
            {
                "ratio to bare NCHW": lambda t: f"{t / bare:.2f}",
                "ratio to bare channels-last": lambda t: f"{t / bare_last:.2f}",
            },
        )
        torchray = statistics.median(rise_times["torchray rise"])
        fast = statistics.median(rise_times["backlight.rise, autocast bfloat16 (an approximation)"])
        lines += [
            "",
            f"backlight.rise is **{torchray / ours:.2f}x** faster than TorchRay in float32, and "
            f"**{torchray / fast:.2f}x** with `autocast=torch.bfloat16` (reduced precision).",
            "",
        ]
    if ep_times:
        bare = statistics.median(ep_times["bare: forward + input gradient, one image per area"])
        ours = statistics.median(ep_times["backlight.extremal_perturbation"])
        torchray = statistics.median(ep_times["torchray extremal_perturbation"])
        lines += [
            f"Extremal perturbation, areas {args.areas}, time per iteration "
            f"(runs of {args.long} minus runs of {args.short} iterations):",
            "",
        ]
        lines += median_table(
            ep_times, "median s / iteration", {"ratio to bare": lambda t: f"{t / bare:.2f}"}
        )
        fast = statistics.median(
            ep_times["backlight.extremal_perturbation, autocast bfloat16 (an approximation)"]
        )
        lines += [
            "",
            f"backlight.extremal_perturbation is **{torchray / ours:.2f}x** faster than TorchRay "
            f"per iteration in float32, and **{torchray / fast:.2f}x** with "
            "`autocast=torch.bfloat16` (reduced precision).",
        ]
    table = "\n".join(lines) + "\n"
    publish(table, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
