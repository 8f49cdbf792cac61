"""The CAM family: maps built from a layer's activations ``A`` (N, K, h, w) and, for most, the
gradient ``G = ∂ score / ∂ A`` at that layer's own output.

All of them share one forward/backward pass (:func:`backlight._pipeline.run`), which keeps the
layer's output safe from an in-place ReLU that follows it, so ``A`` and ``G`` always belong to
the same tensor (pytorch-grad-cam pairs post-ReLU activations with pre-ReLU gradients there).
Without ``layer``, the last module whose output is a spatial feature map is used and logged on
the ``backlight`` logger.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, Protocol, cast

import torch
from torch import nn

from .._checks import check_flag, check_input, check_int, check_model, check_reduce, is_choice
from .._keras import KerasModel
from .._layers import default_cam_layer
from .._layouts import named_reshape, read_layout, unreadable
from .._pipeline import (
    Capture,
    explanation,
    reduce_channels,
    require_feature_map,
    resize_to,
    run,
)
from .._registry import register, register_like
from .._result import Explanation
from .._rules import GuidedBackpropContext
from .._state import Arguments
from .._types import Layer, Reduce, Target
from ..errors import InputTypeError, LayerError, OptionError
from .gradients import guided_backprop

__all__ = [
    "grad_cam",
    "grad_cam_plus_plus",
    "guided_grad_cam",
    "layer_cam",
    "linear_approx",
    "vit_reshape",
]

logger = logging.getLogger("backlight")

#: Turns a layer's output into a feature map (N, K, h, w): a callable such as
#: :func:`vit_reshape`, or a name: ``"auto"`` (the layout read from the model, as ``None``),
#: ``"vit"``, ``"channels_last"``.
Reshape = Callable[[torch.Tensor], torch.Tensor] | str


def vit_reshape(tokens: torch.Tensor, prefix_tokens: int = 1) -> torch.Tensor:
    """Token sequence (N, 1 + h·w, D) of a ViT-style layer to a feature map (N, D, h, w).

    Drops the ``prefix_tokens`` leading tokens (the class token; use 2 for DeiT's class and
    distillation tokens, e.g. with ``functools.partial``) and lays the rest out on their square
    grid, row by row, as the patch embedding produced them.

    Example:
        >>> import torch, backlight
        >>> backlight.vit_reshape(torch.zeros(2, 1 + 14 * 14, 768)).shape
        torch.Size([2, 768, 14, 14])
    """
    if not isinstance(tokens, torch.Tensor):
        raise InputTypeError(f"vit_reshape takes a tensor of tokens, not {type(tokens).__name__}")
    prefix_tokens = check_int("prefix_tokens", prefix_tokens, low=0)
    if tokens.dim() != 3:
        raise LayerError(
            f"vit_reshape expects tokens of shape (N, tokens, dim), got {tuple(tokens.shape)}; "
            "choose a layer that outputs a token sequence, e.g. a ViT block's 'ln_1'"
        )
    n, count, dim = tokens.shape
    side = math.isqrt(max(count - prefix_tokens, 0))
    if count - prefix_tokens <= 0 or side * side != count - prefix_tokens:
        raise LayerError(
            f"vit_reshape: {count} tokens minus {prefix_tokens} prefix token(s) is not a square "
            "grid of patches; set `prefix_tokens` to the number of class/register tokens"
        )
    grid = tokens[:, prefix_tokens:, :].reshape(n, side, side, dim)
    return grid.permute(0, 3, 1, 2)


def _layer_capture(
    model: nn.Module,
    x: torch.Tensor,
    target: Target,
    *,
    layer: Layer | None,
    reshape: Reshape | None,
    method: str,
    gradient: bool = True,
    context: Callable[[], Any] | None = None,
) -> Capture:
    """One pass capturing the layer's activation (and gradient), as feature maps (N, K, h, w);
    the forward pass runs inside ``context()`` if given (a backward rule). Without ``layer``,
    the default one (:func:`default_cam_layer`); without ``reshape``, a transformer's token or
    channels-last output is laid out as the model says (:mod:`backlight._layouts`)."""
    reshape = named_reshape(reshape)
    if layer is None:
        model = check_model(model)
        x = check_input(x, model)  # run() checks them otherwise
        if reshape is not None:
            raise OptionError(
                f"{method}: `reshape` is given but `layer` is not; name the layer whose output "
                "it reshapes (for torchvision's ViT: 'encoder.layers.encoder_layer_11.ln_1'), "
                "or leave both out for the default layer and its layout"
            )
        layer = default_cam_layer(model, x)
        logger.info("%s: no `layer` given; using %r, the default CAM layer", method, layer)
    capture = run(model, x, target, layer=layer, gradient=gradient, method=method, context=context)
    activation, grad = capture.activation, capture.gradient
    layout = _layout(capture.layer, reshape, model, x, activation, method)
    if layout is not None:
        activation = _reshaped(layout, activation, capture.layer)
        grad = _reshaped(layout, grad, capture.layer) if grad is not None else None
    require_feature_map(activation, capture.layer, reshaped=layout is not None)
    return replace(capture, activation=activation, gradient=grad, reshape=layout)


def _layout(
    layer: str | None,
    reshape: Callable[[torch.Tensor], torch.Tensor] | str | None,
    model: nn.Module,
    x: torch.Tensor,
    activation: torch.Tensor,
    method: str,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function that lays the layer's output out as (N, K, h, w), or ``None`` for none."""
    if callable(reshape):
        return reshape
    if reshape == "vit":
        return vit_reshape
    if reshape == "channels_last":
        return _channels_first
    if isinstance(model, KerasModel):
        return None  # its probe gives feature maps already
    shape = tuple(activation.shape)
    found = read_layout(model, (x.shape[-2], x.shape[-1]), shape)
    if found is None:
        if activation.dim() == 3:
            raise unreadable(model, layer, shape)
        return None
    if found.kind == "feature_map":
        return None
    logger.info("%s: reading the output of %r as %s", method, layer, found.describe(shape))
    return found


def _channels_first(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 4:
        raise LayerError(
            f"reshape='channels_last' needs a 4-D output (N, h, w, C), got {tuple(tensor.shape)}"
        )
    return tensor.permute(0, 3, 1, 2)


def _reshaped(
    reshape: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor, layer: str | None
) -> torch.Tensor:
    out = reshape(tensor)
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != tensor.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise OptionError(
            f"`reshape` must turn the output of `layer` {layer!r} {tuple(tensor.shape)} into a "
            f"feature map (N, K, h, w) with the same N, got {shape}"
        )
    return out


def _finish(maps: torch.Tensor, x: torch.Tensor, relu: bool, resize: bool) -> torch.Tensor:
    if relu:
        maps = maps.clamp(min=0)
    return resize_to(maps, x) if resize else maps


#: ``combine(A, G, scores) -> (N, 1, h, w)``: a layer's activations and gradients (and the
#: explained scores, (N,)) to a map.
Combine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _grad_cam_map(a: torch.Tensor, g: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True)


def _grad_cam_plus_plus_map(a: torch.Tensor, g: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    denominator = 2 + a.sum(dim=(2, 3), keepdim=True) * g
    usable = (g > 0) & (denominator != 0)
    safe = torch.where(usable, denominator, torch.ones_like(denominator))
    weights = torch.where(usable, g / safe, torch.zeros_like(g)).sum(dim=(2, 3), keepdim=True)
    return (weights * a).sum(dim=1, keepdim=True)


def _tf_keras_vis_plus_plus_map(
    a: torch.Tensor, g: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """tf-keras-vis' GradcamPlusPlus: the derivatives of ``exp(score)`` written out, each
    channel's ``α`` normalised to sum 1 over the positions, the weights ``Σ ReLU(e^S g) α``."""
    e = scores.exp().view(-1, 1, 1, 1).to(g.dtype)
    first, second, third = e * g, e * g**2, e * g**3
    denominator = 2 * second + third * a.sum(dim=(2, 3), keepdim=True)
    alphas = second / (denominator + (second == 0).to(g.dtype))
    total = alphas.sum(dim=(2, 3), keepdim=True)
    alphas = alphas / (total + (total == 0).to(g.dtype))
    weights = (first.clamp(min=0) * alphas).sum(dim=(2, 3), keepdim=True)
    return (weights * a).sum(dim=1, keepdim=True)


def _layer_cam_map(a: torch.Tensor, g: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return (g.clamp(min=0) * a).sum(dim=1, keepdim=True)


def _linear_approx_map(a: torch.Tensor, g: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return (a * g).sum(dim=1, keepdim=True)


class GradientCam(Protocol):
    """The calling convention of the gradient-weighted CAMs (``grad_cam`` and its variants)."""

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: Target = None,
        *,
        layer: Layer | None = None,
        resize: bool = False,
        relu: bool = True,
        reshape: Reshape | None = None,
        gradient: Literal["plain", "guided"] = "plain",
    ) -> Explanation: ...


def _weighted(combine: Combine, name: str, a: Arguments) -> Explanation:
    """The gradient-weighted CAMs: one pass capturing ``A`` and ``G`` at the layer,
    ``combine(A, G, scores)``, the ReLU, the resize; each differs only in ``combine``."""
    relu, resize = check_flag("relu", a["relu"]), check_flag("resize", a["resize"])
    if not is_choice(a["gradient"], ("plain", "guided")):
        raise OptionError(f"`gradient` must be 'plain' or 'guided', not {a['gradient']!r}")
    guided = functools.partial(GuidedBackpropContext, warn=False)
    model, x, target = a["model"], a["x"], a["target"]
    c = _layer_capture(
        model,
        x,
        target,
        layer=a["layer"],
        reshape=a["reshape"],
        method=name,
        context=guided if a["gradient"] == "guided" else None,
    )
    assert c.gradient is not None
    maps = combine(c.activation, c.gradient, c.scores)
    return explanation(_finish(maps, x, relu, resize), c)


#: How a CAM method registers: its map belongs to a layer, and SmoothGrad can average it.
_CAM: dict[str, Any] = {"family": "cam", "layered": True, "smoothable": True}


def _gradient_cam(name: str, combine: Combine, doc: str) -> GradientCam:
    """Register the gradient-weighted CAM ``name``, whose weighting is ``combine``."""
    body = functools.partial(_weighted, combine, name)
    return cast(GradientCam, register_like(GradientCam.__call__, body, name, doc, **_CAM))


_register_cam = functools.partial(register, family="cam", layered=True, smoothable=True)


_GRAD_CAM_DOC = """Grad-CAM: layer activations weighted by their spatially averaged gradients, rectified.

    ``map = ReLU(Σ_k α_k A_k)`` with ``α_k = mean_{ij} ∂score/∂A_kij``, at the output of ``layer``.

    Args:
        model: the network; it runs in eval mode during the call and is restored afterwards.
        x: a float tensor of shape (N, C, H, W).
        target: ``None`` for each sample's predicted class, an int, one class per sample, or a
            callable ``output -> (N,) scores``.
        layer: a module (dotted name or module object), or ``"input"`` for the input itself
            (TorchRay's ``saliency_layer=''``). Without it, the last module whose output is a
            spatial feature map (ResNet's ``layer4``, VGG's ``features``), logged on the
            ``backlight`` logger; :func:`backlight.default_cam_layer` tells which in advance.
        resize: upsample the map bilinearly to the input's size.
        relu: rectify the map (the paper's definition); ``False`` keeps the signed map.
        reshape: turns the layer's output into (N, K, h, w), for token outputs of transformers
            (:func:`backlight.vit_reshape`).
        gradient: ``"plain"`` (the paper), or ``"guided"``: the gradient at the layer taken
            with guided backprop's rule at the ReLUs above it, as tf-keras-vis computes Grad-CAM
            on a model with ``GuidedBackpropagation`` applied (what its lab calls guided
            Grad-CAM; Selvaraju's guided Grad-CAM is :func:`backlight.guided_grad_cam`).

    Returns:
        A detached tensor (N, 1, h, w) at the layer's resolution, or (N, 1, H, W) with
        ``resize=True``.

    Aliases:
        gradcam

    Paper:
        Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
        Localization, ICCV 2017

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> backlight.grad_cam(model, torch.randn(2, 3, 64, 64), [1, 2], layer="layer3").shape
        torch.Size([2, 1, 4, 4])
    """

grad_cam = _gradient_cam("grad_cam", _grad_cam_map, _GRAD_CAM_DOC)


@_register_cam("grad_cam_plus_plus")
def grad_cam_plus_plus(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    resize: bool = False,
    relu: bool = True,
    reshape: Reshape | None = None,
    gradient: Literal["plain", "guided"] = "plain",
    variant: Literal["paper", "tf_keras_vis"] = "paper",
) -> Explanation:
    """Grad-CAM++: Grad-CAM with pixel-wise weights from higher-order derivatives of exp(score).

    With ``Y = exp(score)`` the paper's weights reduce to first derivatives ``g = ∂score/∂A``:
    ``α_kij = g² / (2g² + Σ_ab A_kab · g³) = 1 / (2 + S_k · g)`` with ``S_k = Σ_ab A_kab``,
    ``w_k = Σ_ij α_kij · ReLU(g_kij)``, ``map = ReLU(Σ_k w_k A_k)``. The closed form needs no
    epsilon (pytorch-grad-cam adds 1e-6 to the denominator, which distorts maps whose gradients
    are below about 1e-3).

    Args:
        variant: ``"paper"`` (the closed form above), or ``"tf_keras_vis"``: tf-keras-vis'
            ``GradcamPlusPlus``, which multiplies the derivatives by ``exp(score)`` (a factor
            per sample, which overflows float32 for logits above about 88) and scales each
            channel's ``α`` to sum 1 over the positions before weighting: ``w_k = Σ_ij
            ReLU(e^S g) α_kij / Σ_ij α_kij``, which changes the map's shape, not only its scale.
        Others as for :func:`backlight.grad_cam`.

    Aliases:
        gradcam++, grad_cam++

    Paper:
        Chattopadhay et al., Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
        Convolutional Networks, WACV 2018

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> backlight.grad_cam_plus_plus(model, torch.randn(1, 3, 64, 64), 3).shape
        torch.Size([1, 1, 2, 2])
    """
    if not is_choice(variant, ("paper", "tf_keras_vis")):
        raise OptionError(f"`variant` must be 'paper' or 'tf_keras_vis', not {variant!r}")
    combine = _grad_cam_plus_plus_map if variant == "paper" else _tf_keras_vis_plus_plus_map
    arguments = {
        "model": model,
        "x": x,
        "target": target,
        "layer": layer,
        "resize": resize,
        "relu": relu,
        "reshape": reshape,
        "gradient": gradient,
    }
    return _weighted(combine, "grad_cam_plus_plus", arguments)


_LAYER_CAM_DOC = """LayerCAM: activations weighted position by position by their positive gradients.

    ``map = ReLU(Σ_k ReLU(∂score/∂A_k) · A_k)``.
    Each position keeps its own weight, so shallow layers give fine-grained maps. Arguments as
    for :func:`backlight.grad_cam`.

    Aliases:
        layercam

    Paper:
        Jiang et al., LayerCAM: Exploring Hierarchical Class Activation Maps for Localization,
        IEEE TIP 2021

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.vgg11(num_classes=10)
        >>> backlight.layer_cam(model, torch.randn(1, 3, 64, 64), 3, layer="features.5").shape
        torch.Size([1, 1, 16, 16])
    """

layer_cam = _gradient_cam("layer_cam", _layer_cam_map, _LAYER_CAM_DOC)


@_register_cam("guided_grad_cam")
def guided_grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    reduce: Reduce = "abs_max",
    reshape: Reshape | None = None,
    clipped_relu: bool = True,
) -> Explanation:
    """Guided Grad-CAM: guided backprop at the input times the Grad-CAM map upsampled to the input.

    ``map = reduce_c(GB_c · up(GradCAM))``: guided backprop (:func:`backlight.guided_backprop`)
    multiplied pixel by pixel with the Grad-CAM map upsampled bilinearly to the input's size.
    Two passes, as in the paper: Grad-CAM's gradient is the plain one.

    Args:
        reduce: as for :func:`backlight.gradient`; ``None`` keeps the RGB channels.
        clipped_relu: as for :func:`backlight.guided_backprop`.
        Others as for :func:`backlight.grad_cam`.

    Returns:
        A detached tensor (N, 1, H, W), or (N, C, H, W) with ``reduce=None``.

    Paper:
        Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
        Localization, ICCV 2017

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.vgg11(num_classes=10)
        >>> backlight.guided_grad_cam(model, torch.randn(1, 3, 64, 64), 4).shape
        torch.Size([1, 1, 64, 64])
    """
    reduce = check_reduce(reduce)
    c = _layer_capture(model, x, target, layer=layer, reshape=reshape, method="guided_grad_cam")
    assert c.gradient is not None
    cam = _grad_cam_map(c.activation, c.gradient, c.scores).clamp(min=0)
    # what Grad-CAM explained: the callable, the bound ready target or the classes
    classes = c.scorer.function or c.scorer.objective or c.scorer.classes
    guided = guided_backprop(model, x, classes, reduce=None, clipped_relu=clipped_relu)
    return explanation(reduce_channels(guided * resize_to(cam, x), reduce), c)


@_register_cam("linear_approx")
def linear_approx(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    resize: bool = False,
    reshape: Reshape | None = None,
) -> Explanation:
    """Linear approximation: activation times gradient at a layer, summed over channels (signed).

    TorchRay's: ``map = Σ_k A_k · ∂score/∂A_k``, signed.
    The first-order Taylor contribution of each position of the layer to the score; Grad-CAM
    without the spatial averaging and without the ReLU. With ``layer="input"`` it is TorchRay's
    default, ``Σ_c x_c · ∂score/∂x_c`` (input times gradient). Arguments as for
    :func:`backlight.grad_cam`.

    Aliases:
        gradient_x_activation

    Paper:
        Fong & Vedaldi's TorchRay (the first-order Taylor term at a layer); cf. Kindermans et
        al., Investigating the influence of noise and distractors, 2016

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> backlight.linear_approx(model, torch.randn(1, 3, 64, 64), 3, layer="layer2").shape
        torch.Size([1, 1, 8, 8])
    """
    resize = check_flag("resize", resize)
    c = _layer_capture(model, x, target, layer=layer, reshape=reshape, method="linear_approx")
    assert c.gradient is not None
    maps = _linear_approx_map(c.activation, c.gradient, c.scores)
    return explanation(_finish(maps, x, False, resize), c)
