"""RISE: accuracy against seconds, backlight's estimators and TorchRay's, in one run.

Accuracy is measured without a reference implementation's bias, with each implementation's own
masks:

- the correlation between two maps from independent seeds (the estimator's own noise: 1 for a
  map without sampling error), and
- the noise-to-signal ratio against a map of ``--reference`` masks from a third seed of the same
  implementation and estimator family (the RMS difference over the reference's standard
  deviation over pixels; skipped with ``--reference 0``).

Every run is one image, float32, sigmoid scores (TorchRay's only choice, so both estimate the
same kind of map), batches of 32, on the threads given. TorchRay scores every class in the same
passes; backlight the one explained, as a user calls each. The contenders' runs are interleaved
by budget so that the machine's drift hits all alike.

    python benchmarks/rise_quality.py --model demo                       # the trained demo model
    python benchmarks/rise_quality.py --model resnet18 --size 224 --torchray 8000 \\
        --ours 500,1000,2000 --reference 0
    python benchmarks/rise_quality.py --model demo --markdown out.md --plot docs/rise_quality.png

Needs ``pip install torchray`` (and matplotlib for ``--plot``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchvision

import backlight
from backlight.data import make_batch
from backlight.demo import load_demo_model


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten().double() - a.double().mean()
    b = b.flatten().double() - b.double().mean()
    return float(a @ b / (a.norm() * b.norm()))


def noise_to_signal(a: torch.Tensor, reference: torch.Tensor) -> float:
    return float((a.double() - reference.double()).pow(2).mean().sqrt() / reference.double().std())


def publish(table: str, args: argparse.Namespace, plot: Callable[[str], None]) -> None:
    """Print the table, append it to ``--markdown`` and draw ``--plot``, where given."""
    print(table)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write(table + "\n")
    if args.plot:
        plot(args.plot)


def timed(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = run()
    return out.detach(), time.perf_counter() - start


def setup(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor, int]:
    if name == "demo":
        model = load_demo_model()
        images, _, _ = make_batch(1, seed=3)
        return model, images, int(model(images).argmax())
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model, x, int(model(x).argmax())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="demo, or a torchvision name")
    parser.add_argument("--size", type=int, default=224, help="image side for torchvision")
    parser.add_argument("--ours", default="125,250,500,1000,2000,4000,8000")
    parser.add_argument("--torchray", default="1000,2000,4000,8000")
    parser.add_argument("--auto", default="0.2,0.1,0.05", help='tolerances of num_masks="auto"')
    parser.add_argument("--reference", type=int, default=32000, help="masks of the reference")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="append the table to this file")
    parser.add_argument("--plot", help="write the curves to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torchray.attribution.rise import rise as torchray_rise

    model, x, c = setup(args.model, args.size)

    def ours(estimator: str, seed: int, **options: object) -> Callable[[], torch.Tensor]:
        return lambda: (
            backlight.rise(
                model,
                x,
                c,
                seed=seed,
                probability="sigmoid",
                estimator=estimator,  # type: ignore[arg-type]
                progress=False,
                **options,  # type: ignore[arg-type]
            ).maps
        )

    def theirs(seed: int, num_masks: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return torchray_rise(model, x, seed=seed, num_masks=num_masks)[:, c : c + 1]

        return run

    plans: dict[str, list[tuple[str, Callable[[int], Callable[[], torch.Tensor]]]]] = {
        "torchray": [
            (str(n), lambda s, n=int(n): theirs(s, n)) for n in args.torchray.split(",") if n
        ],
        "backlight plain": [
            (str(n), lambda s, n=int(n): ours("plain", s, num_masks=n))
            for n in args.ours.split(",")
            if n
        ],
        "backlight control variate": [
            (str(n), lambda s, n=int(n): ours("control_variate", s, num_masks=n))
            for n in args.ours.split(",")
            if n
        ],
        "backlight auto": [
            (
                f"tol {t}",
                lambda s, t=float(t): ours("control_variate", s, num_masks="auto", tolerance=t),
            )
            for t in args.auto.split(",")
            if t
        ],
    }
    references: dict[str, torch.Tensor] = {}
    if args.reference:
        references["torchray"] = theirs(2, args.reference)()
        references["backlight"] = ours("control_variate", 2, num_masks=args.reference)()
    rows = []
    longest = max(len(p) for p in plans.values())
    for k in range(longest):  # interleaved: budget k of every contender, then k + 1
        for name, plan in plans.items():
            if k >= len(plan):
                continue
            budget, make = plan[k]
            first, seconds = timed(make(0))
            second, again = timed(make(1))
            ref = references.get("torchray" if name == "torchray" else "backlight")
            rows.append(
                {
                    "contender": name,
                    "budget": budget,
                    "seconds": (seconds + again) / 2,
                    "seed correlation": corr(first, second),
                    "noise/signal": noise_to_signal(first, ref) if ref is not None else None,
                }
            )
            print(rows[-1], flush=True)
    publish(_markdown(rows, args), args, lambda path: _plot(rows, path, args))


def _markdown(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    what = "demo model, 64 px" if args.model == "demo" else f"{args.model}, {args.size} px"
    lines = [
        f"RISE on the {what}, one image, float32, {args.threads} threads; seconds are the mean "
        "of the two seeds' runs.",
        "",
        "| contender | masks | seconds | seed correlation | noise/signal vs "
        f"{args.reference or '-'} masks |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ns = r["noise/signal"]
        lines.append(
            f"| {r['contender']} | {r['budget']} | {r['seconds']:.2f} | "
            f"{r['seed correlation']:.4f} | {'-' if ns is None else f'{ns:.3f}'} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, object]], path: str, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=110)
    for name in dict.fromkeys(str(r["contender"]) for r in rows):
        mine = [r for r in rows if r["contender"] == name]
        axis.plot(
            [float(r["seconds"]) for r in mine],  # type: ignore[arg-type]
            [1 - float(r["seed correlation"]) for r in mine],  # type: ignore[arg-type]
            marker="o",
            label=name,
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("seconds per map")
    axis.set_ylabel("1 - correlation of two seeds' maps")
    axis.set_title(f"RISE, {args.model}: lower is better")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
