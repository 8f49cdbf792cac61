"""``backlight explain --target`` for classifiers, segmentation models and detectors, and
``--model`` with torchvision's segmentation and detection names (random weights, no download).

The maps the command computes are checked against the library called with the ready target
written out by hand, so what is tested is the command's reading of ``--target`` and of the model's
output, not the methods (tests/test_targets.py has their literal references).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import backlight
from backlight import targets as T
from backlight.cli import main
from backlight.cli._errors import Failure, UsageError
from backlight.cli._explain import Job, compute, load_images, parse_methods
from backlight.cli._models import LoadedModel, load_model
from backlight.cli._targets import TargetSpec, Task, parse_target_spec, read_task

COCO = ["__background__", "person", "bicycle", "car", "cat", "dog"]


# --- parsing ---------------------------------------------------------------------------------

CLASSIFIER = Task("classification", 10)
SEGMENTER = Task("segmentation", 21)
DETECTOR = Task("detection", len(COCO))


@pytest.mark.parametrize(
    ("text", "task", "expected"),
    [
        ("3", CLASSIFIER, TargetSpec("class", 3, text="3")),
        ("class:3", CLASSIFIER, TargetSpec("class", 3, text="class:3")),
        ("sigmoid:3", CLASSIFIER, TargetSpec("sigmoid", 3, text="sigmoid:3")),
        ("prob:9", CLASSIFIER, TargetSpec("prob", 9, text="prob:9")),
        ("Margin:0", CLASSIFIER, TargetSpec("margin", 0, text="Margin:0")),
        ("15", SEGMENTER, TargetSpec("class", 15, text="15")),
        ("seg:15", SEGMENTER, TargetSpec("seg", 15, text="seg:15")),
        ("dog", DETECTOR, TargetSpec("class", 5, text="dog")),
        ("box:1,2,30,40", DETECTOR, TargetSpec("box", None, (1, 2, 30, 40), text="box:1,2,30,40")),
        (
            "box:1,2.5,30,40:cat",
            DETECTOR,
            TargetSpec("box", 4, (1, 2.5, 30, 40), text="box:1,2.5,30,40:cat"),
        ),
    ],
)
def test_target_forms_parse_for_their_kind_of_model(
    text: str, task: Task, expected: TargetSpec
) -> None:
    assert parse_target_spec(text, task, COCO) == expected


@pytest.mark.parametrize(
    ("text", "task", "message"),
    [
        ("sigmoid:3", SEGMENTER, r"is for a classification model, but this model is a segm"),
        ("box:1,2,3,4", CLASSIFIER, r"is for a detection model, but this model is a classif"),
        ("seg:2", DETECTOR, r"is for a segmentation model, but this model is a detection"),
        ("sigmoid:10", CLASSIFIER, r"--target 10 is out of range: the model has 10 classes"),
        ("prob:", CLASSIFIER, r"names no class"),
        ("box:1,2,3", DETECTOR, r"write box:x0,y0,x1,y1 or box:x0,y0,x1,y1:CLASS"),
        ("box:1,2,a,4", DETECTOR, r"write box:x0,y0,x1,y1"),
        ("box:5,2,3,4", DETECTOR, r"x1 > x0 and y1 > y0"),
        ("box:1,2,3,4:zebra", DETECTOR, r"'zebra' is not a class of this model"),
        ("seg:ca", SEGMENTER, r"matches several classes: 'car', 'cat'"),
    ],
)
def test_a_target_that_does_not_fit_names_the_fix(text: str, task: Task, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_target_spec(text, task, COCO)


def test_the_kind_of_model_is_read_from_its_output() -> None:
    logits = torch.zeros(2, 7)
    assert read_task(logits, None) == Task("classification", 7)
    assert read_task({"logits": logits}, None) == Task("classification", 7)
    assert read_task({"out": torch.zeros(2, 21, 8, 8)}, None) == Task("segmentation", 21)
    found = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}]
    assert read_task(found, COCO) == Task("detection", len(COCO))
    with pytest.raises(Failure, match=r"returned str: neither logits .* nor detections"):
        read_task("nope", None)


# --- classifiers -----------------------------------------------------------------------------


def _job(loaded: LoadedModel, images: list[Path], method: str, target: str | None) -> Job:
    names, shown, x = load_images([str(p) for p in images], loaded.preprocess)
    with torch.inference_mode():
        task = read_task(loaded.model(x.clone()), loaded.categories)
    return Job(
        model=loaded.model,
        names=names,
        shown=shown,
        x=x,
        categories=loaded.categories,
        methods=parse_methods(method),
        target=parse_target_spec(target, task, loaded.categories),
        progress=False,
    )


@pytest.mark.parametrize(
    ("text", "ready"),
    [("sigmoid:3", T.Sigmoid(3)), ("prob:7", T.Probability(7)), ("margin:0", T.Margin(0))],
)
def test_classifier_targets_give_the_ready_targets_maps(
    cat: Path, coffee: Path, text: str, ready: T.Target
) -> None:
    loaded = load_model("resnet18", "random", size=64)
    job = _job(loaded, [cat, coffee], "grad_cam,gradient", text)
    got = compute(job)
    for name in ("grad_cam", "gradient"):
        theirs = getattr(backlight, name)(loaded.model, job.x, ready)
        if theirs.shape[1] == 3:
            theirs = theirs.sum(dim=1, keepdim=True)
        torch.testing.assert_close(got.maps[name], theirs.float())
    # the plain index is the class logit, as before
    plain = compute(_job(loaded, [cat], "grad_cam", "7"))
    torch.testing.assert_close(
        plain.maps["grad_cam"], backlight.grad_cam(loaded.model, plain_x(loaded, cat), 7)
    )


def plain_x(loaded: LoadedModel, image: Path) -> torch.Tensor:
    return load_images([str(image)], loaded.preprocess)[2]


# --- segmentation ----------------------------------------------------------------------------


def test_segmentation_model_by_name_with_its_recipe_and_categories() -> None:
    loaded = load_model("fcn_resnet50", "random", size=64)
    assert loaded.categories is not None and loaded.categories[0] == "__background__"
    assert loaded.preprocess.describe().startswith(  # type: ignore[attr-defined]
        "short side resized to 64, centre crop 64, mean 0.485,0.456"
    )
    default = load_model("deeplabv3_mobilenet_v3_large", "random")
    assert default.preprocess.describe().startswith("short side resized to 520, centre crop 520")  # type: ignore[attr-defined]


def test_segmentation_default_and_given_class_are_its_pixels_of_that_class(
    cat: Path, coffee: Path
) -> None:
    loaded = load_model("fcn_resnet50", "random", size=64)
    job = _job(loaded, [cat, coffee], "grad_cam", None)
    with torch.no_grad():
        labels = loaded.model(job.x)["out"].argmax(dim=1).flatten(1)
    # the default: each image's most common class other than background (when it has another)
    expected = []
    for row in labels:
        counts = torch.bincount(row, minlength=21)
        if int((counts > 0).sum()) > 1:
            counts[0] = -1
        expected.append(int(counts.argmax()))
    got = compute(job)
    theirs = backlight.grad_cam(loaded.model, job.x, T.Segmentation(expected))
    torch.testing.assert_close(got.maps["grad_cam"], theirs)
    # a class given by name: its share of the pixels is what the report shows first
    present = int(torch.bincount(labels[0], minlength=21).argmax())
    name = loaded.categories[present]  # type: ignore[index]
    one = compute(_job(loaded, [cat], "grad_cam", f"seg:{name}"))
    assert one.predictions[0][0][0] == name
    share = float((labels[0] == present).float().mean())
    assert one.predictions[0][0][1] == pytest.approx(share)
    torch.testing.assert_close(
        one.maps["grad_cam"],
        backlight.grad_cam(loaded.model, job.x[:1], T.Segmentation(present)),
    )
    # a class the model does not find in the image is refused with the classes it finds
    absent = next(i for i in range(21) if not bool((labels[0] == i).any()))
    with pytest.raises(UsageError, match=rf"no pixel of chelsea to {loaded.categories[absent]}"):  # type: ignore[index]
        compute(_job(loaded, [cat], "grad_cam", str(absent)))


def test_segmentation_explain_end_to_end(tmp_path: Path, cat: Path) -> None:
    out = tmp_path / "out"
    args = ["explain", str(cat), "--model", "lraspp_mobilenet_v3_large", "--weights", "random"]
    options = ["--size", "64", "--method", "grad_cam,rise", "--quick", "--quiet"]
    code = main([*args, *options, "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "chelsea_grad_cam.png",
        "chelsea_rise.png",
        "grid.png",
        "report.html",
    ]


# --- detection -------------------------------------------------------------------------------

DETECTOR_FILE = textwrap.dedent(
    """
    import torch, torchvision

    def detector():
        torch.manual_seed(0)
        # random weights, and every detection kept, so that a random detector detects something
        model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=6, min_size=64, max_size=64,
            box_score_thresh=0.0,
        )
        model.classes = CLASSES
        return model.eval()
    """
).replace("CLASSES", repr(COCO))


@pytest.fixture
def detector_file(tmp_path: Path) -> str:
    path = tmp_path / "detector.py"
    path.write_text(DETECTOR_FILE, encoding="utf-8")
    return f"{path}:detector"


def test_detector_default_is_each_images_best_detection(
    detector_file: str, cat: Path, coffee: Path
) -> None:
    loaded = load_model(detector_file, "random", size=64)
    job = _job(loaded, [cat, coffee], "grad_cam,gradient", None)
    with torch.no_grad():
        found = loaded.model(job.x.clone())
    best = [int(f["scores"].argmax()) for f in found]
    boxes = [f["boxes"][i].tolist() for f, i in zip(found, best, strict=True)]
    labels = [int(f["labels"][i]) for f, i in zip(found, best, strict=True)]
    got = compute(job)
    for name in ("grad_cam", "gradient"):
        theirs = getattr(backlight, name)(loaded.model, job.x, T.Detection(boxes, labels))
        if theirs.shape[1] == 3:
            theirs = theirs.sum(dim=1, keepdim=True)
        torch.testing.assert_close(got.maps[name], theirs.float())
    # the report lists the detections, best first, with the class names of the model
    top = got.predictions[0]
    assert top[0] == (COCO[labels[0]], pytest.approx(float(found[0]["scores"][best[0]])))
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)


def test_detector_box_target_matches_a_detection_or_lists_them(
    detector_file: str, cat: Path
) -> None:
    loaded = load_model(detector_file, "random", size=64)
    x = plain_x(loaded, cat)
    with torch.no_grad():
        found = loaded.model(x.clone())[0]
    i = int(found["scores"].argsort(descending=True)[1])  # the second best: not the default
    box = [round(v, 3) for v in found["boxes"][i].tolist()]
    label = int(found["labels"][i])
    text = "box:" + ",".join(str(v) for v in box) + f":{COCO[label]}"
    got = compute(_job(loaded, [cat], "gradient", text))
    theirs = backlight.gradient(loaded.model, x, T.Detection(box, label)).sum(dim=1, keepdim=True)
    torch.testing.assert_close(got.maps["gradient"], theirs)
    assert got.maps["gradient"].abs().sum() > 0
    # a box far from every detection: refused, with the detections the user could give
    with pytest.raises(UsageError, match=r"no detection matching --target 'box:0,0,1,1'.*at box:"):
        compute(_job(loaded, [cat], "gradient", "box:0,0,1,1"))


def test_named_detector_loads_with_random_weights_and_says_when_it_detects_nothing(
    tmp_path: Path, cat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = load_model("ssdlite320_mobilenet_v3_large", "random", size=64)
    assert isinstance(loaded.model, torch.nn.Module) and not loaded.model.training
    assert loaded.preprocess.describe() == (  # type: ignore[attr-defined]
        "short side resized to 64, centre crop 64, mean 0,0,0, std 1,1,1"
    )
    assert loaded.categories is not None and loaded.categories[1] == "person"
    out = tmp_path / "out"
    args = ["explain", str(cat), "--model", "fasterrcnn_mobilenet_v3_large_320_fpn"]
    code = main([*args, "--weights", "random", "--size", "64", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    # a random detector keeps no detection above its own threshold: a failure, no output
    assert code == 1 and "the model detects nothing in chelsea" in err
    assert not out.exists()
