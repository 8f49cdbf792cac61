"""The ``backlight`` command with real files in temporary folders: exit codes, messages, outputs,
and nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data

import backlight
from backlight.cli import main
from backlight.cli._explain import _setting_value

FAST = ["--model", "resnet18", "--weights", "random", "--size", "64", "--quiet"]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_explain_writes_pngs_grid_and_report(
    tmp_path: Path, cat: Path, coffee: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(cat),
            str(coffee),
            *FAST,
            "--method",
            "gradient,grad_cam",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert _files(out) == sorted(
        [
            "chelsea_gradient.png",
            "chelsea_grad_cam.png",
            "coffee_gradient.png",
            "coffee_grad_cam.png",
            "grid.png",
            "report.html",
        ]
    )
    overlay = np.asarray(Image.open(out / "chelsea_grad_cam.png"))
    assert overlay.shape == (64, 64, 3)
    assert overlay.std() > 5
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<img ") >= 2 * 3  # two images, each shown with two maps
    assert "grad_cam" in page and "chelsea" in page


def test_explain_with_a_class_name_target(tmp_path: Path, cat: Path) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                str(cat),
                *FAST,
                "--method",
                "grad_cam",
                "--target",
                "tabby",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        "tabby" in (out / "report.html").read_text(encoding="utf-8") or (out / "grid.png").exists()
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.jpg", "image not found"),
        (lambda p: _write(p / "notes.png", b"these are not pixels\n"), "not an image file"),
        (lambda p: _corrupt_jpeg(p / "broken.jpg"), "cannot decode image"),
    ],
    ids=["missing", "text-named-png", "corrupt-jpeg"],
)
def test_bad_image_fails_cleanly(
    tmp_path: Path, cat: Path, make: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = make(tmp_path)  # type: ignore[operator]
    out = tmp_path / "out"
    code = main(["explain", str(cat), str(bad), *FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and str(bad) in err
    assert err.count("\n") == 1  # one line
    assert _files(out) == []  # nothing written, not even for the good image


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--layer", "layer5"],
            "`layer` 'layer5' is not a module of ResNet; did you mean 'layer4'",
        ),
        (
            ["--method", "grad_cam,guided_backprob"],
            "unknown --method 'guided_backprob'; did you mean 'guided_backprop'",
        ),
        (["--target", "1000"], "--target 1000 is out of range: the model has 1000 classes"),
        (["--target", "tabbby"], "did you mean 'tabby'"),
        (["--model", "resnet5"], "unknown model 'resnet5'; did you mean"),
    ],
    ids=["layer", "method", "target-index", "target-name", "model"],
)
def test_usage_errors_exit_2(
    tmp_path: Path, cat: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["explain", str(cat), *FAST, "--method", "grad_cam", "--out", str(out)]
    code = main(args + extra)  # later options override earlier ones
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert err.count("\n") == 1
    assert _files(out) == []


def test_method_options_with_set(tmp_path: Path, cat: Path) -> None:
    """``--set`` reaches the methods: a bare name every method that takes it, METHOD.NAME one
    method; the report lists what each method ran with."""
    out = tmp_path / "out"
    settings = ["rise.num_masks=8", "max_iter=2", "autocast=bfloat16", "extremal.areas=0.05,0.2"]
    args = ["explain", str(cat), *FAST, "--method", "rise,extremal", "--out", str(out)]
    assert main(args + [part for s in settings for part in ("--set", s)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "num_masks = 8" in page and "areas = 0.05,0.2" in page  # as --set writes them
    assert page.count("autocast = bfloat16") == 2 and page.count("max_iter = 2") == 1


def test_setting_values() -> None:
    value = _setting_value
    assert [value("true"), value("False"), value("none"), value("12"), value("0.5")] == [
        True,
        False,
        None,
        12,
        0.5,
    ]
    assert value("bfloat16") is torch.bfloat16 and value("float16") is torch.float16
    assert value("0.05, 0.1,") == [0.05, 0.1] and value("softmax") == "softmax"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("nummasks=8", "--set 'nummasks=8': no option 'nummasks' for rise; did you mean num_masks"),
        ("grad_cam.relu=false", "--set 'grad_cam.relu=false': grad_cam is not among the --method"),
        ("gradcamm.relu=false", "unknown method 'gradcamm'; did you mean 'grad_cam'"),
        ("layer=layer4", "--set 'layer=layer4': use --layer instead"),
        ("num_masks", "--set 'num_masks': write NAME=VALUE or METHOD.NAME=VALUE"),
        ("rise.num_masks=-3", "rise: `num_masks` must be a positive int"),
    ],
    ids=["unknown-option", "method-not-chosen", "unknown-method", "own-flag", "no-value", "bad"],
)
def test_bad_settings_exit_2(
    tmp_path: Path, cat: Path, setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["explain", str(cat), *FAST, "--method", "rise", "--out", str(out), "--set", setting]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1
    assert _files(out) == []


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain"]) == 2
    assert "the following arguments are required: IMAGE" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_method_that_cannot_apply_fails(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "explain",
            str(cat),
            "--model",
            "vit_b_16",
            "--weights",
            "random",
            "--size",
            "224",
            "--method",
            "guided_backprop",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "guided_backprop: guided backprop changes the backward pass of ReLU" in err


def test_weights_from_a_state_dict_file(tmp_path: Path, cat: Path) -> None:
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=4)
    weights = tmp_path / "tuned.pt"
    torch.save({"state_dict": model.state_dict()}, weights)
    classes = tmp_path / "classes.txt"
    classes.write_text("ant\nbee\ncat\ndog\n", encoding="utf-8")
    user = tmp_path / "mine.py"
    user.write_text(
        "import torchvision\n\ndef build():\n    return torchvision.models.resnet18(num_classes=4)\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(cat),
            "--model",
            f"{user}:build",
            "--weights",
            str(weights),
            "--classes",
            str(classes),
            "--size",
            "64",
            "--target",
            "bee",
            "--method",
            "gradient",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    # the map is the gradient of the class "bee" (index 1) of the loaded weights
    image = np.asarray(Image.open(out / "chelsea_gradient.png"))
    assert image.std() > 5


def test_weights_file_with_code_is_refused(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"model": torchvision.models.resnet18()}, evil)  # a pickled module, not tensors
    code = main(
        [
            "explain",
            str(cat),
            "--model",
            "resnet18",
            "--weights",
            str(evil),
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "not a plain state dict" in err and "weights_only=True" in err


def test_weights_that_do_not_fit(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), other)
    assert (
        main(["explain", str(cat), "--model", "resnet34", "--weights", str(other), "--quiet"]) == 1
    )
    assert "does not fit the model" in capsys.readouterr().err


def test_default_weights_offline_say_what_to_do(
    tmp_path: Path, cat: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_network(*args: object, **kwargs: object) -> object:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    code = main(
        ["explain", str(cat), "--model", "resnet18", "--quiet", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "could not get the ResNet18_Weights.IMAGENET1K_V1 weights of resnet18" in err
    assert "--weights FILE" in err


def test_methods_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for info in backlight.list_methods():
        assert info.name in out and info.summary in out


def test_layers_lists_names_and_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "--model", "resnet18", "--weights", "random", "--size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    layer4 = next(line for line in lines if line.startswith("layer4 "))
    assert "Sequential" in layer4 and "(1, 512, 2, 2)" in layer4
    relu = next(line for line in lines if line.startswith("layer1.0.relu "))
    assert "called 2 times: not usable as --layer" in relu


def test_demo_runs_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--images", "2"]) == 0
    files = _files(out)
    assert "grid.png" in files and "report.html" in files
    for info in backlight.list_methods():  # every method, both images
        assert sum(f.split("_", 1)[-1] == f"{info.name}.png" for f in files) == 2
    assert "wrote" in capsys.readouterr().out


TIMM = "mobilenetv3_small_050"  # a timm name that torchvision does not have; 1.6 M parameters


def test_timm_model_with_random_weights(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import timm

    from backlight.cli._models import load_model

    out = tmp_path / "out"
    args = ["explain", str(cat), "--model", TIMM, "--weights", "random", "--size", "64"]
    code = main([*args, "--method", "grad_cam", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert _files(out) == ["chelsea_grad_cam.png", "grid.png", "report.html"]
    loaded = load_model(TIMM, "random")
    config = timm.data.resolve_data_config({}, model=loaded.model)
    assert loaded.preprocess.crop == config["input_size"][-1] == 224
    assert loaded.preprocess.mean == tuple(config["mean"])
    assert loaded.preprocess.std == tuple(config["std"])
    again = load_model(TIMM, "random").model.state_dict()  # seeded: the same model every run
    assert all(torch.equal(v, again[k]) for k, v in loaded.model.state_dict().items())


def test_timm_model_with_a_state_dict_file(tmp_path: Path) -> None:
    import timm

    from backlight.cli._models import load_model

    torch.manual_seed(5)
    tuned = timm.create_model(TIMM, pretrained=False)
    path = tmp_path / "tuned.pt"
    torch.save(tuned.state_dict(), path)
    loaded = load_model(TIMM, str(path)).model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in tuned.state_dict().items())


def test_timm_pretrained_weights_offline_say_what_to_do(tmp_path: Path, cat: Path) -> None:
    """A fresh process with the Hugging Face hub offline, as on a machine without network."""
    done = subprocess.run(
        [sys.executable, "-m", "backlight.cli", "explain", str(cat), "--model", TIMM, "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert f"could not create timm model {TIMM} with pretrained weights" in done.stderr
    assert "--weights FILE or --weights random" in done.stderr
    assert not (tmp_path / "backlight-out").exists()


def test_console_script_is_installed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "backlight.cli", "methods"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "grad_cam" in done.stdout


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _corrupt_jpeg(path: Path) -> Path:
    buffer = path.with_suffix(".tmp")
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
    whole = buffer.read_bytes()
    path.write_bytes(whole[: len(whole) // 3])  # truncated in the middle of the scan
    buffer.unlink()
    return path
