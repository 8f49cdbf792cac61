"""Input×Gradient, Integrated Gradients, GradientSHAP and Occlusion: hand-computed cases,
literal float64 references, and parity with Captum 0.9 (where Captum's trapezoid rule is short
of completeness, a test shows it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GradientShap, InputXGradient, IntegratedGradients, Occlusion
from torch import nn

import backlight
from backlight._pipeline import clean_pass
from backlight.errors import InputError, OptionError
from backlight.methods.integrated import _expected_gradients, quadrature
from backlight.methods.occlusion import window_starts

RULES = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double().eval()


def _smooth_cnn(seed: int = 0) -> nn.Module:
    """Softplus instead of ReLU: gradients continuous in the input, so quadrature points that
    differ in the last float32 bit give gradients that differ as little."""
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.Softplus(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.Softplus(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, 5),
        )
        .double()
        .eval()
    )


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10).eval()


def _weights(model: nn.Module, classes: list[int]) -> torch.Tensor:
    return model[1].weight[classes].detach().view(len(classes), 3, 4, 4)


# ---- quadrature ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_every_quadrature_rule_integrates_a_constant_exactly(rule: str) -> None:
    alphas, weights = quadrature(9, rule)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-14)
    assert bool((alphas >= 0).all() and (alphas <= 1).all())


def test_gauss_legendre_integrates_polynomials_of_degree_2n_minus_1() -> None:
    alphas, weights = quadrature(4, "gausslegendre")
    for degree in range(8):  # ∫₀¹ α^d dα = 1/(d + 1)
        assert float((weights * alphas**degree).sum()) == pytest.approx(1 / (degree + 1), 1e-13)


# ---- Input×Gradient -------------------------------------------------------------------------


def test_input_x_gradient_of_a_linear_model_is_input_times_weight() -> None:
    model = _linear()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    maps = backlight.input_x_gradient(model, x, [1, 4], reduce=None)
    torch.testing.assert_close(maps.maps, x * _weights(model, [1, 4]), rtol=0, atol=1e-15)
    summed = backlight.input_x_gradient(model, x, [1, 4])  # "sum": the first-order score
    torch.testing.assert_close(
        summed.maps.sum((1, 2, 3)), model(x)[[0, 1], [1, 4]] - model[1].bias[[1, 4]]
    )


def test_input_x_gradient_equals_autograd_and_captum() -> None:
    model = _resnet()
    x = torch.randn(2, 3, 48, 48)
    ours = backlight.input_x_gradient(model, x, [2, 7], reduce=None).maps
    leaf = x.double().requires_grad_(True)
    reference = _resnet().double()
    score = reference(leaf)[[0, 1], [2, 7]].sum()
    (grad,) = torch.autograd.grad(score, leaf)
    torch.testing.assert_close(ours.double(), (x.double() * grad), rtol=1e-4, atol=1e-6)
    theirs = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=[2, 7])
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-7)


# ---- Integrated Gradients ---------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_of_a_linear_model_is_exact(rule: str) -> None:
    model = _linear()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    b = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    ig = backlight.integrated_gradients(
        model, x, [0, 3], baseline=b, steps=5, rule=rule, reduce=None, progress=False
    )
    torch.testing.assert_close(ig.maps, (x - b) * _weights(model, [0, 3]), rtol=0, atol=1e-14)
    assert float(ig.delta.abs().max()) < 1e-13


def _literal_integrated_gradients(
    model: nn.Module, x: torch.Tensor, classes: list[int], b: torch.Tensor, steps: int
) -> torch.Tensor:
    """Gauss-Legendre IG in float64, one image and one point at a time."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    out = torch.zeros_like(x)
    for i, c in enumerate(classes):
        for node, weight in zip(nodes, weights, strict=True):
            alpha = (node + 1) / 2
            point = (b[i] + alpha * (x[i] - b[i])).unsqueeze(0).requires_grad_(True)
            (grad,) = torch.autograd.grad(model(point)[0, c], point)
            out[i] += weight / 2 * grad[0] * (x[i] - b[i])
    return out


def test_integrated_gradients_equals_a_literal_float64_loop() -> None:
    model = _smooth_cnn()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    b = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    ours = backlight.integrated_gradients(
        model,
        x,
        [0, 2, 4],
        baseline=b,
        steps=6,
        reduce=None,
        internal_batch_size=4,
        progress=False,
    )
    torch.testing.assert_close(
        ours.maps, _literal_integrated_gradients(model, x, [0, 2, 4], b, 6), rtol=1e-12, atol=1e-14
    )


def test_completeness_error_shrinks_with_the_steps() -> None:
    model = _smooth_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    errors = [
        float(
            backlight.integrated_gradients(model, x, [1, 2], steps=s, progress=False)
            .delta.abs()
            .max()
        )
        for s in (2, 4, 8)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8
    ig = backlight.integrated_gradients(model, x, [1, 2], steps=8, progress=False)
    expected = model(x)[[0, 1], [1, 2]] - model(torch.zeros_like(x))[[0, 1], [1, 2]]
    torch.testing.assert_close(ig.maps.sum((1, 2, 3)) - expected, ig.delta, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "rule", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"]
)
def test_integrated_gradients_parity_with_captum(rule: str) -> None:
    model = _smooth_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    b = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ours = backlight.integrated_gradients(
        model, x, [1, 3], baseline=b, steps=12, rule=rule, reduce=None, progress=False
    )
    theirs, delta = IntegratedGradients(model).attribute(
        x, b, target=[1, 3], n_steps=12, method=rule, return_convergence_delta=True
    )
    # Captum's Riemann points come from a float32 linspace: equal to float32's precision
    tolerance = 1e-8 if rule == "gausslegendre" else 1e-6
    torch.testing.assert_close(ours.maps, theirs, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(ours.delta, delta, rtol=1e-5, atol=tolerance)


def test_integrated_gradients_parity_with_captum_on_resnet() -> None:
    model = _resnet()
    x = torch.randn(2, 3, 64, 64)
    ours = backlight.integrated_gradients(model, x, [1, 2], steps=16, reduce=None, progress=False)
    theirs = IntegratedGradients(model).attribute(x, target=[1, 2], n_steps=16)
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours.maps / scale, theirs / scale, rtol=0, atol=1e-5)


def test_captums_trapezoid_is_short_of_completeness_and_ours_is_not() -> None:
    model = _linear()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    steps = 10
    exact = x * _weights(model, [2, 3])
    theirs = IntegratedGradients(model).attribute(
        x, target=[2, 3], n_steps=steps, method="riemann_trapezoid"
    )
    torch.testing.assert_close(theirs, exact * (steps - 1) / steps, rtol=1e-6, atol=1e-12)
    ours = backlight.integrated_gradients(
        model, x, [2, 3], steps=steps, rule="riemann_trapezoid", reduce=None, progress=False
    )
    torch.testing.assert_close(ours.maps, exact, rtol=0, atol=1e-14)


def test_integrated_gradients_batch_equals_per_sample_and_baselines() -> None:
    model = _resnet()
    x = torch.randn(3, 3, 32, 32)
    for baseline in (None, "blur", "uniform", torch.full((3, 1, 1), 0.5)):
        batch = backlight.integrated_gradients(
            model, x, [1, 2, 3], baseline=baseline, steps=4, progress=False
        )
        one = backlight.integrated_gradients(
            model, x[1:2], [2], baseline=baseline, steps=4, progress=False
        )
        torch.testing.assert_close(batch.maps[1:2], one.maps, rtol=1e-4, atol=1e-6)
    blur = backlight.integrated_gradients(model, x, 1, baseline="blur", steps=2, progress=False)
    assert blur.baseline.std() < x.std()  # blurred, not the input itself


def test_integrated_gradients_with_the_guided_rule_says_how_far_from_complete() -> None:
    model = _resnet()
    x = torch.randn(1, 3, 32, 32)
    plain = backlight.integrated_gradients(model, x, 3, steps=16, progress=False)
    guided = backlight.integrated_gradients(
        model, x, 3, steps=16, gradient="guided", progress=False
    )
    assert not torch.allclose(plain.maps, guided.maps)
    assert float(guided.delta.abs()) > 10 * float(plain.delta.abs())


def test_integrated_gradients_bad_options_are_typed() -> None:
    model = _linear()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(OptionError, match="rule"):
        backlight.integrated_gradients(model, x, 0, rule="simpson", progress=False)
    with pytest.raises(OptionError, match="gradient"):
        backlight.integrated_gradients(model, x, 0, gradient="excitation", progress=False)
    with pytest.raises(OptionError, match="riemann"):
        backlight.integrated_gradients(model, x, 0, steps=5000, progress=False)
    with pytest.raises(InputError, match="broadcast"):
        backlight.integrated_gradients(model, x, 0, baseline=torch.zeros(2, 2), progress=False)
    with pytest.raises(OptionError, match="baseline"):
        backlight.integrated_gradients(model, x, 0, baseline="black", progress=False)


# ---- GradientSHAP -------------------------------------------------------------------------


def test_gradient_shap_of_a_linear_model_by_hand() -> None:
    """Gradients of a linear model are the weights everywhere: each draw gives
    ``w ⊙ (x + ε − b)``, whatever α, so the map is ``w ⊙ (x − mean of the drawn b + mean ε)``."""
    model = _linear()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    references = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    shap = backlight.gradient_shap(
        model, x, [1, 2], baselines=references, samples=5, stdev=0.0, reduce=None, progress=False
    )
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randint(3, (5,), generator=generator)
    expected = _weights(model, [1, 2]) * (x - references[chosen].mean(0))
    torch.testing.assert_close(shap.maps, expected, rtol=0, atol=1e-14)


def test_gradient_shap_parity_with_captum_given_its_draws() -> None:
    """Captum draws the noise (torch), the baselines and the points (NumPy) per input; the same
    draws, made again from the same seeds, given to backlight's estimator give its numbers."""
    model = _resnet()
    x = torch.randn(2, 3, 32, 32)
    references = torch.randn(5, 3, 32, 32)
    n, samples, stdev = 2, 6, 0.1
    np.random.seed(3)  # noqa: NPY002 - Captum draws from NumPy's global generator
    torch.manual_seed(3)
    theirs = GradientShap(model).attribute(
        x, baselines=references, target=[1, 2], n_samples=samples, stdevs=stdev
    )
    np.random.seed(3)  # noqa: NPY002 - Captum draws from NumPy's global generator
    torch.manual_seed(3)
    noise = torch.normal(0, torch.tensor(stdev).repeat((n * samples, 3, 32, 32)))
    chosen = np.random.choice(5, n * samples).tolist()  # noqa: NPY002
    alphas = torch.tensor(np.random.uniform(0.0, 1.0, n * samples))  # noqa: NPY002
    ends = x.repeat_interleave(samples, 0) + noise
    with clean_pass(model, x, [1, 2]) as clean:
        ours = _expected_gradients(
            clean,
            lambda c: (references[chosen][c], ends[c]),
            alphas,
            samples,
            32,
            None,
            True,
            False,
        )
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours.maps / scale, theirs / scale, rtol=0, atol=1e-6)


def test_gradient_shap_is_seeded_and_batch_equals_per_sample() -> None:
    model = _resnet()
    x = torch.randn(3, 3, 32, 32)
    references = torch.randn(4, 3, 32, 32)
    kwargs = {"baselines": references, "samples": 4, "stdev": 0.05, "progress": False}
    a = backlight.gradient_shap(model, x, [0, 1, 2], **kwargs)
    b = backlight.gradient_shap(model, x, [0, 1, 2], **kwargs)
    c = backlight.gradient_shap(model, x, [0, 1, 2], seed=1, **kwargs)
    one = backlight.gradient_shap(model, x[2:], [2], **kwargs)
    assert torch.equal(a.maps, b.maps) and not torch.allclose(a.maps, c.maps)
    torch.testing.assert_close(a.maps[2:], one.maps, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="baselines"):
        backlight.gradient_shap(model, x, 0, baselines=torch.zeros(2, 3, 8, 8), progress=False)


# ---- Occlusion -----------------------------------------------------------------------------


def test_window_starts_reach_the_border() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 9]  # the last is cut at the border
    assert window_starts(8, 8, 2) == [0]


def test_occlusion_of_a_linear_model_by_hand() -> None:
    """Non-overlapping 2x2 windows over a linear score: covering window W lowers the score by
    ``Σ_{q ∈ W} Σ_c w_cq x_cq``, and each pixel lies in one window."""
    model = _linear()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    maps = backlight.occlusion(model, x, 2, window=2, stride=2, progress=False).maps
    contribution = (_weights(model, [2])[0] * x[0]).sum(0)  # (4, 4)
    blocks = contribution.view(2, 2, 2, 2).sum((1, 3))  # per window
    expected = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(maps[0, 0], expected, rtol=0, atol=1e-14)


def _literal_occlusion(model: nn.Module, x: torch.Tensor, c: int, w: int, s: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    total = torch.zeros(height, width, dtype=torch.float64)
    count = torch.zeros(height, width, dtype=torch.float64)
    with torch.no_grad():
        base = float(model(x)[0, c])
    for top in window_starts(height, w, s):
        for left in window_starts(width, w, s):
            covered = x.clone()
            covered[..., top : top + w, left : left + w] = 0.0
            with torch.no_grad():
                drop = base - float(model(covered)[0, c])
            total[top : top + w, left : left + w] += drop
            count[top : top + w, left : left + w] += 1
    return total / count


@pytest.mark.parametrize(("window", "stride"), [(4, 2), (5, 3), (3, 3)])
def test_occlusion_equals_a_literal_loop_and_captum(window: int, stride: int) -> None:
    model = _smooth_cnn()
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    ours = backlight.occlusion(
        model, x, [1, 4], window=window, stride=stride, batch_size=5, progress=False
    ).maps
    for i, c in enumerate([1, 4]):
        literal = _literal_occlusion(model, x[i : i + 1], c, window, stride)
        torch.testing.assert_close(ours[i, 0], literal, rtol=1e-12, atol=1e-13)
    theirs = Occlusion(model).attribute(
        x,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=0.0,
        target=[1, 4],
        perturbations_per_eval=7,
    )
    # Captum divides in float32 (its counts are float32), whatever the input's precision
    torch.testing.assert_close(ours.expand(-1, 3, -1, -1), theirs.double(), rtol=1e-6, atol=1e-7)


def test_occlusion_on_resnet_equals_captum_and_batch_equals_per_sample() -> None:
    model = _resnet()
    x = torch.randn(2, 3, 32, 32)
    ours = backlight.occlusion(model, x, [3, 5], window=8, stride=4, progress=False).maps
    theirs = Occlusion(model).attribute(
        x,
        sliding_window_shapes=(3, 8, 8),
        strides=(3, 4, 4),
        baselines=0.0,
        target=[3, 5],
        perturbations_per_eval=32,
    )
    torch.testing.assert_close(ours.expand(-1, 3, -1, -1), theirs, rtol=1e-5, atol=1e-6)
    one = backlight.occlusion(model, x[1:], [5], window=8, stride=4, progress=False).maps
    torch.testing.assert_close(ours[1:], one, rtol=1e-5, atol=1e-6)


def test_occlusion_options_are_checked() -> None:
    model = _linear()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(OptionError, match="stride"):
        backlight.occlusion(model, x, 0, window=2, stride=3, progress=False)
    with pytest.raises(OptionError, match="larger than the image"):
        backlight.occlusion(model, x, 0, window=5, stride=1, progress=False)
    with pytest.raises(InputError, match="fill"):
        backlight.occlusion(
            model, x, 0, window=2, stride=2, fill=torch.zeros(2, 2, 2), progress=False
        )
    with pytest.raises(OptionError, match="probability"):
        backlight.occlusion(model, x, 0, window=2, stride=2, probability="log", progress=False)
