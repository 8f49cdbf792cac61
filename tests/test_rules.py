"""The rule contexts: every way of writing a ReLU, forward values unchanged, scoped per thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import backlight

from .conftest import torchvision_model
from .reference import relu_rule

# Each entry computes a rectifier of h (a non-leaf tensor) and returns the result.
RELUS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nn.ReLU": lambda h: torch.nn.ReLU()(h),
    "nn.ReLU(inplace)": lambda h: torch.nn.ReLU(inplace=True)(h),
    "F.relu": lambda h: F.relu(h),
    "F.relu(inplace)": lambda h: F.relu(h, inplace=True),
    "F.relu(h, True)": lambda h: F.relu(h, True),
    "F.relu_": lambda h: F.relu_(h),
    "torch.relu": lambda h: torch.relu(h),
    "torch.relu_ (result unused)": lambda h: (torch.relu_(h), h)[1],
    "Tensor.relu": lambda h: h.relu(),
    "Tensor.relu_": lambda h: h.relu_(),
}
CLIPPED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nn.ReLU6": lambda h: torch.nn.ReLU6()(h),
    "nn.ReLU6(inplace)": lambda h: torch.nn.ReLU6(inplace=True)(h),
    "F.relu6": lambda h: F.relu6(h),
    "F.hardtanh(0, 2)": lambda h: F.hardtanh(h, 0.0, 2.0),
    "nn.Hardtanh(0, 2, inplace)": lambda h: torch.nn.Hardtanh(0.0, 2.0, inplace=True)(h),
    "F.hardtanh_(0, 2)": lambda h: F.hardtanh_(h, 0.0, 2.0),
}
CONTEXTS = {
    "guided_backprop": backlight.GuidedBackpropContext,
    "deconvnet": backlight.DeConvNetContext,
}


def _backward(
    fn: Callable[[torch.Tensor], torch.Tensor], context: object
) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    x = (torch.randn(4, 5, dtype=torch.float64) * 5).requires_grad_(True)
    upstream = torch.randn(4, 5, dtype=torch.float64)
    with context:  # type: ignore[attr-defined]
        h = x * 1.0
        y = fn(h)
    y.backward(upstream)
    return x.detach(), upstream, y.detach(), x.grad


@pytest.mark.parametrize("rule", list(CONTEXTS))
@pytest.mark.parametrize("form", list(RELUS))
def test_every_relu_form_gets_the_rule(rule: str, form: str) -> None:
    x, upstream, y, grad = _backward(RELUS[form], CONTEXTS[rule]())
    torch.testing.assert_close(y, x.clamp(min=0), rtol=0, atol=0)
    torch.testing.assert_close(grad, relu_rule(rule, x, upstream), rtol=0, atol=0)


@pytest.mark.parametrize("rule", list(CONTEXTS))
@pytest.mark.parametrize("form", list(CLIPPED))
def test_clipped_relus_get_the_rule(rule: str, form: str) -> None:
    hi = 6.0 if "6" in form else 2.0
    x, upstream, y, grad = _backward(CLIPPED[form], CONTEXTS[rule]())
    assert bool((x > hi).any()), "the input must reach the clip"
    torch.testing.assert_close(y, x.clamp(0, hi), rtol=0, atol=0)
    torch.testing.assert_close(grad, relu_rule(rule, x, upstream, hi=hi), rtol=0, atol=0)


@pytest.mark.parametrize("form", list(CLIPPED))
def test_clipped_relu_false_keeps_the_plain_gradient(form: str) -> None:
    hi = 6.0 if "6" in form else 2.0
    context = backlight.GuidedBackpropContext(clipped_relu=False)
    with pytest.warns(backlight.RuleNotAppliedWarning):
        x, upstream, _, grad = _backward(CLIPPED[form], context)
    torch.testing.assert_close(grad, relu_rule("gradient", x, upstream, hi=hi), rtol=0, atol=0)


def test_hardtanh_that_is_not_a_rectifier_is_left_alone() -> None:
    with pytest.warns(backlight.RuleNotAppliedWarning):
        x, upstream, _, grad = _backward(lambda h: F.hardtanh(h), backlight.GuidedBackpropContext())
    expected = torch.where((x > -1) & (x < 1), upstream, torch.zeros_like(upstream))
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


def test_in_place_relu_still_modifies_its_argument() -> None:
    with backlight.GuidedBackpropContext():
        h = torch.tensor([-1.0, 2.0, -3.0])
        out = torch.relu_(h)
        h2 = torch.tensor([-1.0, 2.0])
        h2.relu_()
        h3 = torch.tensor([-1.0, 7.0])
        torch.nn.ReLU6(inplace=True)(h3)
    assert out is h
    assert h.tolist() == [0.0, 2.0, 0.0]
    assert h2.tolist() == [0.0, 2.0]
    assert h3.tolist() == [0.0, 6.0]


def test_reused_module_gets_the_rule_at_every_call() -> None:
    relu = torch.nn.ReLU(inplace=True)
    lin = torch.nn.Linear(5, 5).double()
    torch.manual_seed(1)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, dtype=torch.float64)
    with backlight.GuidedBackpropContext() as ctx:
        z1 = x * 1.0
        a = relu(z1)
        z2 = lin(a)
        y = relu(z2)
    assert ctx.relu_count == 2
    y.backward(upstream)
    # by hand, with the saved pre-activations
    z1v = x.detach()
    z2v = lin(z1v.clamp(min=0)).detach()
    g = relu_rule("guided_backprop", z2v, upstream) @ lin.weight.detach()
    torch.testing.assert_close(x.grad, relu_rule("guided_backprop", z1v, g))


def test_torchray_style_usage_on_resnet() -> None:
    """``with GuidedBackpropContext(): model(x)[0, c].backward()`` leaves guided grads in x.grad."""
    model = torchvision_model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    expected = backlight.guided_backprop(model, x, 5, reduce=None)
    xx = x.clone().requires_grad_(True)
    with backlight.GuidedBackpropContext() as ctx:
        y = model(xx)
        y[0, 5].backward()
    # resnet18: the stem ReLU, two per BasicBlock (the block's module is reused), 8 blocks
    assert ctx.relu_count == 1 + 2 * 8
    torch.testing.assert_close(xx.grad, expected, rtol=1e-5, atol=1e-8)
    for p in model.parameters():
        p.grad = None


def test_rule_context_does_not_leak_into_another_thread() -> None:
    """While one thread sits inside a guided context, another thread computes plain gradients."""
    torch.manual_seed(2)
    x = (torch.randn(4, 5, dtype=torch.float64) * 3).requires_grad_(True)
    upstream = torch.randn(4, 5, dtype=torch.float64)
    inside, done = threading.Event(), threading.Event()
    result: dict[str, torch.Tensor] = {}

    def other_thread() -> None:
        inside.wait()
        xx = x.detach().clone().requires_grad_(True)
        torch.relu(xx * 1.0).backward(upstream)
        result["grad"] = xx.grad
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with backlight.GuidedBackpropContext() as ctx:
        inside.set()
        assert done.wait(timeout=30)
        torch.relu(x * 1.0).backward(upstream)
    worker.join()
    assert ctx.relu_count == 1
    torch.testing.assert_close(result["grad"], relu_rule("gradient", x.detach(), upstream))
    torch.testing.assert_close(x.grad, relu_rule("guided_backprop", x.detach(), upstream))


def test_inner_context_wins_when_nested() -> None:
    x, upstream, _, grad = _backward(lambda h: _nested(h), backlight.GuidedBackpropContext())
    torch.testing.assert_close(grad, relu_rule("deconvnet", x, upstream), rtol=0, atol=0)


def _nested(h: torch.Tensor) -> torch.Tensor:
    with backlight.DeConvNetContext():
        return torch.relu(h)


def test_context_warns_when_it_saw_no_relu() -> None:
    with (
        pytest.warns(backlight.RuleNotAppliedWarning, match="saw no ReLU"),
        backlight.DeConvNetContext(),
    ):
        torch.tanh(torch.randn(3))


def test_context_is_removed_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="inside"), backlight.GuidedBackpropContext():
        torch.relu(torch.randn(3))
        raise RuntimeError("inside")
    assert torch._C._len_torch_function_stack() == 0
    x = torch.randn(5, requires_grad=True)
    upstream = -torch.ones(5)
    torch.relu(x).backward(upstream)  # plain again: negative gradients pass where x > 0
    torch.testing.assert_close(x.grad, torch.where(x > 0, upstream, torch.zeros(5)))
