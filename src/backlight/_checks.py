"""Checks of the arguments every method shares, each failing with a typed, actionable error."""

from __future__ import annotations

import itertools
import math
import numbers
import os
import warnings
from typing import Any

import torch
from torch import nn

from ._choices import is_choice
from ._types import Reduce
from .errors import InputError, InputTypeError, ModelError, OptionError

__all__ = ["is_choice"]  # re-exported: the checks' home for every choice test

REDUCTIONS = ("abs_max", "l2", "sum")


class ForeignHookWarning(UserWarning):
    """The model carries backward hooks that backlight did not put there (a notebook's hook
    class that was never removed, say); they can change every gradient, so the map may not be
    the method's."""


def check_model(model: Any) -> nn.Module:
    """``model`` must be a :class:`torch.nn.Module` whose parameters hold data."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"`model` must be a torch.nn.Module, not {_describe(model)}")
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_meta:
            raise ModelError(
                f"`model` ({type(model).__name__}) has parameters on the meta device, which hold "
                "no values; materialise it first, e.g. model.to_empty(device='cpu') and then "
                "model.load_state_dict(...)"
            )
        break  # one tensor tells: a model is materialised as a whole
    return model


def _describe(model: Any) -> str:
    """What ``model`` is, and how to get the module out of it (fastai, Lightning, Keras...)."""
    kind = type(model).__name__
    inner = getattr(model, "model", None) if not isinstance(model, type) else None
    if isinstance(inner, nn.Module):
        return f"a {kind}; pass its network, `.model` (for a fastai Learner: learn.model)"
    if type(model).__module__.startswith(("keras", "tf_keras", "tensorflow")):
        return (
            f"a Keras {kind}; backlight runs Keras 3 models on the torch backend: set "
            "KERAS_BACKEND=torch before Keras is imported"
        )
    if isinstance(model, torch.jit.ScriptFunction):
        return "a TorchScript function; wrap it in an nn.Module whose forward calls it"
    if callable(model):
        return f"a {kind}; wrap a plain function in an nn.Module whose forward calls it"
    return f"a {kind}"


def warn_foreign_hooks(model: nn.Module, method: str) -> None:
    """Warn when backward hooks on the model (or global ones) can change the gradients."""
    from torch.nn.modules import module as torch_module

    hooked = [
        name or type(model).__name__
        for name, m in model.named_modules()
        if m._backward_hooks or m._backward_pre_hooks
    ]
    global_hooks = torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks
    if not hooked and not global_hooks:
        return
    where = (
        f"module(s) {', '.join(repr(n) for n in hooked[:5])}"
        + (f" and {len(hooked) - 5} more" if len(hooked) > 5 else "")
        if hooked
        else "every module (global hooks)"
    )
    warnings.warn(
        f"{method}: {where} of {type(model).__name__} carry backward hooks that backlight did not "
        "register; a hook that returns a new gradient changes the map (a notebook's guided-ReLU "
        "hook turns the plain gradient into guided backprop). Remove them with the handles "
        "register_full_backward_hook returned, e.g. handle.remove()",
        ForeignHookWarning,
        stacklevel=4,
    )


def check_input(x: Any, model: nn.Module) -> torch.Tensor:
    """``x`` must be a finite float tensor (N, C, H, W) holding data on the model's device and
    in its dtype."""
    if not isinstance(x, torch.Tensor):
        hint = (
            "convert it with torch.from_numpy(x) (and move the channels first for (N, H, W, C) "
            "arrays: .permute(0, 3, 1, 2))"
            if type(x).__module__.startswith("numpy")
            else "convert images with torchvision.transforms.functional.to_tensor and stack them"
        )
        raise InputTypeError(
            f"`x` must be a torch.Tensor of shape (N, C, H, W), not {type(x).__name__}; {hint}"
        )
    if x.is_meta:
        raise InputError(
            "`x` is on the meta device and holds no values; create it on a real device, e.g. "
            "torch.randn(..., device='cpu')"
        )
    if x.layout != torch.strided:
        raise InputError(
            f"`x` must be a dense tensor, not {x.layout}; convert it with x.to_dense()"
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
    if x.numel() == 0:
        raise InputError(f"`x` is empty (shape {tuple(x.shape)}); pass at least one image")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(
            f"`x` contains {bad} NaN or infinite value(s); clean the input (torch.nan_to_num) "
            "or find where they come from"
        )
    reference = reference_tensor(model)
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
    if is_choice(reduce, (None, *REDUCTIONS)):
        return reduce  # type: ignore[no-any-return]
    raise OptionError(
        f"`reduce` must be one of {', '.join(repr(r) for r in REDUCTIONS)} or None, not {reduce!r}"
    )


def check_flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionError(f"`{name}` must be True or False, not {value!r}")


def _bounds(low: float | None, high: float | None) -> str:
    def text(v: float) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"

    if low is not None and high is not None:
        return f" from {text(low)} to {text(high)}"
    if low is not None:
        return f" of at least {text(low)}"
    return f" of at most {text(high)}" if high is not None else ""


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (not a bool, not a float such as 1.5 or 2.0) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"`{name}` must be an int{_bounds(low, high)}, not {value!r}")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise OptionError(f"`{name}` must be an int{_bounds(low, high)}, not {value!r}")
    return number


def check_positive_int(name: str, value: Any, *, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise OptionError(f"`{name}` must be a positive int, not {value!r}")
    return check_int(name, value, low=1, high=high)


#: Seeds go to torch.Generator.manual_seed, which takes a signed or unsigned 64-bit integer.
SEED_RANGE = (-(2**63), 2**64 - 1)


def check_seed(value: Any, name: str = "seed") -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or not SEED_RANGE[0] <= int(value) <= SEED_RANGE[1]:
        raise OptionError(f"`{name}` must be an int that fits in 64 bits, not {value!r}")
    return int(value)


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
) -> float:
    """A finite real number (not a bool) in ``[low, high]``, or ``(low, high]`` if ``open_low``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    ok = ok and math.isfinite(number)
    ok = ok and (low is None or number > low or (not open_low and number == low))
    ok = ok and (high is None or number <= high)
    if not ok:
        most = f", at most {high:g}" if high is not None else ""
        if low == 0 and open_low:
            kind = f"a positive number (finite{most})"
        elif low == 0:
            kind = f"a non-negative number (finite{most})"
        elif open_low and low is not None:
            kind = f"a finite number above {low:g}{most}"
        else:
            kind = f"a finite number{_bounds(low, high)}"
        raise OptionError(f"`{name}` must be {kind}, not {value!r}")
    return number


def check_positive_real(name: str, value: Any, *, high: float | None = None) -> float:
    return check_real(name, value, low=0.0, high=high, open_low=True)


def reference_tensor(model: nn.Module) -> torch.Tensor | None:
    """The model's first floating-point parameter or buffer, whose device and dtype the input
    must have; ``None`` for a model without one."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return next((t for t in tensors if t.is_floating_point()), None)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` runs: the device of :func:`reference_tensor`; the CPU without one (a
    Keras model's adapter, a parameter-free function)."""
    reference = reference_tensor(model)
    return torch.device("cpu") if reference is None else reference.device


def device_present(device: torch.device) -> bool:
    """Whether this machine has ``device`` (CPU always; CUDA and MPS when torch can use them)."""
    if device.type == "cuda":
        index_ok = device.index is None or device.index < torch.cuda.device_count()
        return bool(torch.cuda.is_available() and index_ok)
    if device.type == "mps":
        return bool(torch.backends.mps.is_available())
    return device.type == "cpu"


def check_device(name: str, value: Any) -> torch.device:
    """A device torch knows (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or a
    :class:`torch.device`) and this machine has."""
    try:
        device = value if isinstance(value, torch.device) else torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise OptionError(
            f"`{name}` must be a device such as 'cpu', 'cuda', 'cuda:1' or 'mps', not {value!r}"
        ) from e
    if not device_present(device):
        raise OptionError(f"`{name}` {str(device)!r}: this machine has no such device; use 'cpu'")
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``, or ``None`` when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: float, device: torch.device, *, what: str, fix: str) -> None:
    """Refuse, before allocating, ``nbytes`` for ``what`` when ``device`` cannot hold them."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        raise OptionError(
            f"{what} would need {_bytes(nbytes)}, but {device} has {_bytes(free)} available; {fix}"
        )


def _bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


_REDUCED = (torch.bfloat16, torch.float16)


def check_autocast(value: Any) -> torch.dtype | None:
    """The reduced precision of an ``autocast`` option: None, bfloat16 or float16."""
    if value is not None and not (isinstance(value, torch.dtype) and value in _REDUCED):
        raise OptionError(
            f"`autocast` must be None, torch.bfloat16 or torch.float16, not {value!r}"
        )
    return value


def check_fraction(name: str, value: Any, *, closed: bool = True) -> float:
    """A number in (0, 1], or in (0, 1) when not ``closed``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and (0 < float(value) < 1 or (closed and float(value) == 1)):
        return float(value)
    interval = "(0, 1]" if closed else "(0, 1)"
    raise OptionError(f"`{name}` must be a number in {interval}, not {value!r}")
