"""Numbers that tell a good saliency map from a pretty one.

- Localisation: the pointing game (Zhang et al., ECCV 2016) with TorchRay's protocol, per-class
  accuracy and its difficult subset: :class:`PointingGame`, :func:`pointing_game`, and readers
  of PASCAL VOC 2007 test (:class:`VOC2007`) and COCO 2014 val (:class:`COCO2014`).
- Faithfulness: deletion and insertion (Petsiuk, Das & Saenko, BMVC 2018): :func:`deletion`,
  :func:`insertion`.
- Sanity: cascading and independent model randomization (Adebayo et al., NeurIPS 2018):
  :func:`randomization`, with :func:`spearman` and :func:`ssim`.

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
from ._pointing import (
    PointingGame,
    PointingResult,
    boxes_to_mask,
    is_difficult,
    max_point,
    pointing_game,
)
from ._randomization import RandomizationResult, randomization
from ._similarity import spearman, ssim

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
