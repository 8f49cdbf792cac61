"""SmoothGrad: any gradient-based map, averaged over noisy copies of the input."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import (
    check_flag,
    check_input,
    check_memory,
    check_model,
    check_positive_int,
    check_real,
    check_reduce,
    check_seed,
    is_choice,
)
from .._keras import adapt
from .._pipeline import clean_pass, reduce_channels
from .._registry import get_method, list_methods, register
from .._result import Explanation
from .._state import autograd_on
from .._targets import Objective, is_score_function, per_sample
from .._types import Target
from ..errors import OptionError

__all__ = ["smooth_grad"]


def _resolve(method: str | Callable[..., Any]) -> Callable[..., Any]:
    if isinstance(method, str):
        info = get_method(method)
    elif callable(method):
        registered = [m for m in list_methods() if method in (m.function, m.public)]
        if not registered:
            return method  # a user's own map function with the same calling convention
        info = registered[0]
    else:
        raise OptionError(
            f"`method` must be a method name or function, such as backlight.guided_backprop, "
            f"not {type(method).__name__}"
        )
    if not info.smoothable:
        raise OptionError(
            f"smooth_grad averages gradient-based maps; {info.name!r} is a {info.family} method "
            "(it has its own sampling or rules); use a gradient or CAM method"
        )
    return info.function


@autograd_on
def smooth_grad(
    method: str | Callable[..., torch.Tensor],
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    average: Literal["maps", "channels"] = "maps",
    **options: Any,
) -> Explanation:
    """SmoothGrad: any gradient or CAM method averaged over noisy copies of the input.

    ``map = 1/n Σ_j M(x + σ ε_j)`` with ``ε_j ~ N(0, I)``, ``σ = noise · (max x_i − min x_i)`` per
    sample, and ``M`` any gradient-family or CAM method called with ``options``. The targets are
    fixed on the clean input (``None`` means the class predicted for ``x``, not for each noisy
    copy). The ``n`` noise draws come from ``seed`` alone and are shared by every sample of the
    batch, so a batch gives the maps of its samples one by one, and the same seed the same map.

    Args:
        method: the method to smooth, as a function (``backlight.guided_backprop``) or a name;
            where it is an option (``--method smooth_grad``), the plain gradient by default, as
            in the paper.
        model, x, target: as for the method.
        samples: the number ``n`` of noisy copies per sample.
        noise: the noise level ``σ / (max x − min x)``; the paper finds 0.1 to 0.2 works best.
        seed: seeds the noise.
        batch_size: noisy images per call of ``method``; bounds the memory used.
        progress: show a progress bar over the batches.
        average: ``"maps"`` averages the method's maps (the paper); ``"channels"`` averages each
            channel's magnitude ``|g_c|`` and reduces the mean with the method's ``reduce``
            afterwards, as tf-keras-vis' ``Saliency(smooth_samples=n)`` does
            (``max_c 1/n Σ_j |g_c(x + σ ε_j)|`` for ``"abs_max"``; the paper's form averages the
            per-draw maxima, which is larger); only for methods with a ``reduce`` option.
        **options: passed to ``method`` (``layer``, ``reduce``, ``resize``...).

    Returns:
        The averaged maps, shaped as ``method`` returns them.

    Aliases:
        smoothgrad

    Quick:
        samples=4 (1/6 of the passes): correlation ≥ 0.9 with the default's map (guided
        backprop) on the demo model.

    Paper:
        Smilkov, Thorat, Kim, Viégas & Wattenberg, SmoothGrad: removing noise by adding noise,
        2017

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> m = backlight.smooth_grad(backlight.guided_backprop, model, x, [1, 2], samples=4,
        ...                           progress=False)
        >>> m.shape
        torch.Size([2, 1, 64, 64])
    """
    function = _resolve(method)
    model, x = adapt(model, x)
    model = check_model(model)
    x = check_input(x, model)
    samples = check_positive_int("samples", samples)
    batch_size = check_positive_int("batch_size", batch_size)
    noise = check_real("noise", noise, low=0.0)  # the paper finds 0.1 to 0.2 works best
    seed = check_seed(seed)
    check_memory(
        x.element_size() * (samples + 3 * min(batch_size, samples * x.shape[0])) * x[0].numel(),
        x.device,
        what=f"`samples`={samples} noise draws with `batch_size`={batch_size} noisy images",
        fix="lower samples or batch_size",
    )
    progress = check_flag("progress", progress)
    reduce = _averaging(average, function, options)

    classes: Any
    if isinstance(target, Objective):  # fixed on the input as given, not on each noisy copy
        with clean_pass(model, x, target) as clean:
            classes = clean.scorer.objective or clean.scorer.classes
    elif is_score_function(target):
        classes = target
    elif target is None:  # the classes predicted for the input as given
        with clean_pass(model, x, None) as clean:
            classes = clean.scorer.classes
    else:  # the method checks the range on its first call
        classes = per_sample(target, x.shape[0], x.device)

    n = x.shape[0]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn((samples, *x.shape[1:]), generator=generator, dtype=x.dtype).to(x.device)
    spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1)) * noise  # σ per sample
    total: torch.Tensor | None = None
    pairs = [(i, j) for i in range(n) for j in range(samples)]
    starts = range(0, len(pairs), batch_size)
    for start in tqdm(starts, desc="smooth_grad", disable=not progress, leave=False):
        chunk = pairs[start : start + batch_size]
        rows = torch.tensor([i for i, _ in chunk], device=x.device)
        draws = torch.tensor([j for _, j in chunk], device=x.device)
        noisy = x.detach()[rows] + spread[rows].view(-1, 1, 1, 1) * eps[draws]
        if isinstance(classes, Objective):
            chunk_target: Any = classes.take(rows)
        else:
            chunk_target = classes if callable(classes) else classes[rows]
        maps = function(model, noisy, chunk_target, **options)
        if reduce is not None:
            maps = maps.abs()
        if total is None:
            total = torch.zeros((n, *maps.shape[1:]), dtype=maps.dtype, device=maps.device)
        total.index_add_(0, rows, maps)
    assert total is not None
    smoothed = _resolve_name(method)
    mean = total / samples
    return Explanation.make(
        reduce_channels(mean, reduce) if reduce is not None else mean,
        method="smooth_grad",
        targets=classes.classes
        if isinstance(classes, Objective)
        else None
        if callable(classes)
        else classes,
        smoothed=smoothed,
    )


def _averaging(average: Any, function: Callable[..., Any], options: dict[str, Any]) -> Any:
    """For ``average="channels"``, the reduction to apply after averaging (the method then runs
    with ``reduce=None``, set in ``options``); ``None`` for ``"maps"``."""
    if not is_choice(average, ("maps", "channels")):
        raise OptionError(f"`average` must be 'maps' or 'channels', not {average!r}")
    if average == "maps":
        return None
    try:
        default = inspect.signature(function).parameters["reduce"].default
    except (KeyError, TypeError, ValueError):
        raise OptionError(
            "`average`='channels' averages each channel of the map before reducing the channels, "
            "so the method must take a `reduce` option (the gradient family, guided Grad-CAM)"
        ) from None
    reduce = check_reduce(options.get("reduce", default))
    if reduce is None:
        raise OptionError(
            "`average`='channels' reduces the channels after averaging; give `reduce` "
            "('abs_max', 'l2' or 'sum'), not None"
        )
    options["reduce"] = None
    return reduce


def _resolve_name(method: str | Callable[..., Any]) -> str:
    """The registered name of ``method``, or its own name for a user's function."""
    if isinstance(method, str):
        return get_method(method).name
    registered = [m.name for m in list_methods() if method in (m.function, m.public)]
    return registered[0] if registered else getattr(method, "__name__", repr(method))


def _method_as_option(public: Callable[..., Explanation]) -> Callable[..., Explanation]:
    """``public(method, model, x, target, **options)`` in every method's calling convention,
    ``fn(model, x, target, *, method="gradient", **options)``, for the registry, the CLI and the
    bench: the same parameters, defaults and docstring, with the method moved to an option (the
    plain gradient by default, as in the paper)."""
    first, *rest = inspect.signature(public).parameters.values()
    method = first.replace(kind=inspect.Parameter.KEYWORD_ONLY, default="gradient")
    keyword = [p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest].index(True)
    parameters = [*rest[:keyword], method, *rest[keyword:]]

    def function(
        model: nn.Module,
        x: torch.Tensor,
        target: Target = None,
        *,
        method: str | Callable[..., torch.Tensor] = "gradient",
        **options: Any,
    ) -> Explanation:
        return public(method, model, x, target, **options)

    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__name__ = function.__qualname__ = public.__name__
    function.__doc__ = public.__doc__
    return function


register(
    "smooth_grad", family="wrapper", quick={"samples": 4, "progress": False}, public=smooth_grad
)(_method_as_option(smooth_grad))
