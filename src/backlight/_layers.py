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
from ._layouts import is_attention, is_transformer, prefix_tokens, read_layout
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
        started: per module name, the step at which its last call started, counted on the
            same clock as ``finished`` (``finished[i]`` finished at step ``i``).
    """

    output: Any
    outputs: dict[str, list[torch.Size | str]]
    finished: list[str]
    started: dict[str, int]

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
    started: dict[str, int] = {}

    def start(name: str) -> Callable[[nn.Module, Any], None]:
        def record(module: nn.Module, inputs: Any) -> None:
            if threading.get_ident() == thread:
                started[name] = len(finished)

        return record

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
                handles.append(module.register_forward_pre_hook(start(name)))
                handles.append(module.register_forward_hook(hook(name)))
        with explaining(model), torch.inference_mode():
            output = model(x.detach().clone())  # a copy: the model may write into its input
    finally:
        for handle in handles:
            handle.remove()
    return Trace(output, outputs, finished, started)


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
    """The dotted name of the module whose output a CAM explains when no ``layer`` is given.

    For a convolutional network, the last module whose output is a spatial feature map. "Last"
    is in the order the forward pass finishes the modules, so a container (ResNet's ``layer4``,
    VGG's ``features``) wins over the modules inside it. A module qualifies when it is called
    once and returns a 4-D tensor (N, C, H, W) with more than one spatial position; the model
    itself does not.

    For a segmentation or detection model with a ``backbone`` (torchvision's), the last such
    map of the backbone's trunk (``backbone.layer4``, ``backbone.body.layer4``), not a head's.

    For a vision transformer (a patch embedding and attention modules, :mod:`._layouts`), a
    layer norm whose output lies on the patch grid: with class tokens (ViT, DeiT), the last
    one before the last attention starts (the last block's first norm, pytorch-grad-cam's
    recipe: after that attention only the class token reaches the head, so later layers have
    no gradient on the patches); without (Swin, pooled ViTs), the last one.

    One sample goes through a dry forward pass under ``torch.inference_mode``, seen only by the
    calling thread (:func:`trace`); the answer is remembered per model and input shape. For a
    Keras model, the last convolution layer, as tf-keras-vis picks it
    (:meth:`KerasModel.default_layer`).

    Raises:
        LayerError: no module outputs a feature map or a readable token layout: pass
            ``layer=`` (and ``reshape=`` for token outputs).
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
    name = _transformer_layer(model, x, seen) if is_transformer(model) else None
    if name is None:
        name = _convolutional_layer(seen, _trunk(model, seen.output))
    if name is None:
        raise LayerError(
            f"no module of {type(model).__name__} outputs a 4-D feature map (N, C, H, W) or "
            "tokens on a patch grid the model describes, so there is no default layer; pass "
            "`layer=` (and, for a transformer's token outputs, `reshape=`)"
        )
    with _default_lock:
        _default_layers.setdefault(model, {})[key] = name
    return name


def _once(seen: Trace, name: str) -> torch.Size | None:
    """The output shape of a module called once with a tensor of one sample, else ``None``."""
    shape = seen.outputs[name][0]
    if seen.calls(name) != 1 or not isinstance(shape, torch.Size) or shape[0] != 1:
        return None
    return shape


def _trunk(model: nn.Module, output: Any) -> str:
    """Where a dense or detection model's feature maps end: its ``backbone`` (for a
    torchvision detector, the trunk ``backbone.body`` under the feature pyramid), so that the
    default layer is the trunk's last map rather than a head's class scores; "" otherwise."""
    classifier = isinstance(output, torch.Tensor) and output.dim() == 2
    modules = dict(model.named_modules())
    if classifier or "backbone" not in modules:
        return ""
    return "backbone.body" if "backbone.body" in modules else "backbone"


def _convolutional_layer(seen: Trace, under: str = "") -> str | None:
    for name in reversed(seen.finished):
        if under and not name.startswith(under + "."):
            continue
        shape = _once(seen, name)
        if shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1:
            return name
    return None


def _transformer_layer(model: nn.Module, x: torch.Tensor, seen: Trace) -> str | None:
    modules = dict(model.named_modules())
    size = (x.shape[-2], x.shape[-1])
    norms = [
        (step, name)
        for step, name in enumerate(seen.finished)
        if isinstance(modules[name], nn.LayerNorm)
        or type(modules[name]).__name__.endswith("LayerNorm")
    ]
    on_grid = [
        (step, name)
        for step, name in norms
        if (shape := _once(seen, name)) is not None and read_layout(model, size, tuple(shape))
    ]
    if prefix_tokens(model) > 0:
        attention = [
            seen.started[n] for n, m in modules.items() if is_attention(m) and n in seen.started
        ]
        if attention:
            last = max(attention)
            on_grid = [(step, name) for step, name in on_grid if step < last]
    return on_grid[-1][1] if on_grid else None
