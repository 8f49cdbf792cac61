"""The benchmark scripts run, end to end, with their smallest settings, so that they cannot rot.

The scripts run at once, each in a subprocess on a tiny model and image with one thread (on a
busy machine, two threads make small calls wait on each other), and append their Markdown tables
to files that the tests read. Nothing here asserts on speed: the ratios only have to be positive numbers, and
backlight and its peers have to agree on the maps they compute.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

pytest.importorskip("captum")
pytest.importorskip("torchray")
pytest.importorskip("pytorch_grad_cam")

PEERS_ARGS = ["--quick", "--model", "resnet18", "--size", "32", "--threads", "1"]
# The row label of each method name that --methods takes.
ROWS = {
    "gradient": "gradient",
    "guided_backprop": "guided_backprop",
    "deconvnet": "deconvnet",
    "grad_cam": "grad_cam",
    "guided_grad_cam": "guided_grad_cam",
    "linear_approx": "linear_approx",
    "grad_cam_plus_plus": "grad_cam_plus_plus",
    "layer_cam": "layer_cam",
    "score_cam": "score_cam",
    "smooth_grad": "smooth_grad",
    "excitation_backprop": "excitation_backprop",
    "contrastive_excitation_backprop": "contrastive_excitation_backprop",
    "rise": "rise",
    "rise_all_classes": "rise (every class)",
    "extremal_perturbation": "extremal_perturbation",
}
# The peers each method is compared with (the columns that must hold numbers).
PEERS_OF = {
    "gradient": {"Captum", "TorchRay"},
    "guided_backprop": {"Captum", "TorchRay"},
    "deconvnet": {"Captum", "TorchRay"},
    "grad_cam": {"Captum", "TorchRay", "pytorch-grad-cam"},
    "guided_grad_cam": {"Captum"},
    "linear_approx": {"TorchRay"},
    "grad_cam_plus_plus": {"pytorch-grad-cam"},
    "layer_cam": {"pytorch-grad-cam"},
    "score_cam": {"pytorch-grad-cam"},
    "smooth_grad": {"Captum"},
    "excitation_backprop": {"TorchRay"},
    "contrastive_excitation_backprop": {"TorchRay"},
    "rise": {"TorchRay"},
    "rise (every class)": {"TorchRay"},
    "extremal_perturbation": {"TorchRay"},
}


# Every script with its smallest settings.
RUNS = {
    "peers": ("peers.py", PEERS_ARGS),
    "gradient_family": (
        "gradient_family.py",
        ["--model", "resnet18", "--batch", "1", "--size", "32", "--rounds", "1", "--threads", "1"],
    ),
    "cam": (
        "cam.py",
        [
            "--batch",
            "1",
            "--size",
            "32",
            "--score-batch-size",
            "64",
            "--rounds",
            "1",
            "--threads",
            "1",
        ],
    ),
    "perturbation": (
        "perturbation.py",
        [
            "--size",
            "32",
            "--masks",
            "32",
            "--areas",
            "0.1",
            "--short",
            "1",
            "--long",
            "9",  # per iteration = (long run - short run) / 8: a gap wide enough to beat noise
            "--rounds",
            "1",
            "--threads",
            "1",
        ],
    ),
    "forward_ceiling": (
        "forward_ceiling.py",
        [
            "--size",
            "32",
            "--masks",
            "8",
            "--batch-size",
            "4",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--no-compile",
        ],
    ),
}


@dataclass(frozen=True)
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    markdown: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """All scripts at once, each in its own process (one thread each), to keep the wall time
    short; their output goes to files, so that no pipe fills up while another is read."""
    folder = tmp_path_factory.mktemp("benchmarks")
    started = {}
    with contextlib.ExitStack() as stack:
        for name, (script, args) in RUNS.items():
            out = stack.enter_context(open(folder / f"{name}.out", "w"))
            err = stack.enter_context(open(folder / f"{name}.err", "w"))
            command = [sys.executable, str(BENCHMARKS / script), *args]
            command += ["--markdown", str(folder / f"{name}.md")]
            started[name] = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT)
        codes = {name: process.wait(timeout=300) for name, process in started.items()}
    return {
        name: Run(
            args=RUNS[name][1],
            returncode=codes[name],
            stdout=(folder / f"{name}.out").read_text(encoding="utf-8"),
            stderr=(folder / f"{name}.err").read_text(encoding="utf-8"),
            markdown=(folder / f"{name}.md").read_text(encoding="utf-8")
            if (folder / f"{name}.md").exists()
            else "",
        )
        for name in RUNS
    }


def _markdown(run: Run) -> str:
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.markdown.strip()
    assert text and text in run.stdout, "the table printed is the table written"
    return run.markdown


def _tables(text: str, first_column: str) -> list[list[dict[str, str]]]:
    """The rows of each Markdown table whose header starts with ``first_column``."""
    lines = text.splitlines()
    tables = []
    for start, line in enumerate(lines):
        if not line.startswith(f"| {first_column} |"):
            continue
        header = [cell.strip() for cell in line.strip("|").split("|")]
        assert set(lines[start + 1].replace("|", "").split()) <= {"---", "---:"}
        rows = []
        for row in lines[start + 2 :]:
            if not row.startswith("|"):
                break
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            assert len(cells) == len(header), row
            rows.append(dict(zip(header, cells, strict=True)))
        tables.append(rows)
    assert tables, f"no table starting with a {first_column!r} column"
    return tables


def _table(text: str, first_column: str) -> list[dict[str, str]]:
    (rows,) = _tables(text, first_column)
    return rows


def _positive(cell: str) -> float:
    value = float(cell)
    assert value > 0, cell
    return value


@pytest.fixture(scope="module")
def peers_markdown(runs: dict[str, Run]) -> str:
    return _markdown(runs["peers"])


def test_peers_has_a_row_per_method_with_positive_ratios(peers_markdown: str) -> None:
    rows = _table(peers_markdown, "method")
    assert [row["method"] for row in rows] == list(ROWS.values())
    for row in rows:
        seconds = re.fullmatch(r"([0-9.]+) s(/iteration)?", row["backlight time"])
        assert seconds, row["backlight time"]
        _positive(seconds.group(1))
        assert re.fullmatch(r"\d+ MiB", row["backlight memory"])
        for peer in ("Captum", "TorchRay", "pytorch-grad-cam"):
            compared = peer in PEERS_OF[row["method"]]
            ratio, memory = row[f"{peer} time ratio"], row[f"{peer} memory"]
            if not compared:
                assert ratio == memory == "—", (row["method"], peer)
                continue
            _positive(ratio)
            match = re.fullmatch(r"\d+ MiB \(×([0-9.]+|n/a)\)", memory)
            assert match, memory
            if match.group(1) != "n/a":
                _positive(match.group(1))
            assert f"{peer}: " in row["agreement with backlight"], row


def test_peers_agree_with_backlight(peers_markdown: str) -> None:
    """Every pairing computes the same thing as backlight's call, on this tiny model too."""
    for row in _table(peers_markdown, "method"):
        assert row["warning"] == "", row


def test_peers_prints_its_command_and_context(peers_markdown: str) -> None:
    command = "python benchmarks/peers.py " + " ".join(PEERS_ARGS)
    assert f"`{command} --markdown " in peers_markdown
    assert re.search(r"load average before the run [0-9.]+", peers_markdown)
    assert "torch 2." in peers_markdown
    # the legend names each peer's call
    assert "`LayerGradCam(model, model.layer" in peers_markdown
    assert "`NoiseTunnel(Saliency(model)).attribute(" in peers_markdown


@functools.cache
def _peers_module() -> Any:
    """benchmarks/peers.py imported in this process (it imports the peers only when it runs),
    with benchmarks/ on the import path as when it runs as a script (for its helper _timing)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("peers_benchmark", BENCHMARKS / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_peers_options() -> None:
    peers = _peers_module()
    assert set(ROWS) == set(peers.METHODS)
    _, settings, methods = peers.parse(["--methods", "linear_approx, layer_cam", "--batch", "4"])
    assert methods == ["linear_approx", "layer_cam"]
    assert (settings.batch, settings.size, settings.rounds) == (4, 224, 3)
    _, quick, _ = peers.parse(["--quick", "--size", "48"])
    assert (quick.batch, quick.size, quick.rounds) == (2, 48, 1)  # explicit options win


def test_peers_rejects_an_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _peers_module().parse(["--methods", "grad_cam,gradcam"])
    assert exit_info.value.code == 2
    assert "unknown method(s) gradcam" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "tables"),
    [("gradient_family", 1), ("cam", 2), ("perturbation", 2), ("forward_ceiling", 1)],
)
def test_other_benchmark_scripts(name: str, tables: int, runs: dict[str, Run]) -> None:
    run = runs[name]
    text = _markdown(run)
    assert f"`python benchmarks/{RUNS[name][0]} {' '.join(run.args)} --markdown " in text
    found = _tables(text, "contender")
    assert len(found) == tables
    for rows in found:
        assert any(row["contender"].startswith("backlight") for row in rows)
        ratios = [column for column in rows[0] if column.startswith("ratio")]
        assert ratios
        for row in rows:
            for column in ratios:
                _positive(row[column])


def test_rise_variants_measures_each_mask_design(tmp_path: Path, monkeypatch) -> None:
    """The antithetic and stratified masks are what the script says: complements with the same
    shifts, and every cell kept in exactly half of the masks; and the table has a correlation
    per design."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # its imports of the scripts beside it
    spec = importlib.util.spec_from_file_location("rise_variants", BENCHMARKS / "rise_variants.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    antithetic = script.draw("antithetic", 10, (32, 32), seed=0)
    assert bool((antithetic.grids[5:] == ~antithetic.grids[:5]).all())
    assert bool((antithetic.shifts[5:] == antithetic.shifts[:5]).all())
    stratified = script.draw("stratified", 10, (32, 32), seed=0)
    assert bool((stratified.grids.sum(0) == 5).all())
    out = tmp_path / "variants.md"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "rise_variants.py"),
            "--budgets",
            "32",
            "--pairs",
            "1",
            "--threads",
            "1",
            "--markdown",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = _table(out.read_text(encoding="utf-8"), "masks")
    assert row["masks"] == "32"
    for design in ("independent", "antithetic", "stratified"):
        assert -1.0 <= float(row[design]) <= 1.0
