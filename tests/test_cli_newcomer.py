"""The command line as a newcomer meets it (issue 18): images of every mode read right, progress
per slow method, the layer and every setting shown, --crop, --mean/--std, --device, named
callables in --set, exit codes and messages on the right stream."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from backlight.cli import _log_to_stderr, main
from backlight.cli._models import Preprocess

DEMO = ["--model", "demo", "--weights", "DEFAULT"]
SMALL = ["--model", "resnet18", "--weights", "random", "--size", "64"]


def _picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_16_bit_grayscale_png_gives_the_map_of_its_8_bit_twin(tmp_path: Path) -> None:
    gray = data.camera()[::4, ::4]  # uint8 (128, 128)
    Image.fromarray(gray).save(tmp_path / "eight.png")
    deep = gray.astype(np.uint16) * 257  # the same levels on 16 bits: 255 -> 65535
    Image.fromarray(deep).save(tmp_path / "sixteen.png")
    with Image.open(tmp_path / "sixteen.png") as check:
        assert check.mode in ("I;16", "I")
    out = tmp_path / "out"
    argv = ["explain", str(tmp_path / "eight.png"), str(tmp_path / "sixteen.png"), *DEMO]
    assert main([*argv, "--method", "grad_cam", "--quiet", "--out", str(out)]) == 0
    eight, sixteen = _picture(out / "eight_grad_cam.png"), _picture(out / "sixteen_grad_cam.png")
    assert eight.std() > 5  # a real map over a real picture, not a white square
    assert np.abs(eight - sixteen).max() <= 1


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "backlight", *args],  # as the `backlight` script
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_each_slow_method_shows_its_own_progress_and_quiet_silences_it(
    tmp_path: Path, cat: Path
) -> None:
    argv = ["explain", str(cat), *DEMO, "--method", "rise,score_cam,extremal", "--quick"]
    shown = _run_cli(*argv, "--out", str(tmp_path / "a"))
    assert shown.returncode == 0, shown.stderr
    for bar in (
        r"RISE: .*\d+/500 \[.*mask/s",
        r"score_cam: .*mask",
        r"extremal perturbation: .*step",
    ):
        assert re.search(bar, shown.stderr), (bar, shown.stderr[-2000:])
    quiet = _run_cli(*argv, "--quiet", "--out", str(tmp_path / "b"))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and "mask" not in quiet.stderr and "step" not in quiet.stderr


def test_the_summary_and_the_report_give_the_layer_every_setting_and_the_preprocessing(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["explain", str(cat), *DEMO, "--method", "grad_cam,rise", "--quick", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^grad_cam \(\d+\.\d s\): layer=features, resize=false", printed, re.M)
    assert re.search(r"^rise \(.*num_masks=500, .*seed=0", printed, re.M)  # quick and default
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "layer = features" in page and "num_masks = 500" in page
    assert "estimator = control_variate" in page  # a default, not only what was passed
    assert "Selvaraju et al., Grad-CAM" in page and "Petsiuk, Das &amp; Saenko" in page
    assert "short side resized to 64, centre crop 64" in page and ">cpu<" in page


def test_backlight_methods_states_each_quick_setting_and_its_cost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert re.search(
        r"--quick: num_masks=500, batch_size=32 \(num_masks=500 .*correlation ≥", listing
    )
    assert re.search(r"--quick: schedule=fast, max_iter=100, tolerance=0\.01 \(.*IoU ≥", listing)
    assert "--quick: channels=128" in listing


def test_crop_resize_keeps_the_whole_image_and_the_report_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wide = np.zeros((60, 120, 3), dtype=np.uint8)
    wide[:, :20] = (255, 0, 0)  # a red band at the left edge, outside a centre crop
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as image:
        centre = Preprocess(resize=64, crop=64)(image)[0]
        whole = Preprocess(resize=64, crop=64, mode="resize")(image)[0]
    assert float(centre[0].max()) == 0.0  # the red band was cut off
    assert float(whole[0, :, :5].min()) > 0.9 and whole.shape == (3, 64, 64)
    out = tmp_path / "out"
    argv = ["explain", str(tmp_path / "wide.png"), *DEMO, "--method", "gradient"]
    assert main([*argv, "--crop", "resize", "--quiet", "--out", str(out)]) == 0
    assert "whole image resized to 64x64" in (out / "report.html").read_text(encoding="utf-8")
    shown = _picture(out / "wide_gradient.png")
    assert shown[:, :8, 0].mean() > shown[:, -8:, 0].mean() + 40  # the red band is in the picture


def test_mean_and_std_normalise_and_are_checked(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Image.open(cat) as opened:
        image = opened.convert("RGB")
    plain = Preprocess(resize=32, crop=32)(image)
    shown, x = Preprocess(resize=32, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)(image)
    torch.testing.assert_close(plain[0], shown)
    torch.testing.assert_close(x, (shown - 0.5) / 0.25)
    out = tmp_path / "out"
    argv = ["explain", str(cat), *SMALL, "--method", "gradient", "--quiet", "--out", str(out)]
    assert main([*argv, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]) == 0
    assert "mean 0.5,0.5,0.5, std 0.25,0.25,0.25" in (out / "report.html").read_text("utf-8")
    capsys.readouterr()
    assert main([*argv, "--mean", "0.5,0.5"]) == 2
    assert "--mean takes three numbers" in capsys.readouterr().err
    assert main([*argv, "--std", "1,0,1"]) == 2
    assert "--std values must be positive" in capsys.readouterr().err


def test_device_is_checked_and_recorded(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["explain", str(cat), *SMALL, "--method", "gradient", "--quiet"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--device", "banana", "--out", str(tmp_path / "b")]) == 2
    assert "--device 'banana' is not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "c")]) == 1
        assert "no such device" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_vision_transformer_gets_its_block_and_set_takes_the_reshape_by_name(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("timm")
    argv = ["explain", str(cat), "--model", "vit_tiny_patch16_224", "--weights", "random"]
    argv += ["--method", "grad_cam"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "layer=blocks.11.norm1" in capsys.readouterr().out
    assert main([*argv, "--set", "reshape=vit_reshape", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err  # a reshape is for a layer named: a usage error, not a traceback
    assert "name the layer" in err and "Traceback" not in err
    argv += ["--layer", "blocks.11.norm1"]
    for value in ("vit", "vit_reshape", "backlight.vit_reshape"):
        code = main([*argv, "--set", f"reshape={value}", "--out", str(tmp_path / value)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "layer=blocks.11.norm1" in captured.out and "reshape=" in captured.out


def test_a_layer_called_twice_is_a_usage_error(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["explain", str(cat), *SMALL, "--method", "grad_cam", "--layer", "layer4.1.relu"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "layer4.1.relu" in err and "Traceback" not in err


def test_suggestions_name_each_method_and_model_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "x.jpg", "--method", "gradcamm"]) == 2
    err = capsys.readouterr().err
    hint = err.split("did you mean", 1)[1].split("?")[0]
    names = re.findall(r"'(\w+)'", hint)
    assert names and len(names) == len(set(names)) and "grad_cam" in names
    assert "gradcam" not in names  # an alias of grad_cam, not another method
    assert main(["layers", "--model", "resnet5"]) == 2
    hint = capsys.readouterr().err.split("did you mean", 1)[1].split("?")[0]
    models = [m.strip() for m in hint.split(",")]
    assert "resnet50" in models and len(models) == len(set(models))


def test_a_download_line_goes_to_stderr(
    tmp_path: Path, cat: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from backlight.cli import _models

    built = _models._build

    def download(name: str, weights: object) -> torch.nn.Module:
        print(f'Downloading: "https://download.pytorch.org/{name}.pth"')  # as torch.hub does
        return built(name, None)

    monkeypatch.setattr(_models, "_build", download)
    argv = ["explain", str(cat), "--model", "resnet18", "--weights", "DEFAULT", "--size", "64"]
    assert main([*argv, "--method", "gradient", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "Downloading" in captured.err and "Downloading" not in captured.out


def test_only_backlights_own_log_lines_carry_its_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("backlight")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with _log_to_stderr():
        logging.getLogger("backlight").warning("the layer")
        logging.getLogger("transformers.modeling_utils").warning("some weights")
    err = capsys.readouterr().err
    assert "backlight: the layer" in err and "backlight: some weights" not in err
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_run_takes_crop_mean_and_std_too(tmp_path: Path, cat: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    with Image.open(cat) as image:
        image.convert("RGB").save(folder / "cat.png")
    out = tmp_path / "run"
    argv = ["run", str(folder), *DEMO, "--method", "gradient", "--out", str(out), "--quiet"]
    argv += ["--workers", "0", "--crop", "resize", "--mean", "0.1,0.2,0.3"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert "whole image resized to 64x64, mean 0.1,0.2,0.3" in json.dumps(manifest)
