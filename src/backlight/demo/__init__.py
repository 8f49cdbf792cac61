"""The demo model: :class:`DemoNet`, a small ReLU CNN trained on :mod:`backlight.data` shapes.

:func:`load_demo_model` returns it with the weights shipped in the package (no download);
:data:`CAM_LAYER` names its last feature map and :data:`CLASSES` its outputs.
"""

from __future__ import annotations

from .model import CAM_LAYER, CLASSES, WEIGHTS_FILE, DemoNet, load_demo_model

__all__ = ["CAM_LAYER", "CLASSES", "METHOD_SETTINGS", "WEIGHTS_FILE", "DemoNet", "load_demo_model"]

#: Settings for the slow methods on the 64x64 shapes, over their quick ones: enough masks and
#: iterations for RISE and extremal perturbation to converge (about 0.6 and 1.5 s per image).
METHOD_SETTINGS: dict[str, dict[str, int]] = {
    "rise": {"num_masks": 1000, "batch_size": 64},
    "extremal_perturbation": {"max_iter": 300},
}
