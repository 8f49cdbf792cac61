"""HiResCAM, XGrad-CAM, Eigen-CAM and Ablation-CAM: maps worked out by hand, slow literal
references in float64 (explicit loops, networks split or hooked by hand), and pytorch-grad-cam
1.5.7 before its normalisation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import backlight
from backlight.methods.cam_variants import ablation_cam, eigen_cam, hires_cam, xgrad_cam

from .conftest import torchvision_model
from .nets import OneConv, TinyNet
from .test_cam import ONE_CONV_X, _tiny_split
from .test_guarantees import _assert_unchanged, _mixed_state, _snapshot

METHODS: dict[str, Callable[..., backlight.Explanation]] = {
    "hires_cam": hires_cam,
    "xgrad_cam": xgrad_cam,
    "eigen_cam": eigen_cam,
    "ablation_cam": ablation_cam,
}
QUIET = {"ablation_cam": {"progress": False}}

# ---------------------------------------------------------------------------------------------
# By hand. OneConv, layer "conv", class 0, x = [[1, -2], [3, 0.5]]:
# A0 = 2x = [[2, -4], [6, 1]], A1 = -x = [[-1, 2], [-3, -0.5]]; the score is
# Σ relu(A0) - Σ relu(A1) = 9 - 2 = 7, so G0 = [A0 > 0] = [[1, 0], [1, 1]] and
# G1 = -[A1 > 0] = [[0, -1], [0, 0]].
#   HiResCAM:  A0 G0 + A1 G1 = [[2, -2], [6, 1]], rectified [[2, 0], [6, 1]].
#   XGrad-CAM: S0 = ΣA0 = 5, Σ A0 G0 = 9, w0 = 9/5; S1 = -2.5, Σ A1 G1 = -2, w1 = 0.8;
#              1.8 A0 + 0.8 A1 = [[2.8, -5.6], [8.4, 1.4]], rectified.
#   Ablation:  A0 zeroed: score 0 - 2 = -2, w0 = (7 + 2) / 7 = 9/7; A1 zeroed: score 9,
#              w1 = (7 - 9) / 7 = -2/7; (9 A0 - 2 A1) / 7 = [[20, -40], [60, 10]] / 7, rectified.
#   Eigen-CAM: every position's activations are x_ij · (2, -1): rank 1, v = ±(2, -1)/√5, so
#              M v = ±√5 x. The mean activation 0.625 · (2, -1) fixes v = (2, -1)/√5: √5 x.
#              Centred: (x_ij - 0.625) · (2, -1), the same v, √5 (x - 0.625).
ROOT5 = 5**0.5
HAND = {
    "hires_cam": ({}, [[2.0, 0.0], [6.0, 1.0]]),
    "xgrad_cam": ({}, [[2.8, 0.0], [8.4, 1.4]]),
    "ablation_cam": ({"progress": False}, [[20 / 7, 0.0], [60 / 7, 10 / 7]]),
    "eigen_cam": ({}, [[ROOT5, -2 * ROOT5], [3 * ROOT5, 0.5 * ROOT5]]),
    "eigen_cam_centred": (
        {"center": True},
        [[0.375 * ROOT5, -2.625 * ROOT5], [2.375 * ROOT5, -0.125 * ROOT5]],
    ),
    "hires_cam_signed": ({"relu": False}, [[2.0, -2.0], [6.0, 1.0]]),
    "xgrad_cam_signed": ({"relu": False}, [[2.8, -5.6], [8.4, 1.4]]),
}


@pytest.mark.parametrize("case", list(HAND))
def test_one_conv_by_hand(case: str) -> None:
    options, expected = HAND[case]
    method = METHODS[case.removesuffix("_centred").removesuffix("_signed")]
    got = method(OneConv().double(), ONE_CONV_X, 0, layer="conv", **options)
    torch.testing.assert_close(got, torch.tensor([[expected]], dtype=torch.float64))


def test_xgrad_cam_gives_a_channel_that_sums_to_zero_weight_zero() -> None:
    # x = [[1, -1], [2, -2]]: A0 = 2x and A1 = -x both sum to 0; their weights are 0.
    x = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]]]], dtype=torch.float64)
    got = xgrad_cam(OneConv().double(), x, 0, layer="conv", relu=False)
    assert torch.equal(got, torch.zeros_like(got))


def test_eigen_cam_by_hand_with_two_directions() -> None:
    """At the input: x's 2 channels at the 2x2 positions are the rows (3, 0), (0, 1), (0, 0) and
    (0, 0); MᵀM = diag(9, 1), v = (1, 0), M v = (3, 0, 0, 0). Centred (mean (0.75, 0.25)): the
    rows (2.25, -0.25), (-0.75, 0.75), (-0.75, -0.25) twice; CᵀC = [[6.75, -0.75], [-0.75,
    0.75]], whose first eigenvector v = (cos θ, -sin θ), tan 2θ = 1.5 / 6; the mean (0.75, 0.25)
    has v · mean > 0, which fixes the sign."""
    x = torch.tensor([[[[3.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).double()
    got = eigen_cam(model, x, 0, layer="input")
    torch.testing.assert_close(got[0, 0], torch.tensor([[3.0, 0.0], [0.0, 0.0]]).double())
    theta = 0.5 * np.arctan(1.5 / 6)
    v = torch.tensor([np.cos(theta), -np.sin(theta)], dtype=torch.float64)
    rows = torch.tensor([[2.25, -0.25], [-0.75, 0.75], [-0.75, -0.25], [-0.75, -0.25]])
    expected = (rows.double() @ v).reshape(2, 2)
    got = eigen_cam(model, x, 0, layer="input", center=True)
    torch.testing.assert_close(got[0, 0], expected)
    assert float(got.sum()) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Literal references: each paper's formula with explicit loops over samples, channels and
# positions, in float64, on activations and gradients of a network split by hand.


def _channel_sum(a: torch.Tensor, weight: Callable[[int, int], float]) -> torch.Tensor:
    """ReLU(Σ_k weight(sample, k) · A_k), one sample and one channel at a time."""
    maps = torch.zeros(a.shape[0], 1, *a.shape[2:], dtype=a.dtype)
    for s in range(a.shape[0]):
        for c in range(a.shape[1]):
            maps[s, 0] += weight(s, c) * a[s, c]
    return maps.clamp(min=0)


def _loops_hires_cam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Σ_k G_kij · A_kij at each position (i, j), rectified."""
    maps = torch.zeros(a.shape[0], 1, *a.shape[2:], dtype=a.dtype)
    for index in np.ndindex(a.shape[0], *a.shape[2:]):
        s, i, j = index
        maps[s, 0, i, j] = sum(float(g[s, c, i, j] * a[s, c, i, j]) for c in range(a.shape[1]))
    return maps.clamp(min=0)


def _loops_xgrad_cam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    def weight(s: int, c: int) -> float:
        cells = [(float(a[s, c, i, j]), float(g[s, c, i, j])) for i, j in np.ndindex(a.shape[2:])]
        total = sum(value for value, _ in cells)
        return 0.0 if total == 0 else sum(value / total * grad for value, grad in cells)

    return _channel_sum(a, weight)


def _loops_eigen_cam(a: torch.Tensor, center: bool = False) -> torch.Tensor:
    """The first eigenvector of the (K, K) matrix Σ_positions m mᵀ (eigh, not an SVD), its sign
    such that the mean activation projects positively, and the projection position by
    position."""
    k, h, w = a.shape[1:]
    projections = []
    for sample in a:
        positions = [sample[:, i, j] for i, j in np.ndindex(h, w)]
        mean = sum(positions) / len(positions)
        rows = [p - mean for p in positions] if center else positions
        scatter = torch.zeros(k, k, dtype=a.dtype)
        for row in rows:
            scatter += torch.outer(row, row)
        v = torch.linalg.eigh(scatter).eigenvectors[:, -1]
        v = -v if float(mean @ v) < 0 else v
        values = [sum(float(row[c] * v[c]) for c in range(k)) for row in rows]
        projections.append(torch.tensor(values, dtype=a.dtype).reshape(1, h, w))
    return torch.stack(projections)


def _loops_ablation_cam(
    tail: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, target: list[int]
) -> torch.Tensor:
    """``tail`` is the network after the layer, written out by hand: no hooks."""

    def score(s: int, ablate: int | None) -> float:
        layer = a[s : s + 1].clone()
        if ablate is not None:
            layer[0, ablate] = 0.0
        with torch.no_grad():
            return float(tail(layer)[0, target[s]])

    scores = [score(s, None) for s in range(a.shape[0])]
    return _channel_sum(a, lambda s, c: (scores[s] - score(s, c)) / scores[s])


def _resnet18_split(
    model: nn.Module, x: torch.Tensor, target: list[int]
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Activation and gradient at ResNet-18's layer3, and the rest of the network, by hand."""
    m = model
    with torch.no_grad():
        act = m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))))

    def tail(t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = m.fc(torch.flatten(m.avgpool(m.layer4(t)), 1))
        return out

    leaf = act.clone().requires_grad_(True)
    scores = tail(leaf)[torch.arange(x.shape[0]), torch.tensor(target)]
    (grad,) = torch.autograd.grad(scores.sum(), leaf)
    return act, grad, tail


def _references(
    a: torch.Tensor, g: torch.Tensor, tail: Callable[..., torch.Tensor], target: list[int]
) -> dict[str, torch.Tensor]:
    return {
        "hires_cam": _loops_hires_cam(a, g),
        "xgrad_cam": _loops_xgrad_cam(a, g),
        "eigen_cam": _loops_eigen_cam(a),
        "ablation_cam": _loops_ablation_cam(tail, a, target),
    }


def test_tiny_net_matches_literal_references(tiny64: TinyNet) -> None:
    torch.manual_seed(11)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    target = [0, 4, 2]  # one class per sample
    a, g, tail = _tiny_split(tiny64, x, target)
    for name, expected in _references(a, g, tail, target).items():
        assert expected.abs().sum() > 0, name
        got = METHODS[name](tiny64, x, target, layer="conv3", **QUIET.get(name, {}))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)
        if name != "eigen_cam":  # the only one that does not depend on the class
            other = METHODS[name](tiny64, x, [1, 1, 1], layer="conv3", **QUIET.get(name, {}))
            assert not torch.allclose(other, got), name
    a_centred = _loops_eigen_cam(a, center=True)
    got = eigen_cam(tiny64, x, target, layer="conv3", center=True)
    torch.testing.assert_close(got, a_centred, rtol=1e-10, atol=1e-12)


def test_resnet18_matches_literal_references() -> None:
    model = copy.deepcopy(torchvision_model("resnet18")).double()
    torch.manual_seed(12)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    target = [3, 871]
    a, g, tail = _resnet18_split(model, x, target)
    for name, expected in _references(a, g, tail, target).items():
        assert expected.abs().sum() > 0, name
        options = {"progress": False, "batch_size": 128} if name == "ablation_cam" else {}
        got = METHODS[name](model, x, target, layer="layer3", **options)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10, msg=name)


def test_eigen_cam_ignores_the_target_but_reports_it(tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    one = eigen_cam(tiny64, x, [1, 3], layer="conv3")
    other = eigen_cam(tiny64, x, [0, 2], layer="conv3")
    assert torch.equal(one, other)
    assert one.targets is not None and one.targets.tolist() == [1, 3]
    assert other.targets is not None and other.targets.tolist() == [0, 2]
    assert one.scores is not None and other.scores is not None
    assert not torch.allclose(one.scores, other.scores)
    predicted = eigen_cam(tiny64, x, layer="conv3")
    with torch.no_grad():
        assert predicted.targets is not None
        assert predicted.targets.tolist() == tiny64(x).argmax(dim=1).tolist()


def test_eigen_cam_after_a_relu_is_non_negative() -> None:
    """Activations after a ReLU are non-negative, so their first singular vector is too (up to the
    sign fixed here) and so is every value of the uncentred map."""
    x = torch.randn(2, 3, 64, 64)
    got = eigen_cam(torchvision_model("resnet18"), x, layer="layer3")
    assert float(got.min()) >= 0 and float(got.max()) > 0
    centred = eigen_cam(torchvision_model("resnet18"), x, layer="layer3", center=True)
    assert float(centred.min()) < 0 < float(centred.max())


# ---------------------------------------------------------------------------------------------
# Batches, per-sample targets, the forward passes of Ablation-CAM


@pytest.mark.parametrize("name", list(METHODS))
def test_batch_equals_per_sample(name: str, tiny64: TinyNet) -> None:
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    target = [1, 4, 0]
    options = {"layer": "conv3", **QUIET.get(name, {})}
    batch = METHODS[name](tiny64, x, target, **options)
    single = torch.cat(
        [METHODS[name](tiny64, x[i : i + 1], t, **options) for i, t in enumerate(target)]
    )
    torch.testing.assert_close(batch, single, rtol=1e-10, atol=1e-12)
    assert batch.abs().sum() > 0


def test_ablation_batches_never_exceed_batch_size(tiny64: TinyNet) -> None:
    """After the pass on the input, the network after the layer sees at most ``batch_size``
    ablated copies at a time, one per channel that is not zero already; the layers before it
    see one copy per batch, once the check has shown that this gives the same scores."""
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    after: list[int] = []
    before: list[int] = []
    handles = [
        tiny64.conv4.register_forward_pre_hook(lambda m, args: after.append(args[0].shape[0])),
        tiny64.conv1.register_forward_pre_hook(lambda m, args: before.append(args[0].shape[0])),
    ]
    try:
        got = ablation_cam(tiny64, x, [1, 3], layer="conv3", batch_size=4, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    active = int(_tiny_split(tiny64, x, [1, 3])[0].flatten(2).ne(0).any(dim=2).sum())
    # the pass on the input; each sample alone; the check: two full copies, then one copy
    # broadcast to two
    assert after[:5] == [2, 1, 1, 2, 2] and before[:5] == [2, 1, 1, 2, 1]
    assert max(after[5:]) == 4 and sum(after[5:]) == active  # each (sample, channel) once
    assert set(before[5:]) == {1}
    reference = ablation_cam(tiny64, x, [1, 3], layer="conv3", batch_size=64, progress=False)
    torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-12)


class ReadsBatch(nn.Module):
    """Reads its batch size from its input and uses it after conv1: the broadcast of one copy
    at conv1 to many cannot work, so every ablated copy must run in full."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.reshape(n, -1))


def _loops_ablation_by_hook(
    model: nn.Module,
    module: nn.Module,
    x: torch.Tensor,
    target: list[int],
    value: Callable[[torch.Tensor, int], float] = lambda a, c: 0.0,
    reshape: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> torch.Tensor:
    """Ablation-CAM with a hand-written hook, one copy per forward pass: channel k of
    ``reshape(output)`` (a view) is set to ``value(activations of the sample, k)``."""
    kept: dict[str, torch.Tensor] = {}
    ablate: list[int] = []

    def hook(m: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        kept["a"] = reshape(output).detach().clone()
        if ablate:
            output = output.clone()
            reshape(output)[:, ablate[0]] = value(kept["a"], ablate[0])
        return output

    handle = module.register_forward_hook(hook)
    maps = []
    try:
        with torch.no_grad():
            for s in range(x.shape[0]):
                ablate.clear()
                score = float(model(x[s : s + 1])[0, target[s]])
                a = kept["a"][0]
                out = torch.zeros_like(a[0])
                for c in range(a.shape[0]):
                    ablate[:] = [c]
                    weight = (score - float(model(x[s : s + 1])[0, target[s]])) / score
                    out += weight * a[c]
                maps.append(out.clamp(min=0))
    finally:
        handle.remove()
    return torch.stack(maps)[:, None]


def test_ablation_cam_of_a_model_that_reads_its_batch_size() -> None:
    torch.manual_seed(3)
    model = ReadsBatch().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = _loops_ablation_by_hook(model, model.conv1, x, [0, 2])
    assert expected.abs().sum() > 0
    got = ablation_cam(model, x, [0, 2], layer="conv1", batch_size=3, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


class Tokens(nn.Module):
    """A patch embedding to 1 + 3·3 tokens of width 6 (a class token first), a block on the
    tokens, a head on their mean."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.block = nn.Linear(6, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1)
        return self.head(torch.relu(self.block(t)).mean(dim=1))


def test_ablation_cam_of_tokens_with_reshape() -> None:
    torch.manual_seed(4)
    model = Tokens().double().eval()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    expected = _loops_ablation_by_hook(model, model.block, x, [1, 3], reshape=backlight.vit_reshape)
    assert expected.abs().sum() > 0
    got = ablation_cam(
        model, x, [1, 3], layer="block", reshape=backlight.vit_reshape, progress=False
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    for computes in (
        lambda t: backlight.vit_reshape(t) * 2,
        lambda t: backlight.vit_reshape(t).float(),
    ):
        with pytest.raises(backlight.OptionError, match="`reshape` must only rearrange"):
            ablation_cam(model, x, 1, layer="block", reshape=computes, progress=False)


def test_ablation_cam_at_the_input_zeroes_colour_channels(tiny64: TinyNet) -> None:
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        score = float(tiny64(x)[0, 2])
        drops = []
        for c in range(3):
            ablated = x.clone()
            ablated[0, c] = 0
            drops.append((score - float(tiny64(ablated)[0, 2])) / score)
    expected = sum(w * x[0, c] for c, w in enumerate(drops)).clamp(min=0)
    got = ablation_cam(tiny64, x, 2, layer="input", progress=False)
    torch.testing.assert_close(got[0, 0], expected, rtol=1e-10, atol=1e-12)


class RaisesSecondTime(TinyNet):
    """TinyNet whose second forward pass raises (the first ablated batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom in the second forward")
        return super().forward(x)


def test_ablation_cam_leaves_the_model_unchanged_when_a_pass_raises() -> None:
    model = _mixed_state(RaisesSecondTime())
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom in the second forward"):
        ablation_cam(model, torch.randn(2, 3, 12, 12), [0, 1], layer="conv3", progress=False)
    assert model.calls == 2
    _assert_unchanged(model, before)
    assert model.training and not model.conv2.training  # the flags _mixed_state set
    maps = ablation_cam(model, torch.randn(2, 3, 12, 12), [0, 1], layer="conv3", progress=False)
    assert maps.abs().sum() > 0  # no hook was left behind to ablate the next call's passes
    _assert_unchanged(model, before)


def test_ablation_cam_progress_bar(tiny: TinyNet, capfd: pytest.CaptureFixture[str]) -> None:
    x = torch.randn(1, 3, 12, 12)
    ablation_cam(tiny, x, 0, layer="conv3", progress=False)
    assert "ablation_cam" not in capfd.readouterr().err
    ablation_cam(tiny, x, 0, layer="conv3", progress=True)
    assert "ablation_cam" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("hires_cam", {"relu": None}, "`relu` must be True or False"),
        ("xgrad_cam", {"gradient": "smooth"}, "`gradient` must be 'plain' or 'guided'"),
        ("eigen_cam", {"center": 1}, "`center` must be True or False"),
        ("eigen_cam", {"resize": "yes"}, "`resize` must be True or False"),
        ("ablation_cam", {"batch_size": 0}, "`batch_size` must be a positive int"),
        ("ablation_cam", {"batch_size": 2.0}, "`batch_size` must be a positive int"),
        ("ablation_cam", {"progress": "no"}, "`progress` must be True or False"),
    ],
)
def test_bad_options_are_typed_errors(
    name: str, options: dict[str, object], message: str, tiny: TinyNet
) -> None:
    before = _snapshot(tiny)
    with pytest.raises(backlight.OptionError, match=message):
        METHODS[name](tiny, torch.randn(1, 3, 12, 12), 0, layer="conv3", **options)
    _assert_unchanged(tiny, before)


def test_registered_with_their_options() -> None:
    listed = {info.name: info for info in backlight.list_methods("cam")}
    gradient_cam = ("layer", "resize", "relu", "reshape", "gradient")
    expected = {
        "hires_cam": (gradient_cam, "Draelos"),
        "xgrad_cam": (gradient_cam, "Fu"),
        "eigen_cam": (("layer", "resize", "reshape", "center"), "Muhammad"),
        "ablation_cam": (
            ("layer", "resize", "relu", "reshape", "batch_size", "progress"),
            "Desai",
        ),
    }
    for name, (options, author) in expected.items():
        info = listed[name]
        assert info.options == options and info.layered and info.smoothable, name
        assert info.paper.startswith(author) and info.summary, name
        assert backlight.get_method(name.replace("_", "")) is info
        assert (
            info.function(TinyNet().eval(), torch.randn(1, 3, 12, 12), 0, **info.quick).method
            == name
        )
    assert listed["ablation_cam"].quick == {"batch_size": 64, "progress": False}
    model, x = TinyNet().eval(), torch.randn(1, 3, 12, 12)
    result = eigen_cam(model, x)
    layer = backlight.default_cam_layer(model, x)
    assert result.settings == {"layer": layer, "resize": False, "reshape": None, "center": False}


# ---------------------------------------------------------------------------------------------
# pytorch-grad-cam 1.5.7, before its normalisation (its rectified map at the layer)

LAYERS = {"vgg16": "features.30", "resnet50": "layer4", "densenet121": "features.denseblock4"}
TARGETS = [3, 871]


def _pgc() -> Any:
    return pytest.importorskip("pytorch_grad_cam")


@pytest.mark.parametrize("arch", list(LAYERS))
def test_gradient_cams_and_eigen_cam_match_pytorch_grad_cam(arch: str) -> None:
    """HiResCAM and XGradCAM as they are (at these layers every channel's sum is far from 0,
    where its 1e-7 does not matter); EigenCAM centres the activations (``center=True``) and
    rectifies the projection, whose sign its SVD leaves to chance: its map is ours rectified, or
    the negative of ours rectified, per sample."""
    from .test_parity_cam import _inputs, _pgc_raw, relative_error

    lib = _pgc()
    model, layer, x = torchvision_model(arch), LAYERS[arch], _inputs(size=96)
    for ours_fn, theirs_cls in ((hires_cam, lib.HiResCAM), (xgrad_cam, lib.XGradCAM)):
        ours = ours_fn(model, x, TARGETS, layer=layer)
        assert relative_error(ours[0], ours[1]) > 0.01  # per-sample targets
        assert relative_error(ours, _pgc_raw(theirs_cls, model, layer, x, TARGETS)) < 1e-5
    ours = eigen_cam(model, x, TARGETS, layer=layer, center=True)
    theirs = _pgc_raw(lib.EigenCAM, model, layer, x, TARGETS)
    for s in range(2):
        same = relative_error(ours[s].clamp(min=0), theirs[s])
        flipped = relative_error((-ours[s]).clamp(min=0), theirs[s])
        assert min(same, flipped) < 1e-5 and max(same, flipped) > 0.5
    paper = eigen_cam(model, x, TARGETS, layer=layer)
    assert (
        relative_error(
            paper / paper.amax(dim=(2, 3), keepdim=True),
            theirs / theirs.amax(dim=(2, 3), keepdim=True),
        )
        > 0.05
    )


# Ablation costs one forward pass per channel: early layers (128-256 channels) and 32x32 inputs,
# each after a ReLU or a max pooling of ReLUs, where pytorch-grad-cam ablates to zero.
ABLATION_LAYERS = {
    "vgg16": "features.16",
    "resnet50": "layer1",
    "densenet121": "features.transition1.relu",
}


@pytest.mark.parametrize("arch", list(ABLATION_LAYERS))
def test_ablation_cam_matches_pytorch_grad_cam(arch: str) -> None:
    from .test_parity_cam import _inputs, _pgc_raw, relative_error

    lib = _pgc()
    model, layer, x = torchvision_model(arch), ABLATION_LAYERS[arch], _inputs(n=1, size=32)
    ours = ablation_cam(model, x, 871, layer=layer, progress=False, batch_size=64)
    theirs = _pgc_raw(lib.AblationCAM, model, layer, x, [871])
    assert ours.abs().sum() > 0
    assert relative_error(ours, theirs) < 1e-4


class Signed(nn.Module):
    """A convolution (signed outputs) averaged over the positions, then a linear layer: the value
    an ablated channel takes reaches the score linearly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_pytorch_grad_cam_ablates_signed_activations_to_a_value_that_depends_on_the_batch() -> None:
    """Where the smallest activation is not exactly 0, pytorch-grad-cam sets an ablated channel to
    ``min − 1e7``, not to 0 as the paper does; and as it takes the minimum again after each copy
    of its batch, the copy at position i (here channel i) gets ``min(A) − (i + 1) · 1e7``."""
    from .test_parity_cam import _pgc_raw, relative_error

    lib = _pgc()
    torch.manual_seed(5)
    model, x = Signed().eval(), torch.randn(1, 3, 5, 5)
    theirs = _pgc_raw(lib.AblationCAM, model, "conv", x, [1])
    assert theirs.abs().sum() > 0
    by_position = _loops_ablation_by_hook(
        model, model.conv, x, [1], value=lambda a, c: float(a.min()) - (c + 1) * 1e7
    )
    assert relative_error(theirs, by_position) < 1e-4
    constant = _loops_ablation_by_hook(
        model, model.conv, x, [1], value=lambda a, c: float(a.min()) - 1e7
    )
    assert relative_error(theirs, constant) > 0.1
    ours = ablation_cam(model, x, 1, layer="conv", progress=False)
    torch.testing.assert_close(ours, _loops_ablation_by_hook(model, model.conv, x, [1]))
    assert relative_error(theirs, ours) > 0.1


def test_pytorch_grad_cams_epsilon_blows_up_xgrad_cam_on_a_zero_sum_channel() -> None:
    """x = [[1, -1], [2, -2]] on OneConv: both channels sum to 0, so both weigh 0 here; divided by
    0 + 1e-7, pytorch-grad-cam's weights are 6e7 and -3e7: its map is 1.5e8 · x."""
    from .test_parity_cam import _pgc_raw

    lib = _pgc()
    model = OneConv()
    x = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]]]])
    theirs = _pgc_raw(lib.XGradCAM, model, "conv", x, [0])
    torch.testing.assert_close(theirs, (1.5e8 * x).clamp(min=0))
    ours = xgrad_cam(model, x, 0, layer="conv")
    assert torch.equal(ours, torch.zeros_like(ours))
