"""Adding a method is writing one file: a toy method, registered in a file this test writes,
appears in list_methods(), the command line, the bench and the registry-driven contract tests,
with no other edit anywhere."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image
from skimage import data

import backlight
from backlight._registry import unregister
from backlight.bench import benchmark
from backlight.cli import main

TOY = '''
"""A toy method: the input times its gradient, summed over channels (the first-order Taylor
term at the input), written the way every method of the library is."""

import torch
from torch import nn

from backlight._pipeline import explanation, run
from backlight._registry import register


@register("toy_input_times_gradient", family="gradient", smoothable=True)
def toy_input_times_gradient(
    model: nn.Module, x: torch.Tensor, target=None, *, scale: float = 1.0
):
    """Input times gradient: the input times its gradient, summed over channels.

    Args:
        scale: a factor for the map, to show that options are read from the signature.

    Paper:
        Shrikumar, Greenside, Shcherbina & Kundaje, Not Just a Black Box, 2016

    Example:
        >>> import torch, backlight
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        >>> info = backlight.get_method("toy_input_times_gradient")
        >>> info.function(net, torch.ones(1, 3, 2, 2), 0).shape
        torch.Size([1, 1, 2, 2])
    """
    capture = run(model, x, target, method="toy_input_times_gradient")
    maps = (capture.activation * capture.gradient).sum(dim=1, keepdim=True) * scale
    return explanation(maps, capture)
'''

NAME = "toy_input_times_gradient"


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[ModuleType]:
    path = tmp_path / "toy_method.py"
    path.write_text(textwrap.dedent(TOY), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("toy_method", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        unregister(NAME)


def test_it_is_listed_with_its_options(toy: ModuleType) -> None:
    info = backlight.get_method(NAME)
    assert info in backlight.list_methods() and info in backlight.list_methods("gradient")
    assert info.options == ("scale",)
    assert info.option_docs["scale"].startswith("a factor for the map")
    # it computes what it says, and returns the library's result type
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    x = torch.randn(2, 3, 2, 2)
    result = info.function(net, x, [0, 1], scale=2.0)
    weight = net[1].weight.detach().reshape(2, 3, 2, 2)
    torch.testing.assert_close(result, 2 * (x * weight[[0, 1]]).sum(dim=1, keepdim=True))
    assert result.method == NAME and result.settings == {"scale": 2.0}
    assert result.targets.tolist() == [0, 1]


def test_it_is_on_the_command_line(
    toy: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^{NAME} +gradient +the input times its gradient", listing, re.M)
    assert "options: scale" in listing
    image = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(image)
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(image),
            "--model",
            "resnet18",
            "--weights",
            "random",
            "--size",
            "32",
            "--quiet",
            "--method",
            NAME,
            "--set",
            "scale=3",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / f"cat_{NAME}.png").exists()
    assert "scale" in (out / "report.html").read_text(encoding="utf-8")


def test_it_is_in_the_bench(toy: ModuleType) -> None:
    result = benchmark([NAME], images=6, randomization_images=2, progress=False)
    (row,) = result.rows
    assert row.method == NAME and 0 <= row.pointing <= 1 and row.seconds_per_image > 0


def test_it_is_in_the_contract_tests(tmp_path: Path) -> None:
    """The contract tests are parametrised over the registry: loaded as a plugin before they
    are collected, the toy method gets every one of them, and passes."""
    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY), encoding="utf-8")
    tests = Path(__file__).parent
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "toy_method",
            "-k",
            NAME,
            "-p",
            "no:cacheprovider",
            str(tests / "test_guarantees.py"),
            str(tests / "test_result.py"),
            str(tests / "test_errors.py"),
            str(tests / "test_hardening.py"),
        ],
        capture_output=True,
        text=True,
        env={**_environment(), "PYTHONPATH": str(tmp_path)},
        cwd=tests.parent,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for contract in (
        "test_model_is_unchanged_after_a_normal_call",
        "test_input_is_unchanged",
        "test_model_is_unchanged_when_forward_raises",
        "test_model_is_unchanged_after_a_bad_target",
        "test_batch_equals_per_sample",
        "test_repeatable",
        "test_every_method_returns_an_explanation",
        "test_model_writing_into_its_input",
        "test_call_inside_inference_mode_or_no_grad",
        "test_meta_tensors_are_refused",
        "test_bad_targets",
    ):
        assert re.search(rf"{contract}\[[^]]*{NAME}[^]]*\] PASSED", run.stdout), contract


def _environment() -> dict[str, str]:
    import os

    return dict(os.environ)
