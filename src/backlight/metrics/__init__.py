"""Numbers that tell a good saliency map from a pretty one.

- Localisation: the pointing game (Zhang et al., ECCV 2016) with TorchRay's protocol, per-class
  accuracy and its difficult subset: :class:`PointingGame`, :func:`pointing_game`, and readers
  of PASCAL VOC 2007 test (:class:`VOC2007`) and COCO 2014 val (:class:`COCO2014`).
- Faithfulness: deletion and insertion (Petsiuk, Das & Saenko, BMVC 2018): :func:`deletion`,
  :func:`insertion`.
- Sanity: cascading and independent model randomization (Adebayo et al., NeurIPS 2018):
  :func:`randomization`, with :func:`spearman` and :func:`ssim`.

The pointing game (:class:`PointingGame`, :func:`pointing_game`, :func:`max_point`,
:func:`boxes_to_mask`, :func:`is_difficult`), :func:`spearman` and :func:`ssim` take NumPy arrays
(and so JAX arrays, e.g. ``backlight.jax``'s maps) as well as torch tensors, and need no torch:
they return arrays for arrays and tensors for tensors. The rest needs torch, imported when one of
its names is first used.

Example:
    >>> import backlight
    >>> from backlight import metrics
    >>> from backlight.data import make_batch
    >>> from backlight.demo import load_demo_model
    >>> model = load_demo_model()
    >>> x, labels, _ = make_batch(2)
    >>> saliency = backlight.grad_cam(model, x, labels, resize=True)
    >>> float(metrics.deletion(model, x, saliency, labels, steps=4, progress=False).auc[0]) >= 0
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._pointing import (
    PointingGame,
    PointingResult,
    boxes_to_mask,
    is_difficult,
    max_point,
    pointing_game,
)
from ._similarity import spearman, ssim

if TYPE_CHECKING:
    from ._causal import PerturbationCurves, blur, deletion, insertion
    from ._datasets import (
        COCO2014,
        VOC2007,
        VOC_CLASSES,
        PointingObject,
        PointingSample,
        load_difficult_flags,
        polygons_to_mask,
    )
    from ._randomization import RandomizationResult, randomization

#: The names that need torch, by submodule, imported when first used.
_NEEDS_TORCH = {
    "_causal": ("PerturbationCurves", "blur", "deletion", "insertion"),
    "_datasets": (
        "COCO2014",
        "VOC2007",
        "VOC_CLASSES",
        "PointingObject",
        "PointingSample",
        "load_difficult_flags",
        "polygons_to_mask",
    ),
    "_randomization": ("RandomizationResult", "randomization"),
}
_HOME = {name: module for module, names in _NEEDS_TORCH.items() for name in names}

__all__ = [
    "COCO2014",
    "VOC2007",
    "VOC_CLASSES",
    "PerturbationCurves",
    "PointingGame",
    "PointingObject",
    "PointingResult",
    "PointingSample",
    "RandomizationResult",
    "blur",
    "boxes_to_mask",
    "deletion",
    "insertion",
    "is_difficult",
    "load_difficult_flags",
    "max_point",
    "pointing_game",
    "polygons_to_mask",
    "randomization",
    "spearman",
    "ssim",
]


def __getattr__(name: str) -> Any:
    """The names that need torch (and their submodules), imported when first used."""
    module = _HOME.get(name, name if name in _NEEDS_TORCH else None)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError(
            f"backlight.metrics.{name} needs PyTorch (pip install torch); the pointing game, "
            "spearman and ssim work without it, on NumPy or JAX arrays"
        ) from None
    loaded = importlib.import_module(f"{__name__}.{module}")
    value = loaded if module == name else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
