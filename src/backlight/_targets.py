"""One strict rule for turning ``target`` into one score per sample."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Mapping, Sequence
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


def logits_of(output: Any) -> Any:
    """The logit tensor of a model output that is not one: a dict or a Hugging Face
    ``ModelOutput`` with ``logits`` (or a single tensor value), a tuple whose only 2-D tensor is
    the logits (or a named tuple with ``logits``). Anything else, a tensor included, is returned
    as it is (the checks that follow say what is wrong with it).

    Raises:
        TargetError: a dict or tuple with several candidate tensors and no ``logits``.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):  # ModelOutput, a named tuple, any object with .logits
        return logits
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        tensors = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise TargetError(
            f"the model returned a {type(output).__name__} with keys {list(output)!r} and none "
            "is named 'logits', so which one holds the class scores is ambiguous; pass `target` "
            "as a callable that picks the scores, e.g. target=lambda out: out['"
            + str(next(iter(output), "key"))
            + "'][:, 3], or a backlight.targets object"
        )
    if isinstance(output, tuple | list) and output:
        matrices = [o for o in output if isinstance(o, torch.Tensor) and o.dim() == 2]
        if len(matrices) == 1:
            return matrices[0]
        if len(matrices) > 1:
            raise TargetError(
                f"the model returned a {type(output).__name__} of {len(output)} items with "
                f"{len(matrices)} tensors of shape (N, K), so which one holds the class scores "
                "is ambiguous; pass `target` as a callable, e.g. target=lambda out: out[0][:, 3]"
            )
    return output


def logits_or_none(output: Any) -> torch.Tensor | None:
    """The logits (N, K) of an output (:func:`logits_of`), or ``None`` when it has none."""
    try:
        logits = logits_of(output)
    except TargetError:
        return None
    if isinstance(logits, torch.Tensor) and logits.dim() == 2:
        return logits
    return None


class Objective:
    """A ready target: what to explain, as an object rather than class indices (the public
    classes are in :mod:`backlight.targets`).

    The pipeline calls :meth:`bind` once with the output for the input as given (where a target
    can fix what depends on it, such as a segmentation mask from the model's own prediction, and
    check its arguments), then :meth:`scores` with the output of every batch the method runs:
    the input itself, or masked, blurred or noisy versions of its samples (``rows[j]`` is the
    sample that item ``j`` is a version of). An objective defines the score completely, so a
    method's ``probability`` option does not apply to it.
    """

    #: (N,) the class explained for each sample, when the objective has one (for the result's
    #: ``targets``); set by :meth:`bind`.
    classes: torch.Tensor | None = None
    bound: bool = False

    def bind(self, output: Any, samples: int) -> Objective:
        """This objective fixed for the ``samples`` inputs whose output is ``output``: a bound
        copy (made by :meth:`_bind`), or itself when it is bound already, so that a method
        passing a bound objective on to another keeps what the input as given fixed."""
        if self.bound:
            return self
        bound = self._bind(output, samples)
        bound.bound = True
        return bound

    def _bind(self, output: Any, samples: int) -> Objective:
        return copy.copy(self)

    def scores(self, output: Any, rows: torch.Tensor | None) -> torch.Tensor:
        """(B,) scores of a batch (``rows``: the sample of each item; ``None``: the N samples)."""
        raise NotImplementedError

    def indices(self) -> Target | None:
        """Class indices that mean the same as this objective (``targets.Class``), or ``None``."""
        return None

    def __call__(self, output: Any) -> torch.Tensor:
        """The scores of the N samples' output, once bound: a callable target like any other."""
        return self.scores(output, None)

    def take(self, rows: torch.Tensor) -> Objective:
        """This bound objective for a batch whose sample ``j`` is sample ``rows[j]`` of the
        input it was bound to (SmoothGrad's noisy copies, explained in chunks)."""
        return _Taken(self, rows)


class _Taken(Objective):
    """A bound objective seen through a choice of its samples (:meth:`Objective.take`)."""

    def __init__(self, base: Objective, rows: torch.Tensor) -> None:
        assert base.bound, "take() needs a bound objective"
        self.base, self.rows, self.bound = base, rows, True
        self.classes = None if base.classes is None else base.classes[rows.to(base.classes.device)]

    def scores(self, output: Any, rows: torch.Tensor | None) -> torch.Tensor:
        return self.base.scores(output, self.rows if rows is None else self.rows[rows])


def class_indices(output: Any, target: Target) -> torch.Tensor:
    """The class index per sample, shape (N,), for a logit output of shape (N, K) (or an output
    that holds one, :func:`logits_of`).

    ``None`` picks each sample's highest-scoring class.
    """
    logits: torch.Tensor = logits_of(output)
    n, k = _logits_shape(logits)
    if target is None:
        with torch.inference_mode(False):
            return logits.detach().argmax(dim=1)
    indices = per_sample(target, n, logits.device)
    bad = (indices < 0) | (indices >= k)
    if bool(bad.any()):
        first = int(indices[bad][0])
        raise TargetError(
            f"`target` {first} is out of range for a model with {k} classes "
            f"(valid indices are 0 to {k - 1})"
        )
    return indices


def is_score_function(target: Any) -> TypeGuard[Callable[[Any], torch.Tensor]]:
    """Whether ``target`` is a callable ``output -> (N,) scores`` (or an :class:`Objective`)
    rather than class indices."""
    if isinstance(target, Objective):
        return target.indices() is None
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
    output = logits_of(output)
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
        objective: a ready target (:class:`Objective`), bound to the input as given.
    """

    samples: int
    classes: torch.Tensor | None = None
    function: Callable[[Any], torch.Tensor] | None = None
    probability: Probability = None
    contrastive: bool = False
    every_class: bool = False
    objective: Objective | None = None

    @property
    def explained(self) -> torch.Tensor | None:
        """(N,) the class explained for each sample, when there is one."""
        return self.objective.classes if self.objective is not None else self.classes

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
        every class; a callable is called and its result checked; an :class:`Objective` is
        bound to ``output`` and defines the score itself (``probability`` does not apply)."""
        probability = check_probability(probability)
        if isinstance(target, Objective):
            same = target.indices()
            if same is not None:
                target = same
            else:
                if contrastive:
                    raise OptionError(
                        "`contrastive=True` needs class indices as `target`, not "
                        f"{type(target).__name__}; use backlight.targets.Margin for a contrast"
                    )
                bound = target.bind(output, samples)
                scorer = Scorer(samples, objective=bound)
                callable_scores(bound, output, samples)  # checks the scores on the input
                return scorer
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
        objective = self.objective
        if objective is not None:
            return callable_scores(lambda out: objective.scores(out, rows), output, count)
        if (
            self.function is not None
            and self.probability is not None
            and not isinstance(output, torch.Tensor)
        ):
            # the callable was written for the output it sees, not for its logits' softmax
            raise OptionError(
                f"`probability={self.probability!r}` with a callable `target` needs a model "
                f"that returns logits (N, classes), but it returned {type(output).__name__}; "
                "pass probability=None (the callable then gets the output as it is), or a "
                "class index as `target` (the logits are read from the output)"
            )
        values = to_probability(output, self.probability)
        if self.function is not None:
            return callable_scores(self.function, values, count)
        if self.every_class:
            every: torch.Tensor = values
            return every
        assert self.classes is not None
        classes = self.classes if rows is None else self.classes[rows]
        logits: torch.Tensor = logits_of(values)
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
