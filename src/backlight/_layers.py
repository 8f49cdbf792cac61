"""Find a layer of a model by dotted name or by identity, and suggest names when it is missing."""

from __future__ import annotations

import difflib
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._checks import check_input, check_model
from ._keras import KerasModel, adapt
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


def check_hookable(module: nn.Module, name: str | None) -> None:
    """A layer's output is captured with a forward hook, which TorchScript modules refuse."""
    if isinstance(module, torch.jit.ScriptModule):
        which = f"`layer` {name!r}" if name else "the model"
        raise LayerError(
            f"{which} is a TorchScript module ({type(module).__name__}), whose outputs cannot be "
            "captured (it takes no hooks); explain the eager module, the one passed to "
            "torch.jit.script or torch.jit.trace"
        )


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


#: ``layer=INPUT`` (the string ``"input"``) names the model's input, for every method that takes a
#: layer: the gradient family's default, and TorchRay's ``saliency_layer=''``.
INPUT = "input"


def is_input(layer: Layer | None) -> bool:
    return isinstance(layer, str) and layer == INPUT


@dataclass
class Trace:
    """What one dry forward pass showed of a model's modules.

    Attributes:
        output: the model's output (computed under ``torch.inference_mode``).
        outputs: per module name, the output of each of its calls, in order (tensors as
            ``torch.Size``, anything else as its type name).
        finished: module names in the order their calls finished (a name once per call).
    """

    output: Any
    outputs: dict[str, list[torch.Size | str]]
    finished: list[str]

    def calls(self, name: str) -> int:
        return len(self.outputs.get(name, ()))


def trace(
    model: nn.Module,
    x: torch.Tensor,
    *,
    include: Callable[[str, nn.Module], bool] | None = None,
) -> Trace:
    """One forward pass of ``model`` on a private copy of ``x``, recording every module's calls.

    Only calls made by this thread are recorded, so another thread's forward pass through the
    same model (or the caller's own, elsewhere) cannot confuse the record; the hooks are removed
    whatever happens, and the model runs in eval mode with frozen parameters
    (:func:`backlight._state.explaining`). TorchScript modules, which take no hooks, are left out;
    ``include(name, module)`` can leave out more.
    """
    thread = threading.get_ident()
    outputs: dict[str, list[torch.Size | str]] = {}
    finished: list[str] = []

    def hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if threading.get_ident() != thread:
                return
            kind = output.shape if isinstance(output, torch.Tensor) else type(output).__name__
            outputs.setdefault(name, []).append(kind)
            finished.append(name)

        return record

    handles = []
    try:
        for name, module in model.named_modules():
            if not name or isinstance(module, torch.jit.ScriptModule):
                continue
            if include is None or include(name, module):
                handles.append(module.register_forward_hook(hook(name)))
        with explaining(model), torch.inference_mode():
            output = model(x.detach().clone())  # a copy: the model may write into its input
    finally:
        for handle in handles:
            handle.remove()
    return Trace(output, outputs, finished)


# The default layer of each model for each input shape, shared by every thread under the lock.
_default_layers: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]] = (
    weakref.WeakKeyDictionary()
)
_default_lock = threading.Lock()


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
    does not. One sample goes through a dry forward pass under ``torch.inference_mode``, seen only
    by the calling thread (:func:`trace`); the answer is remembered per model and input shape.
    For a Keras model, the last convolution layer, as tf-keras-vis picks it
    (:meth:`KerasModel.default_layer`).

    Raises:
        LayerError: no module outputs a 4-D feature map (a transformer, say): pass ``layer=``
            and, for token outputs, ``reshape=``.
    """
    model, x = adapt(model, x)
    model = check_model(model)
    x = check_input(x, model)
    if isinstance(model, KerasModel):
        return model.default_layer()
    check_hookable(model, None)
    key = tuple(x.shape[1:])
    with _default_lock:
        cached = _default_layers.get(model, {}).get(key)
    if cached is not None and cached in dict(model.named_modules()):
        return cached
    seen = trace(model, x[:1], include=lambda _, module: not isinstance(module, _PASS_THROUGH))
    for name in reversed(seen.finished):
        shape = seen.outputs[name][0]
        spatial = isinstance(shape, torch.Size) and len(shape) == 4 and shape[2] * shape[3] > 1
        if spatial and seen.calls(name) == 1:
            with _default_lock:
                _default_layers.setdefault(model, {})[key] = name
            return name
    raise LayerError(
        f"no module of {type(model).__name__} outputs a 4-D feature map (N, C, H, W), so there "
        "is no default layer; pass `layer=` (and, for a transformer's token outputs, "
        "`reshape=backlight.vit_reshape`)"
    )
