"""The command line as a careless or hostile user meets it: every failure is one line on stderr
with exit code 2 (usage) or 1 (runtime), output names never collide, and the outputs of one
``explain`` run appear whole or not at all, even after ``kill -9``, Ctrl-C or a full disk."""

from __future__ import annotations

import errno
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

import backlight
from backlight.cli import main
from backlight.cli._outputs import FIXED_NAMES, MAX_NAME_BYTES, file_stems

FAST = ["--model", "resnet18", "--weights", "random", "--size", "32", "--quiet"]


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _user_model(folder: Path, name: str, body: str) -> str:
    """``folder/name.py:build`` holding ``TINY_NET`` and then ``body``."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(TINY_NET) + textwrap.dedent(body), encoding="utf-8")
    return f"{path}:build"


TINY_NET = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
"""


def _weights_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        return _write(path, b"hello, these are not weights\n")
    if kind == "empty":
        return _write(path, b"")
    if kind == "noise":
        return _write(path, bytes(range(256)) * 8)
    if kind == "list":
        torch.save([torch.zeros(3)], path)
    elif kind == "not_tensors":
        torch.save({"conv1.weight": [1, 2, 3]}, path)
    elif kind == "folder":
        path.mkdir()
    return path


# (arguments after `explain IMAGE`, exit code, message), for paths a user can reach
def _explain_cases(tmp_path: Path) -> list[tuple[list[str], int, str]]:
    models = tmp_path / "models"
    models.mkdir()
    raises = _user_model(models, "raises", "def build():\n    raise ValueError('no config')\n")
    needs_args = _user_model(models, "needs", "def build(depth):\n    return Net()\n")
    syntax = _user_model(models, "syntax", "def build(:\n")
    returns_dict = _user_model(
        models,
        "dict",
        """
        class D(Net):  # a dict with "logits" is read; two (N, K) entries are not logits
            def forward(self, x):
                out = super().forward(x)
                return {"a": out, "b": out}

        def build():
            return D()
        """,
    )
    crashes = _user_model(
        models,
        "crash",
        """
        class C(Net):
            def forward(self, x):
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

        def build():
            return C()
        """,
    )
    good = _user_model(models, "good", "def build():\n    return Net()\n")
    latin = _write(tmp_path / "latin.txt", "caf\xe9\n".encode("latin-1"))
    empty_classes = _write(tmp_path / "empty.txt", b"\n\n")
    two_classes = _write(tmp_path / "two.txt", b"a\nb\n")
    a_file = _write(tmp_path / "a_file", b"x")
    cases = [
        (["--weights", str(_weights_file(tmp_path, kind)), "--model", "resnet18"], 1, message)
        for kind, message in [
            ("text", "not a file saved by torch.save"),
            ("empty", "an empty file"),
            ("noise", "not a file saved by torch.save"),
            ("list", "holds a list, not a state dict"),
            ("not_tensors", "not one of parameter names to tensors"),
            ("folder", "is a folder"),
        ]
    ]
    cases += [
        (["--model", raises], 1, r"build\(\) raised ValueError: no config"),
        (["--model", needs_args], 1, r"build\(\) raised TypeError"),
        (["--model", syntax], 1, "importing .* failed: SyntaxError"),
        (["--model", good.replace(":build", ":missing")], 2, "has no callable 'missing'"),
        (["--model", str(tmp_path / "nowhere.py") + ":build"], 1, "model file not found"),
        (["--model", "resnet5O"], 2, "unknown model 'resnet5O'; did you mean"),
        (["--model", returns_dict, "--size", "16"], 1, "returned dict: neither logits"),
        (["--model", crashes, "--size", "16"], 1, "the model raised RuntimeError on the images"),
        (["--model", good, "--classes", str(tmp_path / "none.txt")], 1, "classes file not found"),
        (["--model", good, "--classes", str(latin)], 1, "cannot read --classes .* as UTF-8"),
        (["--model", good, "--classes", str(empty_classes)], 2, "holds no names"),
        (["--model", good, "--classes", str(two_classes)], 2, "has 2 names, but the model has 3"),
        (["--model", good, "--size", "0"], 2, "--size must be from 8 to 4096 pixels, not 0"),
        (["--model", good, "--size", "-5"], 2, "--size must be from 8 to 4096"),
        (["--model", good, "--size", "100000"], 2, "--size must be from 8 to 4096"),
        ([*FAST, "--target", "1000"], 2, "--target 1000 is out of range"),
        ([*FAST, "--target", "-1"], 2, "--target -1 is out of range"),
        ([*FAST, "--target", "zebra crossing"], 2, "is not a class of this model"),
        ([*FAST, "--layer", "layer9", "--method", "grad_cam"], 2, "did you mean"),
        ([*FAST, "--layer", "layer4.0.relu", "--method", "grad_cam"], 2, "called more than once"),
        ([*FAST, "--method", "grad_cam,smoothie"], 2, "unknown --method 'smoothie'"),
        ([*FAST, "--set", "rise.num_masks"], 2, "write NAME=VALUE"),
        (
            [*FAST, "--method", "rise", "--set", "num_masks=0"],
            2,
            "`num_masks` must be a positive int",
        ),
        ([*FAST, "--method", "rise", "--set", "seed=1.5"], 2, "`seed` must be an int"),
        ([*FAST, "--out", str(a_file)], 1, "is a file; give a folder"),
        ([*FAST, "--out", str(a_file / "sub")], 1, "cannot write to"),
    ]
    return cases


def test_every_explain_error_is_one_line(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    for arguments, code, message in _explain_cases(tmp_path):
        command = ["explain", str(cat), *arguments, "--quiet"]
        if "--out" not in arguments:
            command += ["--out", str(out)]
        got = main(command)
        err = capsys.readouterr().err
        assert got == code, (arguments, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("backlight: error: "), (arguments, err)
        assert re.search(message, lines[0]), (arguments, lines[0])
        assert not out.exists(), arguments


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jpg", "image not found"),
        (lambda d: (d / "folder").mkdir() or d / "folder", "not a file"),
        (lambda d: _write(d / "notes.jpg", b"these are not pixels\n"), "not an image file"),
        (lambda d: _write(d / "empty.png", b""), "not an image file"),
        (lambda d: _truncated_png(d), "cannot decode image"),
    ],
)
def test_bad_images_are_one_line(
    tmp_path: Path, make: Callable[[Path], Path], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make(tmp_path)
    assert main(["explain", str(path), *FAST, "--out", str(tmp_path / "out")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def _truncated_png(folder: Path) -> Path:
    path = folder / "cut.png"
    Image.fromarray(data.coffee()).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    return path


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["layers", "--model", "nosuchnet"], 2, "unknown model"),
        (["layers", "--model", "resnet18", "--size", "0"], 2, "--size must be from 8"),
        (["bench", "--images", "0"], 2, "--images must be at least 1"),
        (["bench", "--method", "nope"], 2, "unknown --method 'nope'"),
        (["demo", "--images", "0"], 2, "--images must be between 1 and 24"),
        (["demo", "--images", "25"], 2, "--images must be between 1 and 24"),
        (["explain"], 2, "the following arguments are required: IMAGE"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_other_commands_errors_are_one_line(
    arguments: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(arguments) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_unforeseen_errors_are_still_one_line(
    tmp_path: Path, cat: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug\nwith a second line")

    monkeypatch.setattr("backlight.cli.compute", broken)
    assert main(["explain", str(cat), *FAST, "--out", str(tmp_path / "out")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "backlight: error: ZeroDivisionError: a bug (set BACKLIGHT_TRACEBACK=1 to see where)"
    ]
    monkeypatch.setenv("BACKLIGHT_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        main(["explain", str(cat), *FAST, "--out", str(tmp_path / "out")])


def test_layers_needs_no_weights(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Layer names and shapes do not depend on the weights: nothing is downloaded."""

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    for model in ("resnet18", "vit_b_16", "swin_t", "efficientnet_b0"):
        assert main(["layers", "--model", model]) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        assert "layer" in printed.splitlines()[0]
    assert main(["layers", "--model", "resnet18", "--size", "64"]) == 0
    assert "layer4  " in capsys.readouterr().out.replace("layer4 ", "layer4  ")


# --- names that cannot collide --------------------------------------------------------------

NAMES = [m.name for m in backlight.list_methods()]
# Every pair of methods whose output names can meet: `x_{a}.png` is `{x_p}_{b}.png` when a ends
# with "_" + b (grad_cam / guided_grad_cam, ...).
OVERLAPS = [(a, b) for a, b in itertools.permutations(NAMES, 2) if a.endswith("_" + b)]


def test_there_are_overlapping_method_names_to_test() -> None:
    assert ("guided_grad_cam", "grad_cam") in OVERLAPS


@pytest.mark.parametrize(("a", "b"), OVERLAPS, ids=[f"{a}~{b}" for a, b in OVERLAPS])
def test_overlapping_method_names_give_distinct_files(a: str, b: str) -> None:
    prefix = a[: -len(b) - 1]
    stems = file_stems(["x", f"x_{prefix}"], [a, b])
    files = [f"{s}_{m}.png" for s in stems for m in (a, b)]
    assert len({f.casefold() for f in files}) == 4
    assert stems[0] == "x"  # the first image keeps its name


@pytest.mark.parametrize(
    "stems",
    [
        ["Cat", "cat", "CAT"],  # a file system that ignores case
        ["a", "a", "a-2"],
        ["grid", "report"],
        ["é" * 200, "é" * 200],  # long, multi-byte names
        ["x" * 300],
        [""],
    ],
)
def test_file_stems_are_unique_and_fit(stems: list[str]) -> None:
    got = file_stems(stems, NAMES)
    files = [f"{s}_{m}.png" for s in got for m in NAMES] + list(FIXED_NAMES)
    assert len({f.casefold() for f in files}) == len(files)
    assert all(len(f.encode()) <= MAX_NAME_BYTES for f in files)
    assert all(s for s in got)


def test_the_issues_collision_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """x.png and x_guided.png with grad_cam,guided_grad_cam: four distinct maps."""
    for name in ("x.png", "x_guided.png"):
        Image.fromarray(data.chelsea()).save(tmp_path / name)
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(tmp_path / "x.png"),
            str(tmp_path / "x_guided.png"),
            *FAST,
            "--method",
            "grad_cam,guided_grad_cam",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    pngs = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 4, pngs
    assert "x_grad_cam.png" in pngs and "x_guided_grad_cam.png" in pngs


def test_a_very_long_image_name_is_shortened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / ("long" * 60 + ".png")  # 244 bytes: a name with a method added is too long
    Image.fromarray(data.coffee()).save(path)
    out = tmp_path / "out"
    assert (
        main(["explain", str(path), *FAST, "--method", "guided_grad_cam", "--out", str(out)]) == 0
    )
    names = [p.name for p in out.iterdir()]
    assert len(names) == 3 and all(len(n.encode()) <= MAX_NAME_BYTES for n in names)


# --- all or nothing ---------------------------------------------------------------------------


def _fail_on_third_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real = backlight.viz.save_png
    count = [0]

    def save_png(path: object, image: object) -> Path:
        count[0] += 1
        if count[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, image)  # type: ignore[arg-type]

    monkeypatch.setattr(backlight.viz, "save_png", save_png)


def _explain(cat: Path, out: Path) -> int:
    return main(
        [
            "explain",
            str(cat),
            *FAST,
            "--method",
            "gradient,grad_cam,guided_backprop",
            "--out",
            str(out),
        ]
    )


def test_full_disk_leaves_no_outputs(
    tmp_path: Path, cat: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_on_third_write(monkeypatch)
    out = tmp_path / "out"
    assert _explain(cat, out) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device; nothing was written" in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chelsea.jpg"]  # no staging left


def test_full_disk_leaves_an_earlier_run_as_it_was(
    tmp_path: Path, cat: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    assert _explain(cat, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    _fail_on_third_write(monkeypatch)
    assert _explain(cat, out) == 1
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == {**before, "notes.txt": b"mine"}


def test_a_second_run_replaces_files_and_keeps_others(tmp_path: Path, cat: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert _explain(cat, out) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "chelsea_grad_cam.png",
        "chelsea_gradient.png",
        "chelsea_guided_backprop.png",
        "grid.png",
        "notes.txt",
        "report.html",
    ]


CHILD = """
import os, signal, sys, time
# Ctrl-C's handling even when this test runs in the background, where the shell starts
# processes with SIGINT ignored and they inherit that
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
import backlight
from backlight.cli import main

real = backlight.viz.save_png
count = [0]

def save_png(path, image):
    result = real(path, image)
    count[0] += 1
    if count[0] == 2:  # two maps are written: stop in the middle of the write phase
        Path(sys.argv[1]).write_text("ready")
        time.sleep(120)
    return result

backlight.viz.save_png = save_png
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_during_the_write_phase_leaves_no_outputs(
    tmp_path: Path, cat: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "out"
    flag = tmp_path / "ready"
    arguments = [
        "explain",
        str(cat),
        *FAST,
        "--method",
        "gradient,grad_cam,guided_backprop",
        "--out",
        str(out),
    ]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(flag), *arguments],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, sig)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert not out.exists()
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    if sig == signal.SIGINT:
        assert child.returncode == 130
        assert err.strip().splitlines()[-1] == "backlight: interrupted; nothing was written"
        assert staging == []
    else:
        assert child.returncode == -signal.SIGKILL
        assert len(staging) == 1  # hidden, and removed by the next run beside it
        assert _explain(cat, out) == 0
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")] == []
        assert len(list(out.iterdir())) == 5


def test_cli_error_maps_backlight_errors_to_exit_codes() -> None:
    """One mapping for explain, run and report: a bad option, target or layer is a usage
    error (exit 2), anything else of backlight's a failure (exit 1), the prefix kept."""
    from backlight import errors
    from backlight.cli._errors import Failure, UsageError, cli_error

    usage = (errors.OptionError, errors.TargetError, errors.LayerError, errors.LayerNotFoundError)
    for kind in usage:
        mapped = cli_error(kind("bad"), "grad_cam: ")
        assert isinstance(mapped, UsageError) and mapped.exit_code == 2
        assert str(mapped) == "grad_cam: bad"
    for kind in (errors.DatasetError, errors.ModelError, errors.BacklightError):
        mapped = cli_error(kind("broken"))
        assert isinstance(mapped, Failure) and mapped.exit_code == 1
        assert str(mapped) == "broken"
