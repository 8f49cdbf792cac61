"""Shared fixtures: tiny hand-built networks and torchvision architectures with random weights."""

from __future__ import annotations

import os

# Keras 3 reads its backend once, at its first import: backlight explains Keras models on torch.
os.environ.setdefault("KERAS_BACKEND", "torch")

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from skimage import data
from torch import nn

import backlight

from .nets import TinyNet


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_leaked_rule_modes():
    """No test may leave a backward-rule mode on this thread's torch-function stack."""
    yield
    assert torch._C._len_torch_function_stack() == 0


@pytest.fixture
def cat(tmp_path: Path) -> Path:
    """skimage's chelsea as a JPEG file, as a user's photo (451 x 300)."""
    path = tmp_path / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=90)
    return path


@pytest.fixture
def coffee(tmp_path: Path) -> Path:
    """skimage's coffee as a PNG file (600 x 400)."""
    path = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(path)
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """For modules of tiny models: one thread runs them faster than two, and does not slow down
    a hundredfold when other processes keep the cores busy (OpenMP threads then wait for each
    other at every operator)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(1)
    return TinyNet().eval()


@pytest.fixture
def tiny64() -> TinyNet:
    torch.manual_seed(1)
    return TinyNet().double().eval()


@functools.cache
def torchvision_model(name: str) -> nn.Module:
    """A torchvision architecture with seeded random weights, built once per session.

    BatchNorm running statistics are randomised too, so that eval-mode normalisation is not the
    identity and every layer matters, and classifier heads that torchvision initialises to zero
    (ViT's) get random weights, or every gradient would be zero.
    """
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


#: Settings cheaper still than ``--quick`` for the methods whose quick settings are chosen to
#: give a usable map (500 RISE masks, 100 extremal steps): the contract tests need a call, not
#: an accurate map.
_CHEAPEST: dict[str, dict[str, object]] = {
    "rise": {"num_masks": 64},
    "extremal_perturbation": {"max_iter": 3, "schedule": "torchray", "tolerance": None},
}


def cheap(method: backlight.MethodInfo) -> dict[str, object]:
    """The cheapest settings of a registered method that still run it (its quick settings, with
    fewer masks or iterations where those are chosen for accuracy)."""
    return {**method.quick, **_CHEAPEST.get(method.name, {})}


def explain(
    method: backlight.MethodInfo,
    model: nn.Module,
    x: torch.Tensor,
    target: object,
    **options: object,
) -> torch.Tensor:
    """Call a registered method with :func:`cheap` settings plus ``options``."""
    maps: torch.Tensor = method.function(model, x, target, **{**cheap(method), **options})
    return maps


def methods_with(option: str | None = None) -> list[backlight.MethodInfo]:
    """Registered methods, optionally only those that take ``option``."""
    return [m for m in backlight.list_methods() if option is None or option in m.options]
