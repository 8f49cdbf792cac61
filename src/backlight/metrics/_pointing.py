"""The pointing game (Zhang et al., ECCV 2016) with the protocol of TorchRay's benchmark.

For each (image, class) pair the saliency map is resized to the image (bilinear, half-pixel
centres), its maximum is taken (the first one in row-major order when several pixels tie), and
the pair is a hit when a pixel of the class's ground truth lies at a Euclidean distance strictly
less than ``tolerance`` pixels from it: ``hit ⇔ ∃ (i, j) ∈ mask : (i − y)² + (j − x)² < tolerance²``.
Hits and misses are counted per class; the score is the mean of the per-class accuracies.

Maps, masks and boxes may be torch tensors or NumPy arrays (and so JAX arrays, or any array
``np.asarray`` takes), and none of this needs torch: ``backlight.jax``'s maps are scored as they
are. The computation is NumPy's; a torch map is resized by torch (``F.interpolate``, on its own
device, as TorchRay does) and a NumPy one by the same formula in NumPy, float64. Tables come back
as torch tensors when a torch tensor went in, as NumPy arrays when an array went in, and, when
only Python lists went in, as torch tensors if torch is installed (as before) and NumPy otherwise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import numpy as np
import numpy.typing as npt

from ..errors import InputError, InputTypeError, OptionError, TargetError
from ._common import as_numpy, is_array, is_tensor, size_pair

if TYPE_CHECKING:
    import torch

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

#: Boxes ``(K, 4)`` as ``(x_min, y_min, x_max, y_max)`` in pixel coordinates: a tensor, an array
#: or rows.
Boxes: TypeAlias = "torch.Tensor | npt.NDArray[Any] | Sequence[Sequence[float]]"

#: A map or a mask: a torch tensor, or a NumPy array (a JAX array, anything ``np.asarray`` takes).
ArrayIn: TypeAlias = "torch.Tensor | npt.ArrayLike"

#: A table of the result: a torch tensor or a NumPy array, following the inputs.
Table: TypeAlias = "torch.Tensor | npt.NDArray[Any]"

_Mask: TypeAlias = npt.NDArray[np.bool_]
_Maps: TypeAlias = npt.NDArray[np.floating[Any]]


@overload
def boxes_to_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor: ...
@overload
def boxes_to_mask(boxes: npt.NDArray[Any], size: tuple[int, int]) -> npt.NDArray[np.bool_]: ...
@overload
def boxes_to_mask(boxes: Sequence[Sequence[float]], size: tuple[int, int]) -> Table: ...
def boxes_to_mask(boxes: Boxes, size: tuple[int, int]) -> Table:
    """The region covered by boxes, as a boolean mask ``(H, W)``.

    Boxes are ``(x_min, y_min, x_max, y_max)`` in continuous pixel coordinates (pixel ``(i, j)``
    spans ``[j, j + 1) × [i, i + 1)``, torchvision's convention); a pixel belongs to a box when
    its centre ``(j + ½, i + ½)`` lies inside it, borders included. An integer box
    ``(x0, y0, x1, y1)`` covers rows ``y0 … y1 − 1`` and columns ``x0 … x1 − 1``; a PASCAL VOC box,
    1-based and inclusive, is ``(xmin − 1, ymin − 1, xmax, ymax)``, which gives the same pixels as
    TorchRay's ``voc_as_mask``.

    Args:
        boxes: ``(K, 4)`` boxes (a tensor, an array or a sequence of 4-tuples); ``K`` may be 0.
        size: the image size ``(H, W)``.

    Returns:
        A boolean ``(H, W)`` tensor for a tensor, array for an array; for Python rows, a tensor
        when torch is installed and an array otherwise.

    Example:
        >>> import numpy as np
        >>> from backlight.metrics import boxes_to_mask
        >>> boxes_to_mask([(1, 0, 3, 2)], (3, 4)).int()
        tensor([[0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
        >>> boxes_to_mask(np.array([(1, 0, 3, 2)]), (3, 4)).astype(int)
        array([[0, 1, 1, 0],
               [0, 1, 1, 0],
               [0, 0, 0, 0]])
    """
    mask = _box_mask(boxes, size_pair("size", size))
    return _table(mask, _uses_torch(boxes))


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
    area = int(_box_mask(boxes, (height, width)).sum())
    return other_classes >= 1 and 4 * area < height * width


def max_point(saliency: ArrayIn, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(x, y)`` pixel of a map's maximum, after resizing the map to ``size``.

    The map is resized bilinearly (half-pixel centres) when its size differs from ``size``; among
    tied maxima the first in row-major order (smallest ``y``, then smallest ``x``) is taken.

    Args:
        saliency: one map, ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``; a tensor or an array.
        size: the image size ``(H, W)``; ``None`` keeps the map's own size.

    Returns:
        ``(x, y)``: column and row.

    Example:
        >>> import numpy as np, torch
        >>> from backlight.metrics import max_point
        >>> max_point(torch.tensor([[0.0, 2.0], [2.0, 1.0]]))
        (1, 0)
        >>> peak = np.zeros((3, 3))
        >>> peak[1, 1] = 1.0
        >>> max_point(peak, (6, 6))  # rows 2 and 3 tie, as do columns 2 and 3: the first wins
        (2, 2)
    """
    maps, device = _map_batch(saliency, single=True)
    shape = _shape(maps) if size is None else size_pair("size", size)
    return _argmax(maps[0], shape, device)


@dataclass(frozen=True)
class PointingResult:
    """Pointing-game scores, for all pairs and for the difficult subset.

    The tables are torch tensors when torch tensors were scored and NumPy arrays when arrays were
    (see the module's notes).

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
    class_accuracies: Table
    hits: Table
    misses: Table
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
    the difficult subset, so one pass gives both numbers. Maps and masks may be torch tensors or
    NumPy/JAX arrays; :meth:`result`'s tables are tensors once a tensor was added.

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

        The same with NumPy (or JAX) arrays, without torch:

        >>> import numpy as np
        >>> game = PointingGame(num_classes=2)
        >>> game.add(saliency.numpy(), 0, mask=mask.numpy())
        True
        >>> game.result().hits
        array([1, 0])
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
        #: Whether the tables come back as torch tensors (None: decided by the installation).
        self._torch: bool | None = None

    def reset(self) -> None:
        """Forget every hit and miss."""
        self._counts = {False: {}, True: {}}
        self._torch = None

    def add(
        self,
        saliency: ArrayIn,
        class_id: int,
        *,
        mask: ArrayIn | None = None,
        boxes: Boxes | None = None,
        size: tuple[int, int] | None = None,
        difficult: bool = False,
    ) -> bool:
        """Score one map against the ground truth of one class; return whether it hits.

        Args:
            saliency: the map, ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``; resized to the
                image's size when smaller or larger. A tensor or an array.
            class_id: the class the map explains.
            mask: the class's region, a boolean ``(H, W)`` tensor or array at the image's
                resolution.
            boxes: instead of ``mask``, the class's boxes ``(K, 4)`` (see
                :func:`boxes_to_mask`).
            size: the image size ``(H, W)`` for ``boxes``; defaults to the map's size.
            difficult: count the pair in the difficult subset too.
        """
        maps, device = _map_batch(saliency, single=True)
        region = _region(mask, boxes, _shape(maps) if size is None else size)
        point = _argmax(maps[0], _shape(region), device)
        hit = self._score(point, class_id, region, difficult)
        self._returns(saliency, mask, boxes)
        return hit

    def add_point(
        self,
        point: tuple[float, float],
        class_id: int,
        *,
        mask: ArrayIn | None = None,
        boxes: Boxes | None = None,
        size: tuple[int, int] | None = None,
        difficult: bool = False,
    ) -> bool:
        """Score a point ``(x, y)`` directly (TorchRay's centre baseline is
        ``(W / 2, H / 2)``); the other arguments are as for :meth:`add`, and ``size`` is
        required with ``boxes``."""
        if boxes is not None and mask is None and size is None:
            raise OptionError("`size` (H, W) is required with `boxes` in add_point")
        hit = self._score(point, class_id, _region(mask, boxes, size), difficult)
        self._returns(mask, boxes)
        return hit

    def result(self) -> PointingResult:
        """The scores so far, with the difficult subset in ``.difficult``."""
        size = self._table_size()
        difficult = _result(self._counts[True], size, None, self._torch)
        return _result(self._counts[False], size, difficult, self._torch)

    def __repr__(self) -> str:
        result = self.result()
        return (
            f"PointingGame(accuracy={result.accuracy:.4f}, pairs={result.count}, "
            f"difficult accuracy={result.difficult.accuracy if result.difficult else math.nan:.4f})"
        )

    def _score(self, point: Any, class_id: Any, region: _Mask, difficult: Any) -> bool:
        """Count one pair: the hit rule for ``point`` (x, y) on ``region``."""
        cls = self._class(class_id)
        if not isinstance(difficult, bool):
            raise OptionError(f"`difficult` must be True or False, not {difficult!r}")
        hit = _hits(region, point, self.tolerance)
        subsets = (False, True) if difficult else (False,)
        for subset in subsets:
            entry = self._counts[subset].setdefault(cls, [0, 0])
            entry[0 if hit else 1] += 1
        return hit

    def _returns(self, *inputs: Any) -> None:
        """Note the kind of the inputs: a torch tensor makes the tables tensors."""
        kind = _uses_torch(*inputs)
        if kind is not None and not self._torch:
            self._torch = kind

    def _table_size(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        seen = [c for counts in self._counts.values() for c in counts]
        return max(seen) + 1 if seen else 0

    def _class(self, class_id: Any) -> int:
        if is_tensor(class_id) and class_id.numel() == 1:
            class_id = class_id.item()
        elif is_array(class_id) and np.size(class_id) == 1:
            class_id = np.asarray(class_id).item()
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


def pointing_game(
    saliency: ArrayIn,
    class_ids: Sequence[int] | ArrayIn,
    *,
    masks: ArrayIn | Sequence[ArrayIn] | None = None,
    boxes: Sequence[Boxes] | None = None,
    size: tuple[int, int] | None = None,
    difficult: Sequence[bool] | ArrayIn | None = None,
    tolerance: float = 15,
    num_classes: int | None = None,
) -> PointingResult:
    """The pointing game for a batch of maps, in one call (see :class:`PointingGame`).

    ``accuracy = mean_c hits_c / (hits_c + misses_c)``, with a hit when the map's maximum lies
    within ``tolerance`` pixels of the class's region (Zhang et al., ECCV 2016; TorchRay's
    protocol).

    Args:
        saliency: maps ``(N, 1, h, w)`` or ``(N, h, w)``, resized to the regions' size; a tensor
            or an array (NumPy, JAX).
        class_ids: the class each map explains, ``N`` ints.
        masks: the regions, ``(N, H, W)`` booleans or ``N`` masks of their own sizes.
        boxes: instead of ``masks``, ``N`` box tables ``(K_n, 4)`` (see :func:`boxes_to_mask`).
        size: the image size ``(H, W)`` for ``boxes``; defaults to the maps' size.
        difficult: ``N`` flags for the difficult subset (default: none is difficult).
        tolerance: the radius in pixels (15).
        num_classes: the number of classes; ``None`` uses the largest class id plus one.

    Returns:
        A :class:`PointingResult`, with tensors for tensor inputs and arrays for array inputs.

    Example:
        >>> import torch
        >>> from backlight.metrics import pointing_game
        >>> saliency = torch.zeros(2, 1, 40, 40)
        >>> saliency[0, 0, 5, 5] = saliency[1, 0, 35, 35] = 1.0
        >>> boxes = [[(0, 0, 10, 10)], [(0, 0, 10, 10)]]
        >>> pointing_game(saliency, [0, 1], boxes=boxes).class_accuracies
        tensor([1., 0.], dtype=torch.float64)
        >>> pointing_game(saliency.numpy(), [0, 1], boxes=boxes).class_accuracies
        array([1., 0.])
    """
    maps, device = _map_batch(saliency)
    n = maps.shape[0]
    classes = _class_list(class_ids, n)
    flags = _flag_list(difficult, n)
    if (masks is None) == (boxes is None):
        raise OptionError("give exactly one of `masks` and `boxes`")
    if masks is not None:
        given: Any = masks
        stacked = is_tensor(given) or is_array(given)
        if not (stacked or isinstance(given, Sequence)):
            raise InputTypeError(
                f"`masks` must be a tensor or array (N, H, W) or a sequence of (H, W) masks, not "
                f"{type(given).__name__}"
            )
        if stacked and given.ndim < 3:
            raise InputError(
                f"`masks` has shape {tuple(given.shape)}; give one mask per map, (N, H, W)"
            )
        items = list(given)
        if len(items) != n:
            raise InputError(f"`masks` holds {len(items)} masks for {n} maps; give one per map")
        regions = [_mask(m) for m in items]
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
        shape = size_pair("size", size) if size is not None else _shape(maps)
        regions = [_box_mask(table, shape) for table in tables]
    game = PointingGame(num_classes, tolerance=tolerance)
    for i in range(n):
        game._score(_argmax(maps[i], _shape(regions[i]), device), classes[i], regions[i], flags[i])
    game._returns(saliency, class_ids, masks, boxes, difficult)
    return game.result()


def _uses_torch(*inputs: Any) -> bool | None:
    """True when an input (or an item of a list of inputs) is a torch tensor; else False when one
    is an array (NumPy, JAX); else ``None``: Python values only."""
    kind = None
    for value in inputs:
        items = value if isinstance(value, list | tuple) else (value,)
        for item in items:
            if is_tensor(item):
                return True
            if is_array(item):
                kind = False
    return kind


def _table(values: npt.NDArray[Any], use_torch: bool | None) -> Table:
    """``values`` as a torch tensor or as they are (see :func:`_uses_torch`; ``None``: a tensor
    if torch is installed, as before NumPy inputs were taken)."""
    if use_torch is False:
        return values
    try:
        import torch
    except ImportError:
        if use_torch:
            raise
        return values
    return torch.from_numpy(values)


def _shape(values: npt.NDArray[Any]) -> tuple[int, int]:
    return int(values.shape[-2]), int(values.shape[-1])


def _map_batch(saliency: Any, *, single: bool = False) -> tuple[_Maps, torch.device | None]:
    """Maps as a finite float array (N, h, w) (N = 1 with ``single``), and the torch device they
    are on (``None`` for an array): a torch map is resized by torch, on its device."""
    device = None
    if is_tensor(saliency):
        import torch

        if saliency.is_complex() or saliency.dtype == torch.bool:
            raise InputError(f"`saliency` must hold real numbers, not {saliency.dtype}")
        device = saliency.device
        array = as_numpy(saliency)  # float16 and bfloat16 as float32, as torch resizes them
    elif is_array(saliency):
        array = np.asarray(saliency)
    else:
        kind = "one map" if single else "maps (N, 1, h, w)"
        raise InputTypeError(
            f"`saliency` must be {kind}, a torch.Tensor or a NumPy or JAX array, not "
            f"{type(saliency).__name__}"
        )
    if single:
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3 or array.shape[0] != 1:
            raise InputError(
                "`saliency` must be one map, (h, w), (1, h, w) or (1, 1, h, w), got shape "
                f"{tuple(array.shape)}; score a batch with pointing_game()"
            )
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise InputError(
                f"`saliency` has {array.shape[1]} channels (shape {tuple(array.shape)}); "
                "reduce them to one map per image first, e.g. saliency.abs().amax(1, keepdim=True)"
            )
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(
            f"`saliency` must have shape (N, 1, h, w) or (N, h, w), got {tuple(array.shape)}"
        )
    if array.size == 0:
        raise InputError(f"`saliency` is empty (shape {tuple(array.shape)})")
    if array.dtype.kind not in "iuf":  # not booleans, complex numbers, strings or objects
        raise InputError(f"`saliency` must hold real numbers, not {array.dtype}")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(
            "`saliency` contains NaN or infinite values; clean it (np.nan_to_num, "
            "torch.nan_to_num) or find where they come from"
        )
    return array, device


def _argmax(saliency: _Maps, size: tuple[int, int], device: torch.device | None) -> tuple[int, int]:
    """The ``(x, y)`` of the first maximum of one map ``(h, w)`` resized to ``size``."""
    if _shape(saliency) != size:
        if device is None:
            from ..viz._overlay import resize_maps as resize_arrays  # torch's formula, in NumPy

            saliency = resize_arrays(saliency[None, None].astype(np.float64), size)[0, 0]
        else:
            import torch

            from ._common import resize_maps

            moved = torch.from_numpy(saliency[None]).to(device)
            saliency = resize_maps(moved, size)[0].cpu().numpy()
    index = int(np.argmax(saliency))  # the first maximum in row-major order
    width = saliency.shape[-1]
    return index % width, index // width


def _region(mask: Any, boxes: Any, size: tuple[int, int] | None) -> _Mask:
    if (mask is None) == (boxes is None):
        raise OptionError("give exactly one of `mask` and `boxes` for the object's region")
    if mask is not None:
        return _mask(mask)
    assert size is not None
    return _box_mask(boxes, size_pair("size", size))


def _hits(mask: _Mask, point: tuple[float, float], tolerance: float) -> bool:
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
    dy = np.arange(top, bottom, dtype=np.float64) - y
    dx = np.arange(left, right, dtype=np.float64) - x
    accept = dy[:, None] ** 2 + dx[None, :] ** 2 < tolerance**2
    return bool((window & accept).any())


def _result(
    counts: dict[int, list[int]],
    size: int,
    difficult: PointingResult | None,
    use_torch: bool | None,
) -> PointingResult:
    hits = np.zeros(size, dtype=np.int64)
    misses = np.zeros(size, dtype=np.int64)
    for cls, (h, m) in counts.items():
        hits[cls], misses[cls] = h, m
    total = hits + misses
    seen = total > 0
    accuracies = np.full(size, math.nan)
    accuracies[seen] = hits[seen] / total[seen]
    accuracy = float(accuracies[seen].mean()) if seen.any() else math.nan
    overall = float(hits.sum()) / float(total.sum()) if int(total.sum()) else math.nan
    return PointingResult(
        accuracy,
        overall,
        _table(accuracies, use_torch),
        _table(hits, use_torch),
        _table(misses, use_torch),
        difficult,
    )


def _mask(mask: Any) -> _Mask:
    if is_tensor(mask):
        dtype = mask.dtype
        array = as_numpy(mask)
    elif is_array(mask):
        array = np.asarray(mask)
        dtype = array.dtype
    else:
        raise InputTypeError(
            f"`mask` must be a boolean torch.Tensor or NumPy array (H, W), not "
            f"{type(mask).__name__}"
        )
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.size == 0:
        raise InputError(f"`mask` must have shape (H, W), got {tuple(array.shape)}")
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"`mask` must be boolean (or 0/1 integers), not {dtype}; threshold it, e.g. mask > 0.5"
        )
    region: _Mask = array != 0
    return region


def _box_mask(boxes: Any, size: tuple[int, int]) -> _Mask:
    """The mask of :func:`boxes_to_mask`, an array."""
    height, width = size
    mask = np.zeros((height, width), dtype=np.bool_)
    rows = np.arange(height, dtype=np.float64) + 0.5
    cols = np.arange(width, dtype=np.float64) + 0.5
    for x0, y0, x1, y1 in _boxes(boxes).tolist():
        inside_rows = (rows >= y0) & (rows <= y1)
        inside_cols = (cols >= x0) & (cols <= x1)
        mask |= inside_rows[:, None] & inside_cols[None, :]
    return mask


def _boxes(boxes: Any) -> npt.NDArray[np.float64]:
    message = "`boxes` must be a (K, 4) table of (x_min, y_min, x_max, y_max) numbers"
    if is_tensor(boxes) and boxes.is_complex():
        raise InputError(message)
    try:
        table = as_numpy(boxes)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(message) from None
    if table.dtype.kind not in "biuf":
        raise InputError(message)
    table = table.astype(np.float64)
    if table.size == 0:
        return table.reshape(0, 4)
    if table.ndim == 1 and table.shape[0] == 4:
        table = table[None]
    if table.ndim != 2 or table.shape[1] != 4:
        raise InputError(
            f"`boxes` must have shape (K, 4) as (x_min, y_min, x_max, y_max), got {tuple(table.shape)}"
        )
    if not np.isfinite(table).all():
        raise InputError("`boxes` contains NaN or infinite coordinates")
    return table


def _class_list(class_ids: Any, n: int) -> list[int]:
    if is_tensor(class_ids) or is_array(class_ids):
        array = as_numpy(class_ids)
        if array.ndim != 1 or array.dtype.kind not in "biu":
            raise TargetError(
                "`class_ids` as a tensor or array must be 1-D integers, got dtype "
                f"{class_ids.dtype} and shape {tuple(array.shape)}"
            )
        values: list[Any] = array.tolist()
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
    if (is_tensor(difficult) or is_array(difficult)) and difficult.ndim == 1:
        values = as_numpy(difficult).tolist()
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
