"""The pointing game (Zhang et al., ECCV 2016) with the protocol of TorchRay's benchmark.

For each (image, class) pair the saliency map is resized to the image (bilinear, half-pixel
centres), its maximum is taken (the first one in row-major order when several pixels tie), and
the pair is a hit when a pixel of the class's ground truth lies at a Euclidean distance strictly
less than ``tolerance`` pixels from it: ``hit ⇔ ∃ (i, j) ∈ mask : (i − y)² + (j − x)² < tolerance²``.
Hits and misses are counted per class; the score is the mean of the per-class accuracies.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch

from ..errors import InputError, InputTypeError, OptionError, TargetError
from ._common import resize_maps, saliency_batch, size_pair

#: No data set has more classes than this; a larger count is a mistake.
_MAX_CLASSES = 10**7

__all__ = [
    "PointingGame",
    "PointingResult",
    "boxes_to_mask",
    "is_difficult",
    "max_point",
    "pointing_game",
]

#: Boxes ``(K, 4)`` as ``(x_min, y_min, x_max, y_max)`` in pixel coordinates, a tensor or rows.
Boxes: TypeAlias = torch.Tensor | Sequence[Sequence[float]]


def boxes_to_mask(boxes: Boxes, size: tuple[int, int]) -> torch.Tensor:
    """The region covered by boxes, as a boolean mask ``(H, W)``.

    Boxes are ``(x_min, y_min, x_max, y_max)`` in continuous pixel coordinates (pixel ``(i, j)``
    spans ``[j, j + 1) × [i, i + 1)``, torchvision's convention); a pixel belongs to a box when
    its centre ``(j + ½, i + ½)`` lies inside it, borders included. An integer box
    ``(x0, y0, x1, y1)`` covers rows ``y0 … y1 − 1`` and columns ``x0 … x1 − 1``; a PASCAL VOC box,
    1-based and inclusive, is ``(xmin − 1, ymin − 1, xmax, ymax)``, which gives the same pixels as
    TorchRay's ``voc_as_mask``.

    Args:
        boxes: ``(K, 4)`` boxes (a tensor or a sequence of 4-tuples); ``K`` may be 0.
        size: the image size ``(H, W)``.

    Returns:
        A boolean tensor ``(H, W)``.

    Example:
        >>> from backlight.metrics import boxes_to_mask
        >>> boxes_to_mask([(1, 0, 3, 2)], (3, 4)).int()
        tensor([[0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """
    height, width = size_pair("size", size)
    table = _boxes(boxes)
    mask = torch.zeros(height, width, dtype=torch.bool)
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    cols = torch.arange(width, dtype=torch.float64) + 0.5
    for x0, y0, x1, y1 in table.tolist():
        inside_rows = (rows >= y0) & (rows <= y1)
        inside_cols = (cols >= x0) & (cols <= x1)
        mask |= inside_rows[:, None] & inside_cols[None, :]
    return mask


def is_difficult(boxes: Boxes, size: tuple[int, int], *, other_classes: int) -> bool:
    """The "difficult" rule of Zhang et al. (2016) for one class of one image.

    A pair is difficult when the boxes of the class cover less than a quarter of the image and
    the image holds at least one object of another class:
    ``|∪ boxes| < H·W / 4  and  other_classes ≥ 1``, with ``|∪ boxes|`` the number of pixels of
    :func:`boxes_to_mask`. TorchRay does not compute the rule: it reads the flags the paper's
    authors published (see :func:`load_difficult_flags`), which the readers can use instead.

    Args:
        boxes: the boxes of the class, ``(K, 4)`` as in :func:`boxes_to_mask`.
        size: the image size ``(H, W)``.
        other_classes: how many other classes the image holds.

    Example:
        >>> from backlight.metrics import is_difficult
        >>> is_difficult([(0, 0, 10, 10)], (100, 100), other_classes=1)
        True
        >>> is_difficult([(0, 0, 10, 10)], (100, 100), other_classes=0)
        False
    """
    height, width = size_pair("size", size)
    area = int(boxes_to_mask(boxes, (height, width)).sum())
    return other_classes >= 1 and 4 * area < height * width


def max_point(saliency: torch.Tensor, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(x, y)`` pixel of a map's maximum, after resizing the map to ``size``.

    The map is resized bilinearly (half-pixel centres) when its size differs from ``size``; among
    tied maxima the first in row-major order (smallest ``y``, then smallest ``x``) is taken.

    Args:
        saliency: one map, ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``.
        size: the image size ``(H, W)``; ``None`` keeps the map's own size.

    Returns:
        ``(x, y)``: column and row.

    Example:
        >>> import torch
        >>> from backlight.metrics import max_point
        >>> max_point(torch.tensor([[0.0, 2.0], [2.0, 1.0]]))
        (1, 0)
    """
    maps = _single_map(saliency)
    if size is not None:
        maps = resize_maps(maps, size_pair("size", size))
    flat = maps[0].reshape(-1)
    index = int(torch.nonzero(flat == flat.max())[0, 0])
    width = maps.shape[-1]
    return index % width, index // width


@dataclass(frozen=True)
class PointingResult:
    """Pointing-game scores, for all pairs and for the difficult subset.

    Attributes:
        accuracy: the mean of the per-class accuracies over the classes that were evaluated at
            least once (NaN when nothing was evaluated).
        overall_accuracy: hits over all evaluated pairs, every pair weighted the same.
        class_accuracies: ``(K,)`` float64, ``hits / (hits + misses)`` per class, NaN for a class
            never evaluated.
        hits: ``(K,)`` int64 hits per class.
        misses: ``(K,)`` int64 misses per class.
        difficult: the same numbers for the pairs flagged difficult, or ``None`` for the
            difficult result itself.
    """

    accuracy: float
    overall_accuracy: float
    class_accuracies: torch.Tensor
    hits: torch.Tensor
    misses: torch.Tensor
    difficult: PointingResult | None = None

    @property
    def count(self) -> int:
        """The number of evaluated pairs."""
        return int(self.hits.sum() + self.misses.sum())


class PointingGame:
    """Accumulates pointing-game hits and misses, per class, image after image.

    The pointing game of Zhang et al., *Top-down Neural Attention by Excitation Backprop*, ECCV
    2016, with TorchRay's protocol (``torchray.benchmark.pointing_game``): a map's maximum
    (:func:`max_point`, at the image's resolution) hits when
    ``∃ (i, j) ∈ mask : (i − y)² + (j − x)² < tolerance²``; the score is the mean over classes of
    ``hits / (hits + misses)``. Pairs flagged ``difficult`` are counted in both the full set and
    the difficult subset, so one pass gives both numbers.

    Differences from TorchRay: the mean is over the classes evaluated at least once (TorchRay
    averages over all ``num_classes``, an unseen class counting as 0; on the full VOC 2007 test
    and COCO 2014 val sets every class is seen, so the numbers agree); the tolerance may be a
    float.

    Args:
        num_classes: the number of classes; ``None`` grows the tables to the largest class seen.
        tolerance: the radius in pixels; the distance must be strictly smaller (TorchRay's
            rule), so ``tolerance=1`` asks for a maximum on the object itself. Default 15.

    Example:
        >>> import torch
        >>> from backlight.metrics import PointingGame
        >>> game = PointingGame(num_classes=2)
        >>> mask = torch.zeros(64, 64, dtype=torch.bool)
        >>> mask[10:20, 10:20] = True
        >>> saliency = torch.zeros(1, 32, 32)
        >>> saliency[0, 7, 7] = 1.0  # at (14, 14) once resized to 64 x 64
        >>> game.add(saliency, 0, mask=mask)
        True
        >>> game.add(saliency, 1, boxes=[(50, 50, 60, 60)], size=(64, 64))
        False
        >>> game.result().accuracy
        0.5
    """

    def __init__(self, num_classes: int | None = None, *, tolerance: float = 15) -> None:
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1
        ):
            raise OptionError(f"`num_classes` must be a positive int or None, not {num_classes!r}")
        if num_classes is not None and num_classes > _MAX_CLASSES:
            raise OptionError(
                f"`num_classes` {num_classes} is more than {_MAX_CLASSES:,} (the tables hold a "
                "count per class); pass the number of classes of the data set"
            )
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, numbers.Real)
            or not math.isfinite(float(tolerance))
            or tolerance <= 0
        ):
            raise OptionError(
                f"`tolerance` must be a positive number of pixels, not {tolerance!r} "
                "(TorchRay and the paper use 15)"
            )
        self.num_classes: int | None = None if num_classes is None else int(num_classes)
        self.tolerance: float = float(tolerance)
        self._counts: dict[bool, dict[int, list[int]]] = {False: {}, True: {}}

    def reset(self) -> None:
        """Forget every hit and miss."""
        self._counts = {False: {}, True: {}}

    def add(
        self,
        saliency: torch.Tensor,
        class_id: int,
        *,
        mask: torch.Tensor | None = None,
        boxes: Boxes | None = None,
        size: tuple[int, int] | None = None,
        difficult: bool = False,
    ) -> bool:
        """Score one map against the ground truth of one class; return whether it hits.

        Args:
            saliency: the map, ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``; resized to the
                image's size when smaller or larger.
            class_id: the class the map explains.
            mask: the class's region, a boolean ``(H, W)`` tensor at the image's resolution.
            boxes: instead of ``mask``, the class's boxes ``(K, 4)`` (see
                :func:`boxes_to_mask`).
            size: the image size ``(H, W)`` for ``boxes``; defaults to the map's size.
            difficult: count the pair in the difficult subset too.
        """
        region = self._region(mask, boxes, size, saliency)
        point = max_point(saliency, (int(region.shape[0]), int(region.shape[1])))
        return self.add_point(point, class_id, mask=region, difficult=difficult)

    def add_point(
        self,
        point: tuple[float, float],
        class_id: int,
        *,
        mask: torch.Tensor | None = None,
        boxes: Boxes | None = None,
        size: tuple[int, int] | None = None,
        difficult: bool = False,
    ) -> bool:
        """Score a point ``(x, y)`` directly (TorchRay's centre baseline is
        ``(W / 2, H / 2)``); the other arguments are as for :meth:`add`, and ``size`` is
        required with ``boxes``."""
        if boxes is not None and mask is None and size is None:
            raise OptionError("`size` (H, W) is required with `boxes` in add_point")
        region = self._region(mask, boxes, size, None)
        cls = self._class(class_id)
        if not isinstance(difficult, bool):
            raise OptionError(f"`difficult` must be True or False, not {difficult!r}")
        hit = _hits(region, point, self.tolerance)
        subsets = (False, True) if difficult else (False,)
        for subset in subsets:
            entry = self._counts[subset].setdefault(cls, [0, 0])
            entry[0 if hit else 1] += 1
        return hit

    def result(self) -> PointingResult:
        """The scores so far, with the difficult subset in ``.difficult``."""
        size = self._table_size()
        difficult = _result(self._counts[True], size, None)
        return _result(self._counts[False], size, difficult)

    def __repr__(self) -> str:
        result = self.result()
        return (
            f"PointingGame(accuracy={result.accuracy:.4f}, pairs={result.count}, "
            f"difficult accuracy={result.difficult.accuracy if result.difficult else math.nan:.4f})"
        )

    def _table_size(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        seen = [c for counts in self._counts.values() for c in counts]
        return max(seen) + 1 if seen else 0

    def _class(self, class_id: Any) -> int:
        if isinstance(class_id, torch.Tensor) and class_id.numel() == 1:
            class_id = class_id.item()
        if isinstance(class_id, bool) or not isinstance(class_id, numbers.Integral):
            raise TargetError(f"`class_id` must be an int, not {class_id!r}")
        value = int(class_id)
        if value < 0 or (self.num_classes is not None and value >= self.num_classes):
            bound = "" if self.num_classes is None else f" (0 to {self.num_classes - 1})"
            raise TargetError(
                f"`class_id` {value} is out of range{bound}; pass `num_classes` large enough "
                "or check the class ids"
            )
        return value

    @staticmethod
    def _region(
        mask: torch.Tensor | None,
        boxes: Boxes | None,
        size: tuple[int, int] | None,
        saliency: torch.Tensor | None,
    ) -> torch.Tensor:
        if (mask is None) == (boxes is None):
            raise OptionError("give exactly one of `mask` and `boxes` for the object's region")
        if mask is not None:
            return _mask(mask)
        assert boxes is not None
        if size is None:
            assert saliency is not None
            one = _single_map(saliency)
            size = (int(one.shape[-2]), int(one.shape[-1]))
        return boxes_to_mask(boxes, size)


def pointing_game(
    saliency: torch.Tensor,
    class_ids: Sequence[int] | torch.Tensor,
    *,
    masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
    boxes: Sequence[Boxes] | None = None,
    size: tuple[int, int] | None = None,
    difficult: Sequence[bool] | torch.Tensor | None = None,
    tolerance: float = 15,
    num_classes: int | None = None,
) -> PointingResult:
    """The pointing game for a batch of maps, in one call (see :class:`PointingGame`).

    ``accuracy = mean_c hits_c / (hits_c + misses_c)``, with a hit when the map's maximum lies
    within ``tolerance`` pixels of the class's region (Zhang et al., ECCV 2016; TorchRay's
    protocol).

    Args:
        saliency: maps ``(N, 1, h, w)`` or ``(N, h, w)``, resized to the regions' size.
        class_ids: the class each map explains, ``N`` ints.
        masks: the regions, ``(N, H, W)`` booleans or ``N`` masks of their own sizes.
        boxes: instead of ``masks``, ``N`` box tables ``(K_n, 4)`` (see :func:`boxes_to_mask`).
        size: the image size ``(H, W)`` for ``boxes``; defaults to the maps' size.
        difficult: ``N`` flags for the difficult subset (default: none is difficult).
        tolerance: the radius in pixels (15).
        num_classes: the number of classes; ``None`` uses the largest class id plus one.

    Returns:
        A :class:`PointingResult`.

    Example:
        >>> import torch
        >>> from backlight.metrics import pointing_game
        >>> saliency = torch.zeros(2, 1, 40, 40)
        >>> saliency[0, 0, 5, 5] = saliency[1, 0, 35, 35] = 1.0
        >>> boxes = [[(0, 0, 10, 10)], [(0, 0, 10, 10)]]
        >>> pointing_game(saliency, [0, 1], boxes=boxes).class_accuracies
        tensor([1., 0.], dtype=torch.float64)
    """
    maps = saliency_batch(saliency)
    n = maps.shape[0]
    classes = _class_list(class_ids, n)
    flags = _flag_list(difficult, n)
    if (masks is None) == (boxes is None):
        raise OptionError("give exactly one of `masks` and `boxes`")
    if masks is not None:
        if not isinstance(masks, torch.Tensor | Sequence):
            raise InputTypeError(
                f"`masks` must be a tensor (N, H, W) or a sequence of (H, W) masks, not "
                f"{type(masks).__name__}"
            )
        if isinstance(masks, torch.Tensor) and masks.dim() == 2:
            raise InputError(
                f"`masks` has shape {tuple(masks.shape)}; give one mask per map, (N, H, W)"
            )
        regions = list(masks)
        if len(regions) != n:
            raise InputError(f"`masks` holds {len(regions)} masks for {n} maps; give one per map")
    else:
        assert boxes is not None
        if not isinstance(boxes, Sequence):
            raise InputTypeError(
                f"`boxes` must be a sequence of box tables, one per map, not {type(boxes).__name__}"
            )
        tables = list(boxes)
        if len(tables) != n:
            raise InputError(
                f"`boxes` holds {len(tables)} box tables for {n} maps; give one per map"
            )
        shape = (
            size_pair("size", size)
            if size is not None
            else (int(maps.shape[-2]), int(maps.shape[-1]))
        )
        regions = [boxes_to_mask(table, shape) for table in tables]
    game = PointingGame(num_classes, tolerance=tolerance)
    for i in range(n):
        game.add(maps[i], classes[i], mask=regions[i], difficult=flags[i])
    return game.result()


def _hits(mask: torch.Tensor, point: tuple[float, float], tolerance: float) -> bool:
    """Whether a pixel of ``mask`` lies strictly within ``tolerance`` of ``point`` (x, y)."""
    try:
        x, y = float(point[0]), float(point[1])
    except (TypeError, ValueError, IndexError):
        raise OptionError(f"`point` must be a pair (x, y) of numbers, not {point!r}") from None
    height, width = mask.shape
    top, bottom = max(0, math.floor(y - tolerance)), min(height, math.ceil(y + tolerance) + 1)
    left, right = max(0, math.floor(x - tolerance)), min(width, math.ceil(x + tolerance) + 1)
    if top >= bottom or left >= right:
        return False
    window = mask[top:bottom, left:right]
    dy = torch.arange(top, bottom, dtype=torch.float64) - y
    dx = torch.arange(left, right, dtype=torch.float64) - x
    accept = dy[:, None] ** 2 + dx[None, :] ** 2 < tolerance**2
    return bool((window.cpu() & accept).any())


def _result(
    counts: dict[int, list[int]], size: int, difficult: PointingResult | None
) -> PointingResult:
    hits = torch.zeros(size, dtype=torch.int64)
    misses = torch.zeros(size, dtype=torch.int64)
    for cls, (h, m) in counts.items():
        hits[cls], misses[cls] = h, m
    total = hits + misses
    accuracies = torch.where(
        total > 0, hits.double() / total.clamp(min=1).double(), torch.tensor(math.nan)
    )
    seen = total > 0
    accuracy = float(accuracies[seen].mean()) if bool(seen.any()) else math.nan
    overall = float(hits.sum()) / float(total.sum()) if int(total.sum()) else math.nan
    return PointingResult(accuracy, overall, accuracies, hits, misses, difficult)


def _single_map(saliency: Any) -> torch.Tensor:
    """One map as (1, h, w)."""
    if not isinstance(saliency, torch.Tensor):
        raise InputTypeError(
            f"`saliency` must be a torch.Tensor map, not {type(saliency).__name__}"
        )
    if saliency.dim() == 2:
        saliency = saliency[None]
    elif saliency.dim() == 4 and saliency.shape[0] == 1:
        saliency = saliency[0]
    if saliency.dim() != 3 or saliency.shape[0] != 1:
        raise InputError(
            "`saliency` must be one map, (h, w), (1, h, w) or (1, 1, h, w), got shape "
            f"{tuple(saliency.shape)}; score a batch with pointing_game()"
        )
    return saliency_batch(saliency)


def _mask(mask: Any) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise InputTypeError(
            f"`mask` must be a boolean torch.Tensor (H, W), not {type(mask).__name__}"
        )
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2 or mask.numel() == 0:
        raise InputError(f"`mask` must have shape (H, W), got {tuple(mask.shape)}")
    if mask.is_floating_point() or mask.is_complex():
        raise InputError(
            f"`mask` must be boolean (or 0/1 integers), not {mask.dtype}; threshold it, "
            "e.g. mask > 0.5"
        )
    region: torch.Tensor = mask.detach().cpu() != 0
    return region


def _boxes(boxes: Any) -> torch.Tensor:
    try:
        table = torch.as_tensor(boxes, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(
            "`boxes` must be a (K, 4) table of (x_min, y_min, x_max, y_max) numbers"
        ) from None
    if table.numel() == 0:
        return table.reshape(0, 4)
    if table.dim() == 1 and table.shape[0] == 4:
        table = table[None]
    if table.dim() != 2 or table.shape[1] != 4:
        raise InputError(
            f"`boxes` must have shape (K, 4) as (x_min, y_min, x_max, y_max), got {tuple(table.shape)}"
        )
    if not bool(torch.isfinite(table).all()):
        raise InputError("`boxes` contains NaN or infinite coordinates")
    return table


def _class_list(class_ids: Any, n: int) -> list[int]:
    if isinstance(class_ids, torch.Tensor):
        if class_ids.dim() != 1 or class_ids.is_floating_point():
            raise TargetError(
                "`class_ids` as a tensor must be 1-D integers, got dtype "
                f"{class_ids.dtype} and shape {tuple(class_ids.shape)}"
            )
        values: list[Any] = class_ids.tolist()
    elif isinstance(class_ids, Iterable) and not isinstance(class_ids, str):
        values = list(class_ids)
    else:
        raise TargetError(f"`class_ids` must be a sequence of ints, not {class_ids!r}")
    if len(values) != n:
        raise TargetError(f"`class_ids` holds {len(values)} classes for {n} maps; give one per map")
    return values


def _flag_list(difficult: Any, n: int) -> list[bool]:
    if difficult is None:
        return [False] * n
    if isinstance(difficult, torch.Tensor) and difficult.dim() == 1:
        values = difficult.tolist()
    elif isinstance(difficult, Sequence) and not isinstance(difficult, str):
        values = list(difficult)
    else:
        raise OptionError(
            f"`difficult` must be a sequence of booleans, one per map, not {difficult!r}"
        )
    if not all(isinstance(v, bool | int) for v in values):
        raise OptionError(f"`difficult` must hold booleans, not {values[:4]!r}")
    if len(values) != n:
        raise OptionError(f"`difficult` holds {len(values)} flags for {n} maps; give one per map")
    return [bool(v) for v in values]
