"""Slow, literal references: the backward pass of TinyNet written out step by step, in float64.

No autograd: every linear step's transpose is written with ``torch.nn.grad`` or by hand, and the
ReLU step is the formula of each paper:

* gradient (Simonyan et al. 2014):    ∂x = [x > 0] · ∂y
* guided backprop (Springenberg 2015): ∂x = [x > 0] · [∂y > 0] · ∂y
* deconvnet (Zeiler & Fergus 2014):    ∂x = [∂y > 0] · ∂y
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input

from .nets import TinyNet


def relu_rule(rule: str, z: torch.Tensor, g: torch.Tensor, hi: float | None = None) -> torch.Tensor:
    """Backward of ``clip(z, 0, hi)`` (a ReLU when ``hi`` is None) under ``rule``."""
    passes = z > 0
    if hi is not None:
        passes = passes & (z < hi)
    if rule == "gradient":
        return torch.where(passes, g, torch.zeros_like(g))
    if rule == "guided_backprop":
        return torch.where(passes & (g > 0), g, torch.zeros_like(g))
    if rule == "deconvnet":
        return torch.where(g > 0, g, torch.zeros_like(g))
    raise ValueError(rule)


def tiny_backward(
    net: TinyNet, x: torch.Tensor, target: list[int], rule: str
) -> dict[str, torch.Tensor]:
    """Gradients of TinyNet's target scores at the input and at each conv output, by hand."""
    x = x.double()
    w = {name: p.detach().double() for name, p in net.named_parameters()}

    def conv(name: str, t: torch.Tensor, padding: int) -> torch.Tensor:
        return F.conv2d(t, w[f"{name}.weight"], w[f"{name}.bias"], padding=padding)

    # forward, keeping every pre-activation
    z1 = conv("conv1", x, 1)
    a = z1.clamp(min=0)
    z2 = conv("conv2", a, 1) + a
    b = z2.clamp(min=0)
    c, where = F.max_pool2d(b, 2, return_indices=True)
    z3 = conv("conv3", c, 1)
    d = z3.clamp(min=0)
    z4 = conv("conv4", d, 0)
    e = z4.clamp(min=0)
    f = e.clamp(0, 6)
    g = f.mean(dim=(2, 3))
    z6 = g @ w["fc1.weight"].T + w["fc1.bias"]

    # backward
    grad_out = torch.zeros(x.shape[0], 5, dtype=torch.float64)
    grad_out[torch.arange(x.shape[0]), torch.tensor(target)] = 1.0
    g_h = grad_out @ w["fc2.weight"]
    g_z6 = relu_rule(rule, z6, g_h)
    g_g = g_z6 @ w["fc1.weight"]
    g_f = (g_g / (f.shape[2] * f.shape[3]))[:, :, None, None].expand_as(f)
    g_e = relu_rule(rule, e, g_f, hi=6.0)
    g_z4 = relu_rule(rule, z4, g_e)
    g_d = conv2d_input(d.shape, w["conv4.weight"], g_z4, padding=0)
    g_z3 = relu_rule(rule, z3, g_d)
    g_c = conv2d_input(c.shape, w["conv3.weight"], g_z3, padding=1)
    g_b = F.max_unpool2d(g_c, where, 2, output_size=b.shape[-2:])
    g_z2 = relu_rule(rule, z2, g_b)
    g_a = conv2d_input(a.shape, w["conv2.weight"], g_z2, padding=1) + g_z2
    g_z1 = relu_rule(rule, z1, g_a)
    g_x = conv2d_input(x.shape, w["conv1.weight"], g_z1, padding=1)
    return {"input": g_x, "conv1": g_z1, "conv3": g_z3, "conv4": g_z4, "logits": grad_out}
