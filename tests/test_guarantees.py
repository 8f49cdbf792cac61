"""Invariants over every registered method: the model and the input leave exactly as they came."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch import nn

import backlight

from .conftest import explain, methods_with, torchvision_model
from .nets import Raises, TinyNet

METHODS = methods_with()
IDS = [m.name for m in METHODS]
LAYERED = methods_with("layer")


def _hook_count(model: nn.Module) -> int:
    names = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
        "_load_state_dict_pre_hooks",
    )
    return sum(len(getattr(m, name)) for m in model.modules() for name in names)


def _global_hook_count() -> int:
    from torch.nn.modules import module as m

    return sum(
        len(d)
        for d in (
            m._global_forward_hooks,
            m._global_forward_pre_hooks,
            m._global_backward_hooks,
            m._global_backward_pre_hooks,
        )
    )


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "hooks": _hook_count(model),
        "global_hooks": _global_hook_count(),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "modes": torch._C._len_torch_function_stack(),
    }


def _assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    for key in ("hooks", "global_hooks", "training", "requires_grad", "inplace", "modes"):
        assert after[key] == before[key], key
    for a, b in zip(after["grads"], before["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


def _mixed_state(model: nn.Module) -> nn.Module:
    """Training mode with one submodule in eval, some parameters frozen, one with a .grad."""
    model.train()
    modules = list(model.children())
    modules[1].eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 7.0)
    return model


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_model_is_unchanged_after_a_normal_call(method: backlight.MethodInfo) -> None:
    model = _mixed_state(TinyNet())
    before = _snapshot(model)
    maps = explain(method, model, torch.randn(2, 3, 12, 12), [0, 1])
    assert maps.abs().sum() > 0
    _assert_unchanged(model, before)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_input_is_unchanged(method: backlight.MethodInfo) -> None:
    model = TinyNet().eval()
    x = torch.randn(2, 3, 12, 12)
    original = x.clone()
    explain(method, model, x, 1)
    assert x.grad is None and not x.requires_grad
    assert torch.equal(x, original)

    leaf = torch.randn(2, 3, 12, 12, requires_grad=True)
    leaf.grad = torch.ones_like(leaf)
    explain(method, model, leaf, 1)
    assert leaf.requires_grad and torch.equal(leaf.grad, torch.ones_like(leaf))


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_model_is_unchanged_when_forward_raises(method: backlight.MethodInfo) -> None:
    model = _mixed_state(Raises())
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom in forward"):
        explain(method, model, torch.randn(1, 3, 8, 8), 0)
    _assert_unchanged(model, before)
    if "layer" in method.options:
        with pytest.raises(RuntimeError, match="boom in forward"):
            explain(method, model, torch.randn(1, 3, 8, 8), 0, layer="conv")
        _assert_unchanged(model, before)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_model_is_unchanged_after_a_bad_target(method: backlight.MethodInfo) -> None:
    model = _mixed_state(TinyNet())
    before = _snapshot(model)
    with pytest.raises(backlight.TargetError):
        explain(method, model, torch.randn(2, 3, 12, 12), 99)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("method", LAYERED, ids=[m.name for m in LAYERED])
def test_model_is_unchanged_after_a_bad_layer(method: backlight.MethodInfo) -> None:
    model = _mixed_state(TinyNet())
    before = _snapshot(model)
    with pytest.raises(backlight.TargetError):
        explain(method, model, torch.randn(2, 3, 12, 12), 99, layer="conv3")
    with pytest.raises(backlight.LayerError):
        explain(method, model, torch.randn(2, 3, 12, 12), 0, layer="relu")  # called twice
    _assert_unchanged(model, before)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_batch_equals_per_sample(method: backlight.MethodInfo) -> None:
    model = torchvision_model("resnet18")
    x = torch.randn(3, 3, 64, 64)
    target = [1, 5, 9]
    batch = explain(method, model, x, target)
    single = torch.cat([explain(method, model, x[i : i + 1], t) for i, t in enumerate(target)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6)
    assert batch.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_repeatable(method: backlight.MethodInfo) -> None:
    model = TinyNet().eval()
    x = torch.randn(2, 3, 12, 12)
    assert torch.equal(explain(method, model, x, [2, 3]), explain(method, model, x, [2, 3]))


def test_only_input_gradients_are_computed() -> None:
    """No parameter gradient is computed: the backward never reaches a weight's accumulator."""
    model = TinyNet().eval()
    reached = []
    handles = [
        p.register_post_accumulate_grad_hook(lambda p: reached.append(p))
        for p in model.parameters()
    ]
    try:
        backlight.guided_backprop(model, torch.randn(1, 3, 12, 12), 0)
        backlight.gradient(model, torch.randn(1, 3, 12, 12), 0, layer="conv3")
    finally:
        for h in handles:
            h.remove()
    assert reached == []
    assert all(p.grad is None for p in model.parameters())


def test_two_threads_two_models_concurrently() -> None:
    """Guided backprop on one model and the plain gradient on another, at the same time in two
    threads, give exactly the maps they give one after the other."""
    resnet, vgg = torchvision_model("resnet18"), torchvision_model("vgg11")
    x = torch.randn(2, 3, 64, 64)
    expected_guided = backlight.guided_backprop(resnet, x, [3, 4], reduce=None)
    expected_plain = backlight.gradient(vgg, x, [3, 4], reduce=None)
    assert not torch.allclose(
        expected_guided, backlight.gradient(resnet, x, [3, 4], reduce=None)
    ), "guided and plain must differ or the test proves nothing"

    start = threading.Barrier(2)
    results: dict[str, list[torch.Tensor]] = {"guided": [], "plain": []}
    errors: list[BaseException] = []

    def work(kind: str) -> None:
        try:
            start.wait(timeout=30)
            for _ in range(4):
                if kind == "guided":
                    results[kind].append(backlight.guided_backprop(resnet, x, [3, 4], reduce=None))
                else:
                    results[kind].append(backlight.gradient(vgg, x, [3, 4], reduce=None))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for m in results["guided"]:
        torch.testing.assert_close(m, expected_guided, rtol=1e-5, atol=1e-8)
    for m in results["plain"]:
        torch.testing.assert_close(m, expected_plain, rtol=1e-5, atol=1e-8)


def test_same_model_hook_ignores_other_threads() -> None:
    """A layer probe registered by one call ignores forwards of the same module in other threads."""
    model = TinyNet().eval()
    x = torch.randn(1, 3, 12, 12)
    expected = backlight.gradient(model, x, 1, layer="conv3")
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            with torch.no_grad():
                model(torch.randn(1, 3, 12, 12))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        for _ in range(20):
            torch.testing.assert_close(backlight.gradient(model, x, 1, layer="conv3"), expected)
    finally:
        stop.set()
        worker.join()


def test_same_model_from_two_threads_restores_the_original_flags() -> None:
    """Two threads explaining one model at once: the flags restored are the original ones, not
    the frozen ones the second call saw when it started."""
    model = _mixed_state(TinyNet())
    before = _snapshot(model)
    x = torch.randn(2, 3, 12, 12)
    expected = backlight.guided_backprop(model, x, [1, 2])
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait(timeout=30)
            for _ in range(50):
                torch.testing.assert_close(backlight.guided_backprop(model, x, [1, 2]), expected)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_unchanged(model, before)
