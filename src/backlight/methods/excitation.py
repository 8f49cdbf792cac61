"""Excitation backprop and contrastive excitation backprop (Zhang et al. 2016)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, cast

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
from .._registry import register_like
from .._result import Explanation
from .._state import Arguments
from .._types import Layer, Target
from ..errors import MethodNotApplicableError
from ..targets import Margin

__all__ = ["contrastive_excitation_backprop", "excitation_backprop"]

#: ``compute(model, x, target, layer, name) -> (maps (N, 1, h, w), the pass)``.
Compute = Callable[[nn.Module, torch.Tensor, Target, Layer | None, str], tuple[torch.Tensor, Any]]


class ExcitationMethod(Protocol):
    """The calling convention of the excitation methods."""

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: Target = None,
        *,
        layer: Layer | None = None,
        resize: bool = False,
    ) -> Explanation: ...


def _excited(compute: Compute, name: str, a: Arguments) -> Explanation:
    """An excitation method: ``compute`` under the excitation rules, then the resize."""
    resize = check_flag("resize", a["resize"])
    if isinstance(a["target"], Margin):
        raise MethodNotApplicableError(
            f"{name} propagates a top-down probability, which must not be negative, and "
            "targets.Margin subtracts the best other class; explain the class (targets.Class) "
            "or use contrastive_excitation_backprop, the excitation method for a contrast"
        )
    maps, done = compute(a["model"], a["x"], a["target"], a["layer"], name)
    return explanation(resize_to(maps, a["x"]) if resize else maps, done)


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


def _excitation_method(name: str, compute: Compute, doc: str) -> ExcitationMethod:
    """Register the excitation method ``name`` that ``compute`` carries out."""
    body = functools.partial(_excited, compute, name)
    made = register_like(
        ExcitationMethod.__call__, body, name, doc, family="excitation", layered=True
    )
    return cast(ExcitationMethod, made)


_EXCITATION_BACKPROP_DOC = """Excitation backprop: top-down marginal winning probabilities through positive weights.

    The marginal winning probability (MWP) map.
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

    Aliases:
        ebp, mwp

    Paper:
        Zhang, Lin, Brandt, Shen & Sclaroff, Top-down Neural Attention by Excitation Backprop,
        ECCV 2016

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> m = backlight.excitation_backprop(model, torch.randn(1, 3, 64, 64), 3, layer="layer2")
        >>> m.shape
        torch.Size([1, 1, 8, 8])
    """

excitation_backprop = _excitation_method(
    "excitation_backprop", _marginal_winning_probability, _EXCITATION_BACKPROP_DOC
)

_CONTRASTIVE_DOC = """Contrastive excitation backprop: the class's excitation minus its dual (negated)
    classifier's.

    c-MWP.
    The excitation reaching the classifier's input ``h`` from the target class, minus the one a
    dual classifier with negated weights ``-W`` sends, is propagated down to ``layer``:
    ``map = ReLU(Σ_c MWP_c(h ⊙ W⁺ᵀ(p ⊘ W⁺h) − h ⊙ (−W)⁺ᵀ(p ⊘ (−W)⁺h)))``. The classifier is the
    last convolution or linear layer of the forward pass. Excitation backprop is linear in the
    signal, so subtracting at ``h`` equals subtracting at any layer between ``h`` and ``layer``
    (TorchRay's ``contrast_layer``). Nothing is negated in the model: the dual is computed
    aside. Arguments as for :func:`backlight.excitation_backprop`.

    Aliases:
        c_ebp, c_mwp

    Paper:
        Zhang, Lin, Brandt, Shen & Sclaroff, Top-down Neural Attention by Excitation Backprop,
        ECCV 2016

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.vgg11(num_classes=10)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> backlight.contrastive_excitation_backprop(model, x, 3, layer="features.10").shape
        torch.Size([1, 1, 8, 8])
    """

contrastive_excitation_backprop = _excitation_method(
    "contrastive_excitation_backprop", _contrastive, _CONTRASTIVE_DOC
)
