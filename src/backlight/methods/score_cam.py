"""Score-CAM (Wang et al. 2020): a layer's channels weighted by the score of the input masked by
each of them; no gradients."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_flag, check_memory, check_positive_int, is_choice
from .._pipeline import explanation, resize_to
from .._registry import register
from .._result import Explanation
from .._state import explaining
from .._targets import Scorer, is_score_function
from .._types import Layer, Target
from ..errors import OptionError
from ._forward import Forward
from .cam import Reshape, _finish, _layer_capture

__all__ = ["score_cam"]


@register(
    "score_cam",
    family="cam",
    layered=True,
    smoothable=True,
    quick={"channels": 128, "progress": False},
)
def score_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    resize: bool = False,
    relu: bool = True,
    reshape: Reshape | None = None,
    batch_size: int = 32,
    channels: int | None = None,
    weighting: Literal["probability", "channel_softmax"] = "probability",
    variant: Literal["paper", "tf_keras_vis"] = "paper",
    progress: bool = True,
) -> Explanation:
    """Score-CAM: activations weighted by the class probability of the input masked by each
    channel.

    No gradients; one masked forward pass per channel.
    Each channel ``A_k``, upsampled bilinearly to the input and min-max scaled to [0, 1], masks
    the input: ``w_k = softmax(f(x ⊙ M_k))_c``, ``map = ReLU(Σ_k w_k A_k)``, as in the authors'
    code (constant channels get weight 0 and cost no forward pass). With a callable ``target``,
    ``w_k`` is its score of the masked input.

    Args:
        batch_size: masked images per forward pass; bounds the memory used.
        channels: keep only the ``channels`` channels of largest activation variance per sample
            (others weigh 0). An approximation, named Faster-ScoreCAM in tf-keras-vis: K forward
            passes become ``channels``.
        weighting: ``"probability"`` (the paper) or ``"channel_softmax"``: softmax over the
            channels of the target's raw score, as pytorch-grad-cam computes it.
        variant: ``"paper"`` (the authors' code, as above) or ``"tf_keras_vis"``: tf-keras-vis'
            ``Scorecam``, which keeps the ``channels`` chosen for any sample of the batch for
            every sample (so a map depends on the batch it came in), upsamples with corners
            aligned (``scipy.ndimage.zoom``, order 1), scales by ``(A − min) / (max − min +
            1e-7)`` and runs the constant channels too (their zero mask still weighs
            ``softmax(f(0))_c``).
        progress: show a progress bar over the forward passes.
        Others as for :func:`backlight.grad_cam`.

    Aliases:
        scorecam

    Quick:
        channels=128 (ResNet-50's layer4 has 2,048, VGG-16's last block 512): correlation ≥ 0.8
        with the map of all 512 channels on a ResNet-18 with random weights.

    Paper:
        Wang et al., Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
        Networks, CVPR-W 2020

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> backlight.score_cam(model, x, 3, layer="layer4", progress=False).shape
        torch.Size([1, 1, 2, 2])
    """
    relu, resize = check_flag("relu", relu), check_flag("resize", resize)
    progress = check_flag("progress", progress)
    batch_size = check_positive_int("batch_size", batch_size)
    if channels is not None and (
        isinstance(channels, bool) or not isinstance(channels, int) or channels < 1
    ):
        raise OptionError(f"`channels` must be None or a positive int, not {channels!r}")
    if not is_choice(variant, ("paper", "tf_keras_vis")):
        raise OptionError(f"`variant` must be 'paper' or 'tf_keras_vis', not {variant!r}")
    tf_keras_vis = variant == "tf_keras_vis"
    if not is_choice(weighting, ("probability", "channel_softmax")):
        raise OptionError(
            f"`weighting` must be 'probability' or 'channel_softmax', not {weighting!r}"
        )
    c = _layer_capture(
        model, x, target, layer=layer, reshape=reshape, method="score_cam", gradient=False
    )
    a = c.activation
    every = weighting == "channel_softmax" or tf_keras_vis
    active = _active_channels(a, channels, every=every, batch=tf_keras_vis)
    pairs = active.nonzero()  # (P, 2): sample, channel
    check_memory(  # masks, masked images and the model's first activations
        4 * x.element_size() * min(batch_size, max(pairs.shape[0], 1)) * x[0].numel(),
        x.device,
        what=f"`batch_size`={batch_size}: Score-CAM batches of masked images",
        fix="lower batch_size",
    )
    # the masked input's score: the class probability (the paper), or the raw score to be
    # softmaxed over the channels (pytorch-grad-cam), or the callable's value
    softmax = weighting == "probability" and not is_score_function(target)
    scorer = Scorer.resolve(
        c.output, target, a.shape[0], probability="softmax" if softmax else None
    )
    scores = torch.zeros(a.shape[:2], dtype=a.dtype, device=a.device)
    with explaining(model), torch.inference_mode():
        forward = Forward(model, x, autocast=None, channels_last=False)
        bar = tqdm(total=pairs.shape[0], desc="score_cam", unit="mask", disable=not progress)
        with bar:
            for start in range(0, pairs.shape[0], batch_size):
                sample, channel = pairs[start : start + batch_size].unbind(1)
                masks = _masks(a[sample, channel][:, None], x, tf_keras_vis)
                scores[sample, channel] = scorer(forward(x[sample] * masks), sample).to(
                    scores.dtype
                )
                bar.update(sample.shape[0])
    if weighting == "channel_softmax":
        scores = scores.masked_fill(~active, float("-inf")).softmax(dim=1)
    maps = (scores[:, :, None, None] * a).sum(dim=1, keepdim=True)
    return explanation(_finish(maps, x, relu, resize), c)


def _active_channels(
    a: torch.Tensor, channels: int | None, *, every: bool, batch: bool = False
) -> torch.Tensor:
    """(N, K): the (sample, channel) pairs that need a forward pass: the channels that are not
    constant (a constant mask weighs 0), or ``every`` one; at most the ``channels`` of largest
    variance per sample, or with ``batch`` every channel that is among them for any sample."""
    flat = a.flatten(2)
    active = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
    if not every:
        active = flat.amax(dim=2) > flat.amin(dim=2)
    if channels is not None and channels < a.shape[1]:
        keep = torch.zeros_like(active)
        keep.scatter_(1, flat.var(dim=2).topk(channels, dim=1).indices, True)
        active &= keep.any(dim=0, keepdim=True) if batch else keep
    return active


def _masks(a: torch.Tensor, x: torch.Tensor, tf_keras_vis: bool) -> torch.Tensor:
    """The channels ``a`` (P, 1, h, w) as masks of the input's size, scaled to [0, 1]."""
    if not tf_keras_vis:
        return _minmax(resize_to(a, x))
    up = F.interpolate(a, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=True)
    low = up.amin(dim=(2, 3), keepdim=True)
    return (up - low) / (up.amax(dim=(2, 3), keepdim=True) - low + 1e-7)


def _minmax(masks: torch.Tensor) -> torch.Tensor:
    """Each mask scaled to [0, 1] by its own minimum and maximum (a constant one to zeros)."""
    low = masks.amin(dim=(2, 3), keepdim=True)
    span = masks.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (masks - low) / span.clamp(min=1e-30), 0.0)
