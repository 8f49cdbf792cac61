"""Excitation backprop's backward rules, applied per thread to every operation of a forward pass.

Excitation backprop (Zhang et al., *Top-down Neural Attention by Excitation Backprop*, ECCV
2016) passes a "marginal winning probability" ``p`` down the network instead of a gradient. For
a layer ``y = f(x, w)`` that is linear in ``x`` (convolution, fully connected, average pooling,
mean) with non-negative inputs, the probability a unit ``y_i`` hands to its input ``x_j`` is
proportional to ``w⁺_ij x_j``:

    p'_j = x_j · Σ_i w⁺_ij · p_i / (Σ_k w⁺_ik x_k)   =   x ⊙ f*(p ⊘ f(x, w⁺))

with ``w⁺ = max(w, 0)``, the bias left out and ``f*`` the layer's ordinary backward pass
(a unit whose denominator is 0 hands on nothing). Batch normalisation, an affine map of each unit
alone, passes ``p`` unchanged. A residual sum ``y = a + b`` splits ``p`` in proportion:
``p_a = a / y · p``. ReLU, max pooling (winner takes all), concatenation, flattening and dropout
in eval mode keep their ordinary backward pass, which already routes ``p`` correctly.

Any other operation on the path to the output has no rule here, and the mode raises
:class:`~backlight.errors.MethodNotApplicableError` naming it, instead of returning a wrong map.
Like the ReLU rules, this is a :class:`torch.overrides.TorchFunctionMode`: scoped to the calling
thread, nothing patched globally, the model's weights never touched.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode, resolve_name

from ._rules import OPAQUE_NODES, ModeContext, RuleMode, autograd_nodes, hidden_code_error
from .errors import MethodNotApplicableError

__all__ = ["ExcitationBackpropContext"]


def _safe_divide(p: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    nonzero = denominator != 0
    return torch.where(nonzero, p / torch.where(nonzero, denominator, 1.0), 0.0)


def excite_linear(
    func: Callable[..., torch.Tensor],
    x: torch.Tensor,
    weight: torch.Tensor,
    rest: tuple[Any, ...],
    kwargs: dict[str, Any],
    p: torch.Tensor,
) -> torch.Tensor:
    """``x ⊙ f*(p ⊘ f(x, w⁺))`` for ``f = func(x, weight, None, *rest, **kwargs)``."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        positive = func(leaf, weight.detach().clamp(min=0), None, *rest, **kwargs)
        (back,) = torch.autograd.grad(positive, leaf, _safe_divide(p, positive.detach()))
    return x.detach() * back


class _Rule:
    """One operation's excitation rule: the probability its input receives, given the
    probability ``p`` at its output, the input ``x`` (when :attr:`needs_input`) and what the
    call recorded (``state``)."""

    needs_input: ClassVar[bool] = True

    def backward(self, x: torch.Tensor | None, p: torch.Tensor, state: Any) -> torch.Tensor:
        raise NotImplementedError


class _LinearRule(_Rule):
    """Convolution or linear layer: ``x ⊙ f*(p ⊘ f(x, w⁺))``; ``state`` is
    ``(func, weight, rest, rest_kwargs)``."""

    def backward(self, x: torch.Tensor | None, p: torch.Tensor, state: Any) -> torch.Tensor:
        assert x is not None
        func, weight, rest, rest_kwargs = state
        return excite_linear(func, x, weight, rest, rest_kwargs, p)


class _AverageRule(_Rule):
    """Pooling by averaging (and means): all weights are positive, so ``f(x, w⁺) = f(x)``;
    ``state`` is ``(func, rest, kwargs)``."""

    def backward(self, x: torch.Tensor | None, p: torch.Tensor, state: Any) -> torch.Tensor:
        assert x is not None
        func, rest, kwargs = state
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            y = func(leaf, *rest, **kwargs)
            (back,) = torch.autograd.grad(y, leaf, _safe_divide(p, y.detach()))
        return x * back


class _PassRule(_Rule):
    """Batch normalisation (each unit's probability goes to its own input), and ``c · x`` or
    ``x / c`` by a number: ``p`` passes unchanged when ``state`` (c > 0) is true, else nothing."""

    needs_input = False

    def backward(self, x: torch.Tensor | None, p: torch.Tensor, state: Any) -> torch.Tensor:
        return p if state else torch.zeros_like(p)


_LINEAR_RULE, _AVERAGE_RULE, _PASS_RULE = _LinearRule(), _AverageRule(), _PassRule()


class _Excited(torch.autograd.Function):
    """``apply(x, rule, state, func, args, kwargs)``: ``func(*args, **kwargs)`` on the way
    forward, unchanged; ``rule``'s excitation on the way back."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        rule: _Rule,
        state: Any,
        func: Callable[..., torch.Tensor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        if rule.needs_input:
            ctx.save_for_backward(x)
        ctx.rule, ctx.state = rule, state
        return func(*args, **kwargs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, p: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors if ctx.rule.needs_input else (None,)
        return ctx.rule.backward(x, p, ctx.state), None, None, None, None, None


class _Sum(torch.autograd.Function):
    """A residual sum ``y = a + b`` of two feature maps: ``p_a = a / y · p``, ``p_b = b / y · p``."""

    @staticmethod
    def forward(
        ctx: Any,
        a: torch.Tensor,
        b: torch.Tensor,
        func: Callable[..., torch.Tensor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        inplace: bool,
    ) -> torch.Tensor:
        # Copies: ``a`` is overwritten by ``a += b``, and the sum by the in-place ReLU after it.
        ctx.a, ctx.b = a.detach().clone(), b.detach().clone()
        y = func(*args, **kwargs)
        if inplace:
            ctx.mark_dirty(a)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, p: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        share = _safe_divide(p, ctx.a + ctx.b)
        return ctx.a * share, ctx.b * share, None, None, None, None


_LINEAR = {F.conv1d, F.conv2d, F.conv3d, F.linear}
# ``x @ W`` with a constant matrix ``W`` is ``F.linear(x, W.T)`` (Keras' Dense layer).
_MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm}


def _zero_padding(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``F.pad`` with zeros (Keras' ZeroPadding2D): the added zeros carry no signal, and the
    ordinary backward pass (a crop) routes p to the rest."""
    if func is not F.pad:
        return False
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value")
    return mode == "constant" and (value is None or value == 0)


def _broadcasts_into(b: torch.Tensor, a: torch.Tensor) -> bool:
    try:
        return bool(torch.broadcast_shapes(a.shape, b.shape) == a.shape)  # type: ignore[no-untyped-call]
    except RuntimeError:
        return False


def _is_weight(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 2 and not value.requires_grad


_AVERAGE = {
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    torch.mean,
    torch.Tensor.mean,
}
_NORMALISATION = {F.batch_norm}
_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_ADD_INPLACE = {torch.Tensor.add_, torch.Tensor.__iadd__}
_SCALE = {torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.mul}
_SCALE_INPLACE = {torch.Tensor.mul_, torch.Tensor.__imul__}
_SCALE_ANY = _SCALE | _SCALE_INPLACE
_SUBTRACT = {
    torch.Tensor.subtract,
    torch.Tensor.sub,
    torch.Tensor.__sub__,
    torch.subtract,
    torch.sub,
}
_DIVIDE = {torch.Tensor.div, torch.Tensor.__truediv__, torch.div}
# Operations whose ordinary backward pass routes p correctly (or is the identity).
_ROUTING = {
    F.relu,
    torch.relu,
    torch.relu_,
    torch.Tensor.relu,
    torch.Tensor.relu_,
    F.relu6,
    F.hardtanh,
    F.hardtanh_,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    torch.cat,
    torch.concat,
    torch.flatten,
    torch.Tensor.flatten,
    torch.reshape,
    torch.Tensor.reshape,
    torch.Tensor.view,
    torch.Tensor.view_as,
    torch.permute,
    torch.Tensor.permute,
    torch.transpose,
    torch.Tensor.transpose,
    torch.movedim,
    torch.Tensor.movedim,
    torch.Tensor.contiguous,
    torch.Tensor.clone,
    torch.Tensor.__getitem__,
    torch.squeeze,
    torch.Tensor.squeeze,
    torch.unsqueeze,
    torch.Tensor.unsqueeze,
    torch.Tensor.to,
    torch.Tensor.float,
    torch.Tensor.double,
}


# Ordinary backward nodes of operations that have an excitation rule, or that the mode refuses.
_RULED_NODES = (
    "Convolution",
    "Addmm",
    "Mm",
    "Bmm",
    "Mv",
    "Linear",
    "NativeBatchNorm",
    "CudnnBatchNorm",
    "AvgPool",
    "AdaptiveAvgPool",
    "Mean",
)


def _needs_rule(node: Any, name: str) -> bool:
    if name.startswith(_RULED_NODES):
        return True
    # a sum or a product of two tensors that both carry the signal (a residual addition, a gate)
    if name.startswith(("AddBackward", "SubBackward", "MulBackward", "DivBackward")):
        return sum(child is not None for child, _ in node.next_functions) > 1
    return False


def _requires_grad(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, list | tuple):
        return any(_requires_grad(v) for v in value)
    return False


@dataclass
class LinearCall:
    """The last convolution or fully connected call of a forward pass (the classifier)."""

    func: Callable[..., torch.Tensor]
    input: torch.Tensor
    weight: torch.Tensor
    rest: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor


class _ExcitationMode(RuleMode):
    def __init__(self) -> None:
        super().__init__()
        self.last_linear: LinearCall | None = None

    def handle(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _requires_grad(args) and not _requires_grad(list(kwargs.values())):
            return func(*args, **kwargs)  # below the explained layer, or no tensor at all
        x = args[0] if args else None
        if func in _MATMUL and len(args) == 2 and not kwargs and _is_weight(args[1]):
            func, args = F.linear, (x, args[1].t())  # x @ W, as Keras' Dense computes it
        if func in _LINEAR and isinstance(x, torch.Tensor):
            # f(input, weight, bias=None, *rest): positional or by keyword
            rest_kwargs = {k: v for k, v in kwargs.items() if k not in ("weight", "bias")}
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            rest = args[3:]
            state = (func, weight, rest, rest_kwargs)
            y = _Excited.apply(x, _LINEAR_RULE, state, func, args, kwargs)
            self.last_linear = LinearCall(func, x, weight, rest, rest_kwargs, y)
            return y
        if func in _AVERAGE and isinstance(x, torch.Tensor):
            return _Excited.apply(x, _AVERAGE_RULE, (func, args[1:], kwargs), func, args, kwargs)
        if func in _NORMALISATION and isinstance(x, torch.Tensor):
            return _Excited.apply(x, _PASS_RULE, True, func, args, kwargs)
        if (func in _ADD or func in _ADD_INPLACE) and len(args) == 2 and not kwargs:
            a, b = args
            both = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            if both and a.requires_grad and b.requires_grad and a.shape == b.shape:
                return _Sum.apply(a, b, func, args, kwargs, func in _ADD_INPLACE)
            if not both or not (a.requires_grad and b.requires_grad):
                return func(*args, **kwargs)  # a bias or constant: p passes to the tensor
        if (func in _SCALE or func in _DIVIDE) and len(args) == 2 and not kwargs:
            a, b = args
            tensor, number = (a, b) if isinstance(a, torch.Tensor) else (b, a)
            if isinstance(number, numbers.Real) and isinstance(tensor, torch.Tensor):
                positive = float(number) > 0
                return _Excited.apply(tensor, _PASS_RULE, positive, func, args, kwargs)
        if func in _SUBTRACT and len(args) == 2 and not kwargs and not _requires_grad(args[1]):
            return func(*args, **kwargs)  # x − constant (a mean): p passes to x, as for a bias
        if func in _SCALE_ANY and len(args) == 2 and not kwargs:
            a, b = args
            constant = isinstance(b, torch.Tensor) and not b.requires_grad
            if isinstance(a, torch.Tensor) and constant and _broadcasts_into(b, a):
                # x times a constant tensor, as batch norm written out (Keras) scales each
                # channel: each unit's probability goes to its own input, as for F.batch_norm
                out_of_place = torch.Tensor.mul  # the rule's output is a new tensor
                return _Excited.apply(a, _PASS_RULE, True, out_of_place, args, kwargs)
        if func in _ROUTING or _zero_padding(func, args, kwargs):
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if _requires_grad(result):
            name = resolve_name(func) or getattr(func, "__name__", repr(func))
            raise MethodNotApplicableError(
                f"excitation backprop has no rule for {name}, which the model applies on the "
                "way to the output (rules exist for convolutions, linear layers, average and "
                "max pooling, batch norm, ReLU and residual sums); the map would be wrong, so "
                "none is returned. Choose a `layer` above it, or another method"
            )
        return result


class ExcitationBackpropContext(ModeContext):
    """Apply excitation backprop's rules to the forward pass computed inside the block.

    The TorchRay way of using the method: inside the block, run the model; a ``.backward()`` or
    ``torch.autograd.grad`` afterwards propagates marginal winning probabilities instead of
    gradients. Scoped to the calling thread; the model is not changed. Raises
    :class:`~backlight.MethodNotApplicableError` inside the block at the first operation that has
    no excitation rule.

    Example:
        >>> import torch, backlight
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> x = torch.rand(1, 3, requires_grad=True)
        >>> with backlight.ExcitationBackpropContext():
        ...     y = net(x)
        >>> y[0, 1].backward()
        >>> x.grad.shape
        torch.Size([1, 3])
    """

    def __init__(self) -> None:
        super().__init__()
        self._last: LinearCall | None = None

    @property
    def last_linear(self) -> LinearCall | None:
        """The last convolution or linear call of the block: the classifier, for a CNN."""
        return self._modes[-1].last_linear if self._modes else self._last

    def _make_mode(self) -> TorchFunctionMode:
        return _ExcitationMode()

    def _finished(self, mode: Any, failed: bool) -> None:
        self._last = mode.last_linear

    def verify(self, model: nn.Module, score: torch.Tensor, method: str) -> None:
        """No operation that needs an excitation rule (a convolution, linear layer, pooling,
        batch norm, residual sum, product) reached ``score`` without it: under this context
        every such call goes through a rule, so an ordinary backward node of one means code the
        mode could not see (TorchScript, torch.compile)."""
        for node in autograd_nodes(score):
            name = node.name()
            if name in OPAQUE_NODES or _needs_rule(node, name):
                raise hidden_code_error(model, method, name, "the operations")

    def __enter__(self) -> ExcitationBackpropContext:
        return super().__enter__()  # type: ignore[no-any-return]
