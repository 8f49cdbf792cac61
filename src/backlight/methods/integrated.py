"""Path attributions: Input×Gradient, Integrated Gradients and GradientSHAP (expected gradients).

All three read gradients of the class score at points between a baseline ``b`` and the input
``x`` and weight them by ``x − b``. The targets are fixed on the input as given (``None``
means the class predicted for ``x``, not for each point of the path), the points go through
the model in batches (``internal_batch_size``), and the model runs in the explaining state
(eval mode, parameters frozen) throughout, as for every method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import (
    check_flag,
    check_memory,
    check_positive_int,
    check_real,
    check_reduce,
    check_seed,
    is_choice,
)
from .._pipeline import clean_pass, explanation, grad_mode, reduce_channels, run
from .._registry import register
from .._result import Explanation
from .._rules import DeConvNetContext, GuidedBackpropContext
from .._targets import Scorer
from .._types import Reduce, Target
from ..errors import InputError, OptionError
from ._extremal_ops import _gaussian_blur

__all__ = ["gradient_shap", "input_x_gradient", "integrated_gradients"]

Rule = Literal[
    "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]
_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
_GRADIENTS = {"plain": None, "guided": GuidedBackpropContext, "deconvnet": DeConvNetContext}
#: The most points on a path (steps) or draws (samples): beyond, the quadrature's own error is
#: far below float32's, and the index tensors alone would fill memory.
MAX_POINTS = 100_000
#: The most Gauss-Legendre nodes (NumPy finds them from a steps x steps matrix).
MAX_GAUSS_STEPS = 1_000
#: The standard deviation, in pixels, of the Gaussian that makes the ``"blur"`` baseline.
BLUR_SIGMA = 10.0


@register("input_x_gradient", family="attribution", smoothable=True)
def input_x_gradient(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    reduce: Reduce = "sum",
) -> Explanation:
    """Input×Gradient: the input times the gradient of the class score.

    ``map = reduce_c(x ⊙ ∂score/∂x)``: the first-order Taylor term of the score, and the
    Integrated Gradients of a model that is linear on the path from zero, in one backward pass.

    Args:
        reduce: ``"sum"`` over the channels (the default: the map then sums to the first-order
            estimate of the score), ``"abs_max"``, ``"l2"``, or ``None`` to keep the channels
            (Captum's ``InputXGradient``).
        x, target: as for :func:`backlight.gradient`.

    Returns:
        A detached tensor (N, 1, H, W), or (N, C, H, W) with ``reduce=None``.

    Aliases:
        inputxgradient, gradient_x_input

    Paper:
        Shrikumar, Greenside & Kundaje, Learning Important Features Through Propagating
        Activation Differences, ICML 2017

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> backlight.input_x_gradient(model, torch.randn(2, 3, 64, 64), [1, 2]).shape
        torch.Size([2, 1, 64, 64])
    """
    reduce = check_reduce(reduce)
    capture = run(model, x, target, method="input_x_gradient")
    assert capture.gradient is not None
    return explanation(reduce_channels(capture.activation * capture.gradient, reduce), capture)


def quadrature(steps: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The points ``α_k`` in [0, 1] and weights ``w_k`` of ``rule`` with ``steps`` points:
    ``∫₀¹ g(α) dα ≈ Σ_k w_k g(α_k)``, in float64. The weights sum to 1 for every rule; for the
    trapezoid that is ``1/(steps − 1)`` per interval (Captum's ``riemann_trapezoid`` uses
    ``1/steps`` with the ends halved, which sums to ``(steps − 1)/steps``, so its attributions
    fall short of completeness by ``1/steps``)."""
    if rule == "gausslegendre":
        if steps > MAX_GAUSS_STEPS:
            raise OptionError(
                f"`steps` must be at most {MAX_GAUSS_STEPS} with rule='gausslegendre' (its nodes "
                f"cost steps² memory), not {steps}; use a riemann rule for more"
            )
        nodes, gauss = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(gauss / 2)
    k = torch.arange(steps, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise OptionError("`steps` must be at least 2 for the trapezoid rule")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    return (k + offset) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)


def _baseline(baseline: Any, x: torch.Tensor) -> torch.Tensor:
    """The baseline, one per sample, shaped like ``x``."""
    if baseline is None or (isinstance(baseline, str) and baseline == "zeros"):
        return torch.zeros_like(x)
    if isinstance(baseline, str) and baseline == "blur":
        return _gaussian_blur(x, BLUR_SIGMA)
    if isinstance(baseline, str) and baseline == "uniform":
        # one noise image from a fixed seed, scaled to each sample's range: the same baseline
        # for a sample whatever the batch it comes in
        noise = torch.rand(
            (1, *x.shape[1:]), generator=torch.Generator().manual_seed(0), dtype=torch.float64
        ).to(x.device, x.dtype)
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        return low + noise * (high - low)
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.detach().to(x.device, x.dtype), x.shape).clone()
        except RuntimeError as e:
            raise InputError(
                f"`baseline` of shape {tuple(baseline.shape)} does not broadcast to the input's "
                f"{tuple(x.shape)}"
            ) from e
    raise OptionError(
        "`baseline` must be None or 'zeros', 'blur', 'uniform', or a tensor broadcastable to x, "
        f"not {baseline!r}"
    )


def _gradient_rule(gradient: Any, clipped_relu: bool = True) -> Callable[[], Any] | None:
    if not is_choice(gradient, tuple(_GRADIENTS)):
        raise OptionError(f"`gradient` must be 'plain', 'guided' or 'deconvnet', not {gradient!r}")
    context = _GRADIENTS[gradient]
    if context is None:
        return None
    return lambda: context(warn=False, clipped_relu=clipped_relu)


def path_gradients(
    model: nn.Module,
    x: torch.Tensor,
    scorer: Scorer,
    path: Callable[[slice], tuple[torch.Tensor, torch.Tensor]],
    alphas: torch.Tensor,
    weights: torch.Tensor,
    rows: torch.Tensor,
    *,
    batch_size: int,
    rule: Callable[[], Any] | None,
    method: str,
    progress: bool,
    multiply: bool,
) -> torch.Tensor:
    """``Σ_j w_j (e_j − s_j) ⊙ ∇score_{rows_j}(s_j + α_j (e_j − s_j))`` per sample (N, C, H, W),
    float64 (without ``(e_j − s_j)`` unless ``multiply``): the weighted gradients at the points
    of the paths from ``s_j`` to ``e_j`` (``path(chunk)`` gives a chunk's, made one chunk at a
    time; ``rows_j`` is the sample point ``j`` belongs to), ``batch_size`` points per forward
    pass. Runs inside the caller's :func:`clean_pass`."""
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    count = rows.shape[0]
    bar = tqdm(total=count, desc=method, unit="pt", disable=not progress, leave=False)
    with bar, grad_mode():
        for start in range(0, count, batch_size):
            chunk = slice(start, min(start + batch_size, count))
            a = alphas[chunk].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            begin, end = path(chunk)
            point = (begin + a * (end - begin)).detach()
            point.requires_grad_(True)
            entered = rule() if rule is not None else None
            with entered if entered is not None else contextlib.nullcontext():
                output = model(point.clone())  # a private copy: the model may write into it
            scores = scorer(output, rows[chunk])
            if entered is not None:
                entered.verify(model, scores, method)
            (grad,) = torch.autograd.grad(scores.sum(), point)
            w = weights[chunk].to(total).view(-1, *([1] * (x.dim() - 1)))
            term = grad.to(total) * w
            if multiply:
                term *= (end - begin).to(total)
            total.index_add_(0, rows[chunk], term)
            bar.update(chunk.stop - chunk.start)
    return total


@register(
    "integrated_gradients",
    family="attribution",
    quick={"steps": 8, "progress": False},
    demo={"steps": 16},
)
def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    baseline: Literal["zeros", "blur", "uniform"] | torch.Tensor | None = None,
    steps: int = 50,
    rule: Rule = "gausslegendre",
    internal_batch_size: int | None = None,
    reduce: Reduce = "sum",
    multiply_by_input: bool = True,
    gradient: Literal["plain", "guided", "deconvnet"] = "plain",
    progress: bool = True,
) -> Explanation:
    """Integrated Gradients: the gradient averaged along the straight path from a baseline to the
    input, times the input minus the baseline.

    ``attr = (x − b) ⊙ ∫₀¹ ∂score(b + α(x − b))/∂x dα ≈ (x − b) ⊙ Σ_k w_k ∂score(b + α_k(x − b))``.
    Completeness: ``Σ attr = score(x) − score(b)`` up to the quadrature error; the result's
    ``delta`` is that error, per sample (Captum's convergence delta). The map is
    ``reduce_c(attr)``; with ``"sum"`` (the default) it sums to ``score(x) − score(b)``.

    Args:
        baseline: ``None`` or ``"zeros"`` (the paper's black image, in the model's input
            space), ``"blur"`` (the input blurred by a Gaussian of σ = 10 pixels), ``"uniform"``
            (one fixed noise image, uniform between each sample's min and max), or a tensor
            broadcastable to ``x``.
        steps: the number of points on the path.
        rule: the quadrature: ``"gausslegendre"`` (Captum's default, exact for polynomials of
            degree ``2·steps − 1``), ``"riemann_left"``, ``"riemann_right"``,
            ``"riemann_middle"`` or ``"riemann_trapezoid"`` (weights summing to 1; Captum's
            trapezoid weights sum to ``1 − 1/steps``).
        internal_batch_size: points per forward pass; ``None`` for one point per sample
            (``N`` per pass: memory as for one gradient), unlike Captum, where ``None`` is
            every point at once.
        reduce: ``"sum"`` (default), ``"abs_max"``, ``"l2"``, or ``None`` to keep the channels.
        multiply_by_input: multiply by ``x − b`` (the paper); ``False`` returns the averaged
            gradient alone.
        gradient: ``"plain"``; ``"guided"`` or ``"deconvnet"`` integrate the guided or deconvnet
            signal instead (Integrated Guided Backprop). Those are not the gradient, so
            completeness does not hold; ``delta`` says by how much it fails.
        progress: show a progress bar over the points.
        x, target: as for :func:`backlight.gradient`.

    Returns:
        A detached tensor (N, 1, H, W), or (N, C, H, W) with ``reduce=None``; ``.delta`` (N,)
        the completeness error, ``.baseline`` the baseline used.

    Aliases:
        ig, integrated_gradient

    Quick:
        steps=8 (Gauss-Legendre; 1/6 of the passes): correlation ≥ 0.98 with the default's map
        on the demo model.

    Paper:
        Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, ICML 2017

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> ig = backlight.integrated_gradients(model, torch.randn(1, 3, 64, 64), 3, steps=16,
        ...                                     progress=False)
        >>> ig.shape, bool(ig.delta.abs() < 1e-2 * ig.maps.abs().sum())
        (torch.Size([1, 1, 64, 64]), True)
    """
    steps = check_positive_int("steps", steps, high=MAX_POINTS)
    if not is_choice(rule, _RULES):
        raise OptionError(f"`rule` must be one of {', '.join(_RULES)}, not {rule!r}")
    reduce = check_reduce(reduce)
    multiply_by_input = check_flag("multiply_by_input", multiply_by_input)
    progress = check_flag("progress", progress)
    context = _gradient_rule(gradient)
    alphas, weights = quadrature(steps, rule)
    with clean_pass(model, x, target) as clean:
        x, scorer = clean.x, clean.scorer
        n = x.shape[0]
        batch = n if internal_batch_size is None else internal_batch_size
        batch = check_positive_int("internal_batch_size", batch)
        b = _baseline(baseline, x)
        with torch.no_grad():
            score_x = scorer(clean.output)
            score_b = scorer(model(b.clone()))
        rows = torch.arange(n, device=x.device).repeat(steps)  # step-major: one step a pass
        total = path_gradients(
            clean.model,
            x,
            scorer,
            lambda chunk: (b[rows[chunk]], x[rows[chunk]]),
            alphas.repeat_interleave(n),
            weights.repeat_interleave(n),
            rows,
            batch_size=batch,
            rule=context,
            method="integrated_gradients",
            progress=progress,
            multiply=multiply_by_input,
        )
    attr = total
    delta = attr.sum(dim=tuple(range(1, x.dim()))) - (score_x - score_b).to(attr)
    return Explanation.make(
        reduce_channels(attr.to(x.dtype), reduce),
        targets=scorer.explained,
        scores=score_x,
        output=clean.logits,
        delta=delta.to(x.dtype),
        baseline=b,
    )


@register(
    "gradient_shap",
    family="attribution",
    quick={"samples": 8, "progress": False},
)
def gradient_shap(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    baselines: torch.Tensor | None = None,
    samples: int = 20,
    stdev: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    reduce: Reduce = "sum",
    multiply_by_input: bool = True,
    progress: bool = True,
) -> Explanation:
    """GradientSHAP: expected gradients over random baselines, random points of the path and
    noisy inputs.

    Expected gradients: ``attr = E_{b, α, ε}[(x + ε − b) ⊙ ∂score(b + α(x + ε − b))/∂x]`` with
    ``b`` drawn uniformly from ``baselines``, ``α ~ U(0, 1)`` and ``ε ~ N(0, stdev²)``,
    estimated with ``samples`` draws: Integrated Gradients averaged over a distribution of
    baselines, one random point per path. The draws come from ``seed`` alone and are shared by
    every sample of the batch (a batch gives the maps of its samples one by one).

    Args:
        baselines: (B, C, H, W) the baselines to draw from (a sample of the training data, for
            expected gradients); ``None`` for the zero image alone.
        samples: the number of draws per sample.
        stdev: the standard deviation of the Gaussian noise added to the input (in the input's
            units; Captum's ``stdevs``).
        seed: seeds the draws.
        batch_size: points per forward pass.
        reduce: ``"sum"`` (default), ``"abs_max"``, ``"l2"``, or ``None`` to keep the channels.
        multiply_by_input: multiply each gradient by ``x + ε − b`` (the default, as Captum).
        progress: show a progress bar over the points.
        x, target: as for :func:`backlight.gradient`.

    Returns:
        A detached tensor (N, 1, H, W), or (N, C, H, W) with ``reduce=None``.

    Aliases:
        gradshap, expected_gradients

    Quick:
        samples=8 (2/5 of the passes): correlation ≥ 0.95 with the default's map on the demo
        model (both with the seed 0).

    Paper:
        Lundberg & Lee, A Unified Approach to Interpreting Model Predictions, NeurIPS 2017;
        Erion, Janizek, Sturmfels, Lundberg & Lee, Improving performance of deep learning
        models with axiomatic attribution priors and expected gradients, Nature MI 2021

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> references = torch.randn(8, 3, 64, 64)
        >>> backlight.gradient_shap(model, torch.randn(2, 3, 64, 64), [1, 2],
        ...                         baselines=references, samples=4, progress=False).shape
        torch.Size([2, 1, 64, 64])
    """
    samples = check_positive_int("samples", samples, high=MAX_POINTS)
    stdev = check_real("stdev", stdev, low=0.0)
    seed = check_seed(seed)
    with clean_pass(model, x, target) as clean:
        x = clean.x
        references = _references(baselines, x)
        check_memory(
            x.element_size() * samples * x[0].numel(),
            x.device,
            what=f"`samples`={samples} noise draws",
            fix="lower samples",
        )
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randint(references.shape[0], (samples,), generator=generator)
        noise = torch.randn((samples, *x.shape[1:]), generator=generator, dtype=torch.float64)
        noise = (stdev * noise).to(x)
        alphas = torch.rand((samples,), generator=generator, dtype=torch.float64)
        n = x.shape[0]
        # sample-major points: sample i's are draws 0..samples-1, whatever the batch
        draw = torch.arange(samples).repeat(n)
        rows = torch.arange(n).repeat_interleave(samples)

        def path(chunk: slice) -> tuple[torch.Tensor, torch.Tensor]:
            d = draw[chunk]
            return references[chosen[d]], x[rows[chunk]] + noise[d]

        return _expected_gradients(
            clean, path, alphas[draw], samples, batch_size, reduce, multiply_by_input, progress
        )


def _references(baselines: Any, x: torch.Tensor) -> torch.Tensor:
    if baselines is None:
        return torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
    if not isinstance(baselines, torch.Tensor) or baselines.dim() != x.dim():
        raise InputError(
            f"`baselines` must be a tensor (B, {', '.join(map(str, x.shape[1:]))}) of references "
            f"to draw from, not {type(baselines).__name__}"
            + (f" of shape {tuple(baselines.shape)}" if isinstance(baselines, torch.Tensor) else "")
        )
    if baselines.shape[1:] != x.shape[1:] or baselines.shape[0] < 1:
        raise InputError(
            f"`baselines` must be (B, {', '.join(map(str, x.shape[1:]))}) like the input's "
            f"samples, got {tuple(baselines.shape)}"
        )
    return baselines.detach().to(x.device, x.dtype)


def _expected_gradients(
    clean: Any,
    path: Callable[[slice], tuple[torch.Tensor, torch.Tensor]],
    alphas: torch.Tensor,
    draws: int,
    batch_size: Any,
    reduce: Any,
    multiply_by_input: Any,
    progress: Any,
) -> Explanation:
    """GradientSHAP from given draws (``draws`` points per sample, sample-major; ``path`` gives
    each point's baseline and noisy input): the mean over each sample's points of
    ``(e − s) ⊙ ∇score(s + α(e − s))``. Runs inside ``clean``'s pass; the parity test gives it
    Captum's draws."""
    batch_size = check_positive_int("batch_size", batch_size)
    reduce = check_reduce(reduce)
    multiply_by_input = check_flag("multiply_by_input", multiply_by_input)
    progress = check_flag("progress", progress)
    x, scorer = clean.x, clean.scorer
    rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(draws)
    total = path_gradients(
        clean.model,
        x,
        scorer,
        path,
        alphas,
        torch.full((rows.shape[0],), 1.0 / draws, dtype=torch.float64),
        rows,
        batch_size=batch_size,
        rule=None,
        method="gradient_shap",
        progress=progress,
        multiply=multiply_by_input,
    )
    with torch.no_grad():
        scores = scorer(clean.output)
    return Explanation.make(
        reduce_channels(total.to(x.dtype), reduce),
        targets=scorer.explained,
        scores=scores,
        output=clean.logits,
    )
