"""backlight: what an image classifier looks at.

Every method takes ``(model, x, target=None, **options)`` with ``x`` a float tensor
(N, C, H, W) and returns detached maps (N, 1, h, w). See ``backlight.list_methods()``.
"""

from __future__ import annotations

from ._registry import MethodInfo, get_method, list_methods
from ._rules import DeConvNetContext, GuidedBackpropContext, RuleNotAppliedWarning
from .errors import (
    BacklightError,
    InputError,
    InputTypeError,
    LayerError,
    LayerNotFoundError,
    MethodNotApplicableError,
    OptionError,
    TargetError,
)
from .methods.gradients import deconvnet, gradient, guided_backprop, rectified

__version__ = "0.1.0"

__all__ = [
    "BacklightError",
    "DeConvNetContext",
    "GuidedBackpropContext",
    "InputError",
    "InputTypeError",
    "LayerError",
    "LayerNotFoundError",
    "MethodInfo",
    "MethodNotApplicableError",
    "OptionError",
    "RuleNotAppliedWarning",
    "TargetError",
    "deconvnet",
    "get_method",
    "gradient",
    "guided_backprop",
    "list_methods",
    "rectified",
]
