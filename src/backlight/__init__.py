"""backlight: what an image classifier looks at.

Every method takes ``(model, x, target=None, **options)`` with ``x`` a float tensor
(N, C, H, W) and returns detached maps (N, 1, h, w). See ``backlight.list_methods()``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use: `import backlight` needs neither
    from . import bench as bench
    from . import jax as jax
    from . import metrics as metrics
    from . import runs as runs
    from . import viz as viz
    from .runs import run as run
from .errors import (
    BacklightError,
    DatasetError,
    DatasetNotFoundError,
    InputError,
    InputTypeError,
    LayerError,
    LayerNotFoundError,
    MethodNotApplicableError,
    ModelError,
    OptionError,
    TargetError,
)

_torch: Any
try:  # backlight.jax needs no torch: without it, only the torch-free parts import
    import torch as _torch
except ImportError:
    _torch = None

if _torch is not None:
    from . import targets as targets
    from ._checks import ForeignHookWarning
    from ._excitation import ExcitationBackpropContext
    from ._keras import KerasModel, load_keras
    from ._layers import default_cam_layer
    from ._registry import MethodInfo, get_method, list_methods
    from ._result import Explanation
    from ._rules import DeConvNetContext, GuidedBackpropContext, RuleNotAppliedWarning
    from .methods.cam import (
        grad_cam,
        grad_cam_plus_plus,
        guided_grad_cam,
        layer_cam,
        linear_approx,
        vit_reshape,
    )
    from .methods.cam_variants import ablation_cam, eigen_cam, hires_cam, xgrad_cam
    from .methods.excitation import contrastive_excitation_backprop, excitation_backprop
    from .methods.extremal import extremal_perturbation
    from .methods.gradients import deconvnet, gradient, guided_backprop, rectified
    from .methods.integrated import gradient_shap, input_x_gradient, integrated_gradients
    from .methods.occlusion import occlusion
    from .methods.rise import RiseMasks, rise
    from .methods.score_cam import score_cam
    from .methods.smoothgrad import smooth_grad

__version__ = "0.1.0"

__all__ = [
    "BacklightError",
    "DatasetError",
    "DatasetNotFoundError",
    "DeConvNetContext",
    "ExcitationBackpropContext",
    "Explanation",
    "ForeignHookWarning",
    "GuidedBackpropContext",
    "InputError",
    "InputTypeError",
    "KerasModel",
    "LayerError",
    "LayerNotFoundError",
    "MethodInfo",
    "MethodNotApplicableError",
    "ModelError",
    "OptionError",
    "RiseMasks",
    "RuleNotAppliedWarning",
    "TargetError",
    "ablation_cam",
    "contrastive_excitation_backprop",
    "deconvnet",
    "default_cam_layer",
    "eigen_cam",
    "excitation_backprop",
    "extremal_perturbation",
    "get_method",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient",
    "gradient_shap",
    "guided_backprop",
    "guided_grad_cam",
    "hires_cam",
    "input_x_gradient",
    "integrated_gradients",
    "layer_cam",
    "linear_approx",
    "list_methods",
    "load_keras",
    "occlusion",
    "rectified",
    "rise",
    "run",
    "score_cam",
    "smooth_grad",
    "targets",
    "vit_reshape",
    "xgrad_cam",
]


_LAZY = ("bench", "data", "jax", "metrics", "runs", "viz")


def __getattr__(name: str) -> Any:
    """``backlight.metrics``, ``backlight.viz``, ``backlight.bench``, ``backlight.data``,
    ``backlight.runs`` and ``backlight.jax``, imported when first used, and ``backlight.run``
    (:func:`backlight.runs.run`)."""
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "run" and _torch is not None:
        return importlib.import_module(f"{__name__}.runs").run
    if _torch is None and name in __all__:
        raise ImportError(
            f"backlight.{name} needs PyTorch (pip install torch torchvision); backlight.jax "
            "works without it"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
