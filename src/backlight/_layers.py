"""Find a layer of a model by dotted name or by identity, and suggest names when it is missing."""

from __future__ import annotations

import difflib

from torch import nn

from ._types import Layer
from .errors import LayerNotFoundError, OptionError


def resolve_layer(model: nn.Module, layer: Layer) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` for ``layer``, a dotted name or a module of ``model``.

    The empty name ``""`` is the model itself, as in ``model.named_modules()``.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules(remove_duplicate=False):
            if module is layer:
                return name, module
        raise LayerNotFoundError(
            f"`layer` is a {type(layer).__name__} that is not a submodule of "
            f"{type(model).__name__}; pass one of its modules or its dotted name "
            "(see model.named_modules())"
        )
    if not isinstance(layer, str):
        raise OptionError(
            f"`layer` must be a dotted module name or an nn.Module, not {type(layer).__name__}"
        )
    modules = dict(model.named_modules(remove_duplicate=False))
    if layer in modules:
        return layer, modules[layer]
    raise LayerNotFoundError(_missing_message(model, layer, list(modules)))


def _missing_message(model: nn.Module, layer: str, names: list[str]) -> str:
    names = [n for n in names if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.6)
    head = f"`layer` {layer!r} is not a module of {type(model).__name__}"
    if close:
        quoted = ", ".join(repr(n) for n in close)
        return f"{head}; did you mean {quoted}?"
    top = [n for n in names if "." not in n][:12]
    listing = ", ".join(repr(n) for n in top) or "(the model has no submodules)"
    return f"{head}; its top-level modules are {listing} (list them all with model.named_modules())"
