"""Shared fixtures: tiny hand-built networks and torchvision architectures with random weights."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
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
    identity and every layer matters.
    """
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def all_methods() -> list[backlight.MethodInfo]:
    return backlight.list_methods()
