"""Four more CAMs at a layer's activations ``A`` (N, K, h, w): HiResCAM and XGrad-CAM (one
forward and backward pass, made like Grad-CAM by :func:`backlight.methods.cam._gradient_cam`),
Eigen-CAM (no gradient: the first principal direction of the activations) and Ablation-CAM (no
gradient: one forward pass per channel, with that channel set to zero).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_flag, check_memory, check_positive_int
from .._keras import channels_last
from .._layers import resolve_layer
from .._pipeline import Capture, explanation
from .._result import Explanation
from .._state import explaining
from .._targets import Scorer
from .._types import Layer, Target
from ..errors import OptionError
from ._forward import Forward
from .cam import (
    Reshape,
    _finish,
    _gradient_cam,
    _layer_capture,
    _linear_approx_map,
    _register_cam,
)

__all__ = ["ablation_cam", "eigen_cam", "hires_cam", "xgrad_cam"]


_HIRES_CAM_DOC = """HiResCAM: gradient times activation at each position, summed over the channels.

    ``map = ReLU(Σ_k ∂score/∂A_k ⊙ A_k)``: Grad-CAM without the spatial averaging of the
    gradients, so each position keeps its own weight and the map is the layer's first-order
    (gradient × activation) contribution to the score. Without the ReLU (``relu=False``) it is
    :func:`backlight.linear_approx`. pytorch-grad-cam's ``HiResCAM`` computes the same. Arguments
    as for :func:`backlight.grad_cam`.

    Aliases:
        hirescam

    Paper:
        Draelos & Carin, Use HiResCAM instead of Grad-CAM for faithful explanations of
        convolutional neural networks, arXiv 2011.08891, 2020

    Example:
        >>> import torch, torchvision, backlight
        >>> net = torchvision.models.resnet18(num_classes=10).eval()
        >>> cam = backlight.hires_cam(net, torch.randn(2, 3, 64, 64), [1, 2], layer="layer3")
        >>> cam.shape, cam.layer
        (torch.Size([2, 1, 4, 4]), 'layer3')
    """

hires_cam = _gradient_cam("hires_cam", _linear_approx_map, _HIRES_CAM_DOC)


def _xgrad_cam_map(a: torch.Tensor, g: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    total = a.sum(dim=(2, 3), keepdim=True)
    safe = torch.where(total != 0, total, torch.ones_like(total))
    weights = torch.where(total != 0, (a * g).sum(dim=(2, 3), keepdim=True) / safe, 0.0)
    return (weights * a).sum(dim=1, keepdim=True)


_XGRAD_CAM_DOC = """XGrad-CAM: activations weighted by their activation-weighted mean gradients.

    ``w_k = Σ_ij (A_kij / Σ_ab A_kab) · ∂score/∂A_kij``, ``map = ReLU(Σ_k w_k A_k)``: the
    weights the paper derives from its sensitivity and conservation axioms. A channel whose
    activations sum to zero gets weight 0 (an all-zero channel contributes nothing either way).
    pytorch-grad-cam divides by ``Σ_ab A_kab + 1e-7`` instead: the same map wherever the sums are
    far from zero, as after a ReLU, but at a layer with signed activations a channel whose sum is
    (nearly) zero gets an unbounded weight there. Arguments as for :func:`backlight.grad_cam`.

    Aliases:
        xgradcam

    Paper:
        Fu et al., Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs,
        BMVC 2020

    Example:
        >>> import torch, torchvision, backlight
        >>> vgg = torchvision.models.vgg11(num_classes=10)
        >>> maps = backlight.xgrad_cam(vgg, torch.randn(1, 3, 64, 64), 3, resize=True)
        >>> tuple(maps.shape), maps.layer
        ((1, 1, 64, 64), 'features')
    """

xgrad_cam = _gradient_cam("xgrad_cam", _xgrad_cam_map, _XGRAD_CAM_DOC)


@_register_cam("eigen_cam")
def eigen_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    resize: bool = False,
    reshape: Reshape | None = None,
    center: bool = False,
) -> Explanation:
    """Eigen-CAM: the projection of a layer's activations on their first principal direction.

    Class-agnostic, no gradient: with ``M`` the activations of one sample as an (h·w, K) matrix
    (one row per position) and ``v`` the first right singular vector of ``M = U Σ Vᵀ``,
    ``map = M v`` laid out on the (h, w) grid, as the paper defines it (``L = O V_1``, no
    centering). The sign of a singular vector is arbitrary, so it is fixed here: ``v`` points the
    way the activations do on average (``mean_ij(A_ij) · v > 0``; without centering, the map sums
    to a positive value; after a ReLU its values are then all non-negative); if that is 0, the
    map's value of largest magnitude is positive. The map is signed: no ReLU. When the two largest
    singular values are equal, the first direction is not unique and neither is the map.
    ``target`` changes nothing in the map; the targets and their scores are still reported.

    Args:
        center: subtract each channel's mean over the positions before the SVD, as
            pytorch-grad-cam's ``EigenCAM`` does (its map is then this one, or its negative, as
            its SVD's sign falls, rectified). The centred projection sums to zero, so about half
            of it is negative.
        Others as for :func:`backlight.grad_cam`.

    Aliases:
        eigencam

    Paper:
        Muhammad & Yeasin, Eigen-CAM: Class Activation Map using Principal Components, IJCNN 2020

    Example:
        >>> import torch, torchvision, backlight
        >>> resnet = torchvision.models.resnet18(num_classes=10)
        >>> maps = backlight.eigen_cam(resnet, torch.rand(2, 3, 64, 64), layer="layer3")
        >>> maps.shape, bool((maps >= 0).all())  # after a ReLU: of one sign, made positive
        (torch.Size([2, 1, 4, 4]), True)
    """
    resize, center = check_flag("resize", resize), check_flag("center", center)
    c = _layer_capture(
        model, x, target, layer=layer, reshape=reshape, method="eigen_cam", gradient=False
    )
    maps = _principal_projection(c.activation, center=center)
    return explanation(_finish(maps, x, False, resize), c)


def _principal_projection(a: torch.Tensor, *, center: bool) -> torch.Tensor:
    """Each sample's (h·w, K) activations projected on their first right singular vector, with
    the sign fixed as :func:`eigen_cam` says: (N, K, h, w) -> (N, 1, h, w)."""
    n, _, h, w = a.shape
    work = a if a.element_size() >= 4 else a.float()  # no SVD in half precision
    rows = work.flatten(2).transpose(1, 2)  # (N, h·w, K)
    mean = rows.mean(dim=1, keepdim=True)
    m = rows - mean if center else rows
    vh: torch.Tensor = torch.linalg.svd(m, full_matrices=False).Vh
    direction = vh[:, 0, :, None]  # (N, K, 1): the first right singular vector
    projection = (m @ direction)[..., 0]  # (N, h·w)
    along = (mean @ direction)[:, 0, 0]  # (N,): the mean activation along the direction
    peak = projection.gather(1, projection.abs().argmax(dim=1, keepdim=True))[:, 0]
    sign = torch.where(along != 0, along.sign(), peak.sign())
    projection = projection * torch.where(sign < 0, -1.0, 1.0).to(projection.dtype)[:, None]
    return projection.reshape(n, 1, h, w).to(a.dtype)


@_register_cam("ablation_cam", quick={"batch_size": 64, "progress": False})
def ablation_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    layer: Layer | None = None,
    resize: bool = False,
    relu: bool = True,
    reshape: Reshape | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Explanation:
    """Ablation-CAM: channels weighted by the score's relative drop when each is zeroed.

    No gradients; one forward pass per channel.
    ``w_k = (y_c − y_c^k) / y_c``, with ``y_c`` the explained score and ``y_c^k`` the score with
    channel ``k`` of the layer's output set to zero, ``map = ReLU(Σ_k w_k A_k)``. Both scores
    come from passes of the sample alone, so that a map does not depend on the batch it came in
    (the small difference of two large scores would carry the batch's rounding). Channels that
    are zero already weigh 0 and cost no pass; a sample whose score is exactly 0 (where the ratio
    is undefined) gets weights 0; a negative ``y_c`` flips the sign of every weight, as the
    formula says. With a callable ``target``, ``y_c`` is its score. The layers before ``layer``
    run on one copy of the sample per batch, whose output is broadcast to the ablated copies,
    once a check on two copies has shown that this gives the scores of full passes (a model that
    reads its batch size from its input fails it, and then every copy runs in full).
    pytorch-grad-cam's ``AblationCAM`` has the same formula but sets the channel to zero only
    where the sample's smallest activation at the layer is exactly 0 (after a ReLU); elsewhere it
    sets the i-th copy of each batch to that minimum minus ``(i + 1) · 1e7`` (it takes the
    minimum again after each copy), so its weights depend on the position in the batch.

    Args:
        batch_size: ablated copies per forward pass; bounds the memory used.
        progress: show a progress bar over the forward passes.
        Others as for :func:`backlight.grad_cam`; ``reshape`` must only rearrange the layer's
            output (index, reshape, permute), as :func:`backlight.vit_reshape` does, so that a
            channel of the feature map can be zeroed in the layer's output.

    Aliases:
        ablationcam

    Quick:
        batch_size=64: the same map, in half as many forward passes.

    Paper:
        Desai & Ramaswamy, Ablation-CAM: Visual Explanations for Deep Convolutional Network via
        Gradient-free Localization, WACV 2020

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> explained = backlight.ablation_cam(model, x, 3, layer="layer4", progress=False)
        >>> explained.shape
        torch.Size([1, 1, 2, 2])
    """
    relu, resize = check_flag("relu", relu), check_flag("resize", resize)
    progress = check_flag("progress", progress)
    batch_size = check_positive_int("batch_size", batch_size)
    c = _layer_capture(
        model, x, target, layer=layer, reshape=reshape, method="ablation_cam", gradient=False
    )
    a = c.activation
    active = a.flatten(2).ne(0).any(dim=2)  # (N, K): the channels that ablation can change
    check_memory(  # the copies, the layer's outputs and their masks, and what follows
        4 * a.element_size() * min(batch_size, a.shape[1]) * (x[0].numel() + a[0].numel()),
        x.device,
        what=f"`batch_size`={batch_size}: Ablation-CAM batches of ablated copies",
        fix="lower batch_size",
    )
    y, ablated = _ablated_scores(model, x, c, active, c.reshape, batch_size, progress)
    y = y[:, None]
    weights = torch.where(y != 0, (y - ablated) / torch.where(y != 0, y, 1.0), 0.0)
    maps = (weights[:, :, None, None] * a).sum(dim=1, keepdim=True)
    return explanation(_finish(maps, x, relu, resize), c)


def _ablated_scores(
    model: nn.Module,
    x: torch.Tensor,
    c: Capture,
    active: torch.Tensor,
    reshape: Callable[[torch.Tensor], torch.Tensor] | None,
    batch_size: int,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,): each sample's score from a pass of its own, and (N, K): its score with channel k of
    the layer zeroed (the score itself for the channels not in ``active``), ``batch_size``
    channels per forward pass. Both come from passes that start from one copy of the sample, so
    that the rounding of their difference does not depend on the other samples of ``x``."""
    a = c.activation
    base = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    jobs = [
        (sample, chunk)
        for sample in range(a.shape[0])
        for chunk in torch.split(active[sample].nonzero()[:, 0], batch_size)
    ]
    module = resolve_layer(model, c.layer)[1] if c.layer is not None else None
    keras = module is not None and channels_last(model)
    ablation = _Ablation(reshape, tuple(a.shape[1:]), keras=keras)
    shortcut: bool | None = None if module is not None else False
    with explaining(model), torch.inference_mode():
        forward = Forward(model, x, autocast=None, channels_last=False)
        handle = module.register_forward_hook(ablation) if module is not None else None
        try:
            ablation.channels = None  # the hook lets the output through
            for sample in range(a.shape[0]):
                rows = torch.full((1,), sample, device=a.device)
                base[sample] = c.scorer(forward(x[sample : sample + 1].detach().clone()), rows)[0]
            scores = base[:, None].repeat(1, a.shape[1])
            for sample, chunk in tqdm(
                jobs, desc="ablation_cam", unit="batch", disable=not progress
            ):
                one = x[sample : sample + 1].detach().clone()
                if shortcut is None and chunk.shape[0] > 1:
                    shortcut = _broadcast_agrees(forward, c.scorer, ablation, one, sample, chunk)
                ablation.channels = chunk
                if module is None:  # the input itself is ablated
                    one = ablation.ablate(one, chunk)
                elif not shortcut:
                    one = one.repeat(chunk.shape[0], 1, 1, 1)
                out = c.scorer(forward(one), torch.full_like(chunk, sample))
                scores[sample, chunk] = out.to(scores.dtype)
        finally:
            if handle is not None:
                handle.remove()
    return base, scores


def _broadcast_agrees(
    forward: Forward,
    scorer: Scorer,
    ablation: _Ablation,
    one: torch.Tensor,
    sample: int,
    chunk: torch.Tensor,
) -> bool:
    """Whether the model, given one copy of the sample broadcast at the layer to two ablated
    copies, gives the scores that two full passes give (a model that reads its batch size from
    its input, or concatenates an earlier tensor along the batch, does not)."""
    ablation.channels = pair = chunk[:2]
    rows = torch.full_like(pair, sample)
    full = scorer(forward(one.repeat(2, 1, 1, 1)), rows)
    try:
        fast = scorer(forward(one.clone()), rows)
    except Exception:  # the model could not take another batch size after the layer
        return False
    scale = float(full.abs().max()) + 1e-30
    return fast.shape == full.shape and bool(((fast - full).abs() <= 1e-4 * scale).all())


class _Ablation:
    """Forward hook that turns the layer's output into one copy per channel of ``channels``,
    with that channel of the feature map set to zero. An output of batch 1 is broadcast to the
    copies; calls from other threads are ignored.

    The feature map is the layer's output made (N, K, h, w), permuted for a Keras layer and
    ``reshape``-d; which elements of the output make channel k is found by handing the same
    transformation a tensor of element indices, and checked on the first real output.
    """

    def __init__(
        self,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None,
        shape: tuple[int, ...],
        *,
        keras: bool = False,
    ) -> None:
        self.reshape = reshape
        self.shape = shape  # (K, h, w) of the feature map
        self.keras = keras
        self.thread = threading.get_ident()
        self.channels: torch.Tensor | None = None  # None: leave the output as it is
        self.sources: torch.Tensor | None = None  # (K, h·w) indices into a flattened output

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != self.thread or self.channels is None:
            return None
        return self.ablate(output, self.channels)

    def ablate(self, output: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        copies = int(channels.shape[0])
        flat = output.reshape(output.shape[0], -1)
        if flat.shape[0] == 1:
            flat = flat.expand(copies, -1)
        sources = self._sources(output)
        mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
        mask.scatter_(1, sources[channels.to(sources.device)], True)
        return flat.masked_fill(mask, 0).reshape(copies, *output.shape[1:])

    def _map(self, tensor: torch.Tensor) -> Any:
        if self.keras and tensor.dim() == 4:
            tensor = tensor.permute(0, 3, 1, 2)
        return tensor if self.reshape is None else self.reshape(tensor)

    def _sources(self, output: torch.Tensor) -> torch.Tensor:
        if self.sources is not None:
            return self.sources
        first = output[:1]
        index = torch.arange(first.numel(), device=output.device).reshape(first.shape)
        sources: torch.Tensor | None = None
        try:
            mapped = self._map(index)
            if (
                isinstance(mapped, torch.Tensor)
                and mapped.dtype == torch.long
                and tuple(mapped.shape) == (1, *self.shape)
            ):
                candidate = mapped.reshape(self.shape[0], -1)
                taken = first.reshape(1, -1)[:, candidate.flatten()]
                if torch.equal(self._map(first).reshape(1, -1), taken):
                    sources = candidate
        except Exception:  # a `reshape` that computes, not only rearranges
            sources = None
        if sources is None:
            raise OptionError(
                "ablation_cam: `reshape` must only rearrange the layer's output (indexing, "
                "reshape, permute), so that a channel of the feature map is a set of the "
                "output's elements, which are set to zero"
            )
        self.sources = sources
        return sources
