"""``--quick``: for every method that has quick settings, they are cheaper than the defaults (fewer
images through the model, at most 0.6 of them) and as accurate as the method's ``Quick:`` note says, measured here on
the model the note names."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

import backlight
from backlight.data import make_batch
from backlight.demo import load_demo_model

QUICK = [m for m in backlight.list_methods() if set(m.quick) - {"progress"}]


class Counting(nn.Module):
    """A model that counts the images it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        out: torch.Tensor = self.model(x)
        return out


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a >= 0.5, b >= 0.5
    return float((a & b).sum() / (a | b).sum())


def _case(info: backlight.MethodInfo) -> tuple[nn.Module, torch.Tensor, dict[str, object]]:
    """The model the note names, two images, and the options both calls share."""
    if "ResNet-18" in info.quick_note:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        return model, torch.randn(1, 3, 64, 64), {"progress": False}
    images, _, _ = make_batch(2, seed=3)
    options: dict[str, object] = {"progress": False}
    if info.name == "gradient_shap":
        options["baselines"] = torch.stack([torch.zeros(3, 64, 64), torch.full((3, 64, 64), 0.5)])
    if info.name == "smooth_grad":
        options["method"] = "guided_backprop"
    return load_demo_model(), images, options


def test_every_method_with_quick_settings_states_their_accuracy() -> None:
    names = {m.name for m in QUICK}
    assert {"rise", "extremal_perturbation", "score_cam", "smooth_grad"} <= names
    for info in QUICK:
        assert re.search(r"(correlation|IoU) ≥ 0\.\d+|the same map", info.quick_note), info.name


@pytest.mark.parametrize("info", QUICK, ids=lambda info: info.name)
def test_quick_settings_are_cheaper_and_as_accurate_as_stated(
    info: backlight.MethodInfo, one_thread: None
) -> None:
    model, x, options = _case(info)
    target = model(x).argmax(1).tolist()
    counted = Counting(model)
    quick = info.function(counted, x, target, **{**options, **info.quick})
    quick_images, counted.images = counted.images, 0
    full = info.function(counted, x, target, **options)
    stated = re.search(r"(correlation|IoU) ≥ (0\.\d+)", info.quick_note)
    if stated is None:  # "the same map", in other batches
        assert quick_images <= counted.images
        torch.testing.assert_close(quick, full, rtol=1e-5, atol=1e-6)
        return
    assert quick_images < 0.6 * counted.images, (quick_images, counted.images)  # 2x cheaper
    measure = _iou if stated.group(1) == "IoU" else _corr
    reached = min(measure(q, f) for q, f in zip(quick, full, strict=True))
    print(f"{info.name}: {stated.group(1)} {reached:.3f}, {quick_images} / {counted.images}")
    assert reached >= float(stated.group(2)), (info.name, reached)
