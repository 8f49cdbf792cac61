"""Time backlight's gradient and guided backprop against Captum, TorchRay and the bare bound.

The bound is what any input-gradient method must do: one forward pass and one
``torch.autograd.grad`` with respect to the input only. Every contender runs on the same model,
input and targets, interleaved in a new random order each round (see _timing.py); medians and
minimums are compared as ratios to the bound.

    python benchmarks/gradient_family.py                # ResNet-50, batch 8, 224x224, 15 rounds
    python benchmarks/gradient_family.py --rounds 3 --markdown BENCHMARKS.md

Needs the benchmark dependencies: ``pip install captum torchray``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch

import backlight
from _timing import interleave, publish, random_setup, ratio_table, stamp

BOUND = "bound: forward + autograd.grad(input)"


def contenders(
    model: torch.nn.Module, x: torch.Tensor, target: list[int]
) -> dict[str, Callable[[], object]]:
    from captum.attr import GuidedBackprop, Saliency
    from torchray.attribution.gradient import gradient as torchray_gradient
    from torchray.attribution.guided_backprop import guided_backprop as torchray_guided

    one_hot = torch.zeros(x.shape[0], 1000)
    one_hot[torch.arange(x.shape[0]), target] = 1.0

    def bound() -> object:
        inp = x.clone().requires_grad_(True)
        return torch.autograd.grad(model(inp), inp, one_hot)[0]

    def captum_gradient() -> object:
        return Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=False)

    def captum_guided() -> object:
        return GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=target)

    return {
        BOUND: bound,
        "backlight.gradient": lambda: backlight.gradient(model, x, target),
        "backlight.guided_backprop": lambda: backlight.guided_backprop(model, x, target),
        "captum Saliency": captum_gradient,
        "captum GuidedBackprop": captum_guided,
        "torchray gradient": lambda: torchray_gradient(
            model, x.clone().requires_grad_(True), target
        ),
        "torchray guided_backprop": lambda: torchray_guided(
            model, x.clone().requires_grad_(True), target
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="append the result table to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")  # Captum warns on every call that it sets hooks
    model, x, target = random_setup(args.model, args.batch, args.size, args.threads)
    runs = contenders(model, x, target)
    times = interleave(runs, args.rounds, model)
    lines = [
        f"### Gradient family: {args.model}, batch {args.batch}, {args.size}x{args.size}, CPU "
        f"({args.threads} threads), {args.rounds} rounds",
        "",
        stamp("gradient_family.py", argv),
        "",
        *ratio_table(times, BOUND),
    ]
    table = "\n".join(lines) + "\n"
    publish(table, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
