"""Extremal perturbation: the smooth mask of a given area that keeps (or removes) most evidence.

Every image of the batch and every requested area is one mask, and all of them are optimised
together: one backward pass per iteration, and one forward pass per input image that takes all
of its areas at once. Nothing couples two masks: each has its own reward and area penalty, the
optimiser's update is elementwise, the model runs in eval mode, the jitter schedule depends
only on the iteration and the seed, and each image's perturbed copies go through the model in
a pass of their own, so a batch gives exactly the masks its images give one at a time.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import (
    check_autocast,
    check_flag,
    check_input,
    check_memory,
    check_model,
    check_positive_real,
    check_seed,
    is_choice,
)
from .._checks import check_fraction as _fraction
from .._checks import check_positive_int as _positive_int
from .._pipeline import Clean, clean_pass
from .._registry import register
from .._result import Explanation
from .._types import Target
from ..errors import OptionError
from ._extremal_ops import MaskGenerator, area_penalty, blur_pyramid, fade_pyramid, perturb
from ._forward import Forward

__all__ = ["extremal_perturbation"]

Variant: TypeAlias = Literal["preserve", "delete", "dual"]
Jitter: TypeAlias = Literal["alternate", "random"] | None
Perturbation: TypeAlias = Literal["blur", "fade"]
Schedule: TypeAlias = Literal["torchray", "fast"]

#: More blur levels than this are no finer to the eye and cost a blur each.
_MAX_LEVELS = 256

# TorchRay's optimiser and schedule (extremal_perturbation.py), which the paper's results use.
_LEARNING_RATE = 0.01
_MOMENTUM = 0.9
_PENALTY_WEIGHT = 300.0
_PENALTY_GROWTH = 1.0035
_TORCHRAY_ITER = 800

#: The early stop compares each mask with itself this many iterations before.
_SETTLE_WINDOW = 10
#: ... and accepts it only if its area (pixels >= 0.5) is within this fraction of the area asked:
#: TorchRay's own 800-step masks are 4% (ResNet-18, 224 px) to 16% (32 px) over their area.
_AREA_SLACK = 0.2


@register(
    "extremal_perturbation",
    family="perturbation",
    quick={"schedule": "fast", "max_iter": 100, "tolerance": 0.01, "progress": False},
    demo={"schedule": "torchray", "max_iter": 300, "tolerance": None},
)
def extremal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    areas: float | Sequence[float] = (0.1,),
    variant: Variant = "preserve",
    max_iter: int = 800,
    schedule: Schedule = "torchray",
    tolerance: float | None = None,
    step: int | None = None,
    sigma: float | None = None,
    perturbation: Perturbation = "blur",
    num_levels: int = 8,
    max_blur: float | None = None,
    contrastive: bool = False,
    area_with_margin: bool = False,
    jitter: Jitter = "alternate",
    seed: int = 0,
    autocast: torch.dtype | None = None,
    progress: bool = True,
) -> Explanation:
    """Extremal perturbation: the smooth mask of a fixed area that best preserves (or deletes) the
    class.

    For each area ``a``, the smooth mask ``m`` whose area is ``a`` and that keeps the most
    evidence for the target: ``m_a = argmax_m Φ(m ⊗ x) - λ_t ‖sort(m) - r_a‖²``, with
    ``m ⊗ x`` the image blurred where the mask is 0, ``Φ`` the target's score and ``r_a`` the
    sorted mask of area ``a`` (zeros, then a fraction ``a`` of ones). The weight
    ``λ_t = 300 · 1.0035^t`` grows with the iterations, so the area constraint is enforced more
    and more strictly. The mask is the smooth maximum of a grid of parameters, one every
    ``step`` pixels, optimised by SGD (learning rate 0.01, momentum 0.9, dampening 0.9) from all
    ones: TorchRay's defaults and schedule, which the paper's results come from.

    Args:
        model: the network; it runs in eval mode with frozen parameters and is restored after.
        x: a float tensor (N, C, H, W) on the model's device.
        target: ``None`` for each image's predicted class, an int, one class per image, or a
            callable that maps the output of a batch of perturbed images to one score per image.
        areas: one area or several (fractions in (0, 1)); all are optimised at once.
        variant: ``"preserve"`` (keep the region: the image outside it is blurred),
            ``"delete"`` (blur the region to lower the score) or ``"dual"`` (both; the reward
            is the preserved image's score minus the deleted image's).
        max_iter: optimisation steps (800 as TorchRay); the bound when ``tolerance`` is set.
        schedule: ``"torchray"`` (learning rate 0.01, weight growth 1.0035 per step, whatever
            ``max_iter``: TorchRay's and the paper's) or ``"fast"``: the same schedule compressed
            into ``max_iter`` steps, the learning rate and the growth's exponent both scaled by
            ``800 / max_iter``, so that the penalty's weight ends where TorchRay's ends after
            800 steps. The two are the same at ``max_iter=800``. An approximation of
            TorchRay's result, not the default: on a ResNet-18 at 224 px,
            ``schedule="fast", max_iter=200, tolerance=0.01`` stopped after 140 steps, 7.3x
            to 9.8x sooner than TorchRay's 800 (two runs), with a mask of IoU 0.91 with
            TorchRay's and a reward 0.6% lower; on the small demo model its masks differ more
            (IoU 0.50 to 0.81), as do TorchRay's own after 400 steps (0.84) and after 800
            steps on the image with noise of standard deviation 0.003 added (0.64 to 0.95).
            See BENCHMARKS.md.
        tolerance: ``None`` runs every step. A number stops each mask early once it has
            settled: every ``10`` steps, a mask whose largest pixel change over the last 10 steps
            is at most ``tolerance`` and whose area (the pixels of value 0.5 or more, counted as
            the area penalty counts them) is within 20% of the area asked is frozen; the run ends
            when every mask is. A mask never stops before it meets its area. The benchmarks
            use ``0.01``.
        step: pixels between the mask's parameters; ``None`` for TorchRay's 7 at 224 pixels,
            in proportion to the image's shorter side for other sizes (at least 1), which keeps
            the number of parameters, and so the optimisation's behaviour, the same.
        sigma: smoothness of the mask in pixels; ``None`` for ``3 · step`` (TorchRay's 21).
        perturbation: ``"blur"`` (a Gaussian blur pyramid) or ``"fade"`` (fade to zero).
        num_levels: levels of the perturbation pyramid (8).
        max_blur: standard deviation of the strongest blur in pixels; ``None`` for TorchRay's
            20 at 224 pixels, in proportion to the shorter side for other sizes.
        contrastive: reward the target's margin over the best other class instead of its score.
        area_with_margin: measure the area over the mask and its margin of ``sigma`` pixels
            around the image, as TorchRay does; the mask then covers about
            ``a · (1 + 2 σ / H) (1 + 2 σ / W)`` of the image (1.35 a at 224x224 with σ = 21).
            By default the area is the fraction of the image, as the paper defines it.
        jitter: ``"alternate"`` flips the perturbed images horizontally at even iterations (what
            TorchRay's code does; its docstring says "randomly"), ``"random"`` flips at the
            iterations a generator seeded with ``seed`` picks, ``None`` never flips.
        seed: seed of the ``"random"`` jitter.
        autocast: ``torch.bfloat16`` (or ``torch.float16``) runs the model's forward and
            backward passes of the optimisation under :func:`torch.autocast`, in reduced
            precision, channels-last on CPU, on a private copy of the model whose convolution
            and linear weights are cast once: about 2 times faster per iteration on a CPU
            with AMX (ResNet-18, see BENCHMARKS.md), also on GPUs. An approximation: the masks
            differ from the float32 ones about as much as two runs whose ties break
            differently. The final scores are computed in full precision.
        progress: show a progress bar on stderr.

    Returns:
        An :class:`~backlight.Explanation` whose maps are the masks (N, A, H, W) in [0, 1], one
        per image and area at the input's size (1 keeps the pixel, 0 blurs it fully), also as
        ``.masks``; ``.scores`` (N, A) the target's score (as the reward counts it: the class
        score, or its margin over the best other class with ``contrastive=True``) on the image
        perturbed by each mask (preserved for "preserve" and "dual", deleted for "delete");
        ``.history`` (N, A, 2, T) per iteration the reward (row 0) and the area term of
        the energy (row 1, ``-weight · mean((sorted mask - step)²)``, never positive), with
        ``T`` the steps run (``max_iter`` unless every mask stopped early) and NaN after a
        mask's own stop; ``.iterations`` (N, A) the steps each mask was optimised for;
        ``.areas`` and ``.variant``.

    Aliases:
        extremal

    Quick:
        schedule="fast", max_iter=100, tolerance=0.01 (at most 1/8 of the steps): mask IoU ≥
        0.7 with the default's mask on the demo model.

    Paper:
        Fong, Patrick & Vedaldi, Understanding Deep Networks via Extremal Perturbations and
        Smooth Masks, ICCV 2019

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> x = torch.randn(1, 3, 32, 32)
        >>> result = backlight.extremal_perturbation(
        ...     model, x, 3, areas=[0.1, 0.3], max_iter=5, progress=False
        ... )
        >>> result.masks.shape, result.scores.shape
        (torch.Size([1, 2, 32, 32]), torch.Size([1, 2]))
    """
    model = check_model(model)
    x = check_input(x, model)
    problem = _Problem.check(
        x,
        areas=areas,
        variant=variant,
        max_iter=max_iter,
        schedule=schedule,
        tolerance=tolerance,
        step=step,
        sigma=sigma,
        perturbation=perturbation,
        num_levels=num_levels,
        max_blur=max_blur,
        area_with_margin=area_with_margin,
        jitter=jitter,
        seed=seed,
    )
    contrastive = check_flag("contrastive", contrastive)
    progress = check_flag("progress", progress)
    autocast = check_autocast(autocast)
    n, a = x.shape[0], len(problem.areas)
    with clean_pass(model, x, target, contrastive=contrastive) as clean:
        x = clean.x
        with torch.no_grad():
            pyramid = problem.pyramid(x)
        # under autocast: channels-last batches and a copy of the model with its weights cast
        forward = Forward(model, x, autocast=autocast, channels_last=autocast is not None)
        mask, history, iterations = _optimise(problem, forward, pyramid, clean, progress)
        with torch.no_grad():
            final = _perturbed(pyramid, mask, problem.variant, n, a)[:, :a]
            scores = _scores(model, final, clean)
    masks = mask.view(n, a, *x.shape[-2:]).clone()
    return Explanation.make(
        masks,
        targets=clean.scorer.explained,
        scores=scores.clone(),
        output=clean.logits,
        masks=masks,
        history=history.view(n, a, 2, history.shape[-1]).cpu(),
        iterations=iterations.view(n, a).cpu(),
        areas=problem.areas,
        variant=problem.variant,
    )


@dataclass(frozen=True)
class _Problem:
    """The optimisation's settings, checked, and what follows from them and the image size."""

    areas: tuple[float, ...]
    variant: Variant
    max_iter: int
    schedule: Schedule
    tolerance: float | None
    perturbation: Perturbation
    num_levels: int
    max_blur: float
    area_with_margin: bool
    flips: tuple[bool, ...]
    generator: MaskGenerator

    @staticmethod
    def check(x: torch.Tensor, **options: Any) -> _Problem:
        area_list = _areas(options["areas"])
        variant, perturbation, jitter = (
            options["variant"],
            options["perturbation"],
            options["jitter"],
        )
        if not is_choice(variant, ("preserve", "delete", "dual")):
            raise OptionError(f"`variant` must be 'preserve', 'delete' or 'dual', not {variant!r}")
        if not is_choice(perturbation, ("blur", "fade")):
            raise OptionError(f"`perturbation` must be 'blur' or 'fade', not {perturbation!r}")
        if not is_choice(jitter, ("alternate", "random", None)):
            raise OptionError(f"`jitter` must be 'alternate', 'random' or None, not {jitter!r}")
        max_iter = _positive_int("max_iter", options["max_iter"])
        schedule, tolerance = options["schedule"], options["tolerance"]
        if not is_choice(schedule, ("torchray", "fast")):
            raise OptionError(f"`schedule` must be 'torchray' or 'fast', not {schedule!r}")
        if tolerance is not None:
            tolerance = check_positive_real("tolerance", tolerance)
        num_levels = _positive_int("num_levels", options["num_levels"], high=_MAX_LEVELS)
        if num_levels < 2:
            raise OptionError(f"`num_levels` must be at least 2, not {num_levels}")
        # Beyond the image's long side a step, a smoothness or a blur means nothing more.
        side = max(x.shape[-2:])
        scale = min(x.shape[-2:]) / 224
        step, sigma, max_blur = options["step"], options["sigma"], options["max_blur"]
        step = max(1, round(7 * scale)) if step is None else _positive_int("step", step, high=side)
        sigma = 3.0 * step if sigma is None else check_positive_real("sigma", sigma, high=side)
        max_blur = (
            20.0 * scale
            if max_blur is None
            else check_positive_real("max_blur", max_blur, high=side)
        )
        margin = check_flag("area_with_margin", options["area_with_margin"])
        seed = check_seed(options["seed"])
        generator = MaskGenerator((int(x.shape[-2]), int(x.shape[-1])), step, sigma)
        _check_memory(x, len(area_list), num_levels, max_iter, generator)
        flips = tuple(_flips(jitter, seed, max_iter))
        return _Problem(
            tuple(area_list),
            variant,
            max_iter,
            schedule,
            tolerance,
            perturbation,
            num_levels,
            max_blur,
            margin,
            flips,
            generator,
        )

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L, C, H, W) perturbed levels, from the most perturbed to ``x`` itself, and the
        differences between consecutive levels (the last one zero)."""
        if self.perturbation == "blur":
            levels = blur_pyramid(x, self.num_levels, self.max_blur)
        else:
            levels = fade_pyramid(x, self.num_levels)
        steps = torch.cat([levels[:, 1:] - levels[:, :-1], torch.zeros_like(levels[:, :1])], dim=1)
        return levels, steps

    def kept(self, n: int, device: torch.device) -> torch.Tensor:
        """(N · A,) how many pixels of each mask the area constraint keeps."""
        full = self.generator.full
        h, w = self.generator.shape
        counted = full[0] * full[1] if self.area_with_margin else h * w
        counts = [counted - int(counted * (1 - area)) for area in self.areas] * n
        return torch.tensor(counts, device=device)

    def rates(self) -> tuple[float, float]:
        """The learning rate and the penalty weight's growth per step."""
        if self.schedule == "torchray":
            return _LEARNING_RATE, _PENALTY_GROWTH
        stretch = _TORCHRAY_ITER / self.max_iter
        return _LEARNING_RATE * stretch, _PENALTY_GROWTH**stretch


def _optimise(
    problem: _Problem,
    forward: Forward,
    pyramid: tuple[torch.Tensor, torch.Tensor],
    clean: Clean,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TorchRay's optimisation of every mask at once: SGD with momentum on the parameter grids,
    the area penalty's weight growing each step. Returns the final masks (N · A, H, W), the
    history (N · A, 2, T) of the reward and the area term, and the steps of each mask (N · A,).

    A mask that has settled (``problem.tolerance``) keeps its parameters from then on: it still
    goes through the model with the others, but nothing of it changes, so each mask's result is
    the same whatever the other masks of the batch do."""
    x, n, a = clean.x, clean.x.shape[0], len(problem.areas)
    generator = problem.generator
    weights = generator.weights(x.device, x.dtype)
    params = x.new_ones(n * a, 1, *generator.grid)
    kept = problem.kept(n, x.device)
    history = x.new_full((n * a, 2, problem.max_iter), float("nan"))
    iterations = torch.full((n * a,), problem.max_iter, dtype=torch.long)
    running = torch.ones(n * a, dtype=torch.bool, device=x.device)
    learning_rate, growth = problem.rates()
    velocity: torch.Tensor | None = None
    before: torch.Tensor | None = None
    weight = _PENALTY_WEIGHT
    bar = tqdm(
        total=problem.max_iter, desc="extremal perturbation", unit="step", disable=not progress
    )
    with torch.enable_grad(), bar:
        for t in range(problem.max_iter):
            params.requires_grad_(True)
            mask, full = generator(params, weights, margin=problem.area_with_margin)
            if problem.tolerance is not None and t % _SETTLE_WINDOW == 0:
                before = _settle(problem, mask, full, kept, before, running, iterations, t)
                if not running.any():
                    break
            images = _perturbed(pyramid, mask, problem.variant, n, a)
            if problem.flips[t]:
                images = images.flip(dims=(4,))
            reward = _reward(_scores(forward, images, clean), problem.variant, a)
            penalty = -weight * area_penalty(mask if full is None else full, kept)
            (grad,) = torch.autograd.grad(-(reward + penalty).sum(), params)
            with torch.no_grad():
                velocity = (
                    grad
                    if velocity is None
                    else velocity.mul_(_MOMENTUM).add_(grad, alpha=1 - _MOMENTUM)
                )
                stepped = (params.detach() - learning_rate * velocity).clamp_(0, 1)
                params = torch.where(running[:, None, None, None], stepped, params.detach())
                history[running, 0, t] = reward.detach()[running]
                history[running, 1, t] = penalty.detach()[running]
            weight *= growth
            bar.update()
    steps = int(iterations.max())
    return mask.detach(), history[..., :steps].contiguous(), iterations


def _settle(
    problem: _Problem,
    mask: torch.Tensor,
    full: torch.Tensor | None,
    kept: torch.Tensor,
    before: torch.Tensor | None,
    running: torch.Tensor,
    iterations: torch.Tensor,
    t: int,
) -> torch.Tensor:
    """Freeze (in ``running`` and ``iterations``, in place) the masks that have changed by at
    most the tolerance since ``before`` and meet their area; returns the masks to compare with
    next time."""
    now = mask.detach()
    if before is not None:
        change = (now - before).abs().flatten(1).amax(dim=1)
        counted = (now if full is None else full.detach()).flatten(1)
        area = (counted >= 0.5).sum(dim=1)
        meets = (area - kept).abs() <= _AREA_SLACK * kept
        done = running & (change <= float(problem.tolerance or 0)) & meets
        iterations[done.cpu()] = t
        running &= ~done
    return now.clone()


def _perturbed(
    pyramid: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor, variant: str, n: int, a: int
) -> torch.Tensor:
    """The images the model sees, (N, copies · A, C, H, W): for "dual" the A preserved images
    of each input, then its A deleted ones."""
    mask = mask.view(n, a, *mask.shape[1:])
    if variant == "preserve":
        return perturb(*pyramid, mask)
    if variant == "delete":
        return perturb(*pyramid, 1 - mask)
    return torch.cat([perturb(*pyramid, mask), perturb(*pyramid, 1 - mask)], dim=1)


def _scores(
    forward: Callable[[torch.Tensor], Any], images: torch.Tensor, clean: Clean
) -> torch.Tensor:
    """The target's score of every perturbed image, (N, copies · A).

    Each input's images go through the model in a forward pass of their own: the arithmetic of
    a forward pass can depend on the batch size (oneDNN picks its kernels by shape), and the
    area penalty's ranking makes the optimisation sensitive to the last bit, so one pass per
    input is what makes a batch give exactly the masks of its inputs run one at a time. A model
    that writes into its input gets each batch as a copy (autograd forbids writing into the
    views that iterating over ``images`` gives).
    """
    rows = []
    for i, batch in enumerate(images):
        output = forward(batch.clone() if clean.writes_input else batch)
        sample = torch.full((batch.shape[0],), i, device=batch.device)
        rows.append(clean.scorer(output, sample))
    return torch.stack(rows)


def _check_memory(
    x: torch.Tensor, areas: int, levels: int, max_iter: int, generator: MaskGenerator
) -> None:
    """Refuse settings whose tensors cannot fit, before allocating them: the pyramid and its
    steps, the perturbed images, the smooth maximum's neighbourhoods and the history."""
    n, c, h, w = x.shape
    masks = n * areas
    neighbours = (2 * generator.radius + 1) ** 2
    elements = (
        2 * n * levels * c * h * w
        + 3 * masks * c * h * w
        + 3 * masks * neighbours * generator.cells[0] * generator.cells[1]
        + 2 * masks * max_iter
    )
    check_memory(
        elements * x.element_size() + 8 * neighbours * generator.step**2,
        x.device,
        what=f"extremal perturbation with `max_iter`={max_iter}, `num_levels`={levels}, "
        f"`step`={generator.step}, `sigma`={generator.sigma:g} on {n} image(s) and {areas} "
        "area(s)",
        fix="lower sigma, num_levels or max_iter, or explain fewer images at once",
    )


def _reward(scores: torch.Tensor, variant: str, a: int) -> torch.Tensor:
    """The reward of each mask, flattened to (N · A,)."""
    if variant == "preserve":
        reward = scores
    elif variant == "delete":
        reward = -scores
    else:
        reward = scores[:, :a] - scores[:, a:]
    return reward.reshape(-1)


def _flips(jitter: Jitter, seed: int, max_iter: int) -> list[bool]:
    if jitter is None:
        return [False] * max_iter
    if jitter == "alternate":
        return [t % 2 == 0 for t in range(max_iter)]
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(max_iter, generator=generator) < 0.5).tolist()


def _areas(areas: Any) -> list[float]:
    values = [areas] if isinstance(areas, numbers.Real) else areas
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise OptionError(
            f"`areas` must be a fraction or a non-empty list of fractions, not {areas!r}"
        )
    return [_fraction("areas", v, closed=False) for v in values]
