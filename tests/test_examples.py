"""The README's first command runs the quickstart example: it must work offline and write a PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_writes_four_panels(tmp_path: Path) -> None:
    out = tmp_path / "maps.png"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--out",
            str(out),
            "--size",
            "96",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "guided backprop" in done.stdout
    image = np.asarray(Image.open(out))
    assert image.shape == (96, 4 * 96, 3)
    for i in range(4):  # every panel has content, none is blank
        panel = image[:, 96 * i : 96 * (i + 1)].astype(float)
        assert panel.std() > 10, f"panel {i} is flat"
