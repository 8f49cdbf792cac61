"""Extremal perturbation: how close to TorchRay's 800-step result, against seconds, in one run.

Every contender solves TorchRay's problem (its mask generator, area counted with the margin,
blur up to 20 pixels, alternate jitter) for one area on one image, float32, on the threads
given. For each result:

- ``reward``: the target's logit on the image preserved by the mask, computed the same way for
  every contender (backlight's blur pyramid);
- ``area``: the fraction of the image where the mask is 0.5 or more;
- ``IoU``: of that thresholded mask with TorchRay's 800-step mask.

TorchRay's schedule does not depend on ``max_iter``, so its runs of 100, 200 and 400 steps are
the start of its 800-step run.

With ``--noise``, a second table: how far TorchRay's own 800-step mask moves when the image gets
Gaussian noise of each standard deviation given (seeded draws, ``--draws`` of each), as IoU with
its mask on the clean image, beside backlight's fast path on the same noisy image: how stable
the reference that the IoU target compares with is.

    python benchmarks/extremal_quality.py --model demo
    python benchmarks/extremal_quality.py --model resnet18 --size 224
    python benchmarks/extremal_quality.py --model demo --markdown out.md --plot docs/extremal.png
    python benchmarks/extremal_quality.py --model demo --noise 0.003,0.01 --draws 4

Needs ``pip install torchray`` (and matplotlib for ``--plot``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import backlight
from backlight.methods._extremal_ops import blur_pyramid, perturb
from rise_quality import publish, setup

MAX_BLUR = 20.0  # TorchRay's, fixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="demo, or a torchvision name")
    parser.add_argument("--size", type=int, default=224, help="image side for torchvision")
    parser.add_argument("--area", type=float, default=0.1)
    parser.add_argument("--torchray", default="100,200,400,800", help="TorchRay's step counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--noise", default="", help="noise standard deviations, e.g. 0.003,0.01")
    parser.add_argument("--draws", type=int, default=4, help="noisy images per deviation")
    parser.add_argument("--markdown", help="append the table to this file")
    parser.add_argument("--plot", help="write the curves to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchray.attribution.extremal_perturbation import extremal_perturbation as theirs

    model, x, c = setup(args.model, args.size)
    side = min(x.shape[-2:])
    step = max(1, round(7 * side / 224))
    sigma = 3.0 * step  # TorchRay's 7 and 21 at 224 px, in proportion below

    def torchray(max_iter: int) -> Callable[..., torch.Tensor]:
        def run(image: torch.Tensor = x) -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                masks, _ = theirs(
                    model, image, c, areas=[args.area], max_iter=max_iter, step=step, sigma=sigma
                )
            return masks[0, 0].detach()

        return run

    def ours(image: torch.Tensor = x, **options: Any) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            result = backlight.extremal_perturbation(
                model,
                image,
                c,
                areas=[args.area],
                step=step,
                sigma=sigma,
                max_blur=MAX_BLUR,
                area_with_margin=True,
                progress=False,
                **options,
            )
            run.iterations = int(result.iterations[0, 0])  # type: ignore[attr-defined]
            return result.masks[0, 0].detach()

        return run

    contenders: list[tuple[str, str, Callable[[], torch.Tensor]]] = [
        ("TorchRay", f"{n} steps", torchray(int(n))) for n in args.torchray.split(",") if n
    ]
    contenders += [
        ("backlight torchray", "800 steps", ours()),
        ("backlight fast", "300 steps", ours(schedule="fast", max_iter=300)),
        ("backlight fast", "300, tol 0.01", ours(schedule="fast", max_iter=300, tolerance=0.01)),
        ("backlight fast", "200, tol 0.01", ours(schedule="fast", max_iter=200, tolerance=0.01)),
        ("backlight fast", "150, tol 0.01", ours(schedule="fast", max_iter=150, tolerance=0.01)),
    ]
    with torch.no_grad():
        levels = blur_pyramid(x, 8, MAX_BLUR)
        steps = torch.cat([levels[:, 1:] - levels[:, :-1], torch.zeros_like(levels[:, :1])], 1)

    def reward(mask: torch.Tensor) -> float:
        with torch.no_grad():
            return float(model(perturb(levels, steps, mask[None, None])[:, 0])[0, c])

    results: dict[str, tuple[torch.Tensor, float, int]] = {}
    # the 800-step runs first (TorchRay's is the reference), then the others
    order = sorted(range(len(contenders)), key=lambda i: contenders[i][1] != "800 steps")
    for i in order:
        name, budget, run = contenders[i]
        start = time.perf_counter()
        mask = run()
        seconds = time.perf_counter() - start
        used = getattr(run, "iterations", int(budget.split()[0].rstrip(",")))
        results[f"{name}|{budget}"] = (mask, seconds, used)
        print(name, budget, f"{seconds:.1f} s", flush=True)
    reference = results[f"TorchRay|{args.torchray.split(',')[-1]} steps"][0] >= 0.5
    tr_seconds = results[f"TorchRay|{args.torchray.split(',')[-1]} steps"][1]
    rows = []
    for name, budget, _ in contenders:
        mask, seconds, used = results[f"{name}|{budget}"]
        kept = mask >= 0.5
        rows.append(
            {
                "contender": name,
                "budget": budget,
                "steps": used,
                "seconds": seconds,
                "speed-up": tr_seconds / seconds,
                "reward": reward(mask),
                "area": float(kept.float().mean()),
                "IoU": _iou(kept, reference),
            }
        )
    publish(_markdown(rows, args), args, lambda path: _plot(rows, path, args))
    if args.noise:
        fast = {"schedule": "fast", "max_iter": 150, "tolerance": 0.01}
        noisy = []
        for sigma_noise in (float(v) for v in args.noise.split(",")):
            for draw in range(args.draws):
                noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(draw))
                image = x + sigma_noise * noise
                theirs_mask = torchray(800)(image) >= 0.5
                ours_mask = ours(image, **fast)() >= 0.5
                noisy.append(
                    (sigma_noise, draw, _iou(theirs_mask, reference), _iou(ours_mask, reference))
                )
                print(*noisy[-1], flush=True)
        publish(_noise_markdown(noisy, args), args, lambda path: None)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


def _noise_markdown(rows: list[tuple[float, int, float, float]], args: argparse.Namespace) -> str:
    what = "demo model, 64 px" if args.model == "demo" else f"{args.model}, {args.size} px"
    lines = [
        f"Extremal perturbation on the {what} with noise added to the image: IoU with "
        "TorchRay's 800-step mask on the clean image.",
        "",
        "| noise σ | draw | TorchRay, 800 steps | backlight fast, 150, tol 0.01 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s:g} | {d} | {t:.3f} | {o:.3f} |" for s, d, t, o in rows]
    return "\n".join(lines)


def _markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    what = "demo model, 64 px" if args.model == "demo" else f"{args.model}, {args.size} px"
    lines = [
        f"Extremal perturbation on the {what}, area {args.area}, one image, float32, "
        f"{args.threads} threads; speed-up is TorchRay's 800-step time over the row's.",
        "",
        "| contender | setting | steps run | seconds | speed-up | reward | area | IoU with "
        "TorchRay 800 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['contender']} | {r['budget']} | {r['steps']} | {r['seconds']:.1f} | "
            f"{r['speed-up']:.1f}x | {r['reward']:.3f} | {r['area']:.3f} | {r['IoU']:.3f} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: str, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for name in dict.fromkeys(str(r["contender"]) for r in rows):
        mine = [r for r in rows if r["contender"] == name]
        for axis, key in zip(axes, ("IoU", "reward"), strict=True):
            axis.plot([r["seconds"] for r in mine], [r[key] for r in mine], marker="o", label=name)
    for axis, key in zip(axes, ("IoU with TorchRay's 800-step mask", "reward"), strict=True):
        axis.set_xscale("log")
        axis.set_xlabel("seconds")
        axis.set_ylabel(key)
    axes[0].axhline(0.8, color="grey", linestyle=":", linewidth=1)
    axes[0].legend()
    figure.suptitle(f"Extremal perturbation, {args.model}: higher is better")
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
