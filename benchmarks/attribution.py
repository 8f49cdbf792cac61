"""Time Integrated Gradients, Occlusion and Ablation-CAM against their bounds and peers.

- Integrated Gradients at ``--steps`` points against the bound (the same number of batched
  forward and backward passes to the input, on inputs made in advance) and Captum's
  ``IntegratedGradients`` with ``internal_batch_size`` equal to the batch (the same memory),
  with and without ``return_convergence_delta=True`` (with it, Captum also runs the forward
  passes on the input and the baseline that backlight always runs, for its targets and
  ``.delta``: the same work).
- Occlusion against Captum's ``Occlusion`` at the same window, stride and images per pass.
- Ablation-CAM against pytorch-grad-cam's ``AblationCAM`` at the same batch of ablations, and
  its peak memory at two batch sizes (bounded by the batch, not by the number of channels).

Contenders run interleaved in a new random order each round (see _timing.py); ratios are of
medians and of minimums.

    python benchmarks/attribution.py --markdown BENCHMARKS.md

Needs the benchmark dependencies: ``pip install captum grad-cam``.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable

import torch

import backlight
from _timing import interleave, peak_memory, publish, random_setup, ratio_table, stamp


def integrated(
    model: torch.nn.Module, x: torch.Tensor, target: list[int], steps: int
) -> dict[str, Callable[[], object]]:
    from captum.attr import IntegratedGradients

    classes = torch.tensor(target)
    alphas = torch.linspace(0, 1, steps)
    points = [(a * x).detach() for a in alphas]

    def bound() -> object:
        total = torch.zeros_like(x)
        for point in points:
            leaf = point.clone().requires_grad_(True)
            score = model(leaf)[torch.arange(x.shape[0]), classes].sum()
            total += torch.autograd.grad(score, leaf)[0]
        return total

    def ours() -> object:
        return backlight.integrated_gradients(model, x, target, steps=steps, progress=False)

    def captum() -> object:
        return IntegratedGradients(model).attribute(
            x, target=target, n_steps=steps, internal_batch_size=x.shape[0]
        )

    def captum_delta() -> object:  # the same work as ours: the two forward passes for delta
        return IntegratedGradients(model).attribute(
            x,
            target=target,
            n_steps=steps,
            internal_batch_size=x.shape[0],
            return_convergence_delta=True,
        )

    return {
        f"bound: {steps} forward+backward passes of {x.shape[0]}": bound,
        "backlight.integrated_gradients": ours,
        "Captum IntegratedGradients": captum,
        "Captum IntegratedGradients, return_convergence_delta=True": captum_delta,
    }


def occlusion(
    model: torch.nn.Module, x: torch.Tensor, target: list[int], window: int, stride: int
) -> dict[str, Callable[[], object]]:
    from captum.attr import Occlusion

    per_pass = 32

    def ours() -> object:
        return backlight.occlusion(
            model, x, target, window=window, stride=stride, batch_size=per_pass, progress=False
        )

    def captum() -> object:
        return Occlusion(model).attribute(
            x,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            baselines=0.0,
            target=target,
            perturbations_per_eval=per_pass,
        )

    return {"backlight.occlusion": ours, "Captum Occlusion": captum}


def ablation(
    model: torch.nn.Module, x: torch.Tensor, target: list[int], layer: str, batch: int
) -> dict[str, Callable[[], object]]:
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]

    def ours() -> object:
        return backlight.ablation_cam(  # type: ignore[attr-defined]
            model, x, target, layer=layer, batch_size=batch, progress=False
        )

    def peer() -> object:
        with AblationCAM(model, [module], batch_size=batch) as cam:
            return cam(x, [ClassifierOutputTarget(t) for t in target])

    return {"backlight.ablation_cam": ours, "pytorch-grad-cam AblationCAM": peer}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--window", type=int, default=56)
    parser.add_argument("--stride", type=int, default=28)
    parser.add_argument("--ablation-batch", type=int, default=1, help="images for Ablation-CAM")
    parser.add_argument("--ablation-size", type=int, default=112)
    parser.add_argument("--part", choices=("all", "ig", "occlusion", "ablation"), default="all")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    lines = ["\n### Integrated Gradients, Occlusion, Ablation-CAM\n", stamp("attribution.py", argv)]
    model, x, target = random_setup("resnet50", args.batch, args.size, args.threads)
    if args.part in ("all", "ig"):
        runs = integrated(model, x, target, args.steps)
        times = interleave(runs, args.rounds, model)
        lines += [
            f"\nIntegrated Gradients, ResNet-50, batch {args.batch} at {args.size} px, "
            f"{args.steps} steps:",
            "",
            *ratio_table(times, next(iter(runs))),
        ]
    if args.part in ("all", "occlusion"):
        runs = occlusion(model, x, target, args.window, args.stride)
        times = interleave(runs, args.rounds, model)
        lines += [
            f"\nOcclusion, ResNet-50, batch {args.batch} at {args.size} px, window "
            f"{args.window}, stride {args.stride}, 32 covered images per pass:",
            "",
            *ratio_table(times, "Captum Occlusion"),
        ]
    if args.part in ("all", "ablation"):
        small = x[: args.ablation_batch, :, : args.ablation_size, : args.ablation_size].clone()
        mine = target[: args.ablation_batch]
        runs = ablation(model, small, mine, "layer4", 64)
        times = interleave(runs, args.rounds, model)
        memory = peak_memory(
            {
                f"backlight.ablation_cam batch_size={b}": (
                    lambda b=b: backlight.ablation_cam(  # type: ignore[attr-defined]
                        model, small, mine, layer="layer4", batch_size=b, progress=False
                    )
                )
                for b in (16, 128)
            },
            model,
        )
        lines += [
            f"\nAblation-CAM at layer4 (2048 channels), ResNet-50, batch {args.ablation_batch} at "
            f"{args.ablation_size} px, 64 ablations per pass:",
            "",
            *ratio_table(times, "pytorch-grad-cam AblationCAM"),
            "",
            "Peak memory above the start, one call each: "
            + ", ".join(f"{k}: {v / 2**20:.0f} MiB" for k, v in memory.items()),
        ]
    publish("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
