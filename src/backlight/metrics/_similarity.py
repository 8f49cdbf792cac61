"""Similarity of two maps: Spearman's rank correlation and SSIM, in plain torch.

Both match the reference implementations the sanity-check paper used (``scipy.stats.spearmanr``
and scikit-image's ``structural_similarity``) without depending on them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_positive_real
from ..errors import InputError, OptionError

__all__ = ["spearman", "ssim"]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation between ``a[n]`` and ``b[n]``, for each ``n``.

    ``ρ = corr(rank(a), rank(b))``, the Pearson correlation of the ranks, tied values sharing
    their average rank (as ``scipy.stats.spearmanr``). NaN when one side is constant.

    Args:
        a: ``(N, ...)``, each sample flattened.
        b: the same shape.

    Returns:
        ``(N,)`` float64.

    Example:
        >>> import torch
        >>> from backlight.metrics import spearman
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> spearman(a, a**2).tolist(), spearman(a, -a).tolist()
        ([1.0], [-1.0])
    """
    a, b = _pair(a, b)
    ra = _average_ranks(a.reshape(a.shape[0], -1))
    rb = _average_ranks(b.reshape(b.shape[0], -1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = torch.sqrt((ra * ra).sum(dim=1) * (rb * rb).sum(dim=1))
    rho = (ra * rb).sum(dim=1) / denominator
    return torch.where(denominator > 0, rho.clamp(-1.0, 1.0), torch.tensor(math.nan))


def ssim(
    a: torch.Tensor, b: torch.Tensor, *, win_size: int = 7, data_range: float = 1.0
) -> torch.Tensor:
    """The structural similarity (Wang et al., IEEE TIP 2004) of ``a[n]`` and ``b[n]``.

    ``SSIM = mean over windows of (2 μa μb + C1)(2 σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2))``
    with ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²``, ``L = data_range``, means and (sample) covariances
    over uniform ``win_size × win_size`` windows that fit inside the map, averaged over channels:
    scikit-image's ``structural_similarity`` with its defaults. Maps smaller than ``win_size``
    use the largest odd window that fits; maps smaller than 3 pixels give NaN.

    Args:
        a: maps ``(N, h, w)`` or ``(N, C, h, w)``, already scaled to ``[0, data_range]``.
        b: the same shape.
        win_size: odd window side (7).
        data_range: the range of the values (1).

    Returns:
        ``(N,)`` float64.

    Example:
        >>> import torch
        >>> from backlight.metrics import ssim
        >>> a = torch.rand(2, 16, 16)
        >>> ssim(a, a)
        tensor([1., 1.], dtype=torch.float64)
    """
    a, b = _pair(a, b)
    if a.dim() == 3:
        a, b = a[:, None], b[:, None]
    if a.dim() != 4:
        raise InputError(f"ssim takes maps (N, h, w) or (N, C, h, w), got {tuple(a.shape)}")
    if (
        isinstance(win_size, bool)
        or not isinstance(win_size, int)
        or win_size < 3
        or win_size % 2 == 0
    ):
        raise OptionError(f"`win_size` must be an odd int of at least 3, not {win_size!r}")
    data_range = check_positive_real("data_range", data_range)
    n, c, h, w = a.shape
    side = min(win_size, h, w)
    side -= 1 - side % 2
    if side < 3:
        return torch.full((n,), math.nan, dtype=torch.float64)
    a, b = a.reshape(n * c, 1, h, w), b.reshape(n * c, 1, h, w)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, side, stride=1)

    count = side * side
    scale = count / (count - 1)  # sample covariance, as scikit-image
    mu_a, mu_b = mean(a), mean(b)
    var_a = scale * (mean(a * a) - mu_a * mu_a)
    var_b = scale * (mean(b * b) - mu_b * mu_b)
    cov = scale * (mean(a * b) - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    return index.reshape(n, c, -1).mean(dim=2).mean(dim=1)


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise InputError("both maps must be torch tensors")
    if a.shape != b.shape:
        raise InputError(f"the maps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2 or a.numel() == 0:
        raise InputError(f"the maps must be (N, ...) with N samples, got {tuple(a.shape)}")
    if a.is_complex() or b.is_complex():
        raise InputError("the maps must hold real numbers")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError(
            "the maps contain NaN or infinite values, which have no rank; clean them "
            "(torch.nan_to_num) or find where they come from"
        )
    return a, b


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 1, tied values sharing their average rank (all rows at once)."""
    ordered, order = torch.sort(values, dim=1, stable=True)
    n, p = ordered.shape
    position = torch.arange(p, device=values.device).expand(n, p)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, position, 0).cummax(dim=1).values
    end = torch.where(last, position, p).flip(1).cummin(dim=1).values.flip(1)
    average = (start + end).double() / 2 + 1
    return torch.empty_like(values).scatter_(1, order, average)
