"""``backlight run`` and ``backlight report`` on the command line, and the runner's examples."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import backlight
from backlight.cli import main
from backlight.data import CLASSES, make_batch
from backlight.runs import read_maps
from backlight.viz import save_png


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    images, labels, _ = make_batch(12, seed=4)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        save_png(root / CLASSES[int(label)] / f"{i:02d}.png", image)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_run_then_report_from_the_command_line(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["run", str(folder), "--model", "demo", "--method", "grad_cam,gradient"]
    args += ["--target", "folder", "--out", str(out), "--workers", "0", "--quiet"]
    assert main(args) == 0
    table = read_maps(out)
    assert table.num_rows == 24 and set(table.column("method").to_pylist()) == {
        "grad_cam",
        "gradient",
    }
    # --target folder: each image explains its folder's class
    for row in table.to_pylist():
        assert row["target_name"] == row["id"].split("/")[0]
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["id"] for e in errors] == ["broken.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["rows"] == 24
    assert manifest["settings"]["grad_cam"]["relu"] is True  # defaults recorded
    # the same command again: nothing to do
    assert main(args[:-1]) == 0
    said = capsys.readouterr().out
    assert "0 images this time (13 done before)" in said
    # other settings into the same folder: a usage error naming what differs
    assert main([*args[:-1], "--dtype", "float16", "--quiet"]) == 2
    assert "dtype" in capsys.readouterr().err
    assert main(["report", str(out), "--images", "4"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("<img") >= 4 * 3 and "grad_cam" in html  # 4 images, 2 methods
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_bad_sources_are_one_line_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["run", str(tmp_path / "missing"), "--model", "demo", "--out", str(tmp_path / "o")])
        == 1
    )
    assert "not found" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert (
        main(["run", str(tmp_path / "notes.txt"), "--model", "demo", "--out", str(tmp_path / "o")])
        == 1
    )
    assert "folder of images" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                str(tmp_path),
                "--model",
                "demo",
                "--target",
                "nosuchclass",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def test_the_runner_examples_run() -> None:
    from backlight import runs
    from backlight.data import files

    for obj in (runs.run, runs.report, files.read_image):
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in doctest.DocTestFinder().find(obj, obj.__name__, globs={}):
            runner.run(test)
        assert runner.tries > 0 and runner.failures == 0, obj.__name__
    assert backlight.run is runs.run


def test_run_device_from_the_command_line(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--device as explain takes it: a name torch does not know is a usage error (2), a
    device this machine lacks a failure (1), and the device is recorded in the manifest."""
    args = ["run", str(folder), "--model", "demo", "--method", "gradient", "--quiet"]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["device"] == "cpu" and manifest["counts"]["rows"] == 12
    capsys.readouterr()
    assert main([*args, "--device", "banana", "--out", str(tmp_path / "b")]) == 2
    assert "--device 'banana' is not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda", "--out", str(tmp_path / "c")]) == 1
        assert "no such device" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
