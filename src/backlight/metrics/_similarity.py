"""Similarity of two maps: Spearman's rank correlation and SSIM, in NumPy.

Both match the reference implementations the sanity-check paper used (``scipy.stats.spearmanr``
and scikit-image's ``structural_similarity``) without depending on them. The maps may be torch
tensors (the result is then a tensor) or NumPy arrays (and so JAX arrays; the result is then an
array): neither function needs torch.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import InputError, OptionError
from ._common import as_numpy, is_array, is_tensor

if TYPE_CHECKING:
    import torch

__all__ = ["spearman", "ssim"]

_F64 = npt.NDArray[np.float64]


@overload
def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...
@overload
def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> _F64: ...
def spearman(a: Any, b: Any) -> Any:
    """Spearman's rank correlation between ``a[n]`` and ``b[n]``, for each ``n``.

    ``ρ = corr(rank(a), rank(b))``, the Pearson correlation of the ranks, tied values sharing
    their average rank (as ``scipy.stats.spearmanr``). NaN when one side is constant.

    Args:
        a: ``(N, ...)``, each sample flattened; a tensor or an array.
        b: the same shape and kind.

    Returns:
        ``(N,)`` float64, a tensor for tensors and an array for arrays.

    Example:
        >>> import torch
        >>> from backlight.metrics import spearman
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> spearman(a, a**2).tolist(), spearman(a, -a).tolist()
        ([1.0], [-1.0])
        >>> import numpy as np
        >>> spearman(np.array([[1, 2, 2, 3]]), np.array([[1, 2, 3, 4]]))  # ranks 1, 2.5, 2.5, 4
        array([0.9486833])
    """
    x, y, tensors = _pair(a, b)
    ra = _average_ranks(x.reshape(x.shape[0], -1))
    rb = _average_ranks(y.reshape(y.shape[0], -1))
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    rho = np.full(x.shape[0], math.nan)
    np.divide((ra * rb).sum(axis=1), denominator, out=rho, where=denominator > 0)
    return _output(np.clip(rho, -1.0, 1.0), tensors)


@overload
def ssim(
    a: torch.Tensor, b: torch.Tensor, *, win_size: int = 7, data_range: float = 1.0
) -> torch.Tensor: ...
@overload
def ssim(
    a: npt.ArrayLike, b: npt.ArrayLike, *, win_size: int = 7, data_range: float = 1.0
) -> _F64: ...


def ssim(a: Any, b: Any, *, win_size: int = 7, data_range: float = 1.0) -> Any:
    """The structural similarity (Wang et al., IEEE TIP 2004) of ``a[n]`` and ``b[n]``.

    ``SSIM = mean over windows of (2 μa μb + C1)(2 σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2))``
    with ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²``, ``L = data_range``, means and (sample) covariances
    over uniform ``win_size × win_size`` windows that fit inside the map, averaged over channels:
    scikit-image's ``structural_similarity`` with its defaults. Maps smaller than ``win_size``
    use the largest odd window that fits; maps smaller than 3 pixels give NaN.

    Args:
        a: maps ``(N, h, w)`` or ``(N, C, h, w)``, already scaled to ``[0, data_range]``; a
            tensor or an array.
        b: the same shape and kind.
        win_size: odd window side (7).
        data_range: the range of the values (1).

    Returns:
        ``(N,)`` float64, a tensor for tensors and an array for arrays.

    Example:
        >>> import torch
        >>> from backlight.metrics import ssim
        >>> a = torch.rand(2, 16, 16)
        >>> ssim(a, a)
        tensor([1., 1.], dtype=torch.float64)
        >>> ssim(a.numpy(), a.numpy())
        array([1., 1.])
    """
    x, y, tensors = _pair(a, b)
    if x.ndim == 3:
        x, y = x[:, None], y[:, None]
    if x.ndim != 4:
        raise InputError(f"ssim takes maps (N, h, w) or (N, C, h, w), got {tuple(x.shape)}")
    if (
        isinstance(win_size, bool)
        or not isinstance(win_size, int)
        or win_size < 3
        or win_size % 2 == 0
    ):
        raise OptionError(f"`win_size` must be an odd int of at least 3, not {win_size!r}")
    ok = isinstance(data_range, numbers.Real) and not isinstance(data_range, bool)
    if not ok or not math.isfinite(float(data_range)) or data_range <= 0:
        raise OptionError(f"`data_range` must be a positive number (finite), not {data_range!r}")
    data_range = float(data_range)
    n, c, h, w = x.shape
    side = min(win_size, h, w)
    side -= 1 - side % 2
    if side < 3:
        return _output(np.full(n, math.nan), tensors)
    x, y = x.reshape(n * c, h, w), y.reshape(n * c, h, w)
    count = side * side

    def mean(t: _F64) -> _F64:
        """The mean of every ``side × side`` window that fits, (n·c, h − side + 1, w − side + 1)."""
        means: _F64 = sliding_window_view(t, (side, side), axis=(1, 2)).sum(axis=(3, 4)) / count
        return means

    scale = count / (count - 1)  # sample covariance, as scikit-image
    mu_a, mu_b = mean(x), mean(y)
    var_a = scale * (mean(x * x) - mu_a * mu_a)
    var_b = scale * (mean(y * y) - mu_b * mu_b)
    cov = scale * (mean(x * y) - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    return _output(index.reshape(n, c, -1).mean(axis=2).mean(axis=1), tensors)


def _pair(a: Any, b: Any) -> tuple[_F64, _F64, bool]:
    """Both maps as float64 arrays, and whether they were torch tensors."""
    tensors = is_tensor(a), is_tensor(b)
    if not all(t or is_array(v) for t, v in zip(tensors, (a, b), strict=True)):
        raise InputError(
            "both maps must be arrays: torch tensors, or NumPy or JAX arrays, not "
            f"{type(a).__name__} and {type(b).__name__}"
        )
    if tensors[0] != tensors[1]:
        raise InputError(
            "give both maps as torch tensors or both as arrays (NumPy, JAX), not one of each"
        )
    if tensors[0] and (a.is_complex() or b.is_complex()):
        raise InputError("the maps must hold real numbers")
    x, y = as_numpy(a), as_numpy(b)
    if x.shape != y.shape:
        raise InputError(f"the maps differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim < 2 or x.size == 0:
        raise InputError(f"the maps must be (N, ...) with N samples, got {tuple(x.shape)}")
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise InputError(f"the maps must hold real numbers, not {x.dtype} and {y.dtype}")
    x, y = x.astype(np.float64), y.astype(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError(
            "the maps contain NaN or infinite values, which have no rank; clean them "
            "(np.nan_to_num, torch.nan_to_num) or find where they come from"
        )
    return x, y, tensors[0]


def _output(values: _F64, tensor: bool) -> Any:
    """``values`` as a CPU tensor if the maps were tensors, else as they are."""
    if not tensor:
        return values
    import torch

    return torch.from_numpy(np.ascontiguousarray(values))


def _average_ranks(values: _F64) -> _F64:
    """1-based ranks along axis 1, tied values sharing their average rank (all rows at once)."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    n, p = ordered.shape
    position = np.broadcast_to(np.arange(p), (n, p))
    first = np.ones((n, p), dtype=np.bool_)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, position, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, position, p)[:, ::-1], axis=1)[:, ::-1]
    average = (start + end) / 2 + 1
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, average, axis=1)
    return ranks
