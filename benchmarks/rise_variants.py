"""RISE: do antithetic or stratified masks lower the noise of the control-variate estimator?

Issue 17 lists them as candidates beside the control variate. This script measures them on the
trained demo model with backlight's own masks (``RiseMasks``: 7x7 Bernoulli(0.5) grids,
upsampled and shifted), all scored the same way (sigmoid of the class logit, one image), all
estimated with the control variate backlight uses, ``N/(N-1) · Σ (f_i − f̄) M_i / (N p) + f̄``:

- ``independent``: N independent masks (what ``backlight.rise`` draws);
- ``antithetic``: N/2 independent masks and their complements (the grid ``1 − G``, the same
  shift): the same distribution for every mask when p = 0.5, negatively correlated pairs;
- ``stratified``: every cell kept in exactly N·p of the N masks (each cell's column a random
  permutation), and the shifts cycling through every offset equally often.

Accuracy is the correlation between the maps of two independent seeds (1 for a map without
sampling error), as in ``rise_quality.py``; several seed pairs are averaged.

    python benchmarks/rise_variants.py --budgets 250,500,1000 --pairs 4 --markdown out.md
"""

from __future__ import annotations

import argparse

import torch

from _timing import publish
from backlight.methods.rise import RiseMasks
from rise_quality import corr, setup


def draw(kind: str, n: int, size: tuple[int, int], seed: int) -> RiseMasks:
    """``n`` masks of the ``kind`` asked, as a RiseMasks whose grids and shifts are replaced."""
    masks = RiseMasks(size, num_masks=n, cells=7, p=0.5, seed=seed)
    grids, shifts = masks.grids.clone(), masks.shifts.clone()
    if kind == "antithetic":
        half = n // 2
        grids[half : 2 * half] = ~grids[:half]
        shifts[half : 2 * half] = shifts[:half]
    elif kind == "stratified":
        generator = torch.Generator().manual_seed(seed + 10_000)
        cells = grids.shape[1] * grids.shape[2]
        keep = torch.arange(n) < n // 2  # exactly n·p ones per cell
        columns = [keep[torch.randperm(n, generator=generator)] for _ in range(cells)]
        grids = torch.stack(columns, dim=1).view_as(grids)
        for axis, size_of_cell in enumerate(masks.cell_size):
            cycle = torch.arange(n) % size_of_cell
            shifts[:, axis] = cycle[torch.randperm(n, generator=generator)]
    masks.grids, masks.shifts = grids, shifts
    return masks


def estimate(model: torch.nn.Module, x: torch.Tensor, c: int, masks: RiseMasks) -> torch.Tensor:
    """The control-variate RISE map of ``x`` for class ``c`` over ``masks``, float64."""
    n, scores, rendered = len(masks), [], []
    with torch.no_grad():
        for start in range(0, n, 64):
            m = masks.render(start, min(start + 64, n))
            scores.append(torch.sigmoid(model(x * m)[:, c]).double())
            rendered.append(m.double())
    f = torch.cat(scores)
    m = torch.cat(rendered)
    mean = f.mean()
    total = ((f - mean)[:, None, None, None] * m).sum(0)
    return n / (n - 1) * total / (n * masks.p) + mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="250,500,1000")
    parser.add_argument("--pairs", type=int, default=4, help="seed pairs averaged per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="append the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, images, c = setup("demo", 64)  # the image rise_quality.py explains
    size = (int(images.shape[-2]), int(images.shape[-1]))
    kinds = ("independent", "antithetic", "stratified")
    lines = [
        f"RISE mask designs on the demo model (64 px, one image, class {c}), control-variate "
        f"estimator, seed correlation averaged over {args.pairs} seed pairs.",
        "",
        "| masks | " + " | ".join(kinds) + " |",
        "|" + " ---: |" * (1 + len(kinds)),
    ]
    for budget in (int(b) for b in args.budgets.split(",") if b):
        cells = []
        for kind in kinds:
            values = [
                corr(
                    estimate(model, images, c, draw(kind, budget, size, 2 * k)),
                    estimate(model, images, c, draw(kind, budget, size, 2 * k + 1)),
                )
                for k in range(args.pairs)
            ]
            cells.append(f"{sum(values) / len(values):.4f}")
            print(budget, kind, values, flush=True)
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    publish("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
