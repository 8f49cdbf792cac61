"""Backward rules at the rectifiers of a traced JAX function, without touching the model.

The function is traced to a jaxpr and evaluated again by :func:`evaluate`, an interpreter that
binds every equation as it is, except the rectifiers: ``max(x, 0)`` (what ``jax.nn.relu``,
``flax.linen.relu`` and ``jnp.maximum(x, 0)`` compute; ``jax.nn.relu6`` is ``min(max(x, 0), 6)``,
whose ``max`` is the rectifier and whose ``min`` keeps its ordinary gradient) is replaced by a
``jax.custom_vjp`` ReLU with the rule's backward pass. The interpreter goes into ``jit``,
``custom_jvp_call`` (``jax.nn.relu``'s own wrapper, whose custom derivative the rule replaces),
``remat`` and ``closed_call`` bodies that hold a rectifier; a rectifier inside ``scan``, ``cond``
or ``while`` (or any other primitive with a body) is refused with
:class:`backlight.MethodNotApplicableError`, as is a function with no rectifier at all: a rule
that reached nothing would silently give the plain gradient.

Everything happens at trace time, so the rewritten function jits like the original.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from ..errors import MethodNotApplicableError

#: Rules by name: the gradient the rectifier's input receives, from its input ``x`` and the
#: upstream gradient ``g``.
RULES: dict[str, Callable[[Any, Any], Any]] = {
    "guided_backprop": lambda x, g: jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),
    "deconvnet": lambda x, g: jnp.where(g > 0, g, jnp.zeros_like(g)),
}

# Primitives whose body is evaluated in place (same values, our rules inside; a remat body is
# then no longer recomputed in the backward pass, which costs memory, not correctness).
_INLINED = {
    "jit",
    "pjit",
    "custom_jvp_call",
    "closed_call",
    "core_call",
    "remat",
    "remat2",
    "checkpoint",
}


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ruled_relu(rule: str, x: Any) -> Any:
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def _ruled_relu_fwd(rule: str, x: Any) -> tuple[Any, Any]:
    return jnp.maximum(x, jnp.zeros((), x.dtype)), x


def _ruled_relu_bwd(rule: str, x: Any, g: Any) -> tuple[Any]:
    return (RULES[rule](x, g),)


_ruled_relu.defvjp(_ruled_relu_fwd, _ruled_relu_bwd)


def _is_zero(atom: Any) -> bool:
    if not isinstance(atom, core.Literal):
        return False
    try:  # NumPy, not jnp: inside jit a jnp value would be traced
        value = np.asarray(atom.val)
    except (TypeError, ValueError):
        return False
    return value.dtype.kind == "f" and bool((value == 0).all())


def _rectified_input(eqn: Any) -> Any | None:
    """The operand of ``max(x, 0)`` (either order), else ``None``."""
    if eqn.primitive.name != "max" or len(eqn.invars) != 2:
        return None
    a, b = eqn.invars
    if _is_zero(b) and not isinstance(a, core.Literal):
        return a
    if _is_zero(a) and not isinstance(b, core.Literal):
        return b
    return None


def _bodies(eqn: Any) -> list[Any]:
    found: list[Any] = []
    for value in eqn.params.values():
        items = value if isinstance(value, tuple | list) else (value,)
        for item in items:
            if isinstance(item, core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, core.Jaxpr):
                found.append(item)
    return found


def has_rectifier(jaxpr: Any) -> bool:
    """Whether ``jaxpr`` (or any body inside it) computes ``max(x, 0)``."""
    return any(
        _rectified_input(eqn) is not None or any(has_rectifier(b) for b in _bodies(eqn))
        for eqn in jaxpr.eqns
    )


class _Count:
    def __init__(self) -> None:
        self.rectifiers = 0


def evaluate(closed: Any, args: Sequence[Any], rule: str, count: _Count | None = None) -> list[Any]:
    """``closed`` (a ClosedJaxpr) on ``args``, its rectifiers under ``rule``."""
    count = count if count is not None else _Count()
    outs: list[Any] = _evaluate(closed.jaxpr, closed.consts, args, rule, count)
    return outs


def _evaluate(
    jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], rule: str, count: _Count
) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(atom: Any) -> Any:
        return atom.val if isinstance(atom, core.Literal) else env[atom]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        operand = _rectified_input(eqn)
        if operand is not None:
            count.rectifiers += 1
            outs = [_ruled_relu(rule, read(operand))]
        elif any(has_rectifier(b) for b in _bodies(eqn)):
            name = eqn.primitive.name
            if name not in _INLINED:
                raise MethodNotApplicableError(
                    f"a ReLU is computed inside `{name}` (a loop or a branch), where backlight "
                    "cannot change its backward pass; the map would be the plain gradient, so "
                    "none is returned. Unroll the loop (e.g. nn.scan → a Python loop) or use "
                    "backlight.jax.gradient"
                )
            body = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
            if isinstance(body, core.ClosedJaxpr):
                outs = _evaluate(
                    body.jaxpr, body.consts, [read(v) for v in eqn.invars], rule, count
                )
            else:
                outs = _evaluate(body, [], [read(v) for v in eqn.invars], rule, count)
        else:
            bound = eqn.primitive.get_bind_params(eqn.params)
            subfuns, params = bound if isinstance(bound, tuple) else ([], bound)  # JAX < 0.7
            with eqn.ctx.manager:
                result = eqn.primitive.bind(*subfuns, *[read(v) for v in eqn.invars], **params)
            outs = result if eqn.primitive.multiple_results else [result]
        for var, value in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, core.DropVar):
                env[var] = value
    return [read(v) for v in jaxpr.outvars]


def with_rule(function: Callable[..., Any], rule: str) -> Callable[..., Any]:
    """``function`` with every rectifier's backward pass under ``rule`` (a name of
    :data:`RULES`); raises :class:`MethodNotApplicableError` when it computes no rectifier."""

    def ruled(*args: Any) -> Any:
        closed, shape = jax.make_jaxpr(function, return_shape=True)(*args)
        count = _Count()
        flat, _ = jax.tree_util.tree_flatten(args)
        outs = evaluate(closed, flat, rule, count)
        if count.rectifiers == 0:
            raise MethodNotApplicableError(
                f"{rule}: the function computes no ReLU (max(x, 0), jax.nn.relu, nn.relu, "
                "relu6), so the rule has nothing to act on and the map would be the plain "
                "gradient; use backlight.jax.gradient"
            )
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs)

    return ruled
