"""The gradient family: vanilla gradient, guided backprop and deconvnet.

All three are the same forward/backward pass (:func:`backlight._pipeline.run`); they differ only
in the backward rule applied at the ReLUs, which is the economy TorchRay's design showed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol, cast

import torch
from torch import nn

from .._checks import check_flag, check_reduce
from .._pipeline import explanation, reduce_channels, require_feature_map, resize_to, run
from .._registry import register, register_like
from .._result import Explanation
from .._rules import DeConvNetContext, GuidedBackpropContext, _RuleContext
from .._state import Arguments
from .._types import Layer, Reduce, Target

__all__ = ["deconvnet", "gradient", "guided_backprop", "rectified"]


def _saliency(
    model: nn.Module,
    x: torch.Tensor,
    target: Target,
    *,
    layer: Layer | None,
    reduce: Reduce,
    resize: bool,
    rule: Callable[..., _RuleContext] | None,
    method: str,
    clipped_relu: bool = True,
) -> Explanation:
    reduce = check_reduce(reduce)
    resize = check_flag("resize", resize)
    clipped_relu = check_flag("clipped_relu", clipped_relu)
    context = (
        functools.partial(rule, warn=False, clipped_relu=clipped_relu) if rule is not None else None
    )
    capture = run(model, x, target, layer=layer, context=context, method=method)
    assert capture.gradient is not None  # run() was asked for the gradient
    if capture.layer is not None:
        require_feature_map(capture.gradient, capture.layer)
    maps = reduce_channels(capture.gradient, reduce)
    return explanation(resize_to(maps, x) if resize else maps, capture)


@register(
    "gradient",
    family="gradient",
    smoothable=True,
)
def gradient(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    reduce: Reduce = "abs_max",
    resize: bool = False,
) -> Explanation:
    """Gradient: the gradient of the class score with respect to the input or a layer.

    Simonyan, Vedaldi & Zisserman's saliency map.
    ``map = reduce_c(∂ score / ∂ a)``, with ``a`` the input or the output of ``layer``.

    Args:
        model: the network; it runs in eval mode during the call and is restored afterwards.
        x: a float tensor of shape (N, C, H, W).
        target: ``None`` for each sample's predicted class, an int, one class per sample (a
            sequence or 1-D tensor), or a callable ``output -> (N,) scores``.
        layer: ``None`` (or ``"input"``) for the input, or a module (dotted name or module
            object) whose output the gradient is taken at.
        reduce: ``"abs_max"`` (max over channels of ``|g|``), ``"l2"``, ``"sum"``, or ``None`` to
            keep every channel.
        resize: upsample the map bilinearly to the input's size.

    Returns:
        A detached tensor (N, 1, h, w), or (N, C, h, w) with ``reduce=None``.

    Aliases:
        saliency, vanilla_gradient

    Paper:
        Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks, ICLR-W 2014

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> backlight.gradient(model, torch.randn(2, 3, 64, 64), target=[3, 7]).shape
        torch.Size([2, 1, 64, 64])
    """
    return _saliency(
        model, x, target, layer=layer, reduce=reduce, resize=resize, rule=None, method="gradient"
    )


class RuleMethod(Protocol):
    """The calling convention of the rule methods (guided backprop, deconvnet)."""

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: Target = None,
        *,
        layer: Layer | None = None,
        reduce: Reduce = "abs_max",
        resize: bool = False,
        clipped_relu: bool = True,
    ) -> Explanation: ...


def _ruled(context: type[_RuleContext], a: Arguments) -> Explanation:
    """A gradient whose backward pass runs ``context``'s rule at every ReLU."""
    return _saliency(
        a["model"],
        a["x"],
        a["target"],
        layer=a["layer"],
        reduce=a["reduce"],
        resize=a["resize"],
        rule=context,
        method=context.rule.name,
        clipped_relu=a["clipped_relu"],
    )


def _rule_method(name: str, context: type[_RuleContext], doc: str) -> RuleMethod:
    """Register the gradient method ``name`` whose backward pass runs ``context``'s rule."""
    body = functools.partial(_ruled, context)
    made = register_like(RuleMethod.__call__, body, name, doc, family="gradient", smoothable=True)
    return cast(RuleMethod, made)


_GUIDED_BACKPROP_DOC = """Guided backpropagation: the gradient with negative signals stopped at every ReLU.

    At every ReLU the gradient passes only where the forward input was positive and the upstream
    gradient is positive: ``∂x = [x > 0] · max(∂y, 0)``. Every ReLU is covered: ``nn.ReLU``
    modules, ``F.relu``, ``torch.relu``, ``Tensor.relu``, in-place variants and modules called
    several times, and ReLU6 (``0 < x < 6``); see :class:`backlight.GuidedBackpropContext`.

    Arguments and result are as for :func:`backlight.gradient`, and:

    Args:
        clipped_relu: treat ReLU6 and ``hardtanh(x, 0, m)`` as ReLUs (the default); ``False``
            leaves them with the plain gradient, as TorchRay and Captum do.

    Raises:
        MethodNotApplicableError: the model computes no ReLU, so the rule has nothing to act on.

    Aliases:
        guided

    Paper:
        Springenberg, Dosovitskiy, Brox & Riedmiller, Striving for Simplicity: The All
        Convolutional Net, ICLR-W 2015

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.vgg11(num_classes=10)
        >>> rgb = backlight.guided_backprop(model, torch.randn(1, 3, 64, 64), 3, reduce=None)
        >>> rgb.shape
        torch.Size([1, 3, 64, 64])
    """

guided_backprop = _rule_method("guided_backprop", GuidedBackpropContext, _GUIDED_BACKPROP_DOC)

_DECONVNET_DOC = """DeconvNet: the backward pass with the upstream signal rectified at every ReLU.

    Also known as the "rectified" gradient in tf-keras-vis.
    At every ReLU the upstream signal passes clamped at zero, whatever the forward input:
    ``∂x = max(∂y, 0)``. Arguments (``clipped_relu`` included), coverage and result are as for
    :func:`backlight.guided_backprop`.

    Aliases:
        rectified

    Paper:
        Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.alexnet(num_classes=10)
        >>> backlight.deconvnet(model, torch.randn(1, 3, 96, 96), 0).shape
        torch.Size([1, 1, 96, 96])
    """

deconvnet = _rule_method("deconvnet", DeConvNetContext, _DECONVNET_DOC)


#: The deconvnet method under the name tf-keras-vis users know.
rectified = deconvnet
