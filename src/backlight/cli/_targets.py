"""What ``backlight explain`` explains in each image, for the three kinds of model it takes.

The kind is read from the model's output, not from its name, so a user's own model works too:

- a classifier returns logits (N, classes), or a dict, tuple or ``ModelOutput`` holding them;
- a segmentation model returns class scores per pixel (N, classes, H, W) (torchvision's
  ``fcn_*``, ``deeplabv3_*``, ``lraspp_*`` in a dict under ``"out"``);
- a detector returns one dict of ``boxes``, ``labels`` and ``scores`` per image (torchvision's
  ``fasterrcnn_*``, ``retinanet_*``, ``ssd*``, ``fcos_*`` in eval mode).

``--target`` is parsed for that kind (:func:`parse_target_spec`) before any work, and turned into
the targets of the batch once its output is known (:func:`choose_targets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .. import targets as ready
from .._targets import logits_or_none
from ..errors import TargetError
from ._errors import Failure, UsageError

Kind = Literal["classification", "segmentation", "detection"]

#: ``--target KIND:CLASS`` on a classifier: the ready target of that name.
_CLASSIFIER = {
    "class": ready.Class,
    "prob": ready.Probability,
    "probability": ready.Probability,
    "sigmoid": ready.Sigmoid,
    "margin": ready.Margin,
}
_SEGMENTATION = ("seg", "segmentation")
_DETECTION = ("box",)
_FORMS = (
    "a class index or name, class:C, prob:C, sigmoid:C or margin:C for a classifier; C or "
    "seg:C for a segmentation model; C (its best detection) or box:x0,y0,x1,y1[:C] for a detector"
)
_BACKGROUND = ("__background__", "background")


@dataclass(frozen=True)
class Task:
    """The kind of model, and its number of classes when the output or the names tell it."""

    kind: Kind
    classes: int | None


@dataclass(frozen=True)
class TargetSpec:
    """A parsed ``--target``: which form, the class (an index), the box (input pixels)."""

    form: str
    index: int | None = None
    box: tuple[float, float, float, float] | None = None
    text: str = ""


def model_output(model: torch.nn.Module, x: torch.Tensor) -> Any:
    """The model's output for ``x`` (a copy: the model may write into it)."""
    try:
        return model(x.clone())
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        shape = "x".join(str(d) for d in x.shape[1:])
        raise Failure(
            f"the model raised {type(e).__name__} on the images ({shape}): {e}; check --size "
            "and that the model takes 3-channel images"
        ) from e


def read_task(output: Any, categories: Sequence[str] | None) -> Task:
    """The kind of model that returned ``output``."""
    logits = logits_or_none(output)
    if logits is not None:
        return Task("classification", int(logits.shape[1]))
    try:
        scores = ready.segmentation_scores(output)
    except TargetError:
        pass
    else:
        return Task("segmentation", int(scores.shape[1]))
    try:
        ready.detections_of(output, 0)
    except TargetError:
        pass
    else:
        return Task("detection", len(categories) if categories else None)
    what = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    raise Failure(
        f"the model returned {what}: neither logits (N, classes), class scores per pixel "
        "(N, classes, H, W) nor detections (one dict of boxes, labels and scores per image); "
        "explain it from Python with a callable target"
    )


def class_index(
    text: str, categories: Sequence[str] | None, classes: int | None, *, flag: str = "--target"
) -> int:
    """A class index, or a class name (case-insensitive; a unique prefix or substring will do)."""
    import difflib

    if text.lstrip("-").isdigit():
        index = int(text)
        if index < 0 or (classes is not None and index >= classes):
            span = f"0 to {classes - 1}" if classes is not None else "0 or more"
            raise UsageError(
                f"{flag} {index} is out of range: the model has {classes} classes ({span})"
                if classes is not None
                else f"{flag} {index} is out of range: a class index is {span}"
            )
        return index
    if not categories:
        raise UsageError(
            f"{flag} {text!r} is a name, but this model's class names are unknown; give an "
            "index (or --classes FILE with one name per line)"
        )
    lowered = [c.lower() for c in categories]
    wanted = text.lower()
    if wanted in lowered:
        return lowered.index(wanted)
    partial = [i for i, c in enumerate(lowered) if wanted in c]
    if len(partial) == 1:
        return partial[0]
    if partial:
        options = ", ".join(repr(categories[i]) for i in partial[:6])
        raise UsageError(f"{flag} {text!r} matches several classes: {options}")
    close = difflib.get_close_matches(wanted, lowered, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(f"{flag} {text!r} is not a class of this model{hint}")


def parse_target_spec(
    text: str | None, task: Task, categories: Sequence[str] | None
) -> TargetSpec | None:
    """``--target`` for a model of ``task``: ``None`` (the default of each kind) or a spec."""
    if text is None:
        return None
    form, sep, rest = text.partition(":")
    form = form.strip().lower()
    if not sep or not (form in _CLASSIFIER or form in _SEGMENTATION or form in _DETECTION):
        form, rest = "", text  # a bare class (a name may hold a colon)
    wants = (
        "classification"
        if form in _CLASSIFIER
        else "segmentation"
        if form in _SEGMENTATION
        else "detection"
        if form in _DETECTION
        else task.kind
    )
    if wants != task.kind:
        raise UsageError(
            f"--target {text!r} is for a {wants} model, but this model is a {task.kind} model; "
            f"give {_FORMS}"
        )
    if form in _DETECTION:
        return _box(text, rest, task, categories)
    if not rest.strip():
        raise UsageError(f"--target {text!r} names no class; give {_FORMS}")
    index = class_index(rest.strip(), categories, task.classes)
    return TargetSpec(form or "class", index, text=text)


def _box(text: str, rest: str, task: Task, categories: Sequence[str] | None) -> TargetSpec:
    corners, _, label = rest.partition(":")
    try:
        values = tuple(float(v) for v in corners.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UsageError(
            f"--target {text!r}: write box:x0,y0,x1,y1 or box:x0,y0,x1,y1:CLASS, four numbers "
            "in the pixels of the model's input (the crop the overlays show)"
        )
    x0, y0, x1, y1 = values
    if not (x1 > x0 and y1 > y0):
        raise UsageError(f"--target {text!r}: the box needs x1 > x0 and y1 > y0")
    index = class_index(label.strip(), categories, task.classes) if label.strip() else None
    return TargetSpec("box", index, (x0, y0, x1, y1), text=text)


def _name(categories: Sequence[str] | None, index: int) -> str:
    return categories[index] if categories and index < len(categories) else f"class {index}"


def predictions(
    output: Any, task: Task, categories: Sequence[str] | None
) -> list[list[tuple[str, float]]]:
    """Each image's top five: (class, probability) of a classifier, (class, share of the
    pixels) of a segmentation model, (class, score) of a detector's best detections."""
    if task.kind == "classification":
        logits = logits_or_none(output)
        assert logits is not None
        top = logits.float().softmax(dim=1).topk(min(5, logits.shape[1]), dim=1)
        return [
            [(_name(categories, int(i)), float(p)) for p, i in zip(ps, ix, strict=True)]
            for ps, ix in zip(top.values, top.indices, strict=True)
        ]
    if task.kind == "segmentation":
        scores = ready.segmentation_scores(output)
        rows = []
        for labels in scores.argmax(dim=1).flatten(1):
            share = torch.bincount(labels, minlength=scores.shape[1]).float() / labels.numel()
            top = share.topk(min(5, share.numel()))
            rows.append(
                [
                    (_name(categories, int(i)), float(p))
                    for p, i in zip(top.values, top.indices, strict=True)
                    if p > 0
                ]
            )
        return rows
    rows = []
    for j in range(len(output)):
        found = ready.detections_of(output, j)
        order = found["scores"].argsort(descending=True)[:5].tolist()
        labels = found.get("labels")
        rows.append(
            [
                (
                    _name(categories, int(labels[i])) if labels is not None else "object",
                    float(found["scores"][i]),
                )
                for i in order
            ]
            or [("nothing detected", 0.0)]
        )
    return rows


def choose_targets(
    spec: TargetSpec | None,
    output: Any,
    task: Task,
    categories: Sequence[str] | None,
    names: Sequence[str],
) -> list[int] | ready.Target:
    """What every method explains in each image of the batch whose output is ``output``.

    Without ``--target``: a classifier's top class; a segmentation model's most common class in
    the image (other than a class named background, when there is another), over the pixels it
    assigns to it; a detector's best detection. A spec's class goes to every image; a box is
    matched to each image's detections (IoU 0.5 or more, of the class if given).
    """
    if task.kind == "classification":
        if spec is None:
            logits = logits_or_none(output)
            assert logits is not None
            return [int(i) for i in logits.argmax(dim=1).tolist()]
        assert spec.index is not None
        if spec.form == "class":
            return [spec.index] * len(names)
        return _CLASSIFIER[spec.form](spec.index)
    if task.kind == "segmentation":
        return _segmentation(spec, output, categories, names)
    return _detection(spec, output, categories, names)


def _segmentation(
    spec: TargetSpec | None, output: Any, categories: Sequence[str] | None, names: Sequence[str]
) -> ready.Target:
    labels = ready.segmentation_scores(output).argmax(dim=1).flatten(1)
    classes = int(ready.segmentation_scores(output).shape[1])
    background = (
        0 if categories and categories[0].strip().lower() in _BACKGROUND and classes > 1 else None
    )
    chosen = []
    for name, pixels in zip(names, labels, strict=True):
        counts = torch.bincount(pixels, minlength=classes)
        if spec is not None:
            assert spec.index is not None
            if counts[spec.index] == 0:
                present = [_name(categories, int(i)) for i in counts.nonzero()[:, 0].tolist()]
                raise UsageError(
                    f"--target {spec.text!r}: the model assigns no pixel of {name} to "
                    f"{_name(categories, spec.index)}; it finds {', '.join(present)}"
                )
            chosen.append(spec.index)
            continue
        if background is not None and bool((counts > 0).sum() > 1):
            counts[background] = -1
        chosen.append(int(counts.argmax()))
    return ready.Segmentation(chosen)


def _detection(
    spec: TargetSpec | None, output: Any, categories: Sequence[str] | None, names: Sequence[str]
) -> ready.Target:
    from torchvision.ops import box_iou

    boxes, labels = [], []
    for j, name in enumerate(names):
        found = ready.detections_of(output, j)
        fits = torch.ones_like(found["scores"], dtype=torch.bool)
        if spec is not None and spec.index is not None:
            fits &= found["labels"] == spec.index
        if spec is not None and spec.box is not None:
            box = torch.tensor(spec.box, dtype=found["boxes"].dtype)[None]
            fits &= box_iou(box, found["boxes"])[0] >= 0.5
        if not bool(fits.any()):
            if found["scores"].numel() == 0:
                raise Failure(
                    f"the model detects nothing in {name} (none of its detections passes its "
                    "own score threshold; a detector with random weights rarely does), so "
                    "there is no detection to explain"
                )
            seen = ", ".join(
                f"{_name(categories, int(found['labels'][i]))} {float(found['scores'][i]):.2f} at "
                "box:" + ",".join(f"{v:.0f}" for v in found["boxes"][i].tolist())
                for i in found["scores"].argsort(descending=True)[:5].tolist()
            )
            assert spec is not None  # without one, any detection fits
            raise UsageError(
                f"the model finds no detection matching --target {spec.text!r} (IoU 0.5 or "
                f"more) in {name}; its best detections: {seen}"
            )
        best = int(torch.where(fits, found["scores"], -1.0).argmax())
        if spec is not None and spec.box is not None:
            boxes.append(list(spec.box))
        else:
            boxes.append(found["boxes"][best].tolist())
        labels.append(int(found["labels"][best]))
    return ready.Detection(boxes, labels)
