"""The model-randomization sanity check (Adebayo et al., NeurIPS 2018).

A map that explains the model should change when the model's weights are replaced by random
ones. The check re-initialises the layers one at a time from the output towards the input and
compares each new map with the original one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_input, check_model, is_choice
from .._keras import adapt, is_keras_layer, own_parameters, reinitialise_keras
from .._layers import resolve_layer, trace
from .._registry import get_method
from .._state import autograd_on
from .._targets import Scorer
from .._types import Layer, Target
from ..errors import InputError, MethodNotApplicableError, OptionError
from ._common import flag, integer
from ._similarity import spearman, ssim

__all__ = ["RandomizationResult", "randomization"]

Method = Callable[..., Any] | str


@dataclass(frozen=True)
class RandomizationResult:
    """Similarity between the original map and the maps of randomized models, step by step.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        layers: the randomized layer of each step, as dotted names, from the output down.
        spearman_abs: ``(steps, N)`` Spearman rank correlation of the absolute-value maps.
        spearman: ``(steps, N)`` Spearman rank correlation of the signed maps.
        ssim: ``(steps, N)`` SSIM of the absolute-value maps scaled to ``[0, 1]``.
        original: the maps of the intact model, as the method returned them.
        maps: ``(steps, *original.shape)`` the maps after each step with ``keep_maps=True``,
            else ``None``.
    """

    mode: str
    layers: list[str]
    spearman_abs: torch.Tensor
    spearman: torch.Tensor
    ssim: torch.Tensor
    original: torch.Tensor
    maps: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.layers)


@autograd_on
def randomization(
    model: nn.Module,
    x: torch.Tensor,
    method: Method,
    target: Target = None,
    *,
    options: Mapping[str, Any] | None = None,
    mode: Literal["cascading", "independent"] = "cascading",
    layers: Sequence[Layer] | None = None,
    seed: int = 0,
    keep_maps: bool = False,
    progress: bool = True,
) -> RandomizationResult:
    """Cascading (or independent) model randomization (Adebayo et al., *Sanity Checks for
    Saliency Maps*, NeurIPS 2018).

    With ``M_0`` the original map and ``M_k`` the map once the ``k`` layers nearest the output
    are re-initialised (cascading) or once only the ``k``-th is (independent), each step reports
    ``spearman(|M_0|, |M_k|)``, ``spearman(M_0, M_k)`` and ``SSIM(norm|M_0|, norm|M_k|)`` per
    image, ``norm`` scaling a map to ``[0, 1]`` by its minimum and maximum (a constant map
    becomes zeros). A map that stays similar while the weights become random does not explain
    the model. Spearman and SSIM are computed by :func:`backlight.metrics.spearman` and
    :func:`backlight.metrics.ssim` (the paper used ``scipy.stats.spearmanr`` and scikit-image's
    SSIM; they agree with them).

    The layers: by default every module that holds parameters of its own (``Conv2d``,
    ``Linear``, ``BatchNorm2d``, …) and runs in the forward pass of ``x``, in reverse order of
    their last call, so the output layer comes first; ``layers`` gives them (or whole blocks,
    such as ``"layer4"``) explicitly, in order. Re-initialisation: a module's own
    ``reset_parameters()`` when it has one (for batch norm this also resets the running
    statistics, making it the identity up to ε); otherwise each of its parameters is drawn
    again, those of 2 or more dimensions with ``kaiming_uniform_(a=√5)`` (PyTorch's default for
    convolution and linear weights) and the others uniformly in ``±1/√fan_in`` (the fan-in of the
    module's first weight, or the parameter's size). Each layer is drawn from its own seed,
    derived from ``seed`` and its position, so a layer gets the same weights in both modes and
    the global random state is left untouched. A Keras layer is drawn from its own initializers
    (``kernel_initializer``...), seeded the same way.

    The model is never changed: the work is done on a deep copy. The explained class is fixed
    before any randomization: with ``target=None`` it is each image's predicted class under the
    original model.

    Args:
        model: the classifier.
        x: images ``(N, C, H, W)``.
        method: a function ``fn(model, x, target, **options)`` returning maps, or the name of a
            registered method (``"guided_backprop"``).
        target: as for the methods; ``None`` is resolved once, on the original model.
        options: keyword options for the method (``{"layer": "layer4", "resize": True}``).
        mode: ``"cascading"`` (cumulative, from the output down) or ``"independent"`` (one
            layer at a time, the others intact).
        layers: the layers to randomize, in order (names or modules); ``None`` for all, traced.
        seed: the seed of the random weights.
        keep_maps: keep every step's maps in the result.
        progress: show a progress bar on stderr.

    Returns:
        A :class:`RandomizationResult`.

    Example:
        >>> from backlight.data import make_batch
        >>> from backlight.demo import load_demo_model
        >>> from backlight.metrics import randomization
        >>> x, labels, _ = make_batch(2)
        >>> result = randomization(load_demo_model(), x, "gradient", labels, progress=False)
        >>> result.layers[:3], tuple(result.spearman_abs.shape)
        (['classifier', 'features.bn5', 'features.conv5'], (11, 2))
    """
    model, x = adapt(model, x)
    model = check_model(model)
    x = check_input(x, model).detach()
    function = _method(method)
    kwargs = _options(options)
    if not is_choice(mode, ("cascading", "independent")):
        raise OptionError(f"`mode` must be 'cascading' or 'independent', not {mode!r}")
    seed = integer("seed", seed)
    keep_maps = flag("keep_maps", keep_maps)
    progress = flag("progress", progress)

    work = copy.deepcopy(model)
    output, order = _trace(work, x)
    if target is None:
        target = Scorer.resolve(output, None, x.shape[0]).classes
    if layers is None:
        names = order
        if not names:
            raise MethodNotApplicableError(
                f"{type(model).__name__} has no module with parameters that runs on `x`; there "
                "is nothing to randomize"
            )
    else:
        if isinstance(layers, (str, nn.Module)) or not isinstance(layers, Sequence):
            raise OptionError(
                "`layers` must be a sequence of layer names or modules, e.g. ['fc', 'layer4']"
            )
        names = [resolve_layer(model, layer)[0] for layer in layers]
        if not names:
            raise OptionError("`layers` is empty; name at least one layer, or pass None for all")
        for name in names:
            if not any(True for _ in work.get_submodule(name).parameters()):
                raise OptionError(f"`layers`: {name!r} has no parameters to randomize")

    original = _maps(function, work, x, target, kwargs)
    sp_abs, sp, similarity, kept = [], [], [], []
    base_abs = original.abs()
    base_norm = _unit(base_abs)
    for index, name in enumerate(tqdm(names, desc="randomization", disable=not progress)):
        module = work.get_submodule(name)
        saved = None
        if mode == "independent":
            saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        _reinitialise(module, _layer_seed(seed, index))
        maps = _maps(function, work, x, target, kwargs)
        if maps.shape != original.shape:
            raise InputError(
                f"the method returned maps of shape {tuple(maps.shape)} after randomizing "
                f"{name!r}, but {tuple(original.shape)} before"
            )
        sp_abs.append(spearman(base_abs, maps.abs()))
        sp.append(spearman(original, maps))
        similarity.append(ssim(base_norm, _unit(maps.abs())))
        if keep_maps:
            kept.append(maps)
        if saved is not None:
            module.load_state_dict(saved)
    return RandomizationResult(
        mode,
        list(names),
        torch.stack(sp_abs),
        torch.stack(sp),
        torch.stack(similarity),
        original,
        torch.stack(kept) if keep_maps else None,
    )


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[Any, list[str]]:
    """The model's output on ``x`` and its modules with parameters, last called first."""
    seen = trace(model, x, include=lambda _, m: bool(own_parameters(m)))
    last = {name: i for i, name in enumerate(seen.finished)}
    return seen.output, sorted(last, key=lambda name: -last[name])


def _reinitialise(layer: nn.Module, seed: int) -> None:
    """Fresh random parameters for every module of ``layer`` that owns parameters."""
    if is_keras_layer(layer):
        reinitialise_keras(layer, seed)
        return
    devices = sorted({p.device.index or 0 for p in layer.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in layer.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            weight = next((p for p in own if p.dim() >= 2), None)
            fan_in = weight[0].numel() if weight is not None else None
            for p in own:
                if p.dim() >= 2:
                    nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                else:
                    bound = 1 / math.sqrt(fan_in if fan_in else max(p.numel(), 1))
                    nn.init.uniform_(p, -bound, bound)


def _layer_seed(seed: int, index: int) -> int:
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, index])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)


def _maps(
    function: Callable[..., Any],
    model: nn.Module,
    x: torch.Tensor,
    target: Target,
    options: dict[str, Any],
) -> torch.Tensor:
    maps = function(model, x, target, **options)
    if not isinstance(maps, torch.Tensor) or maps.dim() < 3 or maps.shape[0] != x.shape[0]:
        raise InputError(
            "the method must return maps (N, C, h, w) with one map per image, got "
            f"{type(maps).__name__}"
        )
    return maps.detach().double().cpu()


def _unit(maps: torch.Tensor) -> torch.Tensor:
    """Each sample scaled to [0, 1] by its own minimum and maximum; a constant one to zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1).values.reshape(-1, *([1] * (maps.dim() - 1)))
    span = (flat.max(dim=1).values.reshape(low.shape) - low).clamp(min=0)
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), 0.0)


def _method(method: Any) -> Callable[..., Any]:
    if isinstance(method, str):
        return get_method(method).function
    if callable(method):
        return method  # type: ignore[no-any-return]
    raise OptionError(
        "`method` must be a function fn(model, x, target, **options) or the name of a "
        f"registered method (see backlight.list_methods()), not {type(method).__name__}"
    )


def _options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise OptionError(
            "`options` must be a mapping of the method's keyword options, e.g. {'layer': 'layer4'}"
        )
    return dict(options)
