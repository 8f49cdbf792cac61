"""Excitation backprop and contrastive excitation backprop (Zhang et al. 2016)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._checks import check_flag
from .._excitation import ExcitationBackpropContext, excite_linear
from .._pipeline import (
    Capture,
    Pass,
    explanation,
    forward,
    grad_mode,
    gradient_at,
    require_feature_map,
    resize_to,
    run,
)
from .._registry import get_method, register
from .._result import Explanation
from .._types import Layer, Target
from ..errors import MethodNotApplicableError

__all__ = ["contrastive_excitation_backprop", "excitation_backprop"]

_PAPER = (
    "Zhang, Lin, Brandt, Shen & Sclaroff, Top-down Neural Attention by Excitation Backprop, "
    "ECCV 2016"
)


#: ``compute(model, x, target, layer, name) -> (maps (N, 1, h, w), the pass)``.
Compute = Callable[[nn.Module, torch.Tensor, Target, Layer | None, str], tuple[torch.Tensor, Any]]


def _excitation_method(
    name: str, compute: Compute, doc: str, *, summary: str, aliases: tuple[str, ...]
) -> Callable[..., Explanation]:
    """A registered excitation method: ``compute`` under the excitation rules, then the
    feature-map check and the resize."""

    def method(
        model: nn.Module,
        x: torch.Tensor,
        target: Target = None,
        *,
        layer: Layer | None = None,
        resize: bool = False,
    ) -> Explanation:
        resize = check_flag("resize", resize)
        maps, done = compute(model, x, target, layer, name)
        return explanation(resize_to(maps, x) if resize else maps, done)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    register(
        name, family="excitation", layered=True, summary=summary, paper=_PAPER, aliases=aliases
    )(method)
    return get_method(name).function


def _marginal_winning_probability(
    model: nn.Module, x: torch.Tensor, target: Target, layer: Layer | None, name: str
) -> tuple[torch.Tensor, Capture]:
    capture = run(model, x, target, layer=layer, context=ExcitationBackpropContext, method=name)
    assert capture.gradient is not None
    require_feature_map(capture.gradient, capture.layer)
    return capture.gradient.sum(dim=1, keepdim=True), capture


def _contrastive(
    model: nn.Module, x: torch.Tensor, target: Target, layer: Layer | None, name: str
) -> tuple[torch.Tensor, Pass]:
    fw = forward(model, x, target, layer=layer, context=ExcitationBackpropContext, method=name)
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
        split = [
            excite_linear(
                classifier.func, classifier.input, weight, classifier.rest, classifier.kwargs, p
            )
            for weight in (classifier.weight, -classifier.weight)
        ]
        difference = split[0] - split[1]
        if classifier.input is fw.wrt:
            grad = difference
        else:
            grad = gradient_at(classifier.input, fw.wrt, fw.layer, seed=difference)
    require_feature_map(grad, fw.layer)
    return grad.sum(dim=1, keepdim=True).clamp(min=0), fw


excitation_backprop = _excitation_method(
    "excitation_backprop",
    _marginal_winning_probability,
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
    """,
    summary="top-down marginal winning probabilities through positive weights",
    aliases=("ebp", "mwp"),
)

contrastive_excitation_backprop = _excitation_method(
    "contrastive_excitation_backprop",
    _contrastive,
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
    """,
    summary="excitation of the class minus that of its dual (negated) classifier",
    aliases=("c_ebp", "c_mwp"),
)
