"""Every Python block and every command block of the README runs as written, with random
weights where it asks for pretrained ones and a small model and image size where it names a
large one (each substitution is listed below, so what runs is what a reader types, made
offline and quick)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backlight.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: Python: no download, fewer noisy samples.
PYTHON_OFFLINE = [
    ('weights="DEFAULT"', "weights=None"),
    ('weights="imagenet"', "weights=None"),
    ("samples=25", "samples=2"),
    ("samples=20", "samples=2"),
]

#: What the JAX block calls "your flax.linen ResNet": a small one with stages layer1..layer4.
FLAX_MODEL = """
import flax.linen as nn
import jax


class Stage(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(self.features, (3, 3), padding=1)(x))


class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(4):
            x = Stage(8, name=f"layer{i + 1}")(x)
        return nn.Dense(1000)(x.mean(axis=(1, 2)))


model, key = ResNet(), jax.random.PRNGKey(0)
x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
"""


def _blocks(language: str) -> list[str]:
    """The fenced blocks of ``language`` ("" for plain ones), read fence by fence."""
    blocks, inside, current = [], None, []
    for line in README.splitlines():
        if inside is None and line.startswith("```"):
            inside, current = line[3:].strip(), []
        elif inside is not None and line.strip() == "```":
            if inside == language:
                blocks.append("\n".join(current))
            inside = None
        elif inside is not None:
            current.append(line)
    return blocks


def _offline(code: str) -> str:
    for old, new in PYTHON_OFFLINE:
        code = code.replace(old, new)
    return code


def _torch_blocks() -> list[str]:
    return [b for b in _blocks("python") if "keras" not in b and "backlight.jax" not in b]


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    python = _blocks("python")
    assert len(python) >= 7
    assert sum("keras" in b for b in python) == 1
    assert sum("backlight.jax" in b for b in python) == 1
    assert len(_commands()) >= 12


def test_every_torch_python_block_runs_in_order(tmp_path: Path, monkeypatch) -> None:
    """The PyTorch blocks, one after the other in one namespace, as a reader pastes them into
    one session (the rule-context block uses the quickstart's model and x)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in _torch_blocks():
        exec(compile(_offline(block), "README.md", "exec"), namespace)
    guided = namespace["guided"]
    assert tuple(guided.shape) == (2, 3, 224, 224)  # type: ignore[attr-defined]
    assert (tmp_path / "cam.png").is_file()
    assert tuple(namespace["multi_label"].shape) == (1, 1, 64, 64)  # type: ignore[attr-defined]


def test_the_keras_block_runs() -> None:
    pytest.importorskip("keras")
    if os.environ.get("KERAS_BACKEND", "torch") != "torch":
        pytest.skip("the Keras block needs the torch backend")
    block = next(b for b in _blocks("python") if "keras" in b)
    namespace: dict[str, object] = {}
    exec(compile(_offline(block), "README.md", "exec"), namespace)
    assert tuple(namespace["cam"].shape) == (3, 1, 14, 14)  # type: ignore[attr-defined]


def test_the_jax_blocks_run() -> None:
    pytest.importorskip("flax")
    namespace: dict[str, object] = {}
    exec(compile(FLAX_MODEL, "model", "exec"), namespace)
    for block in (b for b in _blocks("python") if "backlight.jax" in b or "PointingGame" in b):
        exec(compile(_offline(block), "README.md", "exec"), namespace)
    assert tuple(namespace["guided"].shape) == (2, 32, 32)  # type: ignore[attr-defined]


def _commands() -> list[str]:
    """Every ``backlight ...`` line of the command blocks (continuations joined, comments cut)."""
    commands = []
    for block in _blocks(""):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("   #")[0].split("  #")[0].strip()
            if line.startswith("backlight ") or re.match(r"RAY_ADDRESS=\S+ backlight ", line):
                commands.append(line)
    return commands


def _small(argv: list[str]) -> list[str]:
    """The command with random weights and a small model and size (64 RISE masks, 100
    extremal steps)."""
    argv = [
        {
            "DEFAULT": "random",
            "resnet50": "resnet18",
            "rise.num_masks=4000": "rise.num_masks=64",
        }.get(a, a)
        for a in argv
    ]
    if argv[0] in ("explain", "run"):
        if "--model" not in argv:
            argv += ["--model", "resnet18"]
        if "--weights" not in argv:
            argv += ["--weights", "random"]
        if "--size" not in argv:
            argv += ["--size", "128" if "fasterrcnn" in " ".join(argv) else "64"]
    if "extremal" in " ".join(argv) and "--quick" not in argv:
        argv += ["--set", "extremal.max_iter=100"]
    if argv[0] == "demo":
        argv += ["--images", "2"]
    return argv


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the commands name, from skimage's photos."""
    from skimage import data

    folder = tmp_path_factory.mktemp("readme")
    cat, coffee, astronaut = data.chelsea(), data.coffee(), data.astronaut()
    Image.fromarray(cat).save(folder / "cat.jpg")
    Image.fromarray(coffee).save(folder / "dog.png")
    Image.fromarray(astronaut).save(folder / "photo.jpg")
    Image.fromarray(astronaut).save(folder / "street.jpg")
    for name in ("photos", "images"):
        (folder / name / "cats").mkdir(parents=True)
        Image.fromarray(cat).save(folder / name / "cats" / "chelsea.jpg")
        Image.fromarray(np.ascontiguousarray(coffee[::2, ::2])).save(folder / name / "cup.png")
    return folder


#: Commands that need what the test machine does not give them, and where they are tested.
NOT_HERE = {
    "--engine ray": "Ray: tests/test_runs_ray.py runs `--engine ray` on a local Ray",
    "shards-": "the shards it names: tests/test_runs.py runs WebDataset shards",
}


@pytest.mark.parametrize("command", _commands(), ids=lambda c: c[:60])
def test_every_command_runs(command: str, photos: Path, monkeypatch, capsys) -> None:
    skipped = [why for key, why in NOT_HERE.items() if key in command]
    if skipped:
        pytest.skip(skipped[0])
    monkeypatch.chdir(photos)
    argv = _small(shlex.split(command)[1:])
    code = main(argv)
    captured = capsys.readouterr()
    if "fasterrcnn" in command:  # random weights: no detection, or none at the box (README)
        refused = (code == 1 and "detects nothing" in captured.err) or (
            code == 2 and "finds no detection matching" in captured.err
        )
        assert refused, captured.err
        return
    assert code == 0, (argv, captured.err)
    assert "Traceback" not in captured.err
    if argv[0] == "explain":
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("backlight-out")
        assert (out / "report.html").is_file() and (out / "grid.png").is_file()
        assert "layer=" in captured.out or "grad_cam" not in command
