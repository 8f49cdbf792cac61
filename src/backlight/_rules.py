"""Backward rules for rectifying activations, applied to every ReLU computed in a scope.

A rule replaces the backward pass of ``relu`` (and, by default, of clipped ReLUs such as ReLU6)
while leaving the forward values untouched. It is applied through a
:class:`torch.overrides.TorchFunctionMode`, which PyTorch keeps per thread: every call made by
the current thread inside the ``with`` block passes through it, whether it is an ``nn.ReLU``
module, ``F.relu``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu`` or ``Tensor.relu_``, in place
or not, and however many times one module is called. Nothing global is patched, so another thread
computing at the same time is not affected.

The rules, with ``g`` the gradient arriving at the activation's output ``y`` and ``[·]`` the
indicator:

* guided backprop (Springenberg et al. 2015): ``g ↦ [y > 0] · max(g, 0)``; for a clipped ReLU
  with range ``(lo, hi)``, ``[lo < y < hi] · max(g, 0)``, i.e. the usual derivative times the
  positive part of ``g``;
* deconvnet (Zeiler & Fergus 2014): ``g ↦ max(g, 0)``, whatever the forward input.

Limits, by design: activations that are not rectifiers (GELU, SiLU, LeakyReLU, ELU) keep their
usual gradient; ``torch.clamp(x, min=0)`` and ``F.threshold`` are not treated as ReLUs; code run
by TorchScript, ``torch.compile`` or other threads is not seen. The methods check, after the
forward pass, that no rectifier escaped the rule on the way from the explained tensor to the score
(:meth:`_RuleContext.verify` reads the autograd graph), and refuse with
:class:`~backlight.errors.MethodNotApplicableError` naming the code that hid it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from .errors import MethodNotApplicableError, OptionError

__all__ = ["DeConvNetContext", "GuidedBackpropContext", "RuleNotAppliedWarning"]


class RuleNotAppliedWarning(UserWarning):
    """A rule context ended without seeing any ReLU, so the gradients it produced are plain."""


# ---------------------------------------------------------------------------------------------
# Which calls are rectifiers. Each parser returns (input, lo, hi, in_place) or None when the call,
# though of a known function, is not a rectifier (hardtanh with a negative lower bound).
# hi is None for a plain ReLU.

_Parsed = tuple[torch.Tensor, float, "float | None", bool]


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _relu(inplace: bool | None) -> Callable[[tuple[Any, ...], dict[str, Any]], _Parsed]:
    def parse(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Parsed:
        x = _arg(args, kwargs, 0, "input", None)
        flag = _arg(args, kwargs, 1, "inplace", False) if inplace is None else inplace
        return x, 0.0, None, bool(flag)

    return parse


def _relu6(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Parsed:
    x = _arg(args, kwargs, 0, "input", None)
    return x, 0.0, 6.0, bool(_arg(args, kwargs, 1, "inplace", False))


def _hardtanh(inplace: bool | None) -> Callable[[tuple[Any, ...], dict[str, Any]], _Parsed | None]:
    def parse(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Parsed | None:
        x = _arg(args, kwargs, 0, "input", None)
        lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
        hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
        flag = _arg(args, kwargs, 3, "inplace", False) if inplace is None else inplace
        if lo != 0.0:
            return None
        return x, lo, hi, bool(flag)

    return parse


_RELUS: dict[Any, Callable[..., Any]] = {
    F.relu: _relu(None),
    torch.relu: _relu(False),
    torch.relu_: _relu(True),  # also F.relu_
    torch.Tensor.relu: _relu(False),
    torch.Tensor.relu_: _relu(True),
}
_CLIPPED_RELUS: dict[Any, Callable[..., Any]] = {
    F.relu6: _relu6,  # nn.ReLU6 goes through F.hardtanh(x, 0, 6)
    F.hardtanh: _hardtanh(None),
    F.hardtanh_: _hardtanh(True),
}


# ---------------------------------------------------------------------------------------------
# The rules, as small objects; one autograd function runs any of them.


class RectifierRule:
    """A backward rule for rectifiers: what gradient a ReLU (or a clipped ReLU with range
    ``(lo, hi)``) hands down, given the gradient ``g`` arriving at its output ``y``. Subclasses
    override :meth:`backward`; a rule that needs ``y`` says so with ``needs_output``."""

    name: ClassVar[str] = "rule"
    needs_output: ClassVar[bool] = False

    def backward(
        self, grad: torch.Tensor, y: torch.Tensor | None, lo: float, hi: float | None
    ) -> torch.Tensor:
        raise NotImplementedError


class GuidedRule(RectifierRule):
    """Guided backprop: the usual derivative times the positive part of ``g``:
    ``[lo < y < hi] · max(g, 0)``."""

    name = "guided backprop"
    needs_output = True

    def backward(
        self, grad: torch.Tensor, y: torch.Tensor | None, lo: float, hi: float | None
    ) -> torch.Tensor:
        assert y is not None
        positive = grad.clamp(min=0)
        if hi is None:  # y > 0 <=> x > 0: the output suffices, even in place
            passed: torch.Tensor = torch.ops.aten.threshold_backward(positive, y, 0)
        else:
            passed = torch.ops.aten.hardtanh_backward(positive, y, lo, hi)
        return passed


class DeConvNetRule(RectifierRule):
    """DeconvNet: ``max(g, 0)``, whatever the forward input."""

    name = "deconvnet"

    def backward(
        self, grad: torch.Tensor, y: torch.Tensor | None, lo: float, hi: float | None
    ) -> torch.Tensor:
        return grad.clamp(min=0)


class _Rectifier(torch.autograd.Function):
    """``apply(x, rule, func, args, kwargs, lo, hi, inplace)``: ``func(*args, **kwargs)`` on the
    way forward (so values, in-place semantics and dtypes are exactly PyTorch's), ``rule``'s
    backward on the way back."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        rule: RectifierRule,
        func: Callable[..., torch.Tensor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        lo: float,
        hi: float | None,
        inplace: bool,
    ) -> torch.Tensor:
        y = func(*args, **kwargs)
        if inplace:
            ctx.mark_dirty(x)
        if rule.needs_output:
            ctx.save_for_backward(y)
        ctx.rule, ctx.lo, ctx.hi = rule, lo, hi
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (y,) = ctx.saved_tensors if ctx.rule.needs_output else (None,)
        return ctx.rule.backward(grad, y, ctx.lo, ctx.hi), None, None, None, None, None, None, None


def autograd_nodes(score: torch.Tensor) -> Iterator[Any]:
    """Every node of the autograd graph that leads to ``score``, each once."""
    stack = [score.grad_fn]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(child for child, _ in node.next_functions)


#: Nodes of code that ran out of sight of every torch-function mode: TorchScript's fused graphs
#: and torch.compile's compiled regions.
OPAQUE_NODES = frozenset({"DifferentiableGraphBackward", "CompiledFunctionBackward"})


def hidden_code_error(model: nn.Module, method: str, node: str, what: str) -> Exception:
    """The error for a rule that the model's compiled code kept from an operation."""
    scripted = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if isinstance(module, torch.jit.ScriptModule)
    ]
    compiled = [  # torch.compile's wrapper, named without importing torch._dynamo
        name or type(model).__name__
        for name, module in model.named_modules()
        if type(module).__name__ == "OptimizedModule"
    ]
    if scripted:
        where = f"TorchScript module(s) {', '.join(repr(n) for n in scripted[:4])}"
    elif compiled:
        where = f"torch.compile'd module(s) {', '.join(repr(n) for n in compiled[:4])}"
    else:
        where = "code compiled by TorchScript or torch.compile, or a C++ extension"
    return MethodNotApplicableError(
        f"{method} cannot apply its rule to {what} computed inside {where} (autograd node "
        f"{node}): compiled code bypasses backlight's rules, so the map would silently be wrong "
        "there. Explain the eager model (the module before torch.jit.script or torch.compile), "
        "or choose a `layer` above that code"
    )


class ModeContext:
    """A context manager that pushes a fresh torch-function mode (per thread) on entry and pops
    it on exit, exceptions included; re-entrant. Subclasses make the mode and may check, after
    the forward pass, that the rule saw what it had to (:meth:`verify`)."""

    def __init__(self) -> None:
        self._modes: list[Any] = []

    def _make_mode(self) -> TorchFunctionMode:
        raise NotImplementedError

    def verify(self, model: nn.Module, score: torch.Tensor, method: str) -> None:
        """Raise :class:`MethodNotApplicableError` if the rule could not act on the forward pass
        that produced ``score`` (run inside this context). Nothing to check by default."""

    def _finished(self, mode: Any, failed: bool) -> None:
        """Called after ``mode`` was popped."""

    def __enter__(self) -> Any:
        mode = self._make_mode()
        mode.__enter__()  # type: ignore[no-untyped-call]
        self._modes.append(mode)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        mode = self._modes.pop()
        mode.__exit__(exc_type, exc, tb)
        self._finished(mode, exc_type is not None)


class RuleMode(TorchFunctionMode):
    """A torch-function mode (per thread) that hands every call to :meth:`handle`."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return self.handle(func, args, kwargs or {})

    def handle(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The result of ``func(*args, **kwargs)``, with the mode's rule applied."""
        return func(*args, **kwargs)


class _RectifierMode(RuleMode):
    """Routes every rectifier call of this thread through ``rule``; counts them."""

    def __init__(self, rule: RectifierRule, clipped_relu: bool) -> None:
        super().__init__()
        self.rule = rule
        self.table = {**_RELUS, **(_CLIPPED_RELUS if clipped_relu else {})}
        self.count = 0

    def handle(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        parse = self.table.get(func)
        if parse is None:
            return func(*args, **kwargs)
        parsed = parse(args, kwargs)
        if parsed is None or not isinstance(parsed[0], torch.Tensor):
            return func(*args, **kwargs)
        x, lo, hi, inplace = parsed
        self.count += 1
        return _Rectifier.apply(x, self.rule, func, args, kwargs, lo, hi, inplace)


class _RuleContext(ModeContext):
    """A context applying one :class:`RectifierRule` to every rectifier of the thread."""

    rule: ClassVar[RectifierRule]

    def __init__(self, *, clipped_relu: bool = True, warn: bool = True) -> None:
        super().__init__()
        for name, value in (("clipped_relu", clipped_relu), ("warn", warn)):
            if not isinstance(value, bool):
                raise OptionError(f"`{name}` must be True or False, not {value!r}")
        self.clipped_relu = clipped_relu
        self.warn = warn
        self._count = 0

    @property
    def relu_count(self) -> int:
        """How many rectifier calls the rule has been applied to in this context so far."""
        return self._count + sum(int(mode.count) for mode in self._modes)

    def _make_mode(self) -> TorchFunctionMode:
        return _RectifierMode(self.rule, self.clipped_relu)

    def verify(self, model: nn.Module, score: torch.Tensor, method: str) -> None:
        """No rectifier on the way to ``score`` escaped the rule (TorchScript, torch.compile),
        and the rule saw at least one."""
        for node in autograd_nodes(score):
            name = node.name()
            if name in OPAQUE_NODES or self._escaped(node, name):
                raise hidden_code_error(model, method, name, "the ReLUs")
        if self.relu_count == 0:
            raise MethodNotApplicableError(
                f"{method} changes the backward pass of ReLU activations, but "
                f"{type(model).__name__} computed no ReLU in its forward pass (it may use "
                "GELU, SiLU or another activation), so the rule does not apply; use "
                "backlight.gradient for the plain gradient"
            )

    def _escaped(self, node: Any, name: str) -> bool:
        """Whether ``node`` is the ordinary backward of a rectifier this rule covers."""
        if name.startswith("ReluBackward"):  # every relu this thread calls goes through the rule
            return True
        if self.clipped_relu and name.startswith("HardtanhBackward"):
            return getattr(node, "_saved_min_val", None) == 0
        return False

    def _finished(self, mode: Any, failed: bool) -> None:
        self._count += mode.count
        if self.warn and not failed and mode.count == 0:
            warnings.warn(
                f"{type(self).__name__} saw no ReLU inside its block, so {self.rule.name} did not "
                "change any gradient; the model may use other activations (GELU, SiLU, ...)",
                RuleNotAppliedWarning,
                stacklevel=3,
            )

    def __enter__(self) -> _RuleContext:
        return super().__enter__()  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clipped_relu={self.clipped_relu})"


class GuidedBackpropContext(_RuleContext):
    """Apply the guided-backprop rule to every ReLU computed by this thread inside the block.

    At each ReLU the gradient passes only where the forward input was positive and the upstream
    gradient is positive (Springenberg et al., *Striving for simplicity*, ICLR-W 2015):
    ``∂ ↦ [x > 0] · max(∂, 0)``. Forward values are unchanged.

    Args:
        clipped_relu: also treat ReLU6 and ``hardtanh(x, 0, m)`` as ReLUs, passing the gradient
            where ``0 < x < m`` (the default). TorchRay and Captum leave them with the plain
            gradient; pass ``False`` to reproduce that.
        warn: emit :class:`RuleNotAppliedWarning` when the block computed no ReLU at all.

    Example:
        >>> import torch, backlight
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> x = torch.randn(1, 3, requires_grad=True)
        >>> with backlight.GuidedBackpropContext():
        ...     net(x)[0, 1].backward()
        >>> x.grad.shape
        torch.Size([1, 3])
    """

    rule = GuidedRule()


class DeConvNetContext(_RuleContext):
    """Apply the deconvnet rule to every ReLU computed by this thread inside the block.

    At each ReLU the upstream gradient passes clamped at zero, whatever the forward input
    (Zeiler & Fergus, *Visualizing and understanding convolutional networks*, ECCV 2014):
    ``∂ ↦ max(∂, 0)``. Forward values are unchanged. ``clipped_relu`` is as for
    :class:`GuidedBackpropContext`.
    """

    rule = DeConvNetRule()
