"""Telling tensors from arrays without importing torch (for the torch-free viz and metrics)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["is_array", "is_tensor"]


def is_tensor(value: Any) -> bool:
    """A torch tensor (without importing torch: if it is not imported, nothing is one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_array(value: Any) -> bool:
    """A NumPy array, or an array of another library that converts to one (JAX)."""
    return isinstance(value, np.ndarray) or (
        hasattr(value, "__array__") and hasattr(value, "shape") and hasattr(value, "ndim")
    )
