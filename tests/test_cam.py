"""The CAM family against hand-computed maps and slow literal references in float64."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backlight

from .conftest import torchvision_model
from .nets import OneConv, TinyNet
from .reference import tiny_backward

ONE_CONV_X = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]], dtype=torch.float64)

# OneConv, layer "conv", class 0. A0 = 2x = [[2, -4], [6, 1]], A1 = -x = [[-1, 2], [-3, -0.5]].
# The score is Σ relu(A0) - Σ relu(A1), so G0 = [A0 > 0] = [[1, 0], [1, 1]] and
# G1 = -[A1 > 0] = [[0, -1], [0, 0]].
#   Grad-CAM:  α = (3/4, -1/4); 0.75 A0 - 0.25 A1 = [[1.75, -3.5], [5.25, 0.875]], rectified.
#   linear:    A0 G0 + A1 G1 = [[2, -2], [6, 1]].
#   LayerCAM:  relu(G0) A0 + relu(G1) A1 = [[2, 0], [6, 1]].
#   Grad-CAM++: S0 = ΣA0 = 5, w0 = Σ_{g>0} g / (2 + S0 g) = 3/7; G1 has no positive entry, w1 = 0;
#              map = 3/7 A0 = [[6/7, -12/7], [18/7, 3/7]], rectified.
HAND = {
    "grad_cam": [[1.75, 0.0], [5.25, 0.875]],
    "linear_approx": [[2.0, -2.0], [6.0, 1.0]],
    "layer_cam": [[2.0, 0.0], [6.0, 1.0]],
    "grad_cam_plus_plus": [[6 / 7, 0.0], [18 / 7, 3 / 7]],
}


@pytest.mark.parametrize("method", list(HAND))
def test_one_conv_by_hand(method: str) -> None:
    got = getattr(backlight, method)(OneConv().double(), ONE_CONV_X, 0, layer="conv")
    torch.testing.assert_close(got, torch.tensor([[HAND[method]]], dtype=torch.float64))


def test_signed_grad_cam_by_hand() -> None:
    got = backlight.grad_cam(OneConv().double(), ONE_CONV_X, 0, layer="conv", relu=False)
    expected = torch.tensor([[[[1.75, -3.5], [5.25, 0.875]]]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_score_cam_by_hand() -> None:
    # The layer has the input's resolution, so the masks are the min-max scaled channels:
    # M0 = (A0 + 4) / 10 = [[0.6, 0], [1, 0.5]], M1 = (A1 + 3) / 5 = [[0.4, 1], [0, 0.5]].
    # x*M0 = [[0.6, 0], [3, 0.25]]: s1 = Σ relu(2x) = 7.7, s2 = Σ relu(-x) = 0, logits (7.7, -7.7).
    # x*M1 = [[0.4, -2], [0, 0.25]]: s1 = 1.3, s2 = 2, logits (-0.7, 4.7).
    p0 = 1 / (1 + math.exp(-15.4))
    p1 = 1 / (1 + math.exp(5.4))
    a0 = torch.tensor([[2.0, -4.0], [6.0, 1.0]], dtype=torch.float64)
    a1 = torch.tensor([[-1.0, 2.0], [-3.0, -0.5]], dtype=torch.float64)
    expected = (p0 * a0 + p1 * a1).clamp(min=0)
    got = backlight.score_cam(OneConv().double(), ONE_CONV_X, 0, layer="conv", progress=False)
    torch.testing.assert_close(got[0, 0], expected)
    # pytorch-grad-cam's weighting: softmax over the channels of the raw class-0 logits
    w0, w1 = torch.tensor([7.7, -0.7], dtype=torch.float64).softmax(0).tolist()
    got = backlight.score_cam(
        OneConv().double(),
        ONE_CONV_X,
        0,
        layer="conv",
        weighting="channel_softmax",
        progress=False,
    )
    torch.testing.assert_close(got[0, 0], (w0 * a0 + w1 * a1).clamp(min=0))


# ---------------------------------------------------------------------------------------------
# Literal references on TinyNet: activations and gradients at a layer taken by splitting the
# network by hand (no hooks), then each paper's formula written with explicit loops.


def _tiny_split(net: TinyNet, x: torch.Tensor, target: list[int]) -> tuple[torch.Tensor, ...]:
    """Activation and gradient at conv3's output, and the tail as a function, by hand."""
    with torch.no_grad():
        a = net.relu(net.conv1(x))
        b = F.relu(net.conv2(a) + a)
        act = net.conv3(net.pool(b))

    def tail(t: torch.Tensor) -> torch.Tensor:
        e = torch.relu(net.conv4(torch.relu(t)))
        return net.fc2(torch.relu(net.fc1(net.relu6(e).mean(dim=(2, 3)))))

    leaf = act.clone().requires_grad_(True)
    scores = tail(leaf)[torch.arange(x.shape[0]), torch.tensor(target)]
    (grad,) = torch.autograd.grad(scores.sum(), leaf)
    return act, grad, tail


def _loops_grad_cam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n, k, h, w = a.shape
    out = torch.zeros(n, 1, h, w, dtype=a.dtype)
    for s in range(n):
        for c in range(k):
            alpha = sum(float(g[s, c, i, j]) for i in range(h) for j in range(w)) / (h * w)
            for i in range(h):
                for j in range(w):
                    out[s, 0, i, j] += alpha * a[s, c, i, j]
    return out.clamp(min=0)


def _loops_grad_cam_plus_plus(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n, k, h, w = a.shape
    out = torch.zeros(n, 1, h, w, dtype=a.dtype)
    for s in range(n):
        for c in range(k):
            total = float(a[s, c].sum())
            weight = 0.0
            for i in range(h):
                for j in range(w):
                    gij = float(g[s, c, i, j])
                    if gij != 0:  # the paper's alpha, with second and third powers
                        alpha = gij**2 / (2 * gij**2 + total * gij**3)
                        weight += alpha * max(gij, 0.0)
            out[s, 0] += weight * a[s, c]
    return out.clamp(min=0)


def _loops_layer_cam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n, k, h, w = a.shape
    out = torch.zeros(n, 1, h, w, dtype=a.dtype)
    for s in range(n):
        for c in range(k):
            for i in range(h):
                for j in range(w):
                    out[s, 0, i, j] += max(float(g[s, c, i, j]), 0.0) * a[s, c, i, j]
    return out.clamp(min=0)


def _loops_linear_approx(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (a * g).sum(dim=1, keepdim=True)


def _loops_score_cam(
    net: TinyNet, x: torch.Tensor, a: torch.Tensor, target: list[int]
) -> torch.Tensor:
    n, k = a.shape[:2]
    out = torch.zeros(n, 1, *a.shape[2:], dtype=a.dtype)
    for s in range(n):
        for c in range(k):
            up = F.interpolate(a[s : s + 1, c : c + 1], size=x.shape[-2:], mode="bilinear")
            if float(up.max()) == float(up.min()):
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                prob = net(x[s : s + 1] * mask).softmax(dim=1)[0, target[s]]
            out[s, 0] += prob * a[s, c]
    return out.clamp(min=0)


REFERENCES = {
    "grad_cam": _loops_grad_cam,
    "grad_cam_plus_plus": _loops_grad_cam_plus_plus,
    "layer_cam": _loops_layer_cam,
    "linear_approx": _loops_linear_approx,
}


@pytest.mark.parametrize("method", list(REFERENCES))
def test_tiny_net_matches_literal_reference(method: str, tiny64: TinyNet) -> None:
    torch.manual_seed(11)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    target = [0, 4, 2]
    a, g, _ = _tiny_split(tiny64, x, target)
    expected = REFERENCES[method](a, g)
    assert expected.abs().sum() > 0
    got = getattr(backlight, method)(tiny64, x, target, layer="conv3")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_score_cam_matches_literal_reference(tiny64: TinyNet) -> None:
    torch.manual_seed(12)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    a, _, _ = _tiny_split(tiny64, x, [1, 3])
    expected = _loops_score_cam(tiny64, x, a, [1, 3])
    assert expected.abs().sum() > 0
    for batch_size in (1, 5, 64):  # the batching must not change the map
        got = backlight.score_cam(
            tiny64, x, [1, 3], layer="conv3", batch_size=batch_size, progress=False
        )
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_score_cam_forward_batches_never_exceed_batch_size(tiny64: TinyNet) -> None:
    """Memory is bounded by ``batch_size``: after the one clean pass over the input, every
    forward pass sees at most ``batch_size`` masked images, however many channels there are."""
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    seen: list[int] = []
    handle = tiny64.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        backlight.score_cam(tiny64, x, [1, 3], layer="conv3", batch_size=3, progress=False)
    finally:
        handle.remove()
    channels = tiny64.conv3.out_channels
    assert seen[0] == 2 and max(seen[1:]) == 3
    assert sum(seen[1:]) == 2 * channels  # one masked pass per image and channel


def test_guided_grad_cam_matches_reference(tiny64: TinyNet) -> None:
    torch.manual_seed(13)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    a, g, _ = _tiny_split(tiny64, x, [1, 3])
    cam = F.interpolate(_loops_grad_cam(a, g), size=(12, 12), mode="bilinear")
    guided = tiny_backward(tiny64, x, [1, 3], "guided_backprop")["input"]
    expected = guided * cam
    got = backlight.guided_grad_cam(tiny64, x, [1, 3], layer="conv3", reduce=None)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        backlight.guided_grad_cam(tiny64, x, [1, 3], layer="conv3"),
        expected.abs().amax(dim=1, keepdim=True),
    )


def test_faster_score_cam_uses_the_top_variance_channels(tiny64: TinyNet) -> None:
    torch.manual_seed(14)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    a, _, _ = _tiny_split(tiny64, x, [1, 3])
    top = a.flatten(2).var(dim=2).topk(2, dim=1).indices
    kept = torch.zeros_like(a)
    for s in range(2):
        kept[s, top[s]] = a[s, top[s]]
    expected = _loops_score_cam(tiny64, x, kept, [1, 3])
    got = backlight.score_cam(tiny64, x, [1, 3], layer="conv3", channels=2, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    full = backlight.score_cam(tiny64, x, [1, 3], layer="conv3", progress=False)
    assert not torch.allclose(got, full)


def test_resize_upsamples_bilinearly(tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for name in ("grad_cam", "grad_cam_plus_plus", "layer_cam", "linear_approx"):
        small = getattr(backlight, name)(tiny64, x, 1, layer="conv3")
        big = getattr(backlight, name)(tiny64, x, 1, layer="conv3", resize=True)
        assert small.shape == (2, 1, 6, 6)
        torch.testing.assert_close(
            big, F.interpolate(small, size=(12, 12), mode="bilinear", align_corners=False)
        )


# ---------------------------------------------------------------------------------------------
# The layer's own output, even when an in-place ReLU follows it


class ConvThenInplaceReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_in_place_relu_after_the_layer_does_not_change_the_map() -> None:
    """Grad-CAM of `conv` is computed from conv's output, which has negative values, and from the
    gradient at that output, not from the rectified tensor the in-place ReLU left behind."""
    torch.manual_seed(15)
    net = ConvThenInplaceReLU().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        act = net.conv(x)
    assert bool((act < 0).any())
    leaf = act.clone().requires_grad_(True)
    scores = net.fc(torch.relu(leaf).mean(dim=(2, 3)))[:, 1]
    (grad,) = torch.autograd.grad(scores.sum(), leaf)
    expected = _loops_grad_cam(act, grad)
    torch.testing.assert_close(backlight.grad_cam(net, x, 1, layer="conv"), expected)
    # what the post-ReLU activations would give instead: a different map
    wrong = _loops_grad_cam(act.clamp(min=0), grad)
    assert not torch.allclose(wrong, expected)
    # and linear_approx sees the negative activations too
    torch.testing.assert_close(
        backlight.linear_approx(net, x, 1, layer="conv"), (act * grad).sum(1, keepdim=True)
    )


def test_module_called_twice_is_rejected() -> None:
    with pytest.raises(backlight.LayerError, match="called more than once"):
        backlight.grad_cam(TinyNet(), torch.randn(1, 3, 12, 12), 0, layer="relu")


# ---------------------------------------------------------------------------------------------
# Default layer


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("resnet18", "layer4"),
        ("vgg11", "features"),
        ("densenet121", "features"),
        ("mobilenet_v2", "features"),
        ("alexnet", "features"),
    ],
)
def test_default_layer_is_the_last_feature_map(arch: str, expected: str) -> None:
    model = torchvision_model(arch)
    x = torch.randn(1, 3, 96, 96)
    assert backlight.default_cam_layer(model, x) == expected


def test_default_layer_is_used_and_logged(tiny: TinyNet, caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(2, 3, 12, 12)
    # TinyNet: relu is called twice; the last single-call module with a feature map is relu6
    assert backlight.default_cam_layer(tiny, x) == "relu6"
    with caplog.at_level(logging.INFO, logger="backlight"):
        got = backlight.grad_cam(tiny, x, [1, 2])
    assert "grad_cam: no `layer` given; using 'relu6'" in caplog.text
    torch.testing.assert_close(got, backlight.grad_cam(tiny, x, [1, 2], layer="relu6"))


def test_default_layer_of_a_transformer_is_its_last_block_norm() -> None:
    # The layout of a ViT's tokens is read from the model, so the default is a late block (the
    # one pytorch-grad-cam's ViT recipe names), not the patch embedding, its only 4-D output.
    model = torchvision_model("vit_b_16")
    x = torch.randn(1, 3, 224, 224)
    assert backlight.default_cam_layer(model, x) == "encoder.layers.encoder_layer_11.ln_1"


def test_no_default_layer_without_a_feature_map() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(backlight.LayerError, match=r"no module of Sequential.*`layer=`"):
        backlight.grad_cam(mlp, torch.randn(1, 3, 4, 4), 0)


# ---------------------------------------------------------------------------------------------
# Transformers


def test_vit_reshape() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float64).reshape(2, 5, 3)
    grid = backlight.vit_reshape(tokens)
    assert grid.shape == (2, 3, 2, 2)
    # token 1 + (row * 2 + col) lands at (row, col); token 0 (class) is dropped
    assert grid[1, 2, 1, 0] == tokens[1, 1 + 2, 2]
    assert grid[0, 0, 0, 1] == tokens[0, 2, 0]
    with pytest.raises(backlight.LayerError, match="not a square grid"):
        backlight.vit_reshape(torch.zeros(1, 6, 3))
    with pytest.raises(backlight.LayerError, match=r"\(N, tokens, dim\)"):
        backlight.vit_reshape(torch.zeros(1, 3, 4, 4))


@pytest.mark.slow
def test_grad_cam_on_vit_b_16_matches_a_hand_written_hook() -> None:
    model = torchvision_model("vit_b_16")
    layer = "encoder.layers.encoder_layer_11.ln_1"
    x = torch.randn(2, 3, 224, 224)
    got = backlight.grad_cam(model, x, [5, 9], layer=layer, reshape=backlight.vit_reshape)
    assert got.shape == (2, 1, 14, 14)

    kept: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: kept.update(tokens=o))
    try:
        xx = x.clone().requires_grad_(True)
        out = model(xx)
        scores = out[torch.arange(2), torch.tensor([5, 9])]
        (grad,) = torch.autograd.grad(scores.sum(), kept["tokens"])
    finally:
        handle.remove()
    a = kept["tokens"].detach()[:, 1:].reshape(2, 14, 14, 768).permute(0, 3, 1, 2)
    g = grad[:, 1:].reshape(2, 14, 14, 768).permute(0, 3, 1, 2)
    expected = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp(min=0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    assert got.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Errors


def test_reshape_needs_a_layer(tiny: TinyNet) -> None:
    with pytest.raises(backlight.OptionError, match="`reshape` is given but `layer` is not"):
        backlight.grad_cam(tiny, torch.randn(1, 3, 12, 12), 0, reshape=backlight.vit_reshape)


def test_reshape_must_return_a_feature_map(tiny: TinyNet) -> None:
    with pytest.raises(
        backlight.OptionError, match=r"`reshape` must turn the output.*got \(1, 6\)"
    ):
        backlight.grad_cam(
            tiny, torch.randn(1, 3, 12, 12), 0, layer="conv3", reshape=lambda t: t.mean((2, 3))
        )


def test_layer_without_a_feature_map_mentions_choices(tiny: TinyNet) -> None:
    with pytest.raises(
        backlight.LayerError, match=r"'fc1' outputs shape \(1, 8\), not a feature map"
    ):
        backlight.grad_cam(tiny, torch.randn(1, 3, 12, 12), 0, layer="fc1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "`batch_size` must be a positive int"),
        ({"channels": 0}, "`channels` must be None or a positive int"),
        ({"weighting": "softmax"}, "`weighting` must be 'probability' or 'channel_softmax'"),
        ({"progress": "no"}, "`progress` must be True or False"),
        ({"relu": 1}, "`relu` must be True or False"),
    ],
)
def test_score_cam_bad_options(tiny: TinyNet, options: dict[str, object], message: str) -> None:
    with pytest.raises(backlight.OptionError, match=message):
        backlight.score_cam(tiny, torch.randn(1, 3, 12, 12), 0, layer="conv3", **options)  # type: ignore[arg-type]


def test_score_cam_progress_bar_can_be_turned_off(
    tiny: TinyNet, capfd: pytest.CaptureFixture[str]
) -> None:
    x = torch.randn(1, 3, 12, 12)
    backlight.score_cam(tiny, x, 0, layer="conv3", progress=False)
    assert capfd.readouterr().err == ""
    backlight.score_cam(tiny, x, 0, layer="conv3", progress=True)
    assert "score_cam" in capfd.readouterr().err


def test_score_cam_with_a_callable_target(tiny64: TinyNet) -> None:
    torch.manual_seed(16)
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    a, _, _ = _tiny_split(tiny64, x, [0])
    # target: the raw logit of class 2; weights are that logit of each masked input
    expected = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    for c in range(a.shape[1]):
        up = F.interpolate(a[:, c : c + 1], size=(12, 12), mode="bilinear")
        if float(up.max()) > float(up.min()):
            mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                expected += tiny64(x * mask)[0, 2] * a[:, c : c + 1]
    got = backlight.score_cam(tiny64, x, lambda out: out[:, 2], layer="conv3", progress=False)
    torch.testing.assert_close(got, expected.clamp(min=0))
