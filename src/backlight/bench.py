"""The bench, an application of the library: every method on the synthetic shapes, scored
against the ground truth, in one table (``backlight bench`` on the command line).

For each method: the pointing game against the objects' masks, deletion and insertion AUCs,
the rank correlation with the original map once every layer is randomized, and the time per
image. The model is the demo network (or yours), the images :mod:`backlight.data` shapes, whose
masks are exact.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_flag, check_positive_int, check_real
from ._registry import MethodInfo, call_options, get_method, list_methods
from .errors import OptionError
from .metrics import deletion, insertion, pointing_game, randomization
from .viz import save_png

__all__ = ["BenchResult", "BenchRow", "benchmark", "write_bench"]


@dataclass(frozen=True)
class BenchRow:
    """One method's scores (means over the images).

    Attributes:
        method: the method's name.
        pointing: pointing-game accuracy against the objects' masks (mean over classes).
        deletion: deletion AUC (lower is better).
        insertion: insertion AUC (higher is better).
        randomization: Spearman rank correlation of |map| between the original model and the
            fully randomized one (lower is better: the map depends on the weights).
        seconds_per_image: the method's time divided by the number of images.
    """

    method: str
    pointing: float
    deletion: float
    insertion: float
    randomization: float
    seconds_per_image: float


@dataclass(frozen=True)
class BenchResult:
    """The bench table and how it was made."""

    rows: list[BenchRow]
    images: int
    randomization_images: int
    seed: int
    tolerance: float
    steps: int
    seconds: float

    def markdown(self) -> str:
        """The table as Markdown, with a line saying how it was made."""
        head = (
            "| method | pointing game ↑ | deletion AUC ↓ | insertion AUC ↑ | "
            "randomization ρ ↓ | seconds / image |"
        )
        lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in self.rows:
            lines.append(
                f"| {r.method} | {r.pointing:.3f} | {r.deletion:.3f} | {r.insertion:.3f} | "
                f"{r.randomization:.3f} | {r.seconds_per_image:.4f} |"
            )
        lines.append("")
        lines.append(
            f"{self.images} synthetic images (seed {self.seed}), pointing tolerance "
            f"{self.tolerance:g} px, {self.steps} deletion/insertion steps, randomization on "
            f"the first {self.randomization_images} images; {self.seconds:.0f} s in all."
        )
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The table as CSV, one row per method."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([f.name for f in fields(BenchRow)])
        for r in self.rows:
            writer.writerow([getattr(r, f.name) for f in fields(BenchRow)])
        return buffer.getvalue()

    def plot(self) -> np.ndarray:
        """Bar charts of the four scores, one panel each: uint8 (H, W, 3)."""
        return _plot(self.rows)


def benchmark(
    methods: Sequence[str | MethodInfo] | None = None,
    *,
    images: int = 200,
    seed: int = 7,
    model: nn.Module | None = None,
    layer: str | None = None,
    tolerance: float = 4.0,
    steps: int = 16,
    randomization_images: int = 16,
    quick: bool = True,
    batch_size: int = 50,
    baseline: bool = False,
    progress: bool = True,
) -> BenchResult:
    """Run methods on synthetic shapes and score them against the objects' masks.

    Args:
        methods: names or registered methods; ``None`` for every registered method.
        images: the number of synthetic images (``backlight.data.make_batch``).
        seed: their seed (the demo network was trained on seed 1 and validated on seed 2).
        model: the classifier (images in [0, 1], 64x64); default the demo network.
        layer: the layer for CAM and excitation methods; default the demo network's
            ``CAM_LAYER``.
        tolerance: the pointing game's radius in pixels. TorchRay's 15 px is for images of
            about 224 px or more; at 64 px that would cover most of the image, so the default is
            4 px, the same fraction of the side.
        steps: deletion and insertion steps.
        randomization_images: the images used for randomization (its cost is one map per layer).
        quick: the methods' quick settings, with the demo's settings for RISE and extremal
            perturbation on the demo network (``backlight.demo.METHOD_SETTINGS``: enough masks
            and iterations to converge on these images); ``False`` uses their defaults (much
            slower).
        batch_size: images per method call.
        baseline: add a row for a map that ignores image and model, a blob in the centre
            (TorchRay's "center" baseline): what any method has to beat.
        progress: show progress bars.

    Returns:
        A :class:`BenchResult`: ``.rows``, ``.markdown()``, ``.csv()``, ``.plot()``.

    Example:
        >>> from backlight.bench import benchmark
        >>> result = benchmark(["grad_cam"], images=6, randomization_images=2, progress=False)
        >>> row = result.rows[0]
        >>> row.method, 0.0 <= row.pointing <= 1.0
        ('grad_cam', True)
    """
    from .data import make_batch
    from .demo import CAM_LAYER, load_demo_model

    if methods is not None and (isinstance(methods, str) or not isinstance(methods, Sequence)):
        raise OptionError(
            f"`methods` must be a list of method names or None for all, not {methods!r}"
        )
    quick, baseline = check_flag("quick", quick), check_flag("baseline", baseline)
    progress = check_flag("progress", progress)
    batch_size = check_positive_int("batch_size", batch_size)
    steps = check_positive_int("steps", steps)
    randomization_images = check_positive_int("randomization_images", randomization_images)
    tolerance = check_real("tolerance", tolerance, low=0.0)
    infos = list_methods() if methods is None else [_method(m) for m in methods]
    if not infos:
        raise OptionError("`methods` is empty; name at least one method, or pass None for all")
    if baseline:
        infos.append(MethodInfo("centre (baseline)", _centre, "baseline", "a centred blob", "-"))
    if not isinstance(images, int) or isinstance(images, bool) or images < 1:
        raise OptionError(f"`images` must be a positive int, not {images!r}")
    randomization_images = max(1, min(randomization_images, images))
    demo = model is None
    model = load_demo_model() if model is None else model
    layer = CAM_LAYER if layer is None else layer
    x, labels, masks = make_batch(images, seed=seed)
    start = time.perf_counter()
    rows = []
    for info in tqdm(infos, desc="bench", disable=not progress):
        options = call_options(info, quick=quick, demo=quick and demo, layer=layer, progress=False)
        if "resize" in info.options:
            options["resize"] = True
        began = time.perf_counter()
        maps = torch.cat(
            [
                _maps(info, model, x[i : i + batch_size], labels[i : i + batch_size], options)
                for i in range(0, images, batch_size)
            ]
        )
        seconds = time.perf_counter() - began
        maps = _one_channel(maps, x.shape[-2:])
        point = pointing_game(maps, labels, masks=masks[:, 0], tolerance=tolerance)
        common = {"steps": steps, "progress": False}
        deleted = deletion(model, x, maps, labels, **common)  # type: ignore[arg-type]
        inserted = insertion(model, x, maps, labels, **common)  # type: ignore[arg-type]
        randomized = randomization(
            model,
            x[:randomization_images],
            info.function,
            labels[:randomization_images],
            options=options,
            progress=False,
        )
        rows.append(
            BenchRow(
                method=info.name,
                pointing=point.accuracy,
                deletion=float(deleted.auc.mean()),
                insertion=float(inserted.auc.mean()),
                randomization=float(randomized.spearman_abs[-1].nanmean()),
                seconds_per_image=seconds / images,
            )
        )
    return BenchResult(
        rows=rows,
        images=images,
        randomization_images=randomization_images,
        seed=seed,
        tolerance=tolerance,
        steps=steps,
        seconds=time.perf_counter() - start,
    )


def write_bench(result: BenchResult, out: Path) -> list[Path]:
    """``bench.md``, ``bench.csv`` and ``bench.png`` in ``out`` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("bench.md", result.markdown()), ("bench.csv", result.csv())):
        path = out / name
        partial = path.with_name(f".{name}.partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
        written.append(path)
    written.append(save_png(out / "bench.png", result.plot()))
    return written


def _centre(model: nn.Module, x: torch.Tensor, target: Any) -> torch.Tensor:
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    blob = -((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2).to(x.dtype)
    return blob.expand(x.shape[0], 1, h, w).clone()


def _method(method: str | MethodInfo) -> MethodInfo:
    return method if isinstance(method, MethodInfo) else get_method(method)


def _maps(
    info: MethodInfo, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, options: Any
) -> torch.Tensor:
    maps: torch.Tensor = info.function(model, x, labels, **options)
    return maps.detach().float()


def _one_channel(maps: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if maps.shape[1] != 1:
        maps = maps.abs().amax(dim=1, keepdim=True) if maps.shape[1] == 3 else maps.sum(1, True)
    if maps.shape[-2:] != size:
        maps = torch.nn.functional.interpolate(maps, size=tuple(size), mode="bilinear")
    return maps


_PANELS = (
    ("pointing game\n(higher is better)", "pointing"),
    ("deletion AUC\n(lower is better)", "deletion"),
    ("insertion AUC\n(higher is better)", "insertion"),
    ("randomization rank correlation\n(lower is better)", "randomization"),
)


def _plot(rows: Sequence[BenchRow]) -> np.ndarray:
    """Four horizontal bar charts, one per score, drawn by matplotlib (Agg, no display) in the
    visualisation's style, whatever the user's matplotlib settings."""
    from matplotlib.figure import Figure

    from .viz._grid import drawing, figure_pixels

    names = [row.method for row in rows]
    with drawing():
        figure = Figure(figsize=(11, 1.2 + 0.5 * len(rows)), dpi=100, layout="constrained")
        axes = figure.subplots(1, len(_PANELS), sharey=True)
        for ax, (title, field) in zip(axes, _PANELS, strict=True):
            values = [getattr(row, field) for row in rows]
            shown = [0.0 if math.isnan(v) else v for v in values]
            colours = ["#4a7ab8" if v >= 0 else "#c8503c" for v in shown]
            bars = ax.barh(names, shown, color=colours)
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2, fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.set_xlim(min(0.0, *shown) * 1.25, max(1.0, *shown) * 1.25)
            ax.tick_params(labelsize=8)
        axes[0].invert_yaxis()  # the first method on top (the axes share it)
        return figure_pixels(figure, dpi=100)
