"""Argument checks shared by the metrics, each failing with a typed, actionable error.

torch is imported by the helpers that need it, not by this module: :func:`size_pair` serves the
pointing game, which runs without torch.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .._arrays import is_array as is_array  # re-exported to the pointing game and similarity
from .._arrays import is_tensor as is_tensor
from ..errors import InputError, InputTypeError, OptionError

if TYPE_CHECKING:
    import torch

    from .._checks import check_flag, check_int, check_positive_int

    flag = check_flag
    integer = check_int
    positive_int = check_positive_int

#: Checks of backlight._checks (which imports torch), loaded when first imported from here.
_CHECKS = {"flag": "check_flag", "integer": "check_int", "positive_int": "check_positive_int"}


def __getattr__(name: str) -> Any:
    if name in _CHECKS:
        from .. import _checks

        return getattr(_checks, _CHECKS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_numpy(value: Any) -> npt.NDArray[Any]:
    """A tensor (detached, on the CPU; float16 and bfloat16 as float32) or anything else
    ``np.asarray`` takes, as a NumPy array."""
    if is_tensor(value):
        tensor = value.detach().cpu()
        if tensor.is_floating_point() and tensor.itemsize < 4:
            tensor = tensor.float()
        array: npt.NDArray[Any] = tensor.numpy()
        return array
    return np.asarray(value)


def size_pair(name: str, value: Any) -> tuple[int, int]:
    """An image size ``(H, W)`` of two positive ints (a tuple, a list or a ``torch.Size``)."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    if not ok or int(value[0]) < 1 or int(value[1]) < 1:
        raise OptionError(
            f"`{name}` must be an image size (H, W) of two positive ints, not {value!r}"
        )
    return int(value[0]), int(value[1])


def saliency_batch(saliency: Any, n: int | None = None, name: str = "saliency") -> torch.Tensor:
    """Maps (N, 1, h, w) or (N, h, w) as a finite floating-point tensor (N, h, w)."""
    import torch

    if not isinstance(saliency, torch.Tensor):
        raise InputTypeError(
            f"`{name}` must be a torch.Tensor of maps (N, 1, h, w), not {type(saliency).__name__}"
        )
    if saliency.dim() == 4:
        if saliency.shape[1] != 1:
            raise InputError(
                f"`{name}` has {saliency.shape[1]} channels (shape {tuple(saliency.shape)}); "
                "reduce them to one map per image first, e.g. saliency.abs().amax(1, keepdim=True)"
            )
        saliency = saliency[:, 0]
    if saliency.dim() != 3:
        raise InputError(
            f"`{name}` must have shape (N, 1, h, w) or (N, h, w), got {tuple(saliency.shape)}"
        )
    if n is not None and saliency.shape[0] != n:
        raise InputError(
            f"`{name}` holds {saliency.shape[0]} maps for {n} images; give one map per image"
        )
    if saliency.numel() == 0:
        raise InputError(f"`{name}` is empty (shape {tuple(saliency.shape)})")
    if saliency.is_complex() or saliency.dtype == torch.bool:
        raise InputError(f"`{name}` must hold real numbers, not {saliency.dtype}")
    if not saliency.is_floating_point():
        saliency = saliency.double()
    if not bool(torch.isfinite(saliency).all()):
        raise InputError(
            f"`{name}` contains NaN or infinite values; clean it (torch.nan_to_num) or find "
            "where they come from"
        )
    maps: torch.Tensor = saliency.detach()
    return maps


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing (half-pixel centres, as TorchRay) of maps (N, h, w) to ``size``."""
    import torch
    import torch.nn.functional as F

    if tuple(maps.shape[-2:]) == size:
        return maps
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    resized = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
    return resized[:, 0]
