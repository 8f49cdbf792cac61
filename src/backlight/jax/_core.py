"""The JAX pipeline: a model as a pure function, its layers by name, targets to scores, and one
jit-compiled pass per (model, method, layer, target kind), cached."""

from __future__ import annotations

import difflib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, InputTypeError, LayerError, LayerNotFoundError, TargetError
from ._rules import with_rule

#: ``apply(variables, x) -> output``.
Apply = Callable[[Any, Any], Any]


def _linen() -> Any:
    try:
        import flax.linen as nn
    except ImportError:  # a plain apply function needs no Flax
        return None
    return nn


def _nnx() -> Any:
    try:
        from flax import nnx
    except ImportError:
        return None
    return nnx


@dataclass(frozen=True)
class Model:
    """What a method runs: ``apply(variables, x)``, and the linen module when there is one (for
    layers by name)."""

    apply: Apply
    variables: Any
    module: Any  # a flax.linen.Module, or None
    owner: Any  # what the caller passed: the cache key

    @property
    def key(self) -> int:
        return id(self.owner)


def as_model(model: Any, variables: Any) -> Model:
    """A linen module with its variables, an NNX module (``variables=None``), or a function
    ``apply(variables, x)``."""
    nn, nnx = _linen(), _nnx()
    if nn is not None and isinstance(model, nn.Module):
        if variables is None:
            raise InputTypeError(
                "a flax.linen module needs its `variables` (what module.init returned), "
                "e.g. backlight.jax.gradient(module, variables, x)"
            )
        return Model(model.apply, variables, model, model)
    if nnx is not None and isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)

        def apply(state: Any, x: Any) -> Any:
            return nnx.merge(graphdef, state)(x)

        return Model(apply, state, None, model)
    if callable(model):
        return Model(model, variables, None, model)
    raise InputTypeError(
        f"`model` must be a flax.linen Module, an nnx.Module or a function apply(variables, x), "
        f"not {type(model).__name__}"
    )


def check_images(x: Any) -> Any:
    """``x`` as a float JAX array (N, H, W, C)."""
    if type(x).__module__.startswith("torch"):
        raise InputTypeError(
            "`x` is a torch tensor; backlight.jax takes JAX or NumPy arrays (N, H, W, C) "
            "(for a torch model use backlight.gradient and friends)"
        )
    try:
        x = jnp.asarray(x)
    except TypeError as error:
        raise InputTypeError(
            f"`x` must be an array (N, H, W, C), not {type(x).__name__}"
        ) from error
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputError(f"`x` must hold floats, not {x.dtype}; scale the images, e.g. x / 255")
    if x.ndim != 4:
        fix = "add the batch dimension with x[None]" if x.ndim == 3 else "stack the images"
        raise InputError(f"`x` must have shape (N, H, W, C), got {tuple(x.shape)}; {fix}")
    if x.shape[0] == 0:
        raise InputError("`x` is empty; pass at least one image")
    if not bool(jnp.isfinite(x).all()):
        raise InputError("`x` contains NaN or infinite values; clean the input")
    return x


def targets(target: Any, n: int) -> tuple[str, Any]:
    """``(kind, value)``: ``("predicted", None)``, ``("classes", int array (N,))`` or
    ``("callable", fn)``."""
    if target is None:
        return "predicted", None
    if callable(target):
        return "callable", target
    if isinstance(target, bool | float):
        raise TargetError(
            f"`target` must be None, an int, one int per sample or a callable, not {target!r}"
        )
    values = np.asarray(target)
    if values.dtype.kind not in "iu":
        raise TargetError(f"`target` must hold integers, not {values.dtype}")
    if values.ndim == 0:
        values = np.full(n, int(values))
    if values.shape != (n,):
        raise TargetError(
            f"`target` has {values.size} classes for {n} samples; give one per sample"
        )
    if (values < 0).any():
        raise TargetError(f"`target` classes must be non-negative, got {values.tolist()}")
    return "classes", jnp.asarray(values, dtype=jnp.int32)


def scores_of(output: Any, kind: str, value: Any) -> tuple[Any, Any]:
    """``(scores (N,), classes (N,) or None)`` of the model's output."""
    if kind == "callable":
        scores = value(output)
        if not hasattr(scores, "shape") or scores.shape != (output.shape[0],):
            raise TargetError("a callable `target` must return one score per sample, shape (N,)")
        return scores, None
    if not hasattr(output, "ndim") or output.ndim != 2:
        raise TargetError(
            f"the model's output has shape {getattr(output, 'shape', type(output).__name__)}, not "
            "logits (N, classes); pass a callable `target` output -> (N,) scores"
        )
    classes = jnp.argmax(output, axis=1) if kind == "predicted" else value  # range: run()
    classes = jax.lax.stop_gradient(classes)
    return jnp.take_along_axis(output, classes[:, None], axis=1)[:, 0], classes


@dataclass(frozen=True)
class Shapes:
    """What one abstract run of the model on an input shape showed: the output's shape, and the
    output shape of every submodule call (in call order), for a linen module."""

    output: Any
    layers: dict[str, list[Any]]


class Memo:
    """A small thread-safe LRU of what is derived from a model (compiled passes, shapes): each
    entry keeps the objects whose ids its key holds alive, so that no id is reused under it."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], make: Callable[[], Any], keep: Any) -> Any:
        """The value under ``key``, made by ``make()`` the first time."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit[0]
        value = make()
        with self._lock:
            self._items[key] = (value, keep)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


_SHAPES = Memo()


def shapes(model: Model, x: Any) -> Shapes:
    """The model run abstractly on ``x``'s shape (no computation), cached per model and shape:
    its Python runs once, not at every call."""
    key = (model.key, tuple(x.shape), str(x.dtype))
    found: Shapes = _SHAPES.get(key, lambda: _abstract_run(model, x), model.owner)
    return found


def _abstract_run(model: Model, x: Any) -> Shapes:
    layers: dict[str, list[Any]] = {}

    def record(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            layers.setdefault(_path(context), []).append(getattr(out, "shape", None))
        return out

    def run_abstractly(variables: Any, x: Any) -> Any:  # a new function: eval_shape caches
        if model.module is None:
            return model.apply(variables, x)
        with _linen().intercept_methods(record):
            return model.apply(variables, x)

    return Shapes(jax.eval_shape(run_abstractly, model.variables, x), layers)


# --- layers of a linen module ------------------------------------------------------------------


def _path(context: Any) -> str:
    return ".".join(str(p) for p in context.module.path)


def check_layer(model: Model, x: Any, layer: str) -> Any:
    """The output shape of ``layer``, a submodule called once with an array output."""
    if model.module is None:
        raise LayerError(
            f"`layer` {layer!r} needs a flax.linen module (its submodules have names); a plain "
            "function or an NNX module is explained at its input only (layer=None)"
        )
    if not isinstance(layer, str):
        raise InputTypeError(f"`layer` must be a submodule path such as 'layer4', not {layer!r}")
    calls = shapes(model, x).layers
    if layer not in calls:
        names = list(calls)
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        top = ", ".join(repr(n) for n in names[:12])
        raise LayerNotFoundError(
            f"`layer` {layer!r} is not a submodule called by {type(model.module).__name__}{hint} "
            f"(its submodules: {top}{', ...' if len(names) > 12 else ''})"
        )
    if len(calls[layer]) != 1 or calls[layer][0] is None:
        raise LayerError(
            f"`layer` {layer!r} is called {len(calls[layer])} times or returns no single array; "
            "choose a submodule that runs once and returns an array"
        )
    return calls[layer][0]


# --- the pass ------------------------------------------------------------------------------------


def forward_fn(model: Model, layer: str | None, kind: str, value: Any) -> Callable[..., Any]:
    """``f(variables, x, delta, classes) -> (Σ scores, (activation, scores, classes, output))``:
    the model with ``delta`` added to the layer's output (``None``: to the input)."""
    nn = _linen()

    def f(variables: Any, x: Any, delta: Any, classes: Any) -> Any:
        captured: list[Any] = []
        if layer is None:
            x = x + delta
            output = model.apply(variables, x)
            captured.append(x)
        else:

            def shift(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
                out = next_fun(*args, **kwargs)
                if context.method_name == "__call__" and _path(context) == layer:
                    out = out + delta
                    captured.append(out)
                return out

            with nn.intercept_methods(shift):
                output = model.apply(variables, x)
        scores, chosen = scores_of(output, kind, classes if kind == "classes" else value)
        return scores.sum(), (captured[0], scores, chosen, output)

    return f


_PASSES = Memo()
#: How many times a pass was traced (for the tests: a second call must not retrace).
TRACES = {"count": 0}


def compiled_pass(
    model: Model, layer: str | None, kind: str, value: Any, rule: str | None
) -> Callable[..., Any]:
    """The jitted ``(variables, x, delta, classes) -> (gradient at delta, aux)``, cached."""
    key = (model.key, layer, kind, id(value) if kind == "callable" else None, rule)
    compiled: Callable[..., Any] = _PASSES.get(
        key, lambda: _compile(model, layer, kind, value, rule), (model.owner, value)
    )
    return compiled


def _compile(
    model: Model, layer: str | None, kind: str, value: Any, rule: str | None
) -> Callable[..., Any]:
    f = forward_fn(model, layer, kind, value)
    ruled = with_rule(f, rule) if rule is not None else f

    def step(variables: Any, x: Any, delta: Any, classes: Any) -> Any:
        TRACES["count"] += 1
        grad, aux = jax.grad(ruled, argnums=2, has_aux=True)(variables, x, delta, classes)
        return grad, aux

    return jax.jit(step)


@dataclass
class Capture:
    """A pass's results: the activation (input or layer) ``A``, ``G = ∂Σscores/∂A``, the scores,
    the classes explained (``None`` for a callable) and the model's output."""

    activation: Any
    gradient: Any
    scores: Any
    classes: Any
    output: Any


def run(
    model: Model, x: Any, target: Any, *, layer: str | None = None, rule: str | None = None
) -> Capture:
    """One forward and one backward pass, jitted, at the input or at ``layer``."""
    kind, value = targets(target, x.shape[0])
    if layer is not None:
        delta = jnp.zeros(check_layer(model, x, layer), x.dtype)
    else:
        delta = jnp.zeros_like(x)
    classes = value if kind == "classes" else jnp.zeros((x.shape[0],), jnp.int32)
    if kind == "classes":
        output = shapes(model, x).output
        if len(output.shape) == 2 and int(jnp.max(classes)) >= output.shape[1]:
            raise TargetError(
                f"`target` class {int(jnp.max(classes))} is out of range for {output.shape[1]} "
                "classes"
            )
    step = compiled_pass(model, layer, kind, value, rule)
    grad, (activation, scores, chosen, output) = step(model.variables, x, delta, classes)
    return Capture(activation, grad, scores, chosen, output)
