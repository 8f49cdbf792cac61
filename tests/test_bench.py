"""`backlight bench`: every method scored on synthetic shapes against their masks."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import backlight
from backlight.bench import benchmark
from backlight.cli import main


def _intensity(model: torch.nn.Module, x: torch.Tensor, target: object) -> torch.Tensor:
    """Depends on the image only, never on the weights."""
    return x.mean(dim=1, keepdim=True)


def _info(name: str, function: object) -> backlight.MethodInfo:
    return backlight.MethodInfo(name, function, "baseline", name, "-")  # type: ignore[arg-type]


def test_bench_scores_tell_methods_apart() -> None:
    result = benchmark(
        ["grad_cam", _info("intensity", _intensity)],
        images=36,
        randomization_images=6,
        baseline=True,
        progress=False,
    )
    rows = {r.method: r for r in result.rows}
    assert set(rows) == {"grad_cam", "intensity", "centre (baseline)"}
    rows["centre"] = rows["centre (baseline)"]
    # Grad-CAM of the demo network finds the objects far more often than a fixed central blob
    # (which hits objects near the middle: about 0.6 of them).
    assert rows["grad_cam"].pointing > 0.8
    assert rows["grad_cam"].pointing > rows["centre"].pointing + 0.2
    assert rows["grad_cam"].deletion < rows["centre"].deletion
    assert rows["grad_cam"].insertion > rows["centre"].insertion
    # A map that ignores the weights keeps its rank order when they are randomized.
    assert rows["intensity"].randomization == pytest.approx(1.0)
    assert rows["grad_cam"].randomization < 0.9
    assert all(r.seconds_per_image > 0 for r in result.rows)


def test_bench_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    code = main(["bench", "--method", "gradient,grad_cam", "--images", "6", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| grad_cam |" in printed and "pointing game" in printed
    rows = list(csv.DictReader(io.StringIO((out / "bench.csv").read_text(encoding="utf-8"))))
    assert [r["method"] for r in rows] == ["gradient", "grad_cam", "centre (baseline)"]
    assert all(0.0 <= float(r["pointing"]) <= 1.0 for r in rows)
    assert "| gradient |" in (out / "bench.md").read_text(encoding="utf-8")
    plot = np.asarray(Image.open(out / "bench.png"))
    assert plot.ndim == 3 and plot.std() > 10
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.md", "bench.png"]


def test_bench_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--method", "grad_came", "--images", "2"]) == 2
    assert "did you mean 'grad_cam'" in capsys.readouterr().err
    assert main(["bench", "--images", "0"]) == 2


def test_bench_is_an_application_outside_the_metrics() -> None:
    """The bench uses the metrics; the metrics library does not contain it, and importing
    backlight or its metrics does not import it (nor the visualisation, nor matplotlib)."""
    import subprocess
    import sys

    assert set(backlight.bench.__all__) == {"BenchResult", "BenchRow", "benchmark", "write_bench"}
    assert not {"benchmark", "write_bench"} & set(backlight.metrics.__all__)
    code = (
        "import sys, backlight, backlight.metrics; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' "
        "or m in ('backlight.bench', 'backlight.viz', 'PIL.ImageDraw')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
