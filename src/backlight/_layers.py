"""Find a layer of a model by dotted name or by identity, and suggest names when it is missing."""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._state import explaining
from ._types import Layer
from .errors import LayerError, LayerNotFoundError, OptionError


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


_default_layers: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]] = (
    weakref.WeakKeyDictionary()
)


_PASS_THROUGH = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)


def default_cam_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The dotted name of the last module whose output is a spatial feature map.

    "Last" is in the order the forward pass finishes the modules, so a container (ResNet's
    ``layer4``, VGG's ``features``) wins over the modules inside it. A module qualifies when it is
    called once and returns a 4-D tensor with more than one spatial position; the model itself
    does not. One sample goes through a dry forward pass under ``torch.inference_mode``; the
    answer is remembered per model and input shape.

    Raises:
        LayerError: no module outputs a 4-D feature map (a transformer, say): pass ``layer=``
            and, for token outputs, ``reshape=``.
    """
    key = tuple(x.shape[1:])
    cached = _default_layers.get(model, {}).get(key)
    if cached is not None and cached in dict(model.named_modules()):
        return cached
    calls: dict[str, int] = {}
    finished: list[str] = []

    def hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            spatial = isinstance(output, torch.Tensor) and output.dim() == 4
            if spatial and output.shape[2] * output.shape[3] > 1:
                finished.append(name)

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if name and not isinstance(module, _PASS_THROUGH)
    ]
    try:
        with explaining(model), torch.inference_mode():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    for name in reversed(finished):
        if calls[name] == 1:
            _default_layers.setdefault(model, {})[key] = name
            return name
    raise LayerError(
        f"no module of {type(model).__name__} outputs a 4-D feature map (N, C, H, W), so there "
        "is no default layer; pass `layer=` (and, for a transformer's token outputs, "
        "`reshape=backlight.vit_reshape`)"
    )
