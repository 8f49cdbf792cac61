"""The gradient family against hand-computed maps and the literal float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import backlight

from .nets import OneConv, TinyNet
from .reference import tiny_backward

METHODS = {
    "gradient": backlight.gradient,
    "guided_backprop": backlight.guided_backprop,
    "deconvnet": backlight.deconvnet,
}

# OneConv on x = [[1, -2], [3, 0.5]]: class 0 scores Σ relu(2x) - Σ relu(-x), class 1 scores
# -Σ relu(2x) + 3 Σ relu(-x). With p = [x > 0] (here [[1, 0], [1, 1]]) and n = 1 - p:
#   gradient   class 0: 2p + n        class 1: -2p - 3n
#   guided     class 0: 2p            class 1: -3n        (negative upstream signals stopped)
#   deconvnet  class 0: 2 everywhere  class 1: -3 everywhere (the forward sign is ignored)
ONE_CONV_X = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]])
HAND = {
    ("gradient", 0): [[2.0, 1.0], [2.0, 2.0]],
    ("gradient", 1): [[-2.0, -3.0], [-2.0, -2.0]],
    ("guided_backprop", 0): [[2.0, 0.0], [2.0, 2.0]],
    ("guided_backprop", 1): [[0.0, -3.0], [0.0, 0.0]],
    ("deconvnet", 0): [[2.0, 2.0], [2.0, 2.0]],
    ("deconvnet", 1): [[-3.0, -3.0], [-3.0, -3.0]],
}


@pytest.mark.parametrize(("method", "cls"), list(HAND))
def test_one_conv_by_hand(method: str, cls: int) -> None:
    signed = METHODS[method](OneConv(), ONE_CONV_X, cls, reduce=None)
    assert signed.tolist() == [[HAND[method, cls]]]
    magnitude = METHODS[method](OneConv(), ONE_CONV_X, cls)  # abs_max over one channel is |g|
    assert magnitude.tolist() == [[[[abs(v) for v in row] for row in HAND[method, cls]]]]


def test_one_conv_layer_gradient_by_hand() -> None:
    # At the conv output, class 0's gradient is the upstream 1 / -1 masked by the ReLU: channel 0
    # (2x) passes where x > 0, channel 1 (-x) where x < 0 (one pixel, x = -2).
    g = backlight.gradient(OneConv(), ONE_CONV_X, 0, layer="conv", reduce=None)
    assert g.tolist() == [[[[1.0, 0.0], [1.0, 1.0]], [[0.0, -1.0], [0.0, 0.0]]]]
    guided = backlight.guided_backprop(OneConv(), ONE_CONV_X, 0, layer="conv", reduce=None)
    assert guided.tolist() == [[[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]]


@pytest.mark.parametrize("method", list(METHODS))
def test_tiny_net_matches_literal_reference(method: str, tiny64: TinyNet) -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    target = [0, 4, 2]
    expected = tiny_backward(tiny64, x, target, method)["input"]
    assert expected.abs().sum() > 0
    got = METHODS[method](tiny64, x, target, reduce=None)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layer", ["conv1", "conv3", "conv4"])
def test_tiny_net_layer_gradient_matches_reference(
    method: str, layer: str, tiny64: TinyNet
) -> None:
    # conv1 and conv3 feed an in-place ReLU module, conv4 feeds torch.relu_: the map must be the
    # gradient at the layer's own output, not at the rectified tensor that overwrote it.
    torch.manual_seed(4)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    expected = tiny_backward(tiny64, x, [1, 3], method)[layer]
    got = METHODS[method](tiny64, x, [1, 3], layer=layer, reduce=None)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_rules_differ_on_tiny_net(tiny64: TinyNet) -> None:
    """The three references are different maps, so the tests above can tell the methods apart."""
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    maps = [tiny_backward(tiny64, x, [1, 3], m)["input"] for m in METHODS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(maps[i], maps[j])


def test_relu6_clips_somewhere_in_tiny_net(tiny64: TinyNet) -> None:
    # Otherwise the reference would not exercise the clipped-ReLU rule.
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    seen = {}
    tiny64.conv4.register_forward_hook(lambda m, i, o: seen.update(z=o.detach().clone()))
    tiny64(x)
    assert bool((seen["z"] > 6).any()) and bool((seen["z"] < 0).any())


def test_gradient_matches_finite_differences(tiny64: TinyNet) -> None:
    torch.manual_seed(5)
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    g = backlight.gradient(tiny64, x, 2, reduce=None)
    eps = 1e-6
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        index = tuple(int(torch.randint(0, s, (1,), generator=rng)) for s in x.shape)
        plus, minus = x.clone(), x.clone()
        plus[index] += eps
        minus[index] -= eps
        with torch.no_grad():
            numeric = (tiny64(plus)[0, 2] - tiny64(minus)[0, 2]) / (2 * eps)
        assert float(g[index]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("method", list(METHODS))
def test_reductions(method: str, tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    raw = METHODS[method](tiny64, x, [0, 1], reduce=None)
    assert raw.shape == (2, 3, 12, 12)
    fn = METHODS[method]
    torch.testing.assert_close(fn(tiny64, x, [0, 1]), raw.abs().amax(1, keepdim=True))
    torch.testing.assert_close(
        fn(tiny64, x, [0, 1], reduce="l2"), raw.pow(2).sum(1, keepdim=True).sqrt()
    )
    torch.testing.assert_close(fn(tiny64, x, [0, 1], reduce="sum"), raw.sum(1, keepdim=True))


def test_resize_upsamples_layer_maps_bilinearly(tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    small = backlight.gradient(tiny64, x, 1, layer="conv3")
    assert small.shape == (2, 1, 6, 6)
    big = backlight.gradient(tiny64, x, 1, layer="conv3", resize=True)
    assert big.shape == (2, 1, 12, 12)
    torch.testing.assert_close(
        big, F.interpolate(small, size=(12, 12), mode="bilinear", align_corners=False)
    )
    # at the input, resizing is the identity
    torch.testing.assert_close(
        backlight.gradient(tiny64, x, 1, resize=True), backlight.gradient(tiny64, x, 1)
    )


def test_default_target_is_the_predicted_class(tiny64: TinyNet) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 12, 12, dtype=torch.float64)
    predicted = tiny64(x).argmax(1)
    assert len(set(predicted.tolist())) > 1, "pick a seed where predictions differ"
    torch.testing.assert_close(
        backlight.gradient(tiny64, x, reduce=None),
        backlight.gradient(tiny64, x, predicted.tolist(), reduce=None),
    )


def test_target_forms_agree(tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    as_list = backlight.guided_backprop(tiny64, x, [3, 3], reduce=None)
    for same in (3, torch.tensor(3), torch.tensor([3, 3]), (3, 3), lambda out: out[:, 3]):
        torch.testing.assert_close(backlight.guided_backprop(tiny64, x, same, reduce=None), as_list)


def test_callable_target_for_a_non_logit_output() -> None:
    class Dense(torch.nn.Module):  # a per-pixel output, as a segmentation net returns
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": torch.relu(self.conv(x))}

    net = Dense().double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    g = backlight.guided_backprop(net, x, lambda out: out["out"][:, 1, 2, 3], reduce=None)
    # Only the 3x3 receptive field around pixel (2, 3) can matter.
    support = g.abs().sum(1)[0] > 0
    assert support[1:4, 2:5].any()
    assert not support[:, :2].any() and not support[:, 5:].any() and not support[5:].any()


def test_layer_given_as_module_equals_layer_given_by_name(tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(
        backlight.deconvnet(tiny64, x, 1, layer=tiny64.conv3),
        backlight.deconvnet(tiny64, x, 1, layer="conv3"),
    )


def test_layer_gradient_stops_at_the_layer(tiny64: TinyNet) -> None:
    """Only the part of the graph above the layer is differentiated (no work below it)."""
    calls = []

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):  # type: ignore[no-untyped-def]
            return t.clone()

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            calls.append(1)
            return g

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny64

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(Spy.apply(x))

    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    backlight.gradient(Wrapped(), x, 0, layer="net.conv3")
    assert calls == []
    backlight.gradient(Wrapped(), x, 0)
    assert calls == [1]


def test_float32_agrees_with_float64(tiny: TinyNet, tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for fn in METHODS.values():
        torch.testing.assert_close(
            fn(tiny, x.float(), [1, 2], reduce=None).double(),
            fn(tiny64, x, [1, 2], reduce=None),
            rtol=1e-4,
            atol=1e-6,
        )


def test_rectified_is_deconvnet(tiny64: TinyNet) -> None:
    assert backlight.rectified is backlight.deconvnet
    assert backlight.get_method("rectified").name == "deconvnet"


def test_works_under_no_grad_and_inference_mode(tiny64: TinyNet) -> None:
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    expected = backlight.guided_backprop(tiny64, x, 1)
    with torch.no_grad():
        torch.testing.assert_close(backlight.guided_backprop(tiny64, x, 1), expected)
    with torch.inference_mode():
        frozen = x.clone()  # an inference tensor
        torch.testing.assert_close(backlight.guided_backprop(tiny64, frozen, 1), expected)
