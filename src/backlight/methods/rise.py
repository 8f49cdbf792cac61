"""RISE: saliency as the average of random masks weighted by the score they leave.

The masks are never stored at full resolution. :class:`RiseMasks` keeps only what is random,
the low-resolution binary grids and the random shifts (``num_masks × (cells² + 2)`` numbers,
under a megabyte for 8,000 masks), and renders full-resolution masks one batch at a time with two
small matrix products. Memory therefore grows with ``batch_size``, never with ``num_masks``; the
grids are drawn once per (seed, settings, image size) and cached, so a second call, or the second
image of a batch, reuses them; and a mask does not depend on ``batch_size`` or on the batch it is
rendered in, so changing ``batch_size`` does not change the map.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import (
    check_autocast,
    check_flag,
    check_input,
    check_memory,
    check_model,
    check_real,
    check_seed,
    is_choice,
)
from .._checks import check_fraction as _fraction
from .._checks import check_positive_int as _positive_int
from .._pipeline import clean_pass
from .._registry import register
from .._result import Explanation
from .._targets import Probability
from .._types import Target
from ..errors import OptionError
from ._forward import Forward

__all__ = ["RiseMasks", "rise"]

logger = logging.getLogger("backlight")


class RiseMasks:
    """The random masks of RISE for one image size, rendered on demand a batch at a time.

    Each mask is a ``cells × cells`` grid of independent Bernoulli(``p``) cells, upsampled
    bilinearly (mirrored at the borders, as the authors' code does) to ``(cells + 1) · ⌈H / cells⌉``
    pixels and cropped to ``H × W`` at a random offset of less than one cell. Only the grids and
    the offsets are stored; :meth:`render` builds full-resolution masks for a range of indices.

    The random draws come from a CPU generator seeded with ``seed``, so the masks are the same on
    every device and for every ``batch_size``.

    Args:
        size: the image size ``(H, W)``.
        num_masks: how many masks.
        cells: grid cells per side.
        p: probability that a cell is kept (1) rather than dropped (0).
        seed: seed of the random draws.

    Example:
        >>> import torch
        >>> from backlight.methods.rise import RiseMasks
        >>> masks = RiseMasks((32, 32), num_masks=100, cells=4, p=0.5, seed=0)
        >>> masks.render(0, 10).shape
        torch.Size([10, 1, 32, 32])
    """

    def __init__(
        self,
        size: tuple[int, int],
        *,
        num_masks: int = 8000,
        cells: int = 7,
        p: float = 0.5,
        seed: int = 0,
    ) -> None:
        ok = isinstance(size, tuple | list | torch.Size) and len(size) == 2
        if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
            raise OptionError(f"`size` must be an image size (H, W) of two ints, not {size!r}")
        self.size = (_positive_int("size", size[0]), _positive_int("size", size[1]))
        self.num_masks = _positive_int("num_masks", num_masks)
        # a cell smaller than a pixel means nothing: at most one cell per pixel of the long side
        self.cells = _positive_int("cells", cells, high=max(self.size))
        self.p = _fraction("p", p)
        self.seed = check_seed(seed)
        check_memory(
            self.num_masks * (self.cells**2 + 16),
            torch.device("cpu"),
            what=f"`num_masks`={self.num_masks} RISE masks of {self.cells}x{self.cells} cells",
            fix="use fewer masks (num_masks) or cells",
        )
        self.cell_size = (
            math.ceil(self.size[0] / self.cells),
            math.ceil(self.size[1] / self.cells),
        )
        self.grids, self.shifts = _draw(
            self.num_masks, self.cells, self.p, self.seed, *self.cell_size
        )

    def __len__(self) -> int:
        return self.num_masks

    def render(
        self,
        start: int,
        stop: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Masks ``start`` to ``stop - 1`` at full resolution, shape (stop - start, 1, H, W).

        Bilinear upsampling is linear and separable, so the upsampled, cropped mask ``i`` is
        ``Ry[i] · G[i] · Rx[i]ᵀ`` with ``G[i]`` the grid and ``Ry[i]``, ``Rx[i]`` the rows of the
        interpolation matrices that the crop keeps.
        """
        height, width = self.size
        grids = self.grids[start:stop].to(device=device, dtype=dtype)
        shifts = self.shifts[start:stop].to(device=device)
        rows = _interpolation(self.cells, (self.cells + 1) * self.cell_size[0])
        cols = _interpolation(self.cells, (self.cells + 1) * self.cell_size[1])
        rows = rows.to(device=device, dtype=dtype)
        cols = cols.to(device=device, dtype=dtype)
        ry = rows[shifts[:, :1] + torch.arange(height, device=grids.device)]  # (B, H, cells)
        rx = cols[shifts[:, 1:] + torch.arange(width, device=grids.device)]  # (B, W, cells)
        return torch.bmm(torch.bmm(ry, grids), rx.transpose(1, 2)).unsqueeze(1)


@functools.lru_cache(maxsize=16)
def _draw(
    num_masks: int, cells: int, p: float, seed: int, cell_h: int, cell_w: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grids = torch.rand(num_masks, cells, cells, generator=generator) < p
    shift_y = torch.randint(0, cell_h, (num_masks, 1), generator=generator)
    shift_x = torch.randint(0, cell_w, (num_masks, 1), generator=generator)
    return grids, torch.cat([shift_y, shift_x], dim=1)


@functools.lru_cache(maxsize=16)
def _interpolation(n: int, size: int) -> torch.Tensor:
    """The (size, n) matrix of bilinear upsampling from n to size samples, half-pixel centres,
    mirrored at the borders (sample -1 is sample 1)."""
    matrix = torch.zeros(size, n, dtype=torch.float64)
    for u in range(size):
        source = (u + 0.5) * n / size - 0.5
        low = math.floor(source)
        frac = source - low
        matrix[u, _mirror(low, n)] += 1.0 - frac
        matrix[u, _mirror(low + 1, n)] += frac
    return matrix


def _mirror(i: int, n: int) -> int:
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return period - i if i >= n else i


#: The most masks ``num_masks="auto"`` draws (twice TorchRay's default), and how often it
#: checks its standard error: every 256 masks, so the stop does not depend on ``batch_size``.
AUTO_LIMIT, AUTO_STEP = 16_000, 256


class _Moments:
    """Σ f X, Σ f X², Σ f² X², Σ X and Σ X² of values X_i (one per column) of the masks, with
    scores f_i (one row per map): what the mean of Z_i = (f_i - c) X_i / p and its standard
    error are read from, for any c."""

    def __init__(self, maps: int, columns: int, like: torch.Tensor) -> None:
        self.fx = like.new_zeros(maps, columns)
        self.fxx = like.new_zeros(maps, columns)
        self.ffxx = like.new_zeros(maps, columns)
        self.x = like.new_zeros(1, columns)
        self.xx = like.new_zeros(1, columns)

    def add(self, scores: torch.Tensor, values: torch.Tensor, squares: torch.Tensor) -> None:
        """Scores (maps, B) of masks whose values are (B, columns), ``squares`` their squares."""
        self.fx.addmm_(scores, values)
        self.fxx.addmm_(scores, squares)
        self.ffxx.addmm_(scores * scores, squares)
        self.x += values.sum(dim=0, keepdim=True)
        self.xx += squares.sum(dim=0, keepdim=True)

    def estimate(self, c: torch.Tensor, n: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of Z over ``n`` masks and its standard error."""
        mean = (self.fx - c * self.x) / (n * p)
        square = (self.ffxx - 2 * c * self.fxx + c * c * self.xx) / (n * p * p)  # mean of Z²
        return mean, ((square - mean * mean).clamp(min=0) / max(n - 1, 1)).sqrt()


class _Sums:
    """Running sums of one image's masks and scores, from which the map and its standard error
    are read at any time, for both estimators.

    With scores f_i (one row per map) and masks M_i (pixels), and c the mean score (the control
    variate; 0 for the plain estimator), the map is the mean of Z_i = (f_i - c) M_i / p, plus c
    (for the control variate, times N / (N - 1), which makes it unbiased with c estimated from
    the same masks), and its standard error is that of the mean of Z_i. The same moments of each
    mask's mean q_i give the standard error of the map's mean over pixels, the part of the noise
    that shifts every pixel alike and so changes neither the map's look nor its correlation
    with another map.
    """

    def __init__(self, maps: int, pixels: int, like: torch.Tensor) -> None:
        self.count = 0
        self.f = like.new_zeros(maps, 1)  # Σ f
        self.pixels = _Moments(maps, pixels, like)  # of M, pixel by pixel
        self.level = _Moments(maps, 1, like)  # of q, the mask's mean over pixels

    def add(self, scores: torch.Tensor, flat: torch.Tensor, squared: torch.Tensor) -> None:
        """Scores (maps, B) of masks ``flat`` (B, pixels), ``squared`` their squares."""
        self.count += flat.shape[0]
        self.f += scores.sum(dim=1, keepdim=True)
        self.pixels.add(scores, flat, squared)
        q = flat.mean(dim=1, keepdim=True)
        self.level.add(scores, q, q * q)

    def estimate(self, p: float, control: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The map (maps, pixels), its standard error per pixel, and the standard error of its
        mean over pixels (maps, 1)."""
        n = self.count
        c = self.f / n if control and n > 1 else torch.zeros_like(self.f)
        mean, error = self.pixels.estimate(c, n, p)
        _, offset = self.level.estimate(c, n, p)
        if control and n > 1:
            return mean * (n / (n - 1)) + c, error * (n / (n - 1)), offset * (n / (n - 1))
        return mean, error, offset


def noise_to_signal(saliency: torch.Tensor, error: torch.Tensor, offset: torch.Tensor) -> float:
    """The RMS standard error of a map, less the part that shifts all its pixels alike
    (``offset``), over its spread (the pixels' standard deviation), the worst over its rows:
    two maps from independent seeds correlate about 1 / (1 + r²)."""
    worst = 0.0
    for row, noise, level in zip(saliency, error, offset, strict=True):
        rms = float((noise.pow(2).mean() - level.pow(2).sum()).clamp(min=0).sqrt())
        spread = float(row.std()) if row.numel() > 1 else 0.0
        if rms > 0:
            worst = max(worst, rms / spread if spread > 0 else math.inf)
    return worst


def _settled(sums: list[_Sums], done: list[bool], p: float, control: bool, tol: float) -> bool:
    """Marks the images whose map is within ``tol`` (noise to signal); whether all are."""
    for i, image in enumerate(sums):
        done[i] = done[i] or noise_to_signal(*image.estimate(p, control)) <= tol
    return all(done)


@register(
    "rise",
    family="perturbation",
    quick={"num_masks": 500, "batch_size": 32, "progress": False},
    demo={"num_masks": 1000, "batch_size": 64},
)
def rise(
    model: nn.Module,
    x: torch.Tensor,
    target: Target | Literal["all"] = None,
    *,
    num_masks: int | Literal["auto"] = 8000,
    cells: int = 7,
    p: float = 0.5,
    batch_size: int = 32,
    seed: int = 0,
    probability: Probability = "softmax",
    estimator: Literal["control_variate", "plain"] = "control_variate",
    tolerance: float | None = None,
    autocast: torch.dtype | None = None,
    progress: bool = True,
) -> Explanation:
    """RISE: the average of random masks weighted by the class probability of the masked image.

    Randomized input sampling for explanation.
    The map is the expected score of the masked image given that the pixel was kept,
    ``S(λ) = E[f(x ⊙ M) · M(λ)] / p``, estimated with random smooth masks ``M_i`` (see
    :class:`RiseMasks`). The paper's estimator is ``Σ_i f_i · M_i(λ) / (N p)``; most of its
    noise is the number of masks that happened to keep each pixel, times the mean score. The
    default subtracts the mean score ``c`` (a control variate: ``E[M(λ)] = p`` exactly), so
    ``S(λ) ≈ N / (N - 1) · Σ_i (f_i - c) · M_i(λ) / (N p) + c``: the same expectation (exactly
    unbiased, the factor undoes estimating ``c`` from the same masks), a fraction of the noise.

    Args:
        model: the network; it runs in eval mode with frozen parameters and is restored after.
        x: a float tensor (N, C, H, W) on the model's device.
        target: ``None`` for each image's predicted class, an int, one class per image, a
            callable that maps the (transformed) output of a batch of masked copies of one image
            to one score per copy, or ``"all"`` for one map per class.
        num_masks: number of random masks (8,000 as TorchRay; the paper uses 4,000 to 8,000),
            or ``"auto"``: masks until the map's noise-to-signal ratio (the RMS of its standard
            error, less the part that shifts every pixel alike, over the standard deviation of
            its pixels) is at most ``tolerance``, checked
            every 256 masks, for each image, up to 16,000; the result's ``masks_used`` says how
            many each image took.
        cells: grid cells per side of the low-resolution masks (7).
        p: probability that a cell is kept (0.5).
        batch_size: masked images per forward pass; memory grows with it, not with num_masks.
        seed: seed of the masks; the same seed gives the same map.
        probability: ``"softmax"`` (class probabilities, as in the paper), ``"sigmoid"`` (for
            multi-label models; TorchRay's choice), or ``None`` for the raw outputs.
        estimator: ``"control_variate"`` (the default, above) or ``"plain"``: the paper's and
            TorchRay's sum, for comparing with them mask for mask.
        tolerance: the noise-to-signal ratio ``num_masks="auto"`` stops at (default 0.1: two
            maps from independent seeds then correlate at about 0.99).
        autocast: ``torch.bfloat16`` (or ``torch.float16``) runs the masked forward passes under
            :func:`torch.autocast`, in reduced precision, on a private copy of the model whose
            convolution and linear weights are cast once: about 3.5 times faster on a CPU with
            AMX (ResNet-18, see BENCHMARKS.md), also on GPUs. An approximation: the scores
            change by about 1e-2 relative, below the sampling noise of the masks, but the map
            is no longer the float32 one. ``None`` (the default) keeps the model's precision.
        progress: show a progress bar on stderr.

    Returns:
        A detached tensor (N, 1, H, W), or (N, K, H, W) for ``target="all"`` with K classes; its
        ``extras`` hold ``standard_error`` (the same shape: each pixel's estimated standard
        error), ``noise_to_signal`` (N,) the ratio ``num_masks="auto"`` stops on (the worst
        over an image's maps) and ``masks_used`` (N,).

    Quick:
        num_masks=500 (1/16 of the passes): correlation ≥ 0.95 with the default's map on the
        demo model (TorchRay's 8,000 masks: 0.89 between two seeds).

    Paper:
        Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation of Black-box
        Models, BMVC 2018

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> backlight.rise(model, x, [3, 7], num_masks=64, progress=False).shape
        torch.Size([2, 1, 32, 32])
    """
    model = check_model(model)
    n, channels, height, width = check_input(x, model).shape
    batch_size = _positive_int("batch_size", batch_size)
    auto = isinstance(num_masks, str) and num_masks == "auto"
    if not auto:
        if isinstance(num_masks, str):
            raise OptionError(f'`num_masks` must be a positive int or "auto", not {num_masks!r}')
        num_masks = _positive_int("num_masks", num_masks)
        if tolerance is not None:
            raise OptionError(
                '`tolerance` applies to num_masks="auto" only; pass num_masks="auto" or drop it'
            )
    tolerance = check_real(
        "tolerance", 0.1 if tolerance is None else tolerance, low=0.0, open_low=True
    )
    if not is_choice(estimator, ("control_variate", "plain")):
        raise OptionError(f"`estimator` must be 'control_variate' or 'plain', not {estimator!r}")
    control = estimator == "control_variate"
    limit = AUTO_LIMIT if auto else int(num_masks)
    largest = min(batch_size, limit)
    check_memory(  # a batch of masks, the masked images and the model's first activations
        4 * x.element_size() * largest * (channels + 1) * height * width,
        x.device,
        what=f"`batch_size`={largest}: RISE batches of masked {height}x{width} images",
        fix="lower batch_size",
    )
    masks = RiseMasks((height, width), num_masks=limit, cells=cells, p=p, seed=seed)
    progress = check_flag("progress", progress)
    autocast = check_autocast(autocast)

    with clean_pass(model, x, target, probability=probability, every_class=True) as clean:
        x, scorer = clean.x, clean.scorer
        given = scorer(clean.output)  # the scores of the input as given
        maps = given.shape[1] if scorer.every_class else 1
        check_memory(
            6 * x.element_size() * n * maps * height * width,
            x.device,
            what=f"`target='all'`: {maps} maps of {height}x{width} per image",
            fix="explain the classes you need, one call per class or a list of targets",
        )
        sums = [_Sums(maps, height * width, x) for _ in range(n)]
        done = [False] * n
        with torch.inference_mode():
            forward = Forward(model, x, autocast=autocast, channels_last=True)
            # masked batches come out in the layout the model is fed (the product keeps it)
            images = x.contiguous(memory_format=torch.channels_last) if forward.channels_last else x
            bar = tqdm(total=limit * n, desc="RISE", unit="mask", disable=not progress)
            with bar:
                step = AUTO_STEP if auto else limit
                for chunk in range(0, limit, step):
                    for start in range(chunk, min(chunk + step, limit), batch_size):
                        stop = min(start + batch_size, chunk + step, limit)
                        batch = masks.render(start, stop, device=x.device, dtype=x.dtype)
                        flat = batch.reshape(stop - start, height * width)
                        squared = flat * flat
                        for i in range(n):
                            if done[i]:
                                continue
                            source = images if forward.channels_last else x  # after a fallback
                            rows = torch.full((stop - start,), i, device=x.device)
                            weights = scorer(forward(source[i : i + 1] * batch), rows)
                            weights = weights.T if scorer.every_class else weights[None]
                            sums[i].add(weights.to(x.dtype), flat, squared)
                            bar.update(stop - start)
                    if auto:
                        if _settled(sums, done, p, control, tolerance):
                            break
                        bar.total = sum(
                            s.count if d else limit for s, d in zip(sums, done, strict=True)
                        )
        estimates = [s.estimate(p, control) for s in sums]
    ratios = torch.tensor([noise_to_signal(*e) for e in estimates])
    for i, image in enumerate(sums):
        if auto and not done[i]:
            logger.warning(
                "rise: image %d reached the limit of %d masks with a noise-to-signal ratio of "
                "%.3g, above tolerance=%g; its map is noisier than asked",
                i,
                image.count,
                float(ratios[i]),
                tolerance,
            )
    saliency = torch.stack([e[0] for e in estimates]).reshape(n, maps, height, width)
    error = torch.stack([e[1] for e in estimates]).reshape(n, maps, height, width)
    return Explanation.make(
        saliency,
        targets=scorer.explained,
        scores=None if scorer.every_class else given,
        output=clean.logits,
        num_masks="auto" if auto else masks.num_masks,
        masks_used=torch.tensor([s.count for s in sums]),
        standard_error=error,
        noise_to_signal=ratios,
    )
