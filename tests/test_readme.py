"""CI runs exactly the README's test command, and the README's first command is the quickstart."""

from __future__ import annotations

from pathlib import Path

from .test_readme_blocks import _blocks

ROOT = Path(__file__).resolve().parents[1]


def _code_blocks() -> list[str]:
    """The README's plain (command) blocks, read fence by fence."""
    return _blocks("")


def test_ci_runs_the_readme_test_command() -> None:
    blocks = _code_blocks()
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_first_command_installs_and_runs_the_demo() -> None:
    first = _code_blocks()[0]
    assert first.startswith("python3 -m venv .venv")
    assert first.endswith(".venv/bin/backlight demo")
