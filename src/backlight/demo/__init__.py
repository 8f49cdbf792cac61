"""The demo model: :class:`DemoNet`, a small ReLU CNN trained on :mod:`backlight.data` shapes.

:func:`load_demo_model` returns it with the weights shipped in the package (no download);
:data:`CAM_LAYER` names its last feature map and :data:`CLASSES` its outputs.
"""

from __future__ import annotations

from .model import CAM_LAYER, CLASSES, WEIGHTS_FILE, DemoNet, load_demo_model

__all__ = ["CAM_LAYER", "CLASSES", "WEIGHTS_FILE", "DemoNet", "load_demo_model"]
