"""Type aliases shared by the public API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import torch
from torch import nn

#: What to explain: ``None`` (each sample's predicted class), one class for all samples, one class
#: per sample, or a callable that maps the model's output to one score per sample.
Target: TypeAlias = (
    int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None
)

#: A module of the model, by dotted name as in ``model.named_modules()`` or as the module itself.
Layer: TypeAlias = str | nn.Module

#: How the channels of a gradient become one map.
Reduce: TypeAlias = Literal["abs_max", "l2", "sum"] | None
