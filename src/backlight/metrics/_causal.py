"""Deletion and insertion, the causal metrics of RISE (Petsiuk, Das & Saenko, BMVC 2018).

Pixels are changed in order of decreasing saliency, ``⌈H·W / steps⌉`` per step, from a start
image towards a finish image, and the class probability is recorded after each step: deletion
goes from the image to zeros (a good map makes the probability drop fast: low area under the
curve), insertion from a blurred copy to the image (a good map makes it rise fast: high area).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_input, check_memory, check_model, check_positive_real
from .._keras import adapt
from .._pipeline import clean_pass
from .._state import Arguments, autograd_on, shaped_like
from .._targets import Probability, check_probability, is_score_function
from .._types import Target
from ..errors import InputError, OptionError, TargetError
from ..methods._forward import Forward
from ._common import flag, positive_int, resize_maps, saliency_batch

__all__ = ["PerturbationCurves", "blur", "deletion", "insertion"]

#: What the pixels are replaced with (deletion) or start from (insertion).
Substrate: TypeAlias = (
    Literal["zeros", "blur"] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None
)


@dataclass(frozen=True)
class PerturbationCurves:
    """The curves and areas of a deletion or insertion run.

    Attributes:
        mode: ``"deletion"`` or ``"insertion"``.
        curves: ``(N, steps + 1)`` float64 scores, after 0, 1, …, ``steps`` steps.
        auc: ``(N,)`` float64 areas under the curves, trapezoid rule on ``x``.
        x: ``(steps + 1,)`` the normalised x axis ``i / steps``.
        fractions: ``(steps + 1,)`` the fraction of pixels changed after each step
            (``min(i · pixels_per_step, H·W) / (H·W)``).
        pixels_per_step: ``⌈H·W / steps⌉``.
        classes: ``(N,)`` the class each curve follows, or ``None`` for a callable target.
    """

    mode: str
    curves: torch.Tensor
    auc: torch.Tensor
    x: torch.Tensor
    fractions: torch.Tensor
    pixels_per_step: int
    classes: torch.Tensor | None


def blur(x: torch.Tensor, *, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The blurred copy insertion starts from, as the RISE authors compute it.

    Each channel is convolved, with zero padding of ``kernel_size // 2``, with a
    ``kernel_size × kernel_size`` kernel: SciPy's ``gaussian_filter(δ, sigma)`` of a centred
    delta, whose Gaussian tails (truncated at 4σ) are mirrored back into the square (SciPy's
    ``"reflect"`` border), so the kernel sums to one but is flatter than a cropped Gaussian when
    σ is large for the size, as with the defaults 11 and 5. Zero padding darkens the borders
    towards 0, which in a normalised image is the mean colour.

    Args:
        x: images ``(N, C, H, W)``.
        kernel_size: odd side of the kernel (11).
        sigma: standard deviation in pixels (5).

    Returns:
        ``(N, C, H, W)``, same dtype and device.

    Example:
        >>> import torch
        >>> from backlight.metrics import blur
        >>> blurred = blur(torch.ones(1, 3, 32, 32))
        >>> round(float(blurred[0, 0, 16, 16]), 6), bool(blurred[0, 0, 0, 0] < 1)
        (1.0, True)
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise InputError("`x` must be a floating-point tensor of images (N, C, H, W)")
    # a kernel wider than twice the image, or a σ beyond it, only spreads the padding's zeros
    side = 2 * max(x.shape[-2:]) + 1
    size = positive_int("kernel_size", kernel_size, high=side)
    if size % 2 == 0:
        raise OptionError(f"`kernel_size` must be odd, not {kernel_size}")
    sigma = check_positive_real("sigma", sigma, high=side)
    line = _reflected_gaussian(size, float(sigma)).to(device=x.device, dtype=x.dtype)
    kernel = (line[:, None] * line[None, :])[None, None]
    n, c, h, w = x.shape
    out = F.conv2d(x.reshape(n * c, 1, h, w), kernel, padding=size // 2)
    return out.reshape(n, c, h, w)


@functools.lru_cache(maxsize=8)
def _reflected_gaussian(size: int, sigma: float) -> torch.Tensor:
    """``gaussian_filter1d`` of a centred delta of length ``size``, border mode "reflect"."""
    radius = int(4.0 * sigma + 0.5)
    weights = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(weights)
    centre = size // 2
    line = [0.0] * size
    for i in range(size):
        for k in range(-radius, radius + 1):
            j = (i + k) % (2 * size)  # "reflect": d c b a | a b c d | d c b a, period 2·size
            if j >= size:
                j = 2 * size - 1 - j
            if j == centre:
                line[i] += weights[k + radius] / total
    return torch.tensor(line, dtype=torch.float64)


class CurveMetric(Protocol):
    """The calling convention of deletion and insertion."""

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        saliency: torch.Tensor,
        target: Target = None,
        *,
        steps: int = 28,
        batch_size: int = 32,
        probability: Probability = "softmax",
        substrate: Substrate = None,
        progress: bool = True,
    ) -> PerturbationCurves: ...


_DELETION_DOC = """The deletion metric (Petsiuk, Das & Saenko, RISE, BMVC 2018): lower is better.

    Pixels are set to the substrate (zeros) in order of decreasing saliency,
    ``k = ⌈H·W / steps⌉`` at a time; ``curve[i] = p_c(x with its i·k most salient pixels
    deleted)``, ``auc = Σ_i (curve[i] + curve[i+1]) / 2 · 1/steps``, the trapezoid rule on
    ``x_i = i / steps``. All channels of a pixel change together.

    Order and ties: pixels are sorted by decreasing saliency with a stable sort, so pixels of
    equal saliency are taken in row-major order (top row first, left to right); the result does
    not depend on the device or on ``batch_size``. The map is resized bilinearly to the image
    when its size differs.

    Args:
        model: the classifier; it runs in eval mode with frozen parameters under
            ``torch.inference_mode`` and is restored afterwards.
        x: images ``(N, C, H, W)`` as the model takes them.
        saliency: maps ``(N, 1, h, w)`` or ``(N, h, w)``.
        target: ``None`` for each image's predicted class (on the intact image), an int, one
            class per image, or a callable mapping the (transformed) output of a batch of
            step images of one image to one score per step image.
        steps: number of steps (28: 224·8 pixels per step at 224 × 224, the authors' setting).
        batch_size: step images per forward pass.
        probability: ``"softmax"`` (the paper), ``"sigmoid"`` (multi-label models) or ``None``
            for the raw outputs.
        substrate: what deleted pixels become: ``None`` or ``"zeros"`` (the paper), ``"blur"``
            (:func:`blur`), a tensor broadcastable to ``x``, or a callable ``x -> tensor``.
        progress: show a progress bar on stderr.

    Returns:
        :class:`PerturbationCurves` with ``curves`` (N, steps + 1) and ``auc`` (N,).

    Example:
        >>> import backlight
        >>> from backlight.data import make_batch
        >>> from backlight.demo import load_demo_model
        >>> from backlight.metrics import deletion
        >>> model, (x, labels, _) = load_demo_model(), make_batch(2)
        >>> saliency = backlight.gradient(model, x, labels)
        >>> result = deletion(model, x, saliency, labels, steps=8, progress=False)
        >>> result.curves.shape, result.auc.shape
        (torch.Size([2, 9]), torch.Size([2]))
    """


_INSERTION_DOC = """The insertion metric (Petsiuk, Das & Saenko, RISE, BMVC 2018): higher is better.

    Starts from the substrate (:func:`blur`, kernel 11, σ 5, as the authors' code) and puts the
    image's pixels back in order of decreasing saliency, ``k = ⌈H·W / steps⌉`` at a time;
    ``curve[i] = p_c(blurred image with the i·k most salient pixels restored)``; the area is the
    trapezoid rule on ``x_i = i / steps``. Order, ties and arguments are as for
    :func:`deletion`; ``substrate`` is what the image starts from (``None`` or ``"blur"``,
    ``"zeros"``, a tensor or a callable).

    Example:
        >>> import backlight
        >>> from backlight.data import make_batch
        >>> from backlight.demo import load_demo_model
        >>> from backlight.metrics import insertion
        >>> model, (x, labels, _) = load_demo_model(), make_batch(1)
        >>> saliency = backlight.gradient(model, x, labels)
        >>> insertion(model, x, saliency, labels, steps=4, progress=False).curves.shape
        torch.Size([1, 5])
    """


def _curve_metric(mode: str, doc: str) -> CurveMetric:
    """The public ``deletion`` or ``insertion``."""
    made = shaped_like(CurveMetric.__call__, functools.partial(_curves, mode), mode, doc)
    return cast(CurveMetric, autograd_on(made))


def _curves(mode: str, a: Arguments) -> PerturbationCurves:
    """Deletion or insertion, as :func:`deletion` describes, for the arguments ``a``."""
    model, x, saliency, target = a["model"], a["x"], a["saliency"], a["target"]
    steps, batch_size, substrate = a["steps"], a["batch_size"], a["substrate"]
    probability, progress = a["probability"], a["progress"]
    model, x = adapt(model, x)
    model = check_model(model)
    x = check_input(x, model).detach()
    n, _, height, width = x.shape
    maps = resize_maps(saliency_batch(saliency, n), (height, width))
    # more steps than pixels would repeat the last image: one pixel per step at the most
    steps = positive_int("steps", steps, high=height * width)
    batch_size = positive_int("batch_size", batch_size)
    check_memory(  # a batch of perturbed images and the model's first activations
        4 * x.element_size() * min(batch_size, steps + 1) * x[0].numel(),
        x.device,
        what=f"`batch_size`={batch_size}: {mode} batches of images",
        fix="lower batch_size",
    )
    progress = flag("progress", progress)
    probability = check_probability(probability)
    if is_score_function(target) and probability is not None:
        raise TargetError(
            "a callable `target` receives the model's output as it is; pass probability=None "
            "with it, or give class indices as `target`"
        )
    other = _substrate(substrate if substrate is not None else _DEFAULT[mode], x)
    start, finish = (x, other) if mode == "deletion" else (other, x)

    pixels = height * width
    per_step = math.ceil(pixels / steps)
    # rank[n, p] = position of pixel p in the order of decreasing saliency (ties: row-major).
    order = torch.sort(maps.reshape(n, pixels), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=order.device).expand(n, pixels))
    rank = rank.to(x.device)
    changed = (torch.arange(steps + 1, device=x.device) * per_step).clamp(max=pixels)

    curves = torch.empty(n, steps + 1, dtype=torch.float64)
    with clean_pass(model, x, target, probability=probability) as clean, torch.inference_mode():
        forward = Forward(model, x, autocast=None, channels_last=False)
        with tqdm(total=n * (steps + 1), desc=mode, unit="image", disable=not progress) as bar:
            for i in range(n):
                for first in range(0, steps + 1, batch_size):
                    counts = changed[first : first + batch_size]
                    keep = rank[i].reshape(1, 1, height, width) >= counts.reshape(-1, 1, 1, 1)
                    batch = torch.where(keep, start[i : i + 1], finish[i : i + 1])
                    rows = torch.full((batch.shape[0],), i, device=x.device)
                    values = clean.scorer(forward(batch), rows)
                    curves[i, first : first + batch.shape[0]] = values.double().cpu()
                    bar.update(batch.shape[0])
    classes = clean.scorer.classes
    auc = (curves.sum(dim=1) - (curves[:, 0] + curves[:, -1]) / 2) / steps
    axis = torch.arange(steps + 1, dtype=torch.float64) / steps
    fractions = changed.double().cpu() / pixels
    return PerturbationCurves(
        mode, curves, auc, axis, fractions, per_step, None if classes is None else classes.cpu()
    )


deletion = _curve_metric("deletion", _DELETION_DOC)
insertion = _curve_metric("insertion", _INSERTION_DOC)


_DEFAULT: dict[str, Literal["zeros", "blur"]] = {"deletion": "zeros", "insertion": "blur"}


def _substrate(substrate: Substrate, x: torch.Tensor) -> torch.Tensor:
    if isinstance(substrate, str):
        if substrate == "zeros":
            return torch.zeros_like(x)
        if substrate == "blur":
            return blur(x)
    elif isinstance(substrate, torch.Tensor):
        if not bool(torch.isfinite(substrate).all()):
            raise InputError("`substrate` contains NaN or infinite values")
        try:
            return substrate.detach().to(device=x.device, dtype=x.dtype).expand_as(x)
        except RuntimeError:
            raise InputError(
                f"`substrate` of shape {tuple(substrate.shape)} does not broadcast to the "
                f"images {tuple(x.shape)}"
            ) from None
    elif callable(substrate):
        out = substrate(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"a callable `substrate` must return a tensor shaped like `x` {tuple(x.shape)}, "
                f"got {got}"
            )
        return out.detach().to(x.dtype)
    raise OptionError(
        "`substrate` must be 'zeros', 'blur', a tensor broadcastable to `x` or a callable "
        f"x -> tensor, not {substrate!r}"
    )
