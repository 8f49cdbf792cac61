"""Parity of the gradient family with TorchRay and Captum on torchvision architectures.

TorchRay patches ``torch.relu`` for the whole process and so sees every ReLU; it agrees with us
to float precision everywhere. Captum applies its rule only to ``nn.ReLU`` modules and misses
DenseNet's ``F.relu(..., inplace=True)``: there it is wrong, and the test documents by how much.
Neither peer treats ReLU6 as a rectifier; MobileNet-V2 uses only ReLU6, so on it both peers
return the plain gradient for guided backprop and deconvnet. Our ``clipped_relu=False`` reproduces
them exactly; our default applies the rule to ReLU6 as well.
"""

from __future__ import annotations

import pytest
import torch

import backlight

from .conftest import torchvision_model

torchray_gradient = pytest.importorskip("torchray.attribution.gradient").gradient
torchray_guided = pytest.importorskip("torchray.attribution.guided_backprop").guided_backprop
torchray_deconvnet = pytest.importorskip("torchray.attribution.deconvnet").deconvnet
captum_attr = pytest.importorskip("captum.attr")

# Captum announces its module hooks with a UserWarning on every call; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")

ARCHITECTURES = ["alexnet", "vgg16", "resnet50", "densenet121", "mobilenet_v2"]
TARGETS = [3, 871]  # a different class per sample
SIZE = 160

OURS = {
    "gradient": backlight.gradient,
    "guided_backprop": backlight.guided_backprop,
    "deconvnet": backlight.deconvnet,
}
TORCHRAY = {
    "gradient": torchray_gradient,
    "guided_backprop": torchray_guided,
    "deconvnet": torchray_deconvnet,
}
CAPTUM = {
    "gradient": captum_attr.Saliency,
    "guided_backprop": captum_attr.GuidedBackprop,
    "deconvnet": captum_attr.Deconvolution,
}
CONTEXTS = {
    "guided_backprop": backlight.GuidedBackpropContext,
    "deconvnet": backlight.DeConvNetContext,
}


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).norm() / theirs.norm())


def _inputs() -> torch.Tensor:
    torch.manual_seed(7)
    return torch.randn(2, 3, SIZE, SIZE)


def _torchray(method: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    requires = [p.requires_grad for p in model.parameters()]
    try:
        return TORCHRAY[method](model, x.clone().requires_grad_(True), TARGETS).detach()
    finally:  # TorchRay leaves requires_grad restored, but do not rely on a peer for that
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)


def _captum(method: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    explainer = CAPTUM[method](model)
    options = {"abs": False} if method == "gradient" else {}
    attribution = explainer.attribute(x.clone().requires_grad_(True), target=TARGETS, **options)
    for p in model.parameters():
        p.grad = None
    return attribution.detach().abs().amax(dim=1, keepdim=True)


def _without_clipped_relu(method: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Our rule with ReLU6 left alone, through the public context manager, TorchRay-style."""
    xx = x.clone().requires_grad_(True)
    with CONTEXTS[method](clipped_relu=False, warn=False):
        out = model(xx)
    one_hot = torch.zeros_like(out)
    one_hot[torch.arange(2), TARGETS] = 1
    (grad,) = torch.autograd.grad(out, xx, one_hot)
    return grad.abs().amax(dim=1, keepdim=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parity_with_torchray_and_captum(arch: str) -> None:
    model = torchvision_model(arch)
    x = _inputs()
    for method, ours_fn in OURS.items():
        ours = ours_fn(model, x, TARGETS)
        assert ours.shape == (2, 1, SIZE, SIZE)
        assert relative_error(ours[0], ours[1]) > 0.01, (
            "per-sample targets must give different maps"
        )
        torchray = _torchray(method, model, x)
        captum = _captum(method, model, x)
        if arch == "mobilenet_v2" and method != "gradient":
            # The peers treat ReLU6 as an ordinary function; so does our clipped_relu=False.
            plain = backlight.gradient(model, x, TARGETS)
            assert relative_error(torchray, plain) < 1e-5
            assert relative_error(captum, plain) < 1e-5
            assert relative_error(_without_clipped_relu(method, model, x), torchray) < 1e-5
            # Our default applies the rule at every ReLU6, which changes the map.
            assert relative_error(ours, plain) > 0.1
            continue
        assert relative_error(ours, torchray) < 1e-5, (arch, method)
        if arch == "densenet121" and method != "gradient":
            continue  # Captum is wrong here; see the next test
        assert relative_error(ours, captum) < 1e-5, (arch, method)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_captum_misses_densenets_functional_relu(method: str) -> None:
    """DenseNet's forward ends in ``F.relu(features, inplace=True)``, a function, not a module:
    Captum leaves it with the plain gradient. We (and TorchRay) apply the rule there."""
    model = torchvision_model("densenet121")
    x = _inputs()
    ours = OURS[method](model, x, TARGETS)
    captum = _captum(method, model, x)
    assert relative_error(ours, _torchray(method, model, x)) < 1e-5
    error = relative_error(captum, ours)
    assert error > 0.1, f"Captum now agrees ({error:.3f}); update the docs"
