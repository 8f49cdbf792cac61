"""Excitation backprop and contrastive excitation backprop (Zhang et al. 2016)."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_flag
from .._excitation import ExcitationBackpropContext, excite_linear
from .._pipeline import (
    explanation,
    forward,
    grad_mode,
    gradient_at,
    require_feature_map,
    resize_to,
    run,
)
from .._registry import register
from .._result import Explanation
from .._types import Layer, Target
from ..errors import MethodNotApplicableError

__all__ = ["contrastive_excitation_backprop", "excitation_backprop"]

_PAPER = (
    "Zhang, Lin, Brandt, Shen & Sclaroff, Top-down Neural Attention by Excitation Backprop, "
    "ECCV 2016"
)


@register(
    "excitation_backprop",
    family="excitation",
    layered=True,
    summary="top-down marginal winning probabilities through positive weights",
    paper=_PAPER,
    aliases=("ebp", "mwp"),
)
def excitation_backprop(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    resize: bool = False,
) -> Explanation:
    """Excitation backprop (Zhang et al. 2016): the marginal winning probability (MWP) map.

    A probability of 1 starts at the target class and flows down: through a layer
    ``y = f(x, w)`` (convolution, linear, average pooling), ``p_x = x ⊙ f*(p_y ⊘ f(x, w⁺))``;
    batch norm passes it on, max pooling to the winner, a residual sum ``a + b`` in proportion
    ``a / (a + b)``; see :class:`backlight.ExcitationBackpropContext`. The map is the MWP at the
    output of ``layer`` summed over channels. At a layer whose inputs are non-negative (after a
    ReLU or pooling) it is a probability distribution: it sums to one, less what reaches units
    with no positive evidence. The paper and TorchRay's benchmark use an intermediate layer
    (VGG-16 ``"features.23"``, ResNet-50 ``"layer3"``); at the input (``layer=None``) the
    normalised pixels can be negative and so can the map.

    Args:
        model: a CNN made of the operations above; any other operation on the way to the
            output (GELU, attention, ...) raises :class:`backlight.MethodNotApplicableError`.
        x, target, layer, resize: as for :func:`backlight.gradient`.

    Returns:
        A detached tensor (N, 1, h, w).

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> m = backlight.excitation_backprop(model, torch.randn(1, 3, 64, 64), 3, layer="layer2")
        >>> m.shape
        torch.Size([1, 1, 8, 8])
    """
    resize = check_flag("resize", resize)
    capture = run(
        model,
        x,
        target,
        layer=layer,
        context=ExcitationBackpropContext,
        method="excitation_backprop",
    )
    assert capture.gradient is not None
    require_feature_map(capture.gradient, capture.layer)
    maps = capture.gradient.sum(dim=1, keepdim=True)
    return explanation(resize_to(maps, x) if resize else maps, capture)


@register(
    "contrastive_excitation_backprop",
    family="excitation",
    layered=True,
    summary="excitation of the class minus that of its dual (negated) classifier",
    paper=_PAPER,
    aliases=("c_ebp", "c_mwp"),
)
def contrastive_excitation_backprop(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    resize: bool = False,
) -> Explanation:
    """Contrastive excitation backprop (c-MWP, Zhang et al. 2016).

    The excitation reaching the classifier's input ``h`` from the target class, minus the one a
    dual classifier with negated weights ``-W`` sends, is propagated down to ``layer``:
    ``map = ReLU(Σ_c MWP_c(h ⊙ W⁺ᵀ(p ⊘ W⁺h) − h ⊙ (−W)⁺ᵀ(p ⊘ (−W)⁺h)))``. The classifier is the
    last convolution or linear layer of the forward pass. Excitation backprop is linear in the
    signal, so subtracting at ``h`` equals subtracting at any layer between ``h`` and ``layer``
    (TorchRay's ``contrast_layer``). Nothing is negated in the model: the dual is computed
    aside. Arguments as for :func:`backlight.excitation_backprop`.

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.vgg11(num_classes=10)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> backlight.contrastive_excitation_backprop(model, x, 3, layer="features.10").shape
        torch.Size([1, 1, 8, 8])
    """
    resize = check_flag("resize", resize)
    fw = forward(
        model,
        x,
        target,
        layer=layer,
        context=ExcitationBackpropContext,
        method="contrastive_excitation_backprop",
    )
    classifier = fw.context.last_linear
    if classifier is None:
        raise MethodNotApplicableError(
            "contrastive excitation backprop needs a classifier (a convolution or linear layer) "
            f"on the way from `layer` to the output, and {type(model).__name__} has none there"
        )
    with grad_mode():
        # The excitation at the classifier's output, then its split at the classifier's input
        # by the real weights and by the negated ones.
        p = gradient_at(fw.scores.sum(), classifier.output, fw.layer, retain_graph=True)
        real = excite_linear(
            classifier.func,
            classifier.input,
            classifier.weight,
            classifier.rest,
            classifier.kwargs,
            p,
        )
        dual = excite_linear(
            classifier.func,
            classifier.input,
            -classifier.weight,
            classifier.rest,
            classifier.kwargs,
            p,
        )
        if classifier.input is fw.wrt:
            grad = real - dual
        else:
            grad = gradient_at(classifier.input, fw.wrt, fw.layer, seed=real - dual)
    require_feature_map(grad, fw.layer)
    maps = grad.sum(dim=1, keepdim=True).clamp(min=0)
    return explanation(resize_to(maps, x) if resize else maps, fw)
