"""One strict rule for turning ``target`` into one score per sample."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeGuard

import torch

from ._checks import is_choice
from ._types import Target
from .errors import OptionError, TargetError

_INT64 = (-(2**63), 2**63 - 1)


def per_sample(target: Target, n: int, device: torch.device) -> torch.Tensor:
    """``target`` (an int, a sequence, a 1-D tensor or NumPy array of ints) as one class index
    per sample, shape (N,), without checking the range (that needs the number of classes).

    The result is always a fresh, ordinary tensor, even when ``target`` was made under
    ``torch.inference_mode`` (such a tensor cannot take part in a backward pass)."""
    if isinstance(target, bool):
        raise TargetError(f"`target` must be a class index, not the bool {target}")
    if type(target).__module__ == "numpy" and hasattr(target, "shape"):
        array: Any = target
        if array.shape == ():  # a NumPy scalar: an int or a float
            target = array.item()
        elif array.dtype.kind in "iu":
            target = torch.from_numpy(array.astype("int64", copy=False))
    if isinstance(target, numbers.Integral):
        _check_int64(int(target))
        with torch.inference_mode(False):
            return torch.full((n,), int(target), dtype=torch.long, device=device)
    if isinstance(target, torch.Tensor):
        if target.dim() == 0:
            target = target.reshape(1).expand(n)
        if target.dim() != 1 or target.is_floating_point() or target.is_complex():
            raise TargetError(
                "`target` as a tensor must be a 1-D integer tensor with one class per sample, "
                f"got dtype {target.dtype} and shape {tuple(target.shape)}"
            )
        if target.dtype == torch.bool:
            raise TargetError("`target` must hold class indices, not booleans")
        if target.is_meta:
            raise TargetError("`target` is on the meta device and holds no values")
        with torch.inference_mode(False):
            indices = target.to(device=device, dtype=torch.long).clone()
    elif isinstance(target, Sequence) and not isinstance(target, str | bytes):
        if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target):
            raise TargetError(
                f"`target` as a sequence must hold integer class indices, got {list(target)!r}"
            )
        for t in target:
            _check_int64(int(t))
        with torch.inference_mode(False):
            indices = torch.tensor([int(t) for t in target], dtype=torch.long, device=device)
    else:
        raise TargetError(
            "`target` must be None, an int, a sequence, 1-D tensor or array of ints (one per "
            f"sample), or a callable output -> (N,) scores; got {type(target).__name__}"
        )
    if indices.shape[0] != n:
        raise TargetError(
            f"`target` gives {indices.shape[0]} classes for a batch of {n} samples; "
            "give one class per sample, or a single int for all"
        )
    return indices


def _check_int64(value: int) -> None:
    if not _INT64[0] <= value <= _INT64[1]:
        raise TargetError(
            f"`target` {value} is not a class index (it does not fit in 64 bits); give the "
            "index of a class of the model"
        )


def class_indices(output: torch.Tensor, target: Target) -> torch.Tensor:
    """The class index per sample, shape (N,), for a logit output of shape (N, K).

    ``None`` picks each sample's highest-scoring class.
    """
    n, k = _logits_shape(output)
    if target is None:
        with torch.inference_mode(False):
            return output.detach().argmax(dim=1)
    indices = per_sample(target, n, output.device)
    bad = (indices < 0) | (indices >= k)
    if bool(bad.any()):
        first = int(indices[bad][0])
        raise TargetError(
            f"`target` {first} is out of range for a model with {k} classes "
            f"(valid indices are 0 to {k - 1})"
        )
    return indices


def is_score_function(target: Any) -> TypeGuard[Callable[[Any], torch.Tensor]]:
    """Whether ``target`` is a callable ``output -> (N,) scores`` rather than class indices."""
    return callable(target) and not isinstance(target, torch.Tensor)


def _logits_shape(output: Any) -> tuple[int, int]:
    if not isinstance(output, torch.Tensor):
        raise TargetError(
            f"the model returned a {type(output).__name__}, not a tensor of logits; pass "
            "`target` as a callable that maps the output to one score per sample, "
            "e.g. target=lambda out: out['logits'][:, 3]"
        )
    if output.dim() != 2:
        raise TargetError(
            f"the model returned shape {tuple(output.shape)}, not (N, classes); pass `target` "
            "as a callable that maps the output to one score per sample, "
            "e.g. target=lambda out: out[:, 3].mean(dim=(1, 2))"
        )
    n, k = output.shape
    return int(n), int(k)


#: How model outputs become the scores of perturbation methods and metrics.
Probability: TypeAlias = Literal["softmax", "sigmoid"] | None


def check_probability(probability: Any) -> Probability:
    if not is_choice(probability, ("softmax", "sigmoid", None)):
        raise OptionError(
            f"`probability` must be 'softmax', 'sigmoid' or None, not {probability!r}"
        )
    return probability  # type: ignore[no-any-return]


def to_probability(output: Any, probability: Probability) -> Any:
    """Softmax or sigmoid of logits (N, classes), or the output unchanged for ``None``."""
    if probability is None:
        return output
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise OptionError(
            f"`probability={probability!r}` needs a model that returns logits (N, classes), but "
            f"it returned {shape}; pass probability=None and a callable `target` that maps the "
            "output to one score per image"
        )
    if probability == "softmax":
        return torch.softmax(output, dim=1)
    return torch.sigmoid(output)


@dataclass(frozen=True)
class Scorer:
    """How each sample's score is read from a model output: the one rule that every method and
    metric follows, whether it takes one forward pass or thousands.

    Made once from the output for the input as given (:meth:`resolve`, which checks the target
    there), then applied to the outputs of any batch: the input itself, masked, blurred or
    noisy copies of its samples.

    Attributes:
        samples: the number of samples N.
        classes: (N,) the class explained for each sample, or ``None``.
        function: a callable target ``output -> (B,) scores``, or ``None``.
        probability: ``"softmax"``, ``"sigmoid"`` or ``None``: how outputs become scores.
        contrastive: score the class's margin over the best other class.
        every_class: score every class: (B, K) instead of (B,).
    """

    samples: int
    classes: torch.Tensor | None = None
    function: Callable[[Any], torch.Tensor] | None = None
    probability: Probability = None
    contrastive: bool = False
    every_class: bool = False

    @staticmethod
    def resolve(
        output: Any,
        target: Target | Literal["all"],
        samples: int,
        *,
        probability: Probability = None,
        contrastive: bool = False,
        every_class: bool = False,
    ) -> Scorer:
        """The scorer of ``target`` for ``output``, the output of the ``samples`` inputs:
        ``None`` picks each sample's top class; ``"all"`` (where ``every_class`` allows it)
        every class; a callable is called and its result checked."""
        probability = check_probability(probability)
        if isinstance(target, str) and target == "all" and every_class:
            scores = to_probability(output, probability)
            if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
                raise TargetError(
                    "`target='all'` needs a model that returns one score per class (N, classes)"
                )
            return Scorer(samples, probability=probability, every_class=True)
        if is_score_function(target):
            if contrastive:
                raise OptionError(
                    "`contrastive=True` needs class indices as `target`, not a callable; fold "
                    "the contrast into the callable instead (score minus the best other score)"
                )
            scorer = Scorer(samples, function=target, probability=probability)
            scorer(output)  # checks the callable's result on the input as given
            return scorer
        classes = class_indices(output, target)  # type: ignore[arg-type]
        return Scorer(samples, classes, probability=probability, contrastive=contrastive)

    def __call__(self, output: Any, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The scores of a batch whose item ``j`` is a version of sample ``rows[j]``; without
        ``rows`` the batch is the N samples in order. (B,), or (B, K) for every class."""
        count = self.samples if rows is None else int(rows.shape[0])
        values = to_probability(output, self.probability)
        if self.function is not None:
            return callable_scores(self.function, values, count)
        if self.every_class:
            every: torch.Tensor = values
            return every
        assert self.classes is not None
        classes = self.classes if rows is None else self.classes[rows]
        logits: torch.Tensor = values
        if logits.dim() != 2 or logits.shape[0] != count:
            raise TargetError(
                f"the model returned shape {tuple(logits.shape)} for a batch of {count} images; "
                "it must return (N, classes) for every batch"
            )
        label = classes.to(logits.device)[:, None]
        chosen = logits.gather(1, label)[:, 0]
        if self.contrastive:
            chosen = chosen - logits.scatter(1, label, float("-inf")).amax(dim=1)
        return chosen


def callable_scores(target: Callable[[Any], torch.Tensor], output: Any, n: int) -> torch.Tensor:
    """A callable target's scores of a batch of ``n`` images: a 1-D tensor of ``n`` scores."""
    scores = target(output)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else None
        raise TargetError(
            "a callable `target` must return a 1-D tensor with one score per sample, got "
            + (got or type(scores).__name__)
        )
    if scores.shape[0] != n:
        raise TargetError(
            f"the callable `target` returned {scores.shape[0]} scores for a batch of {n} "
            "samples; return one score per sample"
        )
    return scores
