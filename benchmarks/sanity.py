"""Cascading randomization of the demo network (Adebayo et al. 2018), step by step.

For the gradient, guided backprop and Grad-CAM (and any other methods asked for), the rank
correlation (Spearman, of |map|) and the SSIM between the map of the trained network and the map
after re-initialising the layers from the output down, one more layer at each step. A method
whose map does not change while the weights become random does not explain the network.

    python benchmarks/sanity.py                          # 64 synthetic images, seed 7
    python benchmarks/sanity.py --methods gradient,guided_backprop,grad_cam,deconvnet \\
        --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from _timing import publish
from backlight.data import make_batch
from backlight.demo import CAM_LAYER, load_demo_model
from backlight.metrics import randomization


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="gradient,guided_backprop,grad_cam")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--markdown", help="append the tables to this file")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    model = load_demo_model()
    x, labels, _ = make_batch(args.images, seed=args.seed)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = {}
    for name in methods:
        options = {"layer": CAM_LAYER, "resize": True} if "cam" in name else {}
        results[name] = randomization(model, x, name, labels, options=options, progress=False)
        print(f"{name} done", file=sys.stderr)

    layers = next(iter(results.values())).layers
    command = "python benchmarks/sanity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"### Cascading randomization of the demo network ({args.images} images, seed {args.seed})",
        "",
        f"`{command.strip()}`, {time.strftime('%Y-%m-%d')}. Mean over images of the Spearman "
        "rank correlation of |map| (and SSIM) with the trained network's map, after "
        "re-initialising every layer down to the one named (cumulative, from the output).",
        "",
        "| randomized down to | " + " | ".join(f"{m} ρ / SSIM" for m in methods) + " |",
        "| --- |" + " ---: |" * len(methods),
    ]
    for step, layer in enumerate(layers):
        cells = [
            f"{float(r.spearman_abs[step].nanmean()):.3f} / {float(r.ssim[step].nanmean()):.3f}"
            for r in results.values()
        ]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
