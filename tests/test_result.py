"""Every method returns one type, an Explanation: a tensor of maps carrying what the method
found (layer, targets, scores, settings, extras)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import backlight
from backlight import Explanation

from .conftest import cheap, explain, methods_with
from .nets import TinyNet

METHODS = methods_with()


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_every_method_returns_an_explanation(method: backlight.MethodInfo) -> None:
    model = TinyNet().eval()
    x = torch.randn(2, 3, 12, 12)
    result = explain(method, model, x, [1, 3])
    assert isinstance(result, Explanation) and isinstance(result, torch.Tensor)
    assert result.method == method.name
    assert set(method.options) <= set(result.settings)  # every option, defaults included
    for option, value in cheap(method).items():
        assert result.settings[option] == value
    if result.targets is not None:  # class indices: as given
        assert result.targets.tolist() == [1, 3]
    if (
        result.scores is not None and result.scores.dim() == 1
    ):  # the logit (or probability) explained
        logits = model(x)
        softmax = result.settings.get("probability") == "softmax"  # RISE's default
        expected = logits.softmax(1) if softmax else logits
        torch.testing.assert_close(
            result.scores, expected[[0, 1], [1, 3]].detach(), rtol=1e-4, atol=1e-6
        )
    plain = result * 1
    assert type(plain) is torch.Tensor and torch.equal(plain, result.maps)


def test_layer_chosen_by_default_is_reported() -> None:
    model = TinyNet().eval()
    x = torch.randn(1, 3, 12, 12)
    cam = backlight.grad_cam(model, x, 2)
    assert cam.layer == backlight.default_cam_layer(model, x) == cam.settings["layer"]
    assert backlight.grad_cam(model, x, 2, layer=model.conv3).layer == "conv3"
    assert backlight.gradient(model, x, 2).layer is None


def test_target_none_reports_the_predicted_classes() -> None:
    model = TinyNet().eval()
    x = torch.randn(3, 3, 12, 12)
    assert backlight.guided_backprop(model, x).targets.tolist() == model(x).argmax(1).tolist()
    assert backlight.gradient(model, x, lambda out: out[:, 0]).targets is None


def test_extremal_extras_and_rise_extras() -> None:
    model = TinyNet().eval()
    x = torch.randn(1, 3, 12, 12)
    result = backlight.extremal_perturbation(
        model, x, 1, areas=[0.1, 0.3], max_iter=2, progress=False
    )
    assert result.masks is result.maps and result.maps.shape == (1, 2, 12, 12)
    assert result.history.shape == (1, 2, 2, 2) and result.areas == (0.1, 0.3)
    assert result.variant == "preserve" and result.scores.shape == (1, 2)
    rise = backlight.rise(model, x, "all", num_masks=8, progress=False)
    assert rise.num_masks == 8 and rise.targets is None and rise.shape[1] == 5
    with pytest.raises(AttributeError, match="no attribute 'history'"):
        _ = rise.history


def test_saving_and_copying() -> None:
    """torch.save stores the plain maps, which weights_only loading reads back; deepcopy and
    pickle keep the data."""
    result = backlight.grad_cam(TinyNet().eval(), torch.randn(1, 3, 12, 12), 1)
    buffer = io.BytesIO()
    torch.save(result, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert type(loaded) is torch.Tensor and torch.equal(loaded, result)
    twin = copy.deepcopy(result)
    assert (
        isinstance(twin, Explanation) and twin.layer == result.layer and torch.equal(twin, result)
    )
    assert torch.equal(pickle.loads(pickle.dumps(result)), result)


def test_smooth_grad_names_what_it_smoothed() -> None:
    model = TinyNet().eval()
    x = torch.randn(1, 3, 12, 12)
    smoothed = backlight.smooth_grad(
        backlight.guided_backprop, model, x, 2, samples=2, progress=False
    )
    assert smoothed.method == "smooth_grad" and smoothed.smoothed == "guided_backprop"
    assert smoothed.targets.tolist() == [2]
