"""The many forward passes of the perturbation methods (RISE, extremal perturbation), made cheap.

Two shortcuts, each exact or as exact as the mode asked for:

- channels-last batches on CPU for convolutional models: oneDNN's convolutions and pooling run
  faster on that layout; the values are the same up to rounding;
- under ``autocast``, a private copy of the model whose convolution and linear layers hold their
  weights already in the reduced precision (and, with channels-last batches, 4-D weights
  channels-last too). Autocast
  otherwise casts every weight at every forward pass and oneDNN reorders it again: for ResNet-18
  and three images a third of the time of a forward and backward pass. The copy computes the same
  bits: autocast's cast of an fp32 weight is the one made here, once.

A model that cannot take a shortcut (one that calls ``x.view`` on its input cannot take
channels-last) raises on the first batch; that batch is retried without the shortcuts, and they
stay off for the rest of the call.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["Forward", "reduced_precision_copy"]

# Exactly these types (not subclasses, whose forward may use the weight in other ways): their
# forward is one F.conv*/F.linear call, which autocast runs in the reduced precision anyway.
_CAST_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class Forward:
    """``forward(batch)``: the model's output on a batch, with the shortcuts above.

    Build it inside :func:`backlight._state.explaining` so that the private copy is made of the
    model in eval mode with frozen parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        autocast: torch.dtype | None,
        channels_last: bool,
    ) -> None:
        self.model = model
        self.device_type = x.device.type
        self.autocast = autocast
        self.first = True
        convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.channels_last = channels_last and x.device.type == "cpu" and convolutional
        self.fast = (
            model
            if autocast is None
            else reduced_precision_copy(model, autocast, channels_last=self.channels_last)
        )

    def __call__(self, batch: torch.Tensor) -> Any:
        if not self.first:
            return self._run(batch)
        self.first = False
        try:
            return self._run(batch)
        except RuntimeError:
            if not self.channels_last and self.fast is self.model:
                raise
            self.channels_last, self.fast = False, self.model
        return self._run(batch)

    def _run(self, batch: torch.Tensor) -> Any:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = batch.contiguous(memory_format=layout)
        if self.autocast is None:
            return self.fast(batch)
        with torch.autocast(self.device_type, dtype=self.autocast):
            out = self.fast(batch)
        return out.float() if isinstance(out, torch.Tensor) else out


def reduced_precision_copy(
    model: nn.Module, dtype: torch.dtype, *, channels_last: bool = False
) -> nn.Module:
    """A copy of ``model`` whose plain convolution and linear layers hold their weight and bias in
    ``dtype`` (2-D convolution weights channels-last if ``channels_last``: a weight in that layout
    makes the convolution's output channels-last too, which only suits channels-last batches),
    frozen; every other tensor is copied as it is. The model itself is untouched. A model that
    cannot be deep-copied is returned as it is."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        if type(module) not in _CAST_TYPES:
            continue
        for name in ("weight", "bias"):
            tensor = getattr(module, name, None)
            if not isinstance(tensor, nn.Parameter) or not tensor.is_floating_point():
                continue
            cast = tensor.detach().to(dtype)
            if channels_last and cast.dim() == 4:
                cast = cast.contiguous(memory_format=torch.channels_last)
            memo[id(tensor)] = nn.Parameter(cast, requires_grad=False)
    if not memo:
        return model
    try:
        return copy.deepcopy(model, memo)
    except Exception:
        return model
