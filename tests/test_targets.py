"""backlight.targets: literal references on tiny models, outputs that are not logits, per-sample
targets through the many-pass methods, and parity with pytorch-grad-cam's targets."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import backlight
from backlight import targets as T
from backlight.errors import MethodNotApplicableError, TargetError

from .conftest import explain, methods_with
from .nets import tiny_detector


class Linear(nn.Module):
    """logits = W · flatten(x) + b: every target's input gradient has a closed form."""

    def __init__(self, classes: int = 5, size: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * size * size, classes).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _x(n: int = 2, size: int = 4) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(n, 3, size, size, dtype=torch.float64)


def _grad(model: nn.Module, x: torch.Tensor, target: object) -> torch.Tensor:
    return backlight.gradient(model, x, target, reduce=None)


def test_class_probability_sigmoid_and_margin_have_their_closed_form_gradients() -> None:
    model, x = Linear().eval(), _x()
    w = model.fc.weight.detach().view(5, 3, 4, 4)
    logits = model(x).detach()
    c = torch.tensor([1, 3])
    p = logits.softmax(1)
    s = torch.sigmoid(logits)
    expected = {
        "class": w[c],
        "probability": p[[0, 1], c].view(2, 1, 1, 1) * (w[c] - torch.einsum("nk,kchw->nchw", p, w)),
        "sigmoid": (s[[0, 1], c] * (1 - s[[0, 1], c])).view(2, 1, 1, 1) * w[c],
        "margin": w[c] - w[logits.scatter(1, c[:, None], -torch.inf).argmax(1)],
    }
    made = {
        "class": T.Class([1, 3]),
        "probability": T.Probability([1, 3]),
        "sigmoid": T.Sigmoid([1, 3]),
        "margin": T.Margin([1, 3]),
    }
    for name, target in made.items():
        got = _grad(model, x, target)
        torch.testing.assert_close(got.maps, expected[name], rtol=1e-12, atol=1e-14, msg=name)
        assert got.targets.tolist() == [1, 3], name


def test_class_target_means_the_class_index_and_follows_the_methods_probability() -> None:
    model, x = Linear().eval(), _x()
    options = {"num_masks": 32, "cells": 2, "progress": False}
    ours = backlight.rise(model, x, T.Class(2), **options)
    plain = backlight.rise(model, x, 2, **options)
    assert torch.equal(ours.maps, plain.maps)  # softmax scores both: the method's own convention
    sigmoid = backlight.rise(model, x, T.Sigmoid(2), **options)
    assert not torch.allclose(sigmoid.maps, plain.maps)


def test_a_target_takes_the_predicted_class_when_none_is_given() -> None:
    model, x = Linear().eval(), _x()
    top = model(x).argmax(1)
    assert _grad(model, x, T.Sigmoid()).targets.tolist() == top.tolist()


class Segmenter(nn.Module):
    """A 3x3 convolution to K class maps at the input's resolution, returned like torchvision's."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(self.backbone(x))}


def test_segmentation_gradient_is_the_sum_of_the_per_pixel_gradients() -> None:
    torch.manual_seed(0)
    model, x = Segmenter().double().eval(), _x(1, 6)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:4, 2:5] = True
    got = _grad(model, x, T.Segmentation(2, mask))
    literal = torch.zeros_like(x)
    for i, j in mask.nonzero().tolist():  # one backward pass per pixel of the region
        leaf = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(leaf)["out"][0, 2, i, j], leaf)
        literal += g
    torch.testing.assert_close(got.maps, literal, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        region = float(model(x)["out"][0, 2][mask].sum())
    assert got.scores.item() == pytest.approx(region, rel=1e-12)


def test_segmentation_mask_defaults_to_the_models_own_prediction_and_stays_fixed() -> None:
    torch.manual_seed(0)
    model, x = Segmenter().double().eval(), _x(2, 6)
    out = model(x)["out"]
    own = out.argmax(1) == 1
    assert own.any()
    got = _grad(model, x, T.Segmentation(1))
    given = _grad(model, x, T.Segmentation(1, own))  # (N, H, W): one mask per sample
    torch.testing.assert_close(got.maps, given.maps, rtol=0, atol=0)
    # RISE's masked copies predict other pixels; the region stays the input's
    bound = T.Segmentation(1).bind(out, 2)
    masked = {"out": out * 0 + torch.randn_like(out)}
    expected = (masked["out"][:, 1] * own).sum(dim=(1, 2))
    torch.testing.assert_close(bound.scores(masked, None), expected)


def test_segmentation_errors_name_the_problem() -> None:
    model, x = Segmenter().double().eval(), _x(1, 6)
    with pytest.raises(TargetError, match="out of range for 3 classes"):
        _grad(model, x, T.Segmentation(7))
    with pytest.raises(TargetError, match=r"`mask` has shape \(2, 6, 6\)"):
        _grad(model, x, T.Segmentation(1, torch.ones(2, 6, 6)))
    with pytest.raises(TargetError, match="without 'seg'"):
        _grad(model, x, T.Segmentation(1, key="seg"))
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([1e3, 0.0, 0.0]))  # class 0 everywhere
    with pytest.raises(TargetError, match=r"no pixel of sample\(s\) \[0\] to class 1"):
        _grad(model, x, T.Segmentation(1))
    with pytest.raises(TargetError, match=r"\(N, K, H, W\)"):
        _grad(Linear().eval(), _x(), T.Segmentation(1))


class Detector(nn.Module):
    """Three fixed boxes whose scores (and one box's corner) depend on the image, returned per
    image as torchvision's detectors do."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Conv2d(3, 3, 4, stride=4).double()

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        s = torch.sigmoid(self.score(x).mean(dim=(2, 3)))  # (N, 3)
        results = []
        for i in range(x.shape[0]):
            boxes = torch.tensor(
                [[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 5.0], [4.0, 4.0, 8.0, 8.0]],
                dtype=x.dtype,
            )
            boxes = boxes + torch.stack([0 * s[i], 0 * s[i], s[i], s[i]], dim=1)
            results.append({"boxes": boxes, "labels": torch.tensor([1, 2, 1]), "scores": s[i]})
        return results


def test_detection_explains_the_best_matching_box_of_its_label() -> None:
    model, x = Detector().eval(), _x(2, 8)
    # box 0 overlaps the box best (IoU > 0.6), box 1 (label 2) by about 0.45, box 2 not at all
    for label, which in ((1, 0), (2, 1), (None, 0)):
        got = _grad(model, x, T.Detection([0.2, 0.2, 4.2, 4.2], label, iou=0.4))
        leaf = x.clone().requires_grad_(True)
        score = sum(model(leaf)[i]["scores"][which] for i in range(2))
        (literal,) = torch.autograd.grad(score, leaf)
        torch.testing.assert_close(got.maps, literal, rtol=1e-12, atol=1e-14)
    far = _grad(model, x, T.Detection([10.0, 10.0, 20.0, 20.0], 1))
    assert not far.maps.any() and not far.scores.any()  # no match: score 0, map 0


def test_detection_takes_one_box_per_sample_and_adds_the_iou_on_request() -> None:
    model, x = Detector().eval(), _x(2, 8)
    boxes = [[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 8.0, 8.0]]
    got = _grad(model, x, T.Detection(boxes, 1))
    for i in range(2):
        alone = _grad(model, x[i : i + 1], T.Detection(boxes[i], 1))
        torch.testing.assert_close(got.maps[i : i + 1], alone.maps, rtol=1e-12, atol=1e-14)
    with_iou = T.Detection(boxes, 1, add_iou=True).bind(model(x), 2)
    out = model(x)
    plain = T.Detection(boxes, 1).bind(out, 2).scores(out, None)
    ious = torch.stack(
        [
            torchvision.ops.box_iou(torch.tensor([b]).double(), out[i]["boxes"])[0].max()
            for i, b in enumerate(boxes)
        ]
    )
    torch.testing.assert_close(with_iou.scores(out, None), plain + ious)


def test_detections_lists_one_target_per_detection_best_first() -> None:
    model, x = Detector().eval(), _x(1, 8)
    scores = model(x)[0]["scores"].detach()
    found = T.detections(model, x, min_score=0.0)
    assert [t.label for t in found] == [[1, 2, 1][i] for i in scores.argsort(descending=True)]
    assert len(T.detections(model, x, min_score=float(scores.max()) + 1e-9)) == 0
    with pytest.raises(backlight.OptionError, match="one image"):
        T.detections(model, _x(2, 8))


def test_detection_refuses_a_classifier_output() -> None:
    with pytest.raises(TargetError, match="'boxes', 'labels' and 'scores'"):
        _grad(Linear().eval(), _x(), T.Detection([0, 0, 1, 1]))


def test_similarity_gradient_is_the_cosine_formulas() -> None:
    model, x = Linear(classes=6).eval(), _x()
    reference = torch.randn(6, dtype=torch.float64)
    got = _grad(model, x, T.Similarity(reference))
    w = model.fc.weight.detach()
    u = model(x).detach()
    nu, ne = u.norm(dim=1, keepdim=True), reference.norm()
    cos = (u @ reference)[:, None] / (nu * ne)
    d_u = reference / (nu * ne) - cos * u / nu**2  # ∂cos/∂u
    torch.testing.assert_close(got.maps, (d_u @ w).view_as(x), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.scores, cos[:, 0], rtol=1e-12, atol=0)
    with pytest.raises(TargetError, match="6-dimensional"):
        _grad(model, x, T.Similarity(torch.randn(5)))


# --- outputs that are not a logit tensor ----------------------------------------------------


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module, form: str) -> None:
        super().__init__()
        self.inner, self.form = inner, form

    def forward(self, x: torch.Tensor) -> object:
        logits = self.inner(x)
        hidden = x.flatten(2)  # (N, C, H·W): a 3-D tensor next to the logits
        if self.form == "dict":
            return {"logits": logits, "hidden": hidden}
        if self.form == "one-key":
            return {"scores": logits}
        if self.form == "tuple":
            return (hidden, logits)
        if self.form == "namedtuple":
            return collections.namedtuple("Out", "aux logits")(logits * 2, logits)
        if self.form == "model-output":
            from transformers.modeling_outputs import ImageClassifierOutput

            return ImageClassifierOutput(logits=logits, hidden_states=(hidden,))
        return {"a": logits, "b": logits * 2}


@pytest.mark.parametrize("form", ["dict", "one-key", "tuple", "namedtuple", "model-output"])
@pytest.mark.parametrize("method", ["gradient", "rise", "occlusion", "integrated_gradients"])
def test_outputs_holding_logits_explain_as_the_logits_do(form: str, method: str) -> None:
    if form == "model-output":
        pytest.importorskip("transformers")
    inner = Linear(size=8).eval()
    x = _x(2, 8)
    info = backlight.get_method(method)
    plain = explain(info, inner, x, None)
    wrapped = explain(info, Wrapped(inner, form), x, None)
    torch.testing.assert_close(wrapped.maps, plain.maps, rtol=0, atol=0)
    if method == "gradient":
        assert torch.equal(wrapped.output, inner(x).detach())


def test_an_ambiguous_output_names_its_keys() -> None:
    with pytest.raises(TargetError, match=r"keys \['a', 'b'\]"):
        backlight.gradient(Wrapped(Linear().eval(), "ambiguous"), _x(), 1)


# --- per-sample targets through the many-pass methods ---------------------------------------


@pytest.mark.parametrize(
    "method",
    [m for m in methods_with() if m.name not in ("smooth_grad",)],
    ids=lambda m: m.name,
)
def test_every_method_takes_per_sample_ready_targets_as_a_batch(
    method: backlight.MethodInfo,
) -> None:
    torch.manual_seed(0)
    model = Segmenter().double().eval()
    x = _x(2, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, :4], mask[1, 4:] = True, True
    target = T.Segmentation([0, 2], mask)
    try:
        both = explain(method, model, x, target)
    except MethodNotApplicableError:
        pytest.skip(f"{method.name} does not apply to this model (tested in its own file)")
    for i in range(2):
        alone = explain(method, model, x[i : i + 1], T.Segmentation([0, 2][i], mask[i]))
        torch.testing.assert_close(both.maps[i : i + 1], alone.maps, rtol=1e-6, atol=1e-10)


def test_smooth_grad_fixes_the_target_on_the_input_as_given() -> None:
    torch.manual_seed(0)
    model, x = Segmenter().double().eval(), _x(2, 8)
    own = model(x)["out"].argmax(1) == 1
    ours = backlight.smooth_grad(
        backlight.gradient, model, x, T.Segmentation(1), samples=3, batch_size=4, progress=False
    )
    given = backlight.smooth_grad(
        backlight.gradient,
        model,
        x,
        T.Segmentation(1, own),
        samples=3,
        batch_size=4,
        progress=False,
    )
    torch.testing.assert_close(ours.maps, given.maps, rtol=0, atol=0)


def test_excitation_backprop_refuses_a_margin_and_names_the_contrastive_method() -> None:
    from .nets import TinyNet

    torch.manual_seed(1)
    with pytest.raises(MethodNotApplicableError, match="contrastive_excitation_backprop"):
        backlight.excitation_backprop(TinyNet().eval(), torch.randn(1, 3, 32, 32), T.Margin(1))


# --- parity with pytorch-grad-cam's targets -------------------------------------------------


def _their_grad_cam(
    model: nn.Module, module: nn.Module, x: torch.Tensor, wanted: list, reshape=None
) -> torch.Tensor:
    """pytorch-grad-cam's Grad-CAM before its normalisation, for its own target objects."""
    from pytorch_grad_cam import GradCAM

    from .test_parity_cam import pgc_raw

    return pgc_raw(GradCAM, model, module, x, wanted, reshape)


class _Out(nn.Module):
    """What pytorch-grad-cam's segmentation tutorial wraps the model in: its 'out' only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def test_segmentation_matches_pytorch_grad_cams_semantic_segmentation_target() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=4
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    mask = (model(x)["out"][0].argmax(0) == 2).numpy().astype(np.float32)
    assert mask.sum() > 0
    theirs = _their_grad_cam(
        _Out(model), model.backbone.layer4, x, [SemanticSegmentationTarget(2, mask)]
    )
    ours = backlight.grad_cam(model, x, T.Segmentation(2), layer="backbone.layer4")
    assert ours.layer == backlight.default_cam_layer(model, x) == "backbone.layer4"
    torch.testing.assert_close(
        ours.maps, theirs.float(), rtol=1e-4, atol=1e-6 * float(theirs.max())
    )


def test_detection_matches_pytorch_grad_cams_faster_rcnn_box_score_target() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    torch.manual_seed(0)
    model = tiny_detector()
    x = torch.rand(1, 3, 64, 64)
    best = T.detections(model, x, min_score=0.0)[0]
    layer = backlight.default_cam_layer(model, x)
    assert layer == "backbone.body.16"
    module = dict(model.named_modules())[layer]
    theirs = _their_grad_cam(
        model, module, x, [FasterRCNNBoxScoreTarget([best.label], [np.array(best.box)])]
    )
    ours = backlight.grad_cam(
        model, x, T.Detection(best.box, best.label, add_iou=True), layer=layer
    )
    assert ours.maps.any()
    torch.testing.assert_close(
        ours.maps, theirs.float(), rtol=1e-4, atol=1e-6 * float(theirs.max())
    )
