"""Checks of the arguments every method shares, each failing with a typed, actionable error."""

from __future__ import annotations

import itertools
import numbers
from typing import Any

import torch
from torch import nn

from ._types import Reduce
from .errors import InputError, InputTypeError, OptionError

REDUCTIONS = ("abs_max", "l2", "sum")


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputTypeError(
            f"`model` must be a torch.nn.Module, not {type(model).__name__}; "
            "wrap a plain function in a Module whose forward calls it"
        )
    return model


def check_input(x: Any, model: nn.Module) -> torch.Tensor:
    """``x`` must be a finite float tensor (N, C, H, W) on the model's device and dtype."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(
            f"`x` must be a torch.Tensor of shape (N, C, H, W), not {type(x).__name__}; "
            "convert images with torchvision.transforms.functional.to_tensor and stack them"
        )
    if not x.is_floating_point():
        raise InputError(
            f"`x` must be a floating-point tensor, not {x.dtype}; "
            "scale it, e.g. x.float() / 255, and normalise it as the model expects"
        )
    if x.dim() != 4:
        fix = (
            "add the batch dimension with x.unsqueeze(0)"
            if x.dim() == 3
            else "stack the images into one (N, C, H, W) tensor"
        )
        raise InputError(
            f"`x` must have shape (N, C, H, W), got {tuple(x.shape)} ({x.dim()}-D); {fix}"
        )
    if x.shape[0] == 0 or x.numel() == 0:
        raise InputError(f"`x` is empty (shape {tuple(x.shape)}); pass at least one image")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(
            f"`x` contains {bad} NaN or infinite value(s); clean the input (torch.nan_to_num) "
            "or find where they come from"
        )
    tensors = itertools.chain(model.parameters(), model.buffers())
    reference = next((t for t in tensors if t.is_floating_point()), None)
    if reference is not None:
        if reference.device != x.device:
            raise InputError(
                f"`x` is on {x.device} but the model is on {reference.device}; "
                f"move it with x.to({str(reference.device)!r})"
            )
        if reference.dtype != x.dtype:
            raise InputError(
                f"`x` is {x.dtype} but the model's parameters are {reference.dtype}; "
                f"convert with x.to({reference.dtype}) or model.to({x.dtype})"
            )
    return x


def check_reduce(reduce: Any) -> Reduce:
    if reduce is None or reduce in REDUCTIONS:
        return reduce  # type: ignore[no-any-return]
    raise OptionError(
        f"`reduce` must be one of {', '.join(repr(r) for r in REDUCTIONS)} or None, not {reduce!r}"
    )


def check_flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionError(f"`{name}` must be True or False, not {value!r}")


def check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"`{name}` must be an int, not {value!r}")
    return int(value)


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise OptionError(f"`{name}` must be a positive int, not {value!r}")
    return int(value)


def check_autocast(value: Any) -> torch.dtype | None:
    """The reduced precision of an ``autocast`` option: None, bfloat16 or float16."""
    if value not in (None, torch.bfloat16, torch.float16):
        raise OptionError(
            f"`autocast` must be None, torch.bfloat16 or torch.float16, not {value!r}"
        )
    return value  # type: ignore[no-any-return]


def check_fraction(name: str, value: Any, *, closed: bool = True) -> float:
    """A number in (0, 1], or in (0, 1) when not ``closed``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and (0 < float(value) < 1 or (closed and float(value) == 1)):
        return float(value)
    interval = "(0, 1]" if closed else "(0, 1)"
    raise OptionError(f"`{name}` must be a number in {interval}, not {value!r}")
