"""How a transformer's layer output lies on the image: read from the model, not guessed.

A CAM needs a feature map (N, K, h, w). Vision transformers give token sequences (N, T, D)
(ViT, DeiT: class, distillation and register tokens first, then the patches row by row) or
channels-last maps (N, h, w, D) (Swin stages in torchvision and timm). Both are read from
two facts of the model, never from the tensor alone:

- the patch size: the first 2-D convolution whose kernel equals its stride (the patch
  embedding of torchvision's ``vit_*``/``swin_*``, timm's, Hugging Face's); the patch grid of an
  (H, W) input is then (H / p, W / p), halved by each patch merging of a hierarchical model;
- the prefix tokens: the model's own parameters named ``class_token``, ``cls_token``,
  ``dist_token``, ``distillation_token``, ``reg_token`` or ``register_tokens``, counted by
  their token dimension.

A layout is used only when the output's shape fits it exactly; anything else is left to
``reshape=``, with an error that says what was seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .errors import LayerError, OptionError

#: Turns a layer's output into a feature map (N, K, h, w).
Reshape = Callable[[torch.Tensor], torch.Tensor]

_PREFIX_NAMES = (
    "class_token",
    "cls_token",
    "dist_token",
    "distillation_token",
    "reg_token",
    "register_tokens",
)


def patch_size(model: nn.Module) -> int | None:
    """The side of the model's square patches: the first convolution whose kernel equals its
    stride (larger than 1), or ``None`` when the model has no patch embedding."""
    for module in model.modules():
        if type(module) is nn.Conv2d or isinstance(module, nn.Conv2d):
            kernel, stride = tuple(module.kernel_size), tuple(module.stride)
            if kernel == stride and kernel[0] == kernel[1] and kernel[0] > 1:
                return int(kernel[0])
    return None


def prefix_tokens(model: nn.Module) -> int:
    """How many tokens the model puts before the patches (class, distillation, registers)."""
    count = 0
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] in _PREFIX_NAMES:
            count += int(parameter.shape[-2]) if parameter.dim() == 3 else 1
    return count


def is_attention(module: nn.Module) -> bool:
    """A module that mixes tokens: ``nn.MultiheadAttention`` or a class named ``*Attention``."""
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def is_transformer(model: nn.Module) -> bool:
    return patch_size(model) is not None and any(is_attention(m) for m in model.modules())


@dataclass(frozen=True)
class Layout:
    """How one output lies on the image.

    Attributes:
        kind: ``"tokens"`` (N, prefix + h·w, D), ``"channels_last"`` (N, h, w, D) or
            ``"feature_map"`` (N, D, h, w), which needs no change.
        grid: (h, w), the patch grid at that depth.
        prefix: the leading tokens dropped (tokens only).
    """

    kind: Literal["tokens", "channels_last", "feature_map"]
    grid: tuple[int, int]
    prefix: int = 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        if self.kind == "tokens":
            grid = tensor[:, self.prefix :, :].reshape(tensor.shape[0], h, w, tensor.shape[-1])
            return grid.permute(0, 3, 1, 2)
        if self.kind == "channels_last":
            return tensor.permute(0, 3, 1, 2)
        return tensor

    def describe(self, shape: tuple[int, ...]) -> str:
        h, w = self.grid
        if self.kind == "tokens":
            return (
                f"tokens {shape}: {self.prefix} prefix token(s) dropped, the {h * w} patches laid "
                f"on their {h}x{w} grid"
            )
        if self.kind == "channels_last":
            return f"a channels-last map {shape} on a {h}x{w} grid, channels moved first"
        return f"a feature map {shape}"


def read_layout(model: nn.Module, size: tuple[int, int], shape: tuple[int, ...]) -> Layout | None:
    """The layout of an output of ``shape`` for an input of spatial ``size``, when the model's
    patch size (and prefix tokens) make exactly one reading fit; ``None`` otherwise."""
    p = patch_size(model)
    if p is None or len(shape) not in (3, 4):
        return None
    height, width = size
    grids = []
    for depth in range(6):
        step = p * 2**depth
        grids.append((math.ceil(height / step), math.ceil(width / step)))
    if len(shape) == 3:
        _, count, _ = shape
        for prefix in dict.fromkeys((prefix_tokens(model), 0)):
            for h, w in grids:
                if count - prefix == h * w:
                    return Layout("tokens", (h, w), prefix)
        return None
    _, a, b, c = shape
    for h, w in grids:
        if (b, c) == (h, w) and (h * w > 1):
            return Layout("feature_map", (h, w))
        if (a, b) == (h, w) and h * w > 1:
            return Layout("channels_last", (h, w))
    return None


def named_reshape(reshape: Any) -> Reshape | str | None:
    """``reshape`` checked: a callable, ``None`` or ``"auto"`` (read from the model), ``"vit"``
    (one prefix token, a square grid) or ``"channels_last"`` (N, h, w, C) -> (N, C, h, w)."""
    if reshape is None or callable(reshape):
        return reshape  # type: ignore[no-any-return]
    names = {"auto": None, "vit": "vit", "channels_last": "channels_last"}
    if isinstance(reshape, str) and reshape in names:
        return names[reshape]
    raise OptionError(
        f"`reshape` must be a callable (N, ...) -> (N, K, h, w), or one of 'auto' (the layout "
        f"read from the model), 'vit' or 'channels_last', not {reshape!r}"
    )


def unreadable(model: nn.Module, layer: str | None, shape: tuple[int, ...]) -> LayerError:
    """The error for a layer output that is not a feature map and whose layout is unknown."""
    p = patch_size(model)
    seen = (
        f"a token sequence {shape} (N, tokens, dim)"
        if len(shape) == 3
        else f"an output of shape {shape}"
    )
    why = (
        f"its {shape[1] if len(shape) == 3 else 'spatial'} positions fit no patch grid of "
        f"{type(model).__name__} (patch size {p}, {prefix_tokens(model)} prefix token(s))"
        if p is not None
        else f"{type(model).__name__} has no patch embedding to read the grid from"
    )
    return LayerError(
        f"`layer` {layer!r} gives {seen}, and {why}; pass reshape='vit' (one class token, "
        "a square grid), reshape='channels_last', or a callable that returns (N, K, h, w), "
        "e.g. functools.partial(backlight.vit_reshape, prefix_tokens=2)"
    )
