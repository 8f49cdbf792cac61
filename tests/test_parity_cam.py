"""Parity of the CAM family with Captum, TorchRay and pytorch-grad-cam on torchvision models.

pytorch-grad-cam normalises its maps to [0, 1] and resizes them with OpenCV; we compare with its
raw map (the rectified weighted sum at the layer), which is what the normalisation starts from.
Two of its choices differ from ours and are aligned here, each stated where it is done:
Grad-CAM++ adds 1e-6 to a denominator, and Score-CAM upsamples with ``align_corners=True``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import backlight

from .conftest import torchvision_model

captum_attr = pytest.importorskip("captum.attr")
torchray_grad_cam = pytest.importorskip("torchray.attribution.grad_cam").grad_cam
torchray_linear_approx = pytest.importorskip("torchray.attribution.linear_approx").linear_approx
grad_cam_lib = pytest.importorskip("pytorch_grad_cam")
ClassifierOutputTarget = pytest.importorskip(
    "pytorch_grad_cam.utils.model_targets"
).ClassifierOutputTarget

pytestmark = [
    pytest.mark.slow,
    # Captum announces its module hooks with a UserWarning on every call.
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning"),
]

# Layers not followed by an in-place operation (that case has its own test below).
LAYERS = {
    "vgg16": "features.30",
    "resnet50": "layer4",
    "densenet121": "features.denseblock4",
}
TARGETS = [3, 871]


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).norm() / theirs.norm())


def _inputs(n: int = 2, size: int = 160) -> torch.Tensor:
    torch.manual_seed(21)
    return torch.randn(n, 3, size, size)


def _clear(model: nn.Module) -> None:
    for p in model.parameters():  # peers leave parameter gradients and flags behind
        p.grad = None
        p.requires_grad_(True)


def _pgc_raw(
    cls: type, model: nn.Module, layer: str, x: torch.Tensor, targets: list[int]
) -> torch.Tensor:
    """pytorch-grad-cam's map before its normalisation: ReLU(Σ_k w_k A_k) at the layer."""
    module = dict(model.named_modules())[layer]
    return pgc_raw(cls, model, module, x, [ClassifierOutputTarget(t) for t in targets])


def pgc_raw(
    cls: type,
    model: nn.Module,
    module: nn.Module,
    x: torch.Tensor,
    wanted: list,
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """pytorch-grad-cam's CAM ``cls`` before its normalisation, for its own target objects
    ``wanted`` and its ``reshape_transform``."""
    cam = cls(model, [module], reshape_transform=reshape)
    try:
        outputs = cam.activations_and_grads(x)
        grads = None
        if cam.uses_gradients:
            model.zero_grad()
            sum(w(o) for w, o in zip(wanted, outputs, strict=True)).backward()
            grads = cam.activations_and_grads.gradients[0].numpy()
        acts = cam.activations_and_grads.activations[0].numpy()
        raw = cam.get_cam_image(x, module, wanted, acts, grads, False)
    finally:
        cam.activations_and_grads.release()
        _clear(model)
    return torch.from_numpy(np.maximum(raw, 0))[:, None]


@pytest.mark.parametrize("arch", list(LAYERS))
def test_grad_cam_and_linear_approx_match_captum_and_torchray(arch: str) -> None:
    model, layer, x = torchvision_model(arch), LAYERS[arch], _inputs()
    ours = backlight.grad_cam(model, x, TARGETS, layer=layer)
    assert relative_error(ours[0], ours[1]) > 0.01, "per-sample targets must give different maps"
    module = dict(model.named_modules())[layer]
    captum = captum_attr.LayerGradCam(model, module).attribute(
        x, target=TARGETS, relu_attributions=True
    )
    assert relative_error(ours, captum.detach()) < 1e-5
    torchray = torchray_grad_cam(model, x.clone(), TARGETS, saliency_layer=layer)
    _clear(model)
    assert relative_error(ours, torchray.detach()) < 1e-5
    pgc = _pgc_raw(grad_cam_lib.GradCAM, model, layer, x, TARGETS)
    assert relative_error(ours, pgc) < 1e-5

    ours_linear = backlight.linear_approx(model, x, TARGETS, layer=layer)
    torchray_linear = torchray_linear_approx(model, x.clone(), TARGETS, saliency_layer=layer)
    _clear(model)
    assert relative_error(ours_linear, torchray_linear.detach()) < 1e-5


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
def test_guided_grad_cam_matches_captum(arch: str) -> None:
    """Captum upsamples with ``interpolate_mode="bilinear"`` as we do (its default is nearest).
    On DenseNet its guided backprop misses ``F.relu`` (see test_parity_gradients)."""
    model, layer, x = torchvision_model(arch), LAYERS[arch], _inputs()
    module = dict(model.named_modules())[layer]
    ours = backlight.guided_grad_cam(model, x, TARGETS, layer=layer, reduce=None)
    captum = captum_attr.GuidedGradCam(model, module).attribute(
        x.clone().requires_grad_(True), target=TARGETS, interpolate_mode="bilinear"
    )
    _clear(model)
    assert relative_error(ours, captum.detach()) < 1e-5


@pytest.mark.parametrize("arch", list(LAYERS))
def test_layer_cam_matches_pytorch_grad_cam(arch: str) -> None:
    model, layer, x = torchvision_model(arch), LAYERS[arch], _inputs()
    ours = backlight.layer_cam(model, x, TARGETS, layer=layer)
    assert relative_error(ours, _pgc_raw(grad_cam_lib.LayerCAM, model, layer, x, TARGETS)) < 1e-5


@pytest.mark.parametrize("arch", list(LAYERS))
def test_grad_cam_plus_plus_matches_pytorch_grad_cam(arch: str) -> None:
    """pytorch-grad-cam computes α = g² / (2g² + S·g³ + 1e-6). Its 1e-6 is negligible only when
    the gradients are large, so the classifier's logits are scaled by 1e6 for this comparison;
    at the natural scale of these random models its map is off (next test)."""
    model, layer, x = copy.deepcopy(torchvision_model(arch)), LAYERS[arch], _inputs()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(1e6)
        head.bias.mul_(1e6)
    ours = backlight.grad_cam_plus_plus(model, x, TARGETS, layer=layer)
    theirs = _pgc_raw(grad_cam_lib.GradCAMPlusPlus, model, layer, x, TARGETS)
    assert relative_error(ours, theirs) < 1e-5


def test_pytorch_grad_cams_epsilon_distorts_grad_cam_plus_plus() -> None:
    model, layer, x = torchvision_model("resnet50"), LAYERS["resnet50"], _inputs()
    ours = backlight.grad_cam_plus_plus(model, x, TARGETS, layer=layer)
    theirs = _pgc_raw(grad_cam_lib.GradCAMPlusPlus, model, layer, x, TARGETS)
    assert relative_error(theirs, ours) > 0.5  # measured: about 1.05 (105%)


# Score-CAM costs one forward pass per channel: earlier layers with 128-256 channels keep it quick.
SCORE_CAM_LAYERS = {
    "vgg16": "features.16",
    "resnet50": "layer1",
    "densenet121": "features.transition1",
}


@pytest.mark.parametrize("arch", list(SCORE_CAM_LAYERS))
def test_score_cam_matches_pytorch_grad_cam(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytorch-grad-cam weighs channels by a softmax over channels of the raw class score (our
    ``weighting="channel_softmax"``) and upsamples with align_corners=True; the latter is
    switched to our bilinear upsampling for the comparison. One 64x64 image keeps it quick."""
    model, layer, x = torchvision_model(arch), SCORE_CAM_LAYERS[arch], _inputs(n=1, size=64)

    def upsample(size: tuple[int, int]) -> nn.Module:
        return nn.Upsample(size=size, mode="bilinear", align_corners=False)

    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", upsample)
    ours = backlight.score_cam(
        model, x, 871, layer=layer, weighting="channel_softmax", progress=False, batch_size=64
    )
    theirs = _pgc_raw(grad_cam_lib.ScoreCAM, model, layer, x, [871])
    assert ours.abs().sum() > 0
    assert relative_error(ours, theirs) < 1e-4


def test_pytorch_grad_cam_mixes_post_relu_activations_with_pre_relu_gradients() -> None:
    """DenseNet's forward applies ``F.relu(features, inplace=True)`` right after the layer
    ``features``. Our Grad-CAM uses that layer's own output and gradient, as a hand split of the
    network computes them; pytorch-grad-cam's activations are overwritten by the ReLU."""
    model, x = torchvision_model("densenet121"), _inputs()
    with torch.no_grad():
        act = model.features(x)
    leaf = act.clone().requires_grad_(True)
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.relu(leaf), 1).flatten(1)
    scores = model.classifier(pooled)[torch.arange(2), torch.tensor(TARGETS)]
    (grad,) = torch.autograd.grad(scores.sum(), leaf)
    _clear(model)
    true_map = (grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True).clamp(min=0)
    ours = backlight.grad_cam(model, x, TARGETS, layer="features")
    assert relative_error(ours, true_map) < 1e-5
    theirs = _pgc_raw(grad_cam_lib.GradCAM, model, "features", x, TARGETS)
    mixed = (grad.mean(dim=(2, 3), keepdim=True) * act.clamp(min=0)).sum(1, keepdim=True)
    assert relative_error(theirs, mixed.clamp(min=0)) < 1e-5
    assert relative_error(theirs, true_map) > 0.05
