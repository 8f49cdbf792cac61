"""Parity of (contrastive) excitation backprop with TorchRay on VGG-16 and ResNet-50.

TorchRay needs the ResNet rewritten by its ``update_resnet`` (the residual sum as a module) and,
for the contrastive variant, negates the classifier's weights in place for a moment; both are
done on a copy. backlight needs neither. The layers are those of TorchRay's pointing-game
benchmark (and, for VGG-16's contrast layer, its example script).
"""

from __future__ import annotations

import copy

import pytest
import torch

import backlight

from .conftest import torchvision_model

ebp = pytest.importorskip("torchray.attribution.excitation_backprop")

pytestmark = pytest.mark.slow

SETTINGS = [
    ("vgg16", "features.23", "classifier.4"),
    ("vgg16", "features.9", "features.30"),
    ("resnet50", "layer3", "avgpool"),
]
TARGETS = [3, 871]


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).norm() / theirs.norm())


@pytest.mark.parametrize(("arch", "layer", "contrast_layer"), SETTINGS)
def test_parity_with_torchray(arch: str, layer: str, contrast_layer: str) -> None:
    model = torchvision_model(arch)
    theirs_model = copy.deepcopy(model)
    if arch.startswith("resnet"):
        theirs_model = ebp.update_resnet(theirs_model)
    torch.manual_seed(51)
    x = torch.randn(2, 3, 160, 160)

    ours = backlight.excitation_backprop(model, x, TARGETS, layer=layer)
    theirs = ebp.excitation_backprop(theirs_model, x.clone(), TARGETS, saliency_layer=layer)
    assert relative_error(ours[0], ours[1]) > 0.01, "per-sample targets must give different maps"
    assert relative_error(ours, theirs.detach()) < 1e-4

    ours_c = backlight.contrastive_excitation_backprop(model, x, TARGETS, layer=layer)
    theirs_c = ebp.contrastive_excitation_backprop(
        theirs_model, x.clone(), TARGETS, saliency_layer=layer, contrast_layer=contrast_layer
    )
    assert ours_c.abs().sum() > 0
    assert relative_error(ours_c, theirs_c.detach()) < 1e-4
