"""Excitation backprop: maps computed on paper, a literal float64 reference, probability mass,
and errors for operations without an excitation rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backlight

from .conftest import torchvision_model


class TwoPixels(nn.Module):
    """1x1 conv W1 = [[1, -1], [2, 1]] (bias ignored by the rules), ReLU, global average pool,
    linear W2 = [[1, 1], [-1, 2]]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]).reshape(2, 2, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.5, -0.5]))
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, 2.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


# Pixels (1, 2) and (3, 0). Conv outputs [-0.5, 3.5] and [3.5, 5.5]; after ReLU h = [[0, 3.5],
# [3.5, 5.5]] (channel, pixel); pooled g = [1.75, 4.5].
# Class 1 (row [-1, 2], positive part [0, 2]): all mass to g1. Average pooling splits it as
# h1 = [3.5, 5.5] / 9. The 1x1 conv unit 1 (positive weights [2, 1]) splits each pixel's share
# in proportion to [2·x0, 1·x1]: pixel 0 keeps 3.5/9, pixel 1 keeps 5.5/9.  Map: [3.5/9, 5.5/9].
# Dual classifier (row [1, -2], positive part [1, 0]): all mass to g0, which the pooling sends to
# pixel 1 (h0 = [0, 3.5]) and the conv unit 0 (positive weights [1, 0]) to x0 of pixel 1.
# Contrast: [3.5/9, 5.5/9 - 1] = [3.5/9, -3.5/9], rectified: [3.5/9, 0].
TWO_PIXELS_X = torch.tensor([[1.0, 3.0], [2.0, 0.0]], dtype=torch.float64).reshape(1, 2, 1, 2)


def test_two_pixels_by_hand() -> None:
    net = TwoPixels().double()
    got = backlight.excitation_backprop(net, TWO_PIXELS_X, 1)
    torch.testing.assert_close(got, torch.tensor([[[[3.5 / 9, 5.5 / 9]]]], dtype=torch.float64))
    got = backlight.contrastive_excitation_backprop(net, TWO_PIXELS_X, 1)
    torch.testing.assert_close(got, torch.tensor([[[[3.5 / 9, 0.0]]]], dtype=torch.float64))


def test_two_pixels_at_the_conv_output_by_hand() -> None:
    # The MWP at the conv output is h's share: channel 1 gets [3.5/9, 5.5/9], channel 0 nothing.
    net = TwoPixels().double()
    got = backlight.excitation_backprop(net, TWO_PIXELS_X, 1, layer="conv")
    torch.testing.assert_close(got, torch.tensor([[[[3.5 / 9, 5.5 / 9]]]], dtype=torch.float64))


class SmallCNN(nn.Module):
    """conv 3x3, batch norm, ReLU, max pool, a 1x1 conv with a residual sum, ReLU, average
    pool, linear: every excitation rule once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(0.0, 0.3)
            self.conv2.bias.fill_(0.2)
            # Non-negative residual operands: the sum's proportional split is then a split of
            # probability (with a negative operand the rule hands out negative shares).
            self.conv2.weight.abs_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.pool(torch.relu(self.bn(self.conv1(x))))
        out = self.conv2(m)
        out += m
        s = torch.relu(out)
        return self.fc(s.mean(dim=(2, 3)))


def _reference(net: SmallCNN, x: torch.Tensor, target: int) -> dict[str, torch.Tensor]:
    """MWP by hand, unit by unit: the paper's formula at every layer, loops and all."""
    w1, w2, wf = (m.weight.detach().double() for m in (net.conv1, net.conv2, net.fc))
    z1 = net.conv1(x).detach()
    b1 = net.bn(z1).detach()
    a1 = b1.clamp(min=0)
    m, where = F.max_pool2d(a1, 2, return_indices=True)
    z2 = net.conv2(m).detach()
    total = z2 + m
    s = total.clamp(min=0)
    g = s.mean(dim=(2, 3))
    n, c, h, w = m.shape

    p_g = torch.zeros_like(g)
    for k in range(g.shape[1]):  # fc: unit `target` shares its probability by w+ · g
        den = sum(max(float(wf[target, j]), 0.0) * float(g[0, j]) for j in range(g.shape[1]))
        if den != 0:
            p_g[0, k] = max(float(wf[target, k]), 0.0) * float(g[0, k]) / den
    p_s = torch.zeros_like(s)
    for k in range(c):  # average pool
        den = float(s[0, k].sum())
        if den != 0:
            p_s[0, k] = s[0, k] / den * p_g[0, k]
    p_total = torch.where(total > 0, p_s, torch.zeros_like(p_s))  # ReLU
    share = torch.where(total != 0, p_total / torch.where(total != 0, total, 1.0), 0.0)
    p_z2, p_m = z2 * share, m * share  # residual sum
    for i in range(c):  # 1x1 conv, unit (i, y, x) shares by w+ · m
        for yy in range(h):
            for xx in range(w):
                parts = [max(float(w2[i, j, 0, 0]), 0.0) * float(m[0, j, yy, xx]) for j in range(c)]
                if sum(parts) != 0:
                    for j in range(c):
                        p_m[0, j, yy, xx] += parts[j] / sum(parts) * p_z2[0, i, yy, xx]
    p_a1 = torch.zeros_like(a1)  # max pool: the winner takes it
    p_a1.view(n, c, -1).scatter_add_(2, where.view(n, c, -1), p_m.view(n, c, -1))
    p_z1 = torch.where(b1 > 0, p_a1, torch.zeros_like(p_a1))  # ReLU, then batch norm: unchanged
    xp = F.pad(x, (1, 1, 1, 1))
    p_x = torch.zeros_like(xp)
    for i in range(z1.shape[1]):  # 3x3 conv, padding 1
        for yy in range(z1.shape[2]):
            for xx in range(z1.shape[3]):
                patch = xp[0, :, yy : yy + 3, xx : xx + 3]
                parts = w1[i].clamp(min=0) * patch
                if float(parts.sum()) != 0:
                    p_x[0, :, yy : yy + 3, xx : xx + 3] += parts / parts.sum() * p_z1[0, i, yy, xx]
    return {"input": p_x[:, :, 1:-1, 1:-1], "pool": p_m, "conv1": p_z1, "fc_input": p_g}


@pytest.mark.parametrize("layer", [None, "conv1", "pool"])
def test_small_cnn_matches_literal_reference(layer: str | None) -> None:
    torch.manual_seed(41)
    net = SmallCNN().double().eval()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)  # non-negative, as the paper assumes
    expected = _reference(net, x, 2)["input" if layer is None else layer].sum(1, keepdim=True)
    got = backlight.excitation_backprop(net, x, 2, layer=layer)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # a probability distribution: nothing is lost in this net, so every layer sums to one
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-12)


def test_small_cnn_contrastive_is_class_minus_dual() -> None:
    """c-MWP at the pool output equals MWP(class) - MWP(dual classifier), with the dual built by
    negating the classifier of a copy (TorchRay's way), then rectified."""
    torch.manual_seed(42)
    net = SmallCNN().double().eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    dual = SmallCNN().double().eval()
    dual.load_state_dict(net.state_dict())
    with torch.no_grad():
        dual.fc.weight.neg_()
    for i, t in enumerate([0, 2]):
        xi = x[i : i + 1]
        expected = (_reference(net, xi, t)["pool"] - _reference(dual, xi, t)["pool"]).sum(
            1, keepdim=True
        )
        got = backlight.contrastive_excitation_backprop(net, xi, t, layer="pool")
        torch.testing.assert_close(got, expected.clamp(min=0), rtol=1e-10, atol=1e-12)
        assert bool((expected < 0).any()) and bool((expected > 0).any())
    batch = backlight.contrastive_excitation_backprop(net, x, [0, 2], layer="pool")
    single = torch.cat(
        [
            backlight.contrastive_excitation_backprop(net, x[i : i + 1], t, layer="pool")
            for i, t in enumerate([0, 2])
        ]
    )
    torch.testing.assert_close(batch, single)


@pytest.mark.parametrize(("arch", "layer"), [("vgg16", "features.23"), ("resnet50", "layer3")])
def test_mwp_is_a_probability_distribution_on_torchvision(arch: str, layer: str) -> None:
    model = torchvision_model(arch)
    maps = backlight.excitation_backprop(model, torch.randn(2, 3, 96, 96), [5, 600], layer=layer)
    assert bool((maps >= 0).all())
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), torch.ones(2), rtol=0, atol=1e-5)


def test_torchray_style_context() -> None:
    torch.manual_seed(43)
    net = SmallCNN().double().eval()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    with backlight.ExcitationBackpropContext() as context:
        y = net(x)
    y[0, 1].backward()
    torch.testing.assert_close(
        x.grad.sum(1, keepdim=True), backlight.excitation_backprop(net, x, 1)
    )
    assert context.last_linear is not None
    assert context.last_linear.weight is net.fc.weight


def test_no_rule_for_silu_names_it() -> None:
    model = torchvision_model("efficientnet_b0")
    with pytest.raises(
        backlight.MethodNotApplicableError, match=r"no rule for torch\.nn\.functional\.silu"
    ):
        backlight.excitation_backprop(model, torch.randn(1, 3, 64, 64), 0)


def test_operation_below_the_layer_does_not_matter() -> None:
    class GeluFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.gelu(self.stem(x))  # no excitation rule, but below `layer`
            return self.fc(torch.relu(self.head(h)).mean(dim=(2, 3)))

    net = GeluFirst().eval()
    x = torch.randn(1, 3, 6, 6)
    assert backlight.excitation_backprop(net, x, 1, layer="head").abs().sum() > 0
    with pytest.raises(
        backlight.MethodNotApplicableError, match=r"no rule for torch\.nn\.functional\.gelu"
    ):
        backlight.excitation_backprop(net, x, 1)


def test_contrastive_needs_a_classifier_above_the_layer() -> None:
    class NoClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x)).mean(dim=(2, 3))

    with pytest.raises(backlight.MethodNotApplicableError, match="needs a classifier"):
        backlight.contrastive_excitation_backprop(
            NoClassifier(), torch.rand(1, 3, 4, 4), 0, layer="conv"
        )


def test_a_residual_sum_of_exactly_zero_hands_on_nothing() -> None:
    """Where ``a + b == 0`` the split ``a / (a + b)`` is undefined; TorchRay divides anyway and
    returns NaN there (seen on ResNet-50 in benchmarks/peers.py); we hand on nothing."""

    class Cancels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.fc = nn.Linear(2, 2)
            with torch.no_grad():  # positive weights: channel 1 carries the excitation
                self.conv.weight.abs_()
                self.conv.bias.fill_(0.1)
                self.fc.weight.abs_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.conv(x)
            b = torch.cat([a[:, :1] * -1.0, a[:, 1:]], dim=1)  # channel 0 cancels exactly
            return self.fc(torch.relu(a + b).mean(dim=(2, 3)))

    maps = backlight.excitation_backprop(Cancels(), torch.rand(2, 3, 5, 5), 1)
    assert bool(torch.isfinite(maps).all())
    assert maps.abs().sum() > 0
