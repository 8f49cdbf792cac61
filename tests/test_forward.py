"""The forward passes of RISE and extremal perturbation: under autocast, a private copy of the
model with its weights cast once computes the same bits as autocast does, leaves the model as it
was, and gives way to the model itself where it cannot serve."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from backlight._state import explaining
from backlight.methods._forward import Forward, reduced_precision_copy

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain(model: nn.Module, batch: torch.Tensor, layout: torch.memory_format) -> Any:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(batch.contiguous(memory_format=layout)).float()


def test_same_bits_as_autocast_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    seed = torch.randn(2, 10)
    with explaining(model):
        forward = Forward(model, x, autocast=torch.bfloat16, channels_last=True)
        assert forward.fast is not model and forward.channels_last
        got_in, expected_in = (x.clone().requires_grad_(True) for _ in range(2))
        got = forward(got_in)
        expected = _plain(model, expected_in, torch.channels_last)
        (got_grad,) = torch.autograd.grad(got, got_in, seed)
        (expected_grad,) = torch.autograd.grad(expected, expected_in, seed)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected) and torch.equal(got_grad, expected_grad)


def test_the_model_is_untouched() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    before = {
        name: (p.data_ptr(), p.dtype, p.requires_grad) for name, p in model.named_parameters()
    }
    with explaining(model):
        copy = reduced_precision_copy(model, torch.bfloat16, channels_last=True)
        plain = reduced_precision_copy(model, torch.bfloat16)
    assert {n: (p.data_ptr(), p.dtype, p.requires_grad) for n, p in model.named_parameters()} == (
        before
    )
    assert model.training
    cast = dict(copy.named_parameters())
    assert cast["conv1.weight"].dtype == torch.bfloat16
    assert cast["conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    assert dict(plain.named_parameters())["conv1.weight"].is_contiguous()  # for NCHW batches
    assert cast["fc.weight"].dtype == cast["fc.bias"].dtype == torch.bfloat16
    assert cast["bn1.weight"].dtype == torch.float32  # batch norm is left to autocast
    assert not any(p.requires_grad for p in copy.parameters()) and not copy.training


def test_only_plain_layers_are_cast() -> None:
    """A subclass of a convolution may use its weight in other ways (weight standardisation):
    it keeps its weight as it is."""

    class Standardised(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.weight
            w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True))
            return self._conv_forward(x, w, self.bias)

    model = nn.Sequential(Standardised(3, 4, 3), nn.Conv2d(4, 2, 1))
    copy = reduced_precision_copy(model, torch.bfloat16)
    assert copy[0].weight.dtype == torch.float32 and copy[1].weight.dtype == torch.bfloat16
    nothing_to_cast = nn.Sequential(nn.ReLU())
    assert reduced_precision_copy(nothing_to_cast, torch.bfloat16) is nothing_to_cast


def test_a_model_that_cannot_be_copied_is_used_as_it_is() -> None:
    class Locked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.lock = threading.Lock()  # cannot be deep-copied

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    model = Locked()
    assert reduced_precision_copy(model, torch.bfloat16) is model
    forward = Forward(model, torch.randn(1, 4), autocast=torch.bfloat16, channels_last=False)
    assert forward(torch.randn(3, 4)).shape == (3, 2)


def test_a_model_that_fails_on_the_copy_gets_itself_back() -> None:
    """A model that insists on float32 weights raises on the copy's first batch; that batch and
    every later one run on the model itself, with the same result as plain autocast."""

    class Insists(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.conv.weight.dtype != torch.float32:
                raise RuntimeError("expected float32 weights")
            return self.conv(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    model, x = Insists(), torch.randn(2, 3, 8, 8)
    with explaining(model):
        forward = Forward(model, x, autocast=torch.bfloat16, channels_last=True)
        first, second = forward(x), forward(x)
        expected = _plain(model, x, torch.contiguous_format)
    assert forward.fast is model and not forward.channels_last
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_an_error_of_the_model_itself_is_raised() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken model")

    forward = Forward(Broken(), torch.randn(1, 3, 4, 4), autocast=None, channels_last=False)
    with pytest.raises(RuntimeError, match="broken model"):
        forward(torch.randn(1, 3, 4, 4))


def test_a_model_that_views_a_feature_map_falls_back_to_itself() -> None:
    """The classic ``x.view(N, -1)`` after the convolutions cannot take a channels-last feature
    map: the first batch raises on the shortcuts and runs, like every later one, on the model
    itself in the usual layout, with plain autocast's result."""

    class ViewsFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.conv(x).relu()
            return self.fc(f.view(f.shape[0], -1))

    torch.manual_seed(0)
    model, x = ViewsFeatures(), torch.randn(2, 3, 8, 8)
    with explaining(model):
        forward = Forward(model, x, autocast=torch.bfloat16, channels_last=True)
        got = [forward(x), forward(x)]
        expected = _plain(model, x, torch.contiguous_format)
    assert forward.fast is model and not forward.channels_last
    assert all(torch.equal(g, expected) for g in got)
