"""Occlusion: the drop of the class score when a window of the image is covered."""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_flag, check_memory, check_positive_int, check_real, is_choice
from .._pipeline import clean_pass
from .._registry import register
from .._result import Explanation
from .._targets import Probability
from .._types import Target
from ..errors import InputError, OptionError
from ._forward import Forward

__all__ = ["occlusion"]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Where the windows along one side start: ``0, stride, 2·stride...`` until one reaches the
    last pixel (the last may hang over the border and is cut there), as Captum places them."""
    return [k * stride for k in range(math.ceil((size - window) / stride) + 1)]


@register(
    "occlusion",
    family="perturbation",
    quick={"window": 8, "stride": 8, "progress": False},
    demo={"window": 8, "stride": 4},
)
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    window: int = 8,
    stride: int = 4,
    fill: float | torch.Tensor = 0.0,
    batch_size: int = 32,
    probability: Probability = None,
    progress: bool = True,
) -> Explanation:
    """Occlusion: the drop of the class score when a square window of the image is covered,
    averaged over the windows that cover each pixel.

    ``map_p = mean_{W ∋ p} (score(x) − score(x with W filled))`` over the windows ``W`` (all
    channels) at the positions ``0, s, 2s...`` along each side, the last one cut at the border
    if it hangs over, as Captum's ``Occlusion`` with ``sliding_window_shapes=(C, w, w)`` and
    ``strides=(C, s, s)``, whose per-channel maps are this map repeated. Covered images go
    through the model ``batch_size`` at a time.

    Args:
        window: the side of the window, in pixels.
        stride: the step between windows (at most ``window``, so that every pixel is covered).
        fill: the value covered pixels take (0, the mean colour of a normalised image), or a
            tensor broadcastable to one image (C, H, W), such as a blurred copy.
        batch_size: covered images per forward pass; bounds the memory used.
        probability: ``None`` for the raw score (logit, as Captum), ``"softmax"`` or
            ``"sigmoid"`` for a probability.
        progress: show a progress bar over the forward passes.
        x, target: as for :func:`backlight.gradient`.

    Returns:
        A detached tensor (N, 1, H, W).

    Aliases:
        occlusion_sensitivity

    Quick:
        stride=8 (1/4 of the windows): correlation ≥ 0.9 with the default's map on the demo model.

    Paper:
        Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> backlight.occlusion(model, torch.randn(1, 3, 32, 32), 3, window=8, stride=8,
        ...                     progress=False).shape
        torch.Size([1, 1, 32, 32])
    """
    window = check_positive_int("window", window)
    stride = check_positive_int("stride", stride, high=window)
    batch_size = check_positive_int("batch_size", batch_size)
    progress = check_flag("progress", progress)
    if probability is not None and not is_choice(probability, ("softmax", "sigmoid")):
        raise OptionError(
            f"`probability` must be None, 'softmax' or 'sigmoid', not {probability!r}"
        )
    with clean_pass(model, x, target, probability=probability) as clean:
        x, scorer = clean.x, clean.scorer
        n, _, height, width = x.shape
        if window > min(height, width):
            raise OptionError(
                f"`window` {window} is larger than the image ({height}x{width}); lower it"
            )
        if isinstance(fill, torch.Tensor):
            try:
                value = torch.broadcast_to(fill.detach().to(x), x.shape[1:])
            except RuntimeError as e:
                raise InputError(
                    f"`fill` of shape {tuple(fill.shape)} does not broadcast to one image "
                    f"{tuple(x.shape[1:])}"
                ) from e
        else:
            value = torch.full(
                x.shape[1:], check_real("fill", fill), dtype=x.dtype, device=x.device
            )
        boxes = [
            (top, left)
            for top in window_starts(height, window, stride)
            for left in window_starts(width, window, stride)
        ]
        check_memory(
            3 * x.element_size() * min(batch_size, len(boxes)) * x[0].numel(),
            x.device,
            what=f"`batch_size`={batch_size} covered images",
            fix="lower batch_size",
        )
        with torch.no_grad():
            given = scorer(clean.output)
        forward = Forward(clean.model, x, autocast=None, channels_last=False)
        total = torch.zeros((n, height, width), dtype=torch.float64, device=x.device)
        count = torch.zeros((height, width), dtype=torch.float64, device=x.device)
        for top, left in boxes:
            count[top : top + window, left : left + window] += 1
        passes = n * math.ceil(len(boxes) / batch_size)
        with tqdm(total=passes, desc="occlusion", unit="batch", disable=not progress) as bar:
            for i in range(n):
                for start in range(0, len(boxes), batch_size):
                    chunk = boxes[start : start + batch_size]
                    covered = x[i].expand(len(chunk), *x.shape[1:]).clone()
                    for j, (top, left) in enumerate(chunk):
                        covered[j, :, top : top + window, left : left + window] = value[
                            :, top : top + window, left : left + window
                        ]
                    rows = torch.full((len(chunk),), i, device=x.device)
                    with torch.no_grad():
                        drop = (given[i] - scorer(forward(covered), rows)).to(total)
                    for j, (top, left) in enumerate(chunk):
                        total[i, top : top + window, left : left + window] += drop[j]
                    bar.update(1)
    return Explanation.make(
        (total / count).to(x.dtype)[:, None],
        targets=scorer.explained,
        scores=given,
        output=clean.logits,
    )
