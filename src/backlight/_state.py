"""Put a model in the state an explanation needs, and put it back exactly, even across threads.

During a call the model runs in eval mode (so a batch gives the same maps as its samples one by
one, and batch-norm statistics are not updated) and its parameters do not require gradients (so
the forward pass records no graph for them: only input or layer gradients are ever computed).

The original flags are kept in a registry shared by all threads and counted, so two calls that
explain the same model at once, from two threads or nested, restore the flags the model had
before the first of them began, not the frozen flags the second one saw.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
# id(object) -> [object, original flag, number of active calls]; the object is kept so that its
# id cannot be reused while the entry lives.
_training: dict[int, list[object]] = {}
_requires_grad: dict[int, list[object]] = {}


def _acquire(
    registry: dict[int, list[object]], items: list[object], attr: str, value: bool
) -> None:
    for item in items:
        entry = registry.get(id(item))
        if entry is None:
            original = getattr(item, attr)
            registry[id(item)] = [item, original, 1]
            if original != value:  # a module's setattr is slow: skip those already right
                _set(item, attr, value)
        else:
            entry[2] = int(entry[2]) + 1  # type: ignore[call-overload]


def _release(registry: dict[int, list[object]], items: list[object], attr: str) -> None:
    for item in items:
        entry = registry[id(item)]
        entry[2] = int(entry[2]) - 1  # type: ignore[call-overload]
        if entry[2] == 0:
            del registry[id(item)]
            if getattr(item, attr) != entry[1]:
                _set(item, attr, bool(entry[1]))


def _set(item: object, attr: str, value: bool) -> None:
    if attr == "requires_grad":
        item.requires_grad_(value)  # type: ignore[attr-defined]
    else:
        setattr(item, attr, value)


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters inside the block; the original flags afterwards."""
    modules: list[object] = list(model.modules())
    params: list[object] = list(model.parameters())
    with _lock:
        _acquire(_training, modules, "training", False)
        _acquire(_requires_grad, params, "requires_grad", False)
    try:
        yield
    finally:
        with _lock:
            _release(_requires_grad, params, "requires_grad")
            _release(_training, modules, "training")


P = ParamSpec("P")
R = TypeVar("R")

#: A call's arguments by parameter name, defaults filled in (what :func:`shaped_like` hands on).
Arguments = dict[str, Any]


def shaped_like(
    template: Callable[P, R], body: Callable[[Arguments], R], name: str, doc: str
) -> Callable[P, R]:
    """A public function with ``template``'s signature (for :mod:`inspect`; for type checkers,
    the caller casts to the template's type) that hands its arguments, bound and with their
    defaults, to ``body`` as one mapping: the signature is written once for functions that
    differ only in what they compute. ``template`` is a function, or the ``__call__`` of a
    :class:`typing.Protocol` that states a family's calling convention."""
    signature = inspect.signature(template)
    if next(iter(signature.parameters), None) == "self":  # a Protocol's ``__call__``
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])

    def function(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return body(dict(bound.arguments))

    function.__signature__ = signature  # type: ignore[attr-defined]
    function.__name__ = function.__qualname__ = name
    function.__module__ = template.__module__
    function.__doc__ = doc
    return function


def autograd_on(function: F) -> F:
    """Run ``function`` with autograd available whatever the caller's mode.

    Inside ``torch.inference_mode()`` or ``torch.no_grad()`` a method still needs gradients (or,
    for a forward-only one, tensors it can keep); the wrapper leaves inference mode and turns
    gradients on for the call. Tensors the caller made in inference mode are copied where they
    take part in a backward pass (:func:`backlight._pipeline.model_input`).
    """

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return function(*args, **kwargs)

    return call  # type: ignore[return-value]
