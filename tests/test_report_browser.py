"""The HTML report renders in a real browser with the network off.

Headless Chromium (Debian's ``chromium`` package, /usr/bin/chromium) opens report.html through a
proxy that does not exist, so any fetch would fail. The maps are constant, rendered with alpha 1,
so every panel is one solid colour we can compute; the screenshot must show each colour in as
many panels as the report has. A second run, on a copy of the report with a small script added,
counts the images the browser actually decoded (naturalWidth > 0).

Without Chromium the tests skip, unless BACKLIGHT_REQUIRE_BROWSER=1 (CI sets it).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image

from backlight import viz

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT = 90  # seconds for one Chromium run; it takes about 2 on an idle machine
WINDOW = (1400, 1400)
PANEL = 128

# Flags for a root, GPU-less, offline machine: no sandbox (root), no background connections,
# and an unusable proxy so that nothing can be fetched even if the page asked for it.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]

GREEN, MAGENTA = (30, 170, 60), (200, 40, 190)


def chromium() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = (
        f"headless Chromium is not installed at {CHROMIUM} (Debian: apt-get install -y chromium)"
    )
    if os.environ.get("BACKLIGHT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and BACKLIGHT_REQUIRE_BROWSER=1 requires it")
    pytest.skip(reason)


def run_chromium(*args: str) -> str:
    """Run Chromium with a fresh profile (removed afterwards); return its standard output."""
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="backlight-chromium-", ignore_cleanup_errors=True) as d:
        process = subprocess.Popen(
            [str(binary), *FLAGS, f"--user-data-dir={d}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: its helpers can be ended with it
        )
        try:
            out, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            out, err = "", f"no answer within {TIMEOUT} s"
        finally:
            with contextlib.suppress(ProcessLookupError):  # helpers that outlived Chromium
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, f"Chromium failed ({process.returncode}): {err[-2000:]}"
    return out


def u8(values: npt.ArrayLike) -> tuple[int, int, int]:
    rgb = np.rint(np.clip(np.asarray(values, dtype=np.float64), 0, 1) * 255).astype(int)
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[int, int, int], int]]:
    """A report of 2 solid-colour images × 5 constant maps; each panel's colour -> panel count."""
    images = [np.full((16, 16, 3), GREEN, np.uint8), np.full((16, 16, 3), MAGENTA, np.uint8)]
    rgb = torch.zeros(2, 3, 6, 6)
    rgb[:, 0], rgb[:, 2] = 1.0, -1.0  # shown as RGB and as an overlay of max |g| = 1
    maps = {
        "zeros jet": torch.zeros(2, 1, 6, 6),
        "zeros viridis": torch.zeros(2, 1, 6, 6),
        "negative": torch.full((2, 1, 6, 6), -1.0),  # signed: coolwarm, symmetric: the blue end
        "positive": torch.full((2, 1, 6, 6), 2.0),
        "guided": rgb,
    }
    cmaps = {
        "zeros jet": "jet",
        "zeros viridis": "viridis",
        "positive": "coolwarm",
        "guided": "viridis_r",
    }
    path = viz.report(
        tmp_path_factory.mktemp("report") / "report.html",
        images,
        maps,
        predictions=[[("tree frog", 0.7), ("newt", 0.2)], [("orchid", 0.9)]],
        times={"guided": 0.25},
        alpha=1.0,
        cmap=cmaps,
        panel_size=PANEL,
    )
    expected = {
        GREEN: 1,
        MAGENTA: 1,
        u8(viz.colormap("jet")(0.0)): 2,
        u8(viz.colormap("viridis")(0.0)): 2,
        u8(viz.colormap("coolwarm")(0.0)): 2,
        u8(viz.colormap("coolwarm")(1.0)): 2,
        u8(viz.colormap("viridis")(1.0)): 2,  # the overlay of "guided" with viridis_r
        u8(viz.render_rgb(rgb[0])[0, 0] / 255): 2,
    }
    assert len(expected) == 8  # eight different colours
    return path, expected


def test_screenshot_shows_every_panel(
    page: tuple[Path, dict[tuple[int, int, int], int]], tmp_path: Path
) -> None:
    path, expected = page
    shot = tmp_path / "shot.png"
    run_chromium(f"--screenshot={shot}", path.as_uri())
    with Image.open(shot) as opened:
        pixels = np.asarray(opened.convert("RGB")).astype(np.int16)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert pixels.std() > 20 and len(np.unique(packed)) > 50  # not blank
    assert (pixels == 255).all(axis=-1).mean() > 0.3  # the white page
    area = PANEL * PANEL
    for colour, count in expected.items():
        matching = int((np.abs(pixels - colour) <= 2).all(axis=-1).sum())
        # colour bars add a few pixels of the colormaps' end colours; far less than a panel
        assert abs(matching - count * area) < 0.05 * area, (
            f"colour {colour}: {matching / area:.2f} panels on screen, expected {count}"
        )


def test_browser_decodes_every_image(
    page: tuple[Path, dict[tuple[int, int, int], int]], tmp_path: Path
) -> None:
    path, _ = page
    html = path.read_text(encoding="utf-8")
    count = html.count("<img ")
    # A copy that may run one inline script, which counts the images once the page has loaded,
    # and one broken image: the count must tell it apart, or the check could not fail.
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert policy in html
    probe = html.replace(policy, f"{policy}; script-src 'unsafe-inline'").replace(
        "</body>",
        '<img src="data:image/png;base64,AAAA" alt="broken on purpose">'
        "<script>window.addEventListener('load', function () {"
        " var all = Array.from(document.images);"
        " document.body.dataset.images = all.length;"
        " document.body.dataset.decoded ="
        "   all.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;"
        "});</script></body>",
    )
    copy = tmp_path / "probe.html"
    copy.write_text(probe, encoding="utf-8")
    dom = run_chromium("--virtual-time-budget=5000", "--dump-dom", copy.as_uri())
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None, dom[:500]
    assert f'data-images="{count + 1}"' in body.group(0), body.group(0)
    assert f'data-decoded="{count}"' in body.group(0), body.group(0)
    assert count == 2 * (1 + 4 + 2)  # per image: input, 4 overlays, 1 overlay + 1 RGB
