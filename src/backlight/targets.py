"""Ready targets: what to explain when it is not "the logit of class c".

Pass one as ``target=`` to any method (gradient, CAM, attribution and perturbation families
alike) and to the metrics::

    backlight.grad_cam(model, x, backlight.targets.Sigmoid(3))              # a multi-label head
    backlight.rise(seg_model, x, backlight.targets.Segmentation(15))        # a region's class
    backlight.gradient(detector, x, backlight.targets.Detection(box, label=18))

A target is fixed on the input as given (a segmentation mask taken from the model's own
prediction, say) and then scores every batch the method runs, masked, noisy or blurred copies
included; each sample may have its own class, mask, box or embedding. A target defines the score
completely, so a method's ``probability`` option does not apply to it; ``Class(c)`` alone means
exactly ``target=c`` and follows the method's convention (RISE's softmax, for one).

Outputs that are not a tensor of logits (a dict or a Hugging Face ``ModelOutput`` with
``logits``, a tuple whose only (N, K) tensor is the logits) are read by every target and by
plain class indices alike; an ambiguous one raises an error naming its keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_real
from ._targets import Objective, class_indices, logits_of, per_sample
from ._types import Target as Indices
from .errors import InputTypeError, OptionError, TargetError

__all__ = [
    "Class",
    "Detection",
    "Margin",
    "Probability",
    "Segmentation",
    "Sigmoid",
    "Similarity",
    "Target",
    "detections",
]

#: The base class of every ready target (``bind`` once on the input, ``scores`` per batch).
Target = Objective


class _ClassTarget(Objective):
    """A target on one class per sample of a classifier's logits (N, K)."""

    def __init__(self, index: Indices | None = None) -> None:
        self.index = index

    def _bind(self, output: Any, samples: int) -> Objective:
        bound = super()._bind(output, samples)
        bound.classes = class_indices(output, self.index)  # checks the range; None: top class
        return bound

    def scores(self, output: Any, rows: torch.Tensor | None) -> torch.Tensor:
        logits = _logits(output, type(self).__name__)
        assert self.classes is not None, "bind() first"
        classes = self.classes if rows is None else self.classes[rows]
        return self._score(logits, classes.to(logits.device)[:, None])

    def _score(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.index!r})"


class Class(_ClassTarget):
    """The logit of class ``index`` (one int, or one per sample; ``None``: the predicted class):
    the same as ``target=index``, so the method's own convention applies (RISE scores the
    softmax probability, for one)."""

    def indices(self) -> Indices | None:
        return self.index

    def _score(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, label)[:, 0]


class Probability(_ClassTarget):
    """The softmax probability of class ``index`` (one int, one per sample, or ``None`` for the
    predicted class), whatever the method's ``probability`` option."""

    def _score(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1).gather(1, label)[:, 0]


class Sigmoid(_ClassTarget):
    """``sigmoid(logit)`` of class ``index``: the probability of one label of a multi-label (or
    binary, one-logit) head, whose classes are not exclusive."""

    def _score(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.gather(1, label)[:, 0])


class Margin(_ClassTarget):
    """The logit of class ``index`` minus the best other logit: positive where the model
    prefers the class, what it has to beat (needs two classes or more)."""

    def _score(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] < 2:
            raise TargetError("Margin needs a model with two classes or more")
        chosen = logits.gather(1, label)[:, 0]
        return chosen - logits.scatter(1, label, float("-inf")).amax(dim=1)


def _logits(output: Any, who: str) -> torch.Tensor:
    logits = logits_of(output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TargetError(f"{who} needs a model that returns logits (N, classes), got {got}")
    return logits


class Segmentation(Objective):
    """The score of class ``category`` summed over a region of a segmentation output
    (N, K, H, W): torchvision's ``fcn_*``/``deeplabv3_*``/``lraspp_*`` (their ``"out"``),
    Hugging Face models (``.logits``) or a plain tensor.

    Args:
        category: the class whose score is summed (one int, or one per sample).
        mask: where: (H, W) for every sample or (N, H, W) one per sample, boolean or weights;
            ``None`` takes the pixels the model assigns to ``category`` on the input as given
            (its own prediction, fixed for every perturbed copy). A mask of another size than
            the output is resized to it (nearest).
        key: the output's entry with the segmentation (default ``"out"``, else ``logits``).

    The score is ``Σ_pixels out[c] · mask``, pytorch-grad-cam's ``SemanticSegmentationTarget``.
    """

    def __init__(self, category: Indices, mask: Any = None, *, key: str | None = None) -> None:
        self.category = category
        self.mask = mask
        self.key = key
        self.region: torch.Tensor | None = None

    def _segments(self, output: Any) -> torch.Tensor:
        return segmentation_scores(output, self.key)

    def _bind(self, output: Any, samples: int) -> Objective:
        out = self._segments(output)
        bound = super()._bind(output, samples)
        k, size = out.shape[1], out.shape[-2:]
        classes = per_sample(self.category, samples, out.device)
        if bool(((classes < 0) | (classes >= k)).any()):
            raise TargetError(
                f"Segmentation: `category` {classes.tolist()} is out of range for {k} classes"
            )
        bound.classes = classes
        if self.mask is None:
            with torch.no_grad():
                region = out.detach().argmax(dim=1) == classes[:, None, None]
            empty = (~region.flatten(1).any(dim=1)).nonzero()[:, 0].tolist()
            if empty:
                raise TargetError(
                    f"Segmentation: the model assigns no pixel of sample(s) {empty} to class "
                    f"{classes[empty[0]].item()}, so its own prediction gives an empty region; "
                    "pass mask= with the region to explain"
                )
        else:
            region = _region(self.mask, samples, out.device)
        if region.shape[-2:] != size:
            region = F.interpolate(region[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
        bound.region = region.to(out.dtype).expand(samples, *size)  # type: ignore[attr-defined]
        return bound

    def scores(self, output: Any, rows: torch.Tensor | None) -> torch.Tensor:
        out = self._segments(output)
        assert self.classes is not None and self.region is not None, "bind() first"
        classes = self.classes if rows is None else self.classes[rows]
        region = self.region if rows is None else self.region[rows]
        chosen = out.gather(
            1, classes.to(out.device).view(-1, 1, 1, 1).expand(-1, 1, *out.shape[2:])
        )
        return (chosen[:, 0] * region.to(out.device, out.dtype)).sum(dim=(1, 2))

    def __repr__(self) -> str:
        return f"Segmentation({self.category!r}, mask={'given' if self.mask is not None else None})"


def segmentation_scores(output: Any, key: str | None = None) -> torch.Tensor:
    """The class scores (N, K, H, W) of a segmentation output: the tensor itself, the ``key``
    entry of a dict (default ``"out"``, torchvision's) or its ``logits`` (Hugging Face's)."""
    out = output
    if isinstance(output, Mapping) and not isinstance(output.get("logits"), torch.Tensor):
        key = key or "out"
        if key not in output:
            raise TargetError(
                f"Segmentation: the model returned keys {list(output)!r} without {key!r}; "
                "pass key= naming the entry that holds the (N, K, H, W) class scores"
            )
        out = output[key]
    elif key is not None:
        out = output[key]
    else:
        out = logits_of(output)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TargetError(
            f"Segmentation needs an output of class scores (N, K, H, W), got {got}; "
            "for another layout pass a callable target"
        )
    return out


def _region(mask: Any, samples: int, device: torch.device) -> torch.Tensor:
    if type(mask).__module__ == "numpy":
        mask = torch.from_numpy(mask.copy())
    if not isinstance(mask, torch.Tensor):
        raise InputTypeError(
            f"Segmentation: `mask` must be a tensor or array (H, W) or (N, H, W), not "
            f"{type(mask).__name__}"
        )
    if mask.dim() == 2:
        mask = mask[None].expand(samples, -1, -1)
    if mask.dim() != 3 or mask.shape[0] != samples:
        raise TargetError(
            f"Segmentation: `mask` has shape {tuple(mask.shape)}; give (H, W) for every sample "
            f"or ({samples}, H, W), one per sample"
        )
    region: torch.Tensor = mask.to(
        device=device, dtype=torch.float64 if mask.dtype == torch.float64 else torch.float32
    )
    return region


class Detection(Objective):
    """The score of the detection that best matches ``box``: for torchvision's detectors
    (``fasterrcnn_*``, ``maskrcnn_*``, ``retinanet_*``, ``fcos_*``, ``ssd*``, in eval mode), whose
    output is one dict of ``boxes``, ``labels`` and ``scores`` per image.

    Args:
        box: ``(x0, y0, x1, y1)`` in input pixels, for every sample, or (N, 4) one per sample.
        label: the class the detection must have (one int or one per sample); ``None``: any.
        iou: the least intersection over union with ``box`` for a detection to count.
        add_iou: add the IoU to the score, as pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``
            does (then the map also shows what moves the box).

    In every output (the input's, and each perturbed copy's), the detections of ``label`` are
    matched to ``box`` by IoU and the best one's score is explained; a copy without a match
    scores 0. pytorch-grad-cam matches the best box of any label and scores 0 when its label
    differs; here a box of the right label wins over a slightly better one of another label.
    Use :func:`detections` for one target per detection of an image.
    """

    def __init__(
        self, box: Any, label: Indices | None = None, *, iou: float = 0.5, add_iou: bool = False
    ) -> None:
        self.box = box
        self.label = label
        self.iou = check_real("iou", iou, low=0.0, high=1.0)
        self.add_iou = bool(add_iou)
        self.boxes: torch.Tensor | None = None

    def _bind(self, output: Any, samples: int) -> Objective:
        detections_of(output, 0)  # the output's type, checked
        bound = super()._bind(output, samples)
        boxes = torch.as_tensor(self.box, dtype=torch.float64)
        if boxes.dim() == 1:
            boxes = boxes[None].expand(samples, -1)
        if boxes.shape != (samples, 4):
            raise TargetError(
                f"Detection: `box` must be (x0, y0, x1, y1) or ({samples}, 4), got shape "
                f"{tuple(boxes.shape)}"
            )
        if bool((boxes[:, 2:] <= boxes[:, :2]).any()):
            raise TargetError("Detection: `box` must have x1 > x0 and y1 > y0")
        bound.boxes = boxes  # type: ignore[attr-defined]
        if self.label is not None:
            bound.classes = per_sample(self.label, samples, torch.device("cpu"))
        return bound

    def scores(self, output: Any, rows: torch.Tensor | None) -> torch.Tensor:
        assert self.boxes is not None, "bind() first"
        samples = list(range(self.boxes.shape[0])) if rows is None else rows.tolist()
        values = []
        for j, i in enumerate(samples):
            found = detections_of(output, j)
            values.append(
                self._best(
                    found, self.boxes[i], None if self.classes is None else int(self.classes[i])
                )
            )
        return torch.stack(values)

    def _best(
        self, found: Mapping[str, torch.Tensor], box: torch.Tensor, label: int | None
    ) -> torch.Tensor:
        from torchvision.ops import box_iou

        scores = found["scores"]
        if found["boxes"].shape[0] == 0:
            return scores.sum() * 0  # no detection: 0, still on the graph
        overlap = box_iou(box[None].to(found["boxes"]), found["boxes"])[0]
        fits = overlap >= self.iou
        if label is not None:
            fits &= found["labels"] == label
        if not bool(fits.any()):
            return scores.sum() * 0
        best = torch.where(fits, overlap, torch.full_like(overlap, -1.0)).argmax()
        score = scores[best]
        return score + overlap[best].to(score.dtype) if self.add_iou else score

    def __repr__(self) -> str:
        return f"Detection({self.box!r}, label={self.label!r})"


def detections_of(output: Any, j: int) -> Mapping[str, torch.Tensor]:
    """Image ``j``'s detections in a detector's output (a list of dicts with ``boxes``,
    ``labels`` and ``scores``), or a :class:`TargetError` saying what the output is."""
    if not (
        isinstance(output, Sequence)
        and len(output) > j
        and isinstance(output[j], Mapping)
        and {"boxes", "scores"} <= set(output[j])
    ):
        got = type(output).__name__
        if isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
            got = f"a list of dicts with keys {list(output[0])!r}"
        raise TargetError(
            "Detection needs a detector's output, one dict with 'boxes', 'labels' and 'scores' "
            f"per image (torchvision's detectors in eval mode), got {got}"
        )
    return output[j]  # type: ignore[no-any-return]


def detections(
    model: nn.Module, x: torch.Tensor, *, min_score: float = 0.5, add_iou: bool = False
) -> list[Detection]:
    """One :class:`Detection` target per detection of the single image ``x`` (1, C, H, W) that
    scores at least ``min_score``, best first: ``[method(model, x, t) for t in ...]`` gives the
    map of each detection."""
    from ._pipeline import clean_pass

    min_score = check_real("min_score", min_score, low=0.0, high=1.0)
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] != 1:
        raise OptionError(f"detections() takes one image (1, C, H, W), got {tuple(x.shape)}")
    with clean_pass(model, x, lambda out: torch.zeros(1)) as clean:
        found = detections_of(clean.output, 0)
    keep = (found["scores"] >= min_score).nonzero()[:, 0]
    order = keep[found["scores"][keep].argsort(descending=True)]
    labels = found.get("labels")
    return [
        Detection(
            found["boxes"][i].tolist(),
            None if labels is None else int(labels[i]),
            add_iou=add_iou,
        )
        for i in order.tolist()
    ]


class Similarity(Objective):
    """Cosine similarity between the model's embedding and ``embedding`` (D,) (or (N, D), one
    per sample): for encoders such as CLIP's image tower or a timm model with
    ``num_classes=0``, to see what makes an image like a reference image or a text.

    Args:
        embedding: the reference.
        key: the output's entry holding the embedding, for dict-like outputs (e.g.
            ``"image_embeds"``, ``"pooler_output"``); a tensor output is used as it is,
            flattened to (N, D).
    """

    def __init__(self, embedding: Any, *, key: str | None = None) -> None:
        if type(embedding).__module__ == "numpy":
            embedding = torch.from_numpy(embedding.copy())
        if not isinstance(embedding, torch.Tensor) or embedding.dim() not in (1, 2):
            raise InputTypeError(
                "Similarity: `embedding` must be a tensor or array (D,) or (N, D), not "
                + (
                    str(tuple(embedding.shape))
                    if isinstance(embedding, torch.Tensor)
                    else type(embedding).__name__
                )
            )
        self.embedding = embedding.detach()
        self.key = key

    def _features(self, output: Any) -> torch.Tensor:
        if self.key is not None:
            if not isinstance(output, Mapping) and not hasattr(output, self.key):
                raise TargetError(f"Similarity: the output has no entry {self.key!r}")
            out = output[self.key] if isinstance(output, Mapping) else getattr(output, self.key)
        else:
            out = logits_of(output) if not isinstance(output, torch.Tensor) else output
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            raise TargetError(
                "Similarity needs an embedding output (N, D); for a dict-like output pass key="
            )
        return out.flatten(1)

    def _bind(self, output: Any, samples: int) -> Objective:
        features = self._features(output)
        reference = self.embedding
        if reference.dim() == 1:
            reference = reference[None].expand(samples, -1)
        if reference.shape != (samples, features.shape[1]):
            raise TargetError(
                f"Similarity: `embedding` has shape {tuple(self.embedding.shape)}, the model's "
                f"embedding is {features.shape[1]}-dimensional for {samples} sample(s)"
            )
        bound = super()._bind(output, samples)
        bound.embedding = reference  # type: ignore[attr-defined]
        return bound

    def scores(self, output: Any, rows: torch.Tensor | None) -> torch.Tensor:
        features = self._features(output)
        reference = self.embedding if rows is None else self.embedding[rows]
        return F.cosine_similarity(features, reference.to(features), dim=1)

    def __repr__(self) -> str:
        return f"Similarity(embedding of shape {tuple(self.embedding.shape)})"
