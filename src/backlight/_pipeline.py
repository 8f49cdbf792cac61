"""The one pipeline every method shares: check, set the model's state, run it on a private copy
of the input, read the scores with the one :class:`~backlight._targets.Scorer`.

Two entries, one routine:

* :func:`run` (and :func:`forward`, which keeps the graph) for the gradient-based methods:
  captures the chosen layer's output, runs the forward pass (optionally inside a backward-rule
  context, which then checks that its rule saw what it had to), selects one score per sample
  and takes the gradient of their sum with respect to the input or the layer only: never the
  parameters.
* :func:`clean_pass` for the methods and metrics that run the model many times (RISE,
  extremal perturbation, deletion and insertion, SmoothGrad's targets): the pass on the input as
  given, which fixes the targets, inside the state the later passes run in.

Whatever happens, the model leaves exactly as it came: hooks removed, every module's
``training`` flag and every parameter's ``requires_grad`` restored, no ``.grad`` touched; the
caller's ``x`` is untouched, even by a model that writes into its input.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_input, check_model, warn_foreign_hooks
from ._keras import channels_last
from ._layers import check_hookable, is_input, resolve_layer
from ._result import Explanation
from ._state import explaining
from ._targets import Probability, Scorer, logits_or_none
from ._types import Layer, Reduce, Target
from .errors import LayerError, MethodNotApplicableError


@dataclass
class Capture:
    """What one forward/backward pass produced.

    Attributes:
        output: the model's output (detached).
        scores: the explained score per sample, shape (N,) (detached).
        activation: the layer's output, or the input when no layer was given (detached).
        gradient: d(sum of scores) / d(activation), or ``None`` when not asked for.
        layer: the dotted name of the layer, or ``None`` for the input.
        scorer: how the scores were read (the classes explained, or the callable).
        reshape: what turned the layer's output into ``activation`` (a transformer's tokens
            into a feature map), or ``None``.
    """

    output: Any
    scores: torch.Tensor
    activation: torch.Tensor
    gradient: torch.Tensor | None
    layer: str | None
    scorer: Scorer
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None


class _LayerProbe:
    """Forward hook that keeps a layer's output and shields it from later in-place operations.

    The hook hands the rest of the network a copy of the output, so an in-place ReLU right after
    the layer modifies the copy, and the kept tensor stays the layer's own output: its value and
    its gradient are those of the layer, not of the ReLU. Calls from other threads are ignored.

    The kept tensor is a new leaf detached from what came before the layer: the gradient is only
    ever wanted at the layer, so nothing below it needs to be recorded for the backward pass.
    With ``channels_last`` (a Keras model's layers), a 4-D output (N, h, w, K) is kept as the
    feature map (N, K, h, w), and the network gets the channels-last view of it back.
    """

    def __init__(self, name: str, module: nn.Module, *, channels_last: bool = False) -> None:
        self.name = name
        self.module = module
        self.channels_last = channels_last
        self.thread = threading.get_ident()
        self.calls = 0
        self.tensor: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != self.thread:
            return None
        self.calls += 1
        if self.calls > 1:
            raise LayerError(
                f"`layer` {self.name!r} ({type(module).__name__}) is called more than once in "
                "one forward pass, so its output is ambiguous; choose a module that runs once "
                "(for a reused activation such as torchvision Bottleneck's `relu`, take the "
                "convolution or batch norm before it, or the whole block)"
            )
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"`layer` {self.name!r} returns a {type(output).__name__}, not a tensor; "
                "choose a module whose output is a single tensor"
            )
        if self.channels_last and output.dim() == 4:
            self.tensor = output.detach().permute(0, 3, 1, 2).requires_grad_(True)
            return self.tensor.permute(0, 2, 3, 1).clone()
        self.tensor = output.detach().requires_grad_(True)
        return self.tensor.clone()


@dataclass
class Pass:
    """A forward pass whose graph is still alive, for methods that take several gradients.

    Attributes:
        output: the model's output.
        scores: the explained score per sample, shape (N,), differentiable.
        wrt: the tensor the map is taken at: the input, or the layer's output as a leaf.
        layer: the dotted name of the layer, or ``None`` for the input.
        context: the context the forward pass ran in (a rule context), or ``None``.
        scorer: how the scores were read.
    """

    output: Any
    scores: torch.Tensor
    wrt: torch.Tensor
    layer: str | None
    context: Any
    scorer: Scorer


def grad_mode() -> contextlib.ExitStack:
    """Gradients on, whatever the caller's ``no_grad`` or ``inference_mode``."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


def forward(
    model: nn.Module,
    x: torch.Tensor,
    target: Target,
    *,
    layer: Layer | None = None,
    context: Callable[[], Any] | None = None,
    method: str = "this method",
    gradient: bool = True,
) -> Pass:
    """The forward pass (inside ``context()`` if given) and the scores, graph kept.

    The model gets a private copy of ``x``, so a model that writes into its input (an in-place
    ReLU first, ``x.sub_(mean)`` in ``forward``) leaves the caller's tensor as it was. After the
    pass, a rule context checks that its rule reached every operation it had to
    (``context.verify``).
    """
    model = check_model(model)
    x = check_input(x, model)
    name: str | None = None
    probe: _LayerProbe | None = None
    if layer is not None and not is_input(layer):
        name, module = resolve_layer(model, layer)
        check_hookable(module, name)
        probe = _LayerProbe(name, module, channels_last=channels_last(model))
    if gradient:
        warn_foreign_hooks(model, method)
    with explaining(model), grad_mode():
        handle = probe.module.register_forward_hook(probe) if probe is not None else None
        try:
            leaf, inp = model_input(x, requires_grad=gradient and probe is None)
            entered = context() if context is not None else None
            with entered if entered is not None else contextlib.nullcontext():
                output = model(inp)
        finally:
            if handle is not None:
                handle.remove()
        if probe is not None:
            if probe.tensor is None:
                raise LayerError(
                    f"`layer` {name!r} was not called during the forward pass of "
                    f"{type(model).__name__}; choose a module that the forward pass uses"
                )
            wrt = probe.tensor
        else:
            wrt = leaf
        scorer = Scorer.resolve(output, target, x.shape[0])
        scores = scorer(output)
        verify = getattr(entered, "verify", None)
        if verify is not None:
            verify(model, scores, method)
    return Pass(output, scores, wrt, name, entered, scorer)


def model_input(x: torch.Tensor, *, requires_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(leaf, input)``: the tensor gradients are taken at, and the one the model is given.

    The input is always a private copy, which the model may overwrite; with ``requires_grad`` it
    is a copy of the leaf (so writing into it is legal for autograd) and the leaf shares the
    caller's memory, so there is still only one copy. A tensor made under
    ``torch.inference_mode`` is copied into an ordinary one first.
    """
    if not requires_grad:
        private = x.detach().clone()
        return private, private
    leaf = x.detach()
    if leaf.is_inference():
        leaf = leaf.clone()
    leaf.requires_grad_(True)
    return leaf, leaf.clone()


def run(model: nn.Module, x: torch.Tensor, target: Target, **options: Any) -> Capture:
    """:func:`forward` (which takes the same ``options``) and, unless ``gradient=False``, one
    backward pass to the input or to ``layer``."""
    fw = forward(model, x, target, **options)
    with grad_mode():
        grad = (
            gradient_at(fw.scores.sum(), fw.wrt, fw.layer)
            if options.get("gradient", True)
            else None
        )
    output = fw.output
    return Capture(
        output=output.detach() if isinstance(output, torch.Tensor) else output,
        scores=fw.scores.detach(),
        activation=fw.wrt.detach(),
        gradient=grad,
        layer=fw.layer,
        scorer=fw.scorer,
    )


@dataclass
class Clean:
    """The pass on the input as given, that fixes what a many-pass method explains.

    Attributes:
        model: the model (checked), in the explaining state while the ``with`` block lasts.
        x: the input (checked, detached: the caller's memory, never written).
        output: the model's output on a private copy of ``x``.
        scorer: the targets, resolved and checked on ``output``.
        writes_input: whether the model wrote into its input; its later batches must then be
            its own copies too.
    """

    model: nn.Module
    x: torch.Tensor
    output: Any
    scorer: Scorer
    writes_input: bool

    @property
    def logits(self) -> torch.Tensor | None:
        """The logits (N, K) of ``output``, or ``None`` for a model with none (a detector)."""
        return logits_or_none(self.output)


@contextlib.contextmanager
def clean_pass(
    model: nn.Module,
    x: torch.Tensor,
    target: Any,
    *,
    probability: Probability = None,
    contrastive: bool = False,
    every_class: bool = False,
) -> Iterator[Clean]:
    """Check the arguments, put the model in the explaining state for the ``with`` block, run it
    once on a private copy of ``x`` under ``torch.inference_mode`` and resolve the target on
    that output (:meth:`Scorer.resolve`, with its ``probability``, ``contrastive`` and
    ``every_class`` options)."""
    model = check_model(model)
    x = check_input(x, model).detach()
    with explaining(model):
        private = x.clone()  # made outside inference mode: it keeps a version counter
        version = private._version
        with torch.inference_mode():
            output = model(private)
            scorer = Scorer.resolve(
                output,
                target,
                x.shape[0],
                probability=probability,
                contrastive=contrastive,
                every_class=every_class,
            )
        yield Clean(model, x, output, scorer, private._version != version)


def explanation(maps: torch.Tensor, capture: Capture | Pass, **extras: Any) -> Explanation:
    """``maps`` as the method's result, with the layer, targets and scores of ``capture``."""
    return Explanation.make(
        maps,
        layer=capture.layer,
        targets=capture.scorer.explained,
        scores=capture.scores,
        output=logits_or_none(capture.output),
        **extras,
    )


def gradient_at(
    score: torch.Tensor,
    wrt: torch.Tensor,
    layer: str | None,
    *,
    seed: torch.Tensor | None = None,
    retain_graph: bool = False,
) -> torch.Tensor:
    """``∂ score / ∂ wrt`` (with ``seed`` as the upstream gradient), or a clear error if the
    score does not depend on ``wrt``."""
    grad = None
    if score.requires_grad:
        (grad,) = torch.autograd.grad(
            score, wrt, seed, retain_graph=retain_graph, allow_unused=True
        )
    if grad is None:
        if layer is None:
            raise MethodNotApplicableError(
                "the explained score does not depend on `x` through differentiable operations "
                "(does the model detach its input, or run under torch.no_grad?), so it has no "
                "gradient to show"
            )
        raise LayerError(
            f"the explained score does not depend on the output of `layer` {layer!r} "
            "(is it a side branch, or detached?); choose a layer on the path to the output"
        )
    return grad.detach()


def reduce_channels(grad: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """Channels to one map: (N, C, h, w) -> (N, 1, h, w), or unchanged for ``None``."""
    if reduce is None:
        return grad
    if reduce == "abs_max":
        return grad.abs().amax(dim=1, keepdim=True)
    if reduce == "l2":
        norm: torch.Tensor = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
        return norm
    return grad.sum(dim=1, keepdim=True)


def resize_to(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of (N, C, h, w) maps to the spatial size of ``x``."""
    if maps.shape[-2:] == x.shape[-2:]:
        return maps
    return F.interpolate(maps, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)


def require_feature_map(tensor: torch.Tensor, layer: str | None, *, reshaped: bool = False) -> None:
    """A layer's output (or gradient) must be a feature map (N, C, H, W); one that looks like
    (N, H, W, C), as Swin stages give, is refused unless ``reshape`` made it."""
    if tensor.dim() != 4:
        raise LayerError(
            f"`layer` {layer!r} outputs shape {tuple(tensor.shape)}, not a feature map "
            "(N, C, H, W); choose a convolutional layer (list them with model.named_modules())"
        )
    _, c, h, w = tensor.shape
    if not reshaped and layer is not None and c == h and w > 2 * h:
        raise LayerError(
            f"`layer` {layer!r} outputs shape {tuple(tensor.shape)}, which looks channels-last "
            f"(N, H, W, C) with {w} channels on a {c}x{h} grid, as Swin stages give; pass "
            "reshape=lambda t: t.permute(0, 3, 1, 2) (or, if it really is (N, C, H, W), "
            "reshape=lambda t: t), or choose a layer that outputs (N, C, H, W)"
        )
