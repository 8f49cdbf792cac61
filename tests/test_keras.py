"""Keras 3 models (torch backend): every method against literal references computed on the Keras
model itself, a torch twin of the same network, hand-computed cases, and the guarantees (the
model and the input unchanged, threads, typed errors).

The references use only Keras and plain autograd: a functional sub-model returns the named
layer's output and the head's input, the logit is ``input @ kernel + bias`` written out, and the
guided and rectified rules run on a clone of the model whose ReLU activations are replaced by a
custom autograd function (what tf-keras-vis does to its copy). They run in float64: the
float32 Keras model's weights, copied into the same architecture built with ``floatx`` float64.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backlight
from backlight.methods.rise import RiseMasks

from .conftest import cheap
from .keras_reference.model import CLASSES, SHAPE, build

if os.environ.get("BACKLIGHT_REQUIRE_KERAS") == "1":
    import keras
else:
    keras = pytest.importorskip("keras")

if keras.backend.backend() != "torch":  # conftest sets KERAS_BACKEND=torch before any import
    pytest.skip("Keras runs on another backend in this process", allow_module_level=True)

REFERENCE = Path(__file__).parent / "keras_reference"


# --- models -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> Any:
    model = build(keras)
    model.load_weights(REFERENCE / "small.weights.h5")
    return model


@pytest.fixture(scope="module")
def x_small() -> np.ndarray:
    return np.random.default_rng(1).normal(size=SHAPE).astype("float32")


def _float64(make: Callable[[], Any], model: Any) -> Any:
    """The architecture ``make()`` builds, in float64, with ``model``'s weights."""
    before = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        twin = make()
    finally:
        keras.config.set_floatx(before)
    twin.set_weights([w.astype("float64") for w in model.get_weights()])
    return twin


@pytest.fixture(scope="module")
def small64(small: Any) -> Any:
    return _float64(lambda: build(keras), small)


def _seeded(make: Callable[[], Any]) -> Any:
    keras.utils.set_random_seed(0)
    model = make()
    rng = np.random.default_rng(0)
    for variable in model.weights:  # batch-norm statistics too, so no layer is the identity
        if "moving_variance" in variable.path or "gamma" in variable.path:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
        elif "moving_mean" in variable.path or "beta" in variable.path:
            variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))
    return model


def _vgg16() -> Any:
    return keras.applications.VGG16(weights=None)


def _resnet50() -> Any:
    return keras.applications.ResNet50(weights=None, input_shape=(96, 96, 3))


@pytest.fixture(scope="module")
def vgg16() -> Any:
    return _seeded(_vgg16)


@pytest.fixture(scope="module")
def resnet50() -> Any:
    return _seeded(_resnet50)


# --- literal references on the Keras model ------------------------------------------------------


def _head(model: Any) -> Any:
    return model.layers[-1]


def _logits_and_features(model: Any, x: torch.Tensor, layer: str | None) -> tuple[Any, Any]:
    """``(logits, features)`` of ``x`` (N, H, W, C): the layer's output (or ``x``) and the logit,
    ``head input @ kernel + bias``, through a functional sub-model of ``model``."""
    head = _head(model)
    outputs = [head.input] if layer is None else [head.input, model.get_layer(layer).output]
    parts = keras.Model(model.inputs, outputs)(x)
    pre = parts[0] if layer is not None else parts
    features = parts[1] if layer is not None else x
    return pre @ head.kernel.value + head.bias.value, features


class _RuleReLU(torch.autograd.Function):
    """ReLU whose backward pass is a rule: guided ``[z > 0][g > 0] g`` or rectified ``[g > 0] g``."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, rule: str) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.rule = rule
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        keep = g > 0 if ctx.rule == "rectified" else (g > 0) & (z > 0)
        return torch.where(keep, g, torch.zeros_like(g)), None


def _ruled_copy(model: Any, rule: str) -> Any:
    """A clone of ``model`` (same weights) whose ReLU activations apply ``rule`` backwards."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if getattr(getattr(layer, "activation", None), "__name__", "") == "relu":
            layer.activation = lambda z: _RuleReLU.apply(z, rule)
    return copy


def _nhwc(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.ascontiguousarray(x), dtype=torch.float64, requires_grad=True)


def _select(logits: torch.Tensor, classes: list[int]) -> torch.Tensor:
    return logits[torch.arange(len(classes)), torch.tensor(classes)].sum()


def reference_gradient(model64: Any, x: np.ndarray, classes: list[int], rule: str | None = None):
    """The input gradient (N, C, H, W), plain or under ``rule``."""
    net = _ruled_copy(model64, rule) if rule else model64
    inp = _nhwc(x)
    logits, _ = _logits_and_features(net, inp, None)
    (g,) = torch.autograd.grad(_select(logits, classes), inp)
    return g.permute(0, 3, 1, 2)


def reference_layer(model64: Any, x: np.ndarray, classes: list[int], layer: str, rule=None):
    """``(A, G, logits)`` at ``layer``, as (N, K, h, w)."""
    net = _ruled_copy(model64, rule) if rule else model64
    logits, a = _logits_and_features(net, _nhwc(x), layer)
    (g,) = torch.autograd.grad(_select(logits, classes), a)
    return a.detach().permute(0, 3, 1, 2), g.permute(0, 3, 1, 2), logits.detach()


def grad_cam_formula(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp(min=0)


def plus_plus_formula(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Chattopadhay et al. with Y = exp(S): α = g² / (2g² + ΣA·g³), w = Σ α ReLU(g)."""
    s = a.sum(dim=(2, 3), keepdim=True)
    num, den = g**2, 2 * g**2 + s * g**3
    alpha = torch.where(den != 0, num / torch.where(den != 0, den, 1), 0)
    w = (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (w * a).sum(1, keepdim=True).clamp(min=0)


def assert_close(ours: Any, reference: torch.Tensor, rtol: float = 1e-4) -> None:
    ours = torch.as_tensor(ours).double()
    scale = reference.abs().max().clamp(min=1e-30)
    error = float((ours - reference).abs().max() / scale)
    assert error < rtol, f"relative error {error:.2e}"


# --- hand-computed --------------------------------------------------------------------------------


def test_hand_computed_gradient_keeps_the_layout_and_takes_the_logit() -> None:
    """A 1x1 convolution ``x0 − 2·x1`` on a 2x3 image, flattened (row by row, channels last) into
    a softmax Dense layer: ``logit_c = Σ_p W[p, c] (x0_p − 2 x1_p) + b_c``, so the gradient is
    ``W[h·3 + w, c]`` on channel 0 and ``−2 W[h·3 + w, c]`` on channel 1, and the score is the
    logit, not the probability."""
    inputs = keras.Input((2, 3, 2))
    h = keras.layers.Conv2D(1, 1, use_bias=False, name="mix")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    w = np.arange(12, dtype="float32").reshape(6, 2) / 10 - 0.5
    b = np.array([0.25, -1.0], dtype="float32")
    model.get_layer("mix").set_weights([np.array([1.0, -2.0], "float32").reshape(1, 1, 2, 1)])
    model.get_layer("head").set_weights([w, b])
    x = np.arange(12, dtype="float32").reshape(1, 2, 3, 2) / 7

    result = backlight.gradient(model, x, 1, reduce=None)

    assert result.shape == (1, 2, 2, 3)
    expected = torch.tensor(w[:, 1]).reshape(2, 3)
    torch.testing.assert_close(result[0, 0], expected)
    torch.testing.assert_close(result[0, 1], -2 * expected)
    logit = float((w[:, 1] * (x[0, ..., 0] - 2 * x[0, ..., 1]).reshape(-1)).sum() + b[1])
    assert float(result.scores[0]) == pytest.approx(logit, rel=1e-6)
    adapter = backlight.KerasModel(model, probability=True)  # takes (N, C, H, W) tensors
    probability = backlight.gradient(adapter, adapter.input(x), 1)
    expected_p = float(model(torch.tensor(x)).detach()[0, 1])
    assert float(probability.scores[0]) == pytest.approx(expected_p, rel=1e-6)


# --- every method against the literal references ------------------------------------------------


@pytest.mark.parametrize("rule", [None, "guided", "rectified"])
def test_gradient_family_matches_the_reference(small, small64, x_small, rule) -> None:
    method = {None: backlight.gradient, "guided": backlight.guided_backprop}.get(
        rule, backlight.rectified
    )
    g = reference_gradient(small64, x_small, CLASSES, rule)
    assert_close(method(small, x_small, CLASSES, reduce=None), g)
    assert_close(method(small, x_small, CLASSES), g.abs().amax(1, keepdim=True))


@pytest.mark.parametrize("layer", ["conv3", "conv2", "relu2"])
def test_cam_family_matches_the_reference(small, small64, x_small, layer) -> None:
    a, g, _ = reference_layer(small64, x_small, CLASSES, layer)
    assert_close(backlight.grad_cam(small, x_small, CLASSES, layer=layer), grad_cam_formula(a, g))
    assert_close(
        backlight.grad_cam_plus_plus(small, x_small, CLASSES, layer=layer), plus_plus_formula(a, g)
    )
    assert_close(
        backlight.layer_cam(small, x_small, CLASSES, layer=layer),
        (g.clamp(min=0) * a).sum(1, keepdim=True).clamp(min=0),
    )
    assert_close(
        backlight.linear_approx(small, x_small, CLASSES, layer=layer), (g * a).sum(1, keepdim=True)
    )
    a_guided, g_guided, _ = reference_layer(small64, x_small, CLASSES, layer, rule="guided")
    assert_close(
        backlight.grad_cam(small, x_small, CLASSES, layer=layer, gradient="guided"),
        grad_cam_formula(a_guided, g_guided),
    )


def test_guided_grad_cam_matches_the_reference(small, small64, x_small) -> None:
    a, g, _ = reference_layer(small64, x_small, CLASSES, "conv3")
    cam = F.interpolate(grad_cam_formula(a, g), size=(32, 32), mode="bilinear")
    guided = reference_gradient(small64, x_small, CLASSES, "guided")
    expected = (guided * cam).abs().amax(1, keepdim=True)
    assert_close(backlight.guided_grad_cam(small, x_small, CLASSES, layer="conv3"), expected)


def _logits64(model64: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = _logits_and_features(model64, x.permute(0, 2, 3, 1), None)
    return logits


def test_score_cam_matches_a_channel_by_channel_loop(small, small64, x_small) -> None:
    a, _, _ = reference_layer(small64, x_small, CLASSES, "conv3")
    x = torch.tensor(x_small, dtype=torch.float64).permute(0, 3, 1, 2)
    expected = torch.zeros(2, 1, *a.shape[2:], dtype=torch.float64)
    for i, c in enumerate(CLASSES):
        for k in range(a.shape[1]):
            up = F.interpolate(a[i : i + 1, k : k + 1], size=(32, 32), mode="bilinear")
            if up.max() == up.min():
                continue  # a constant mask weighs 0
            mask = (up - up.min()) / (up.max() - up.min())
            p = _logits64(small64, x[i : i + 1] * mask).softmax(1)[0, c]
            expected[i, 0] += p * a[i, k]
    assert_close(
        backlight.score_cam(small, x_small, CLASSES, progress=False), expected.clamp(min=0)
    )


def test_rise_matches_the_masks_written_out(small, small64, x_small) -> None:
    masks = RiseMasks((32, 32), num_masks=64, cells=7, p=0.5, seed=0).render(0, 64).double()
    x = torch.tensor(x_small, dtype=torch.float64).permute(0, 3, 1, 2)
    expected = torch.zeros(2, 1, 32, 32, dtype=torch.float64)
    for i, c in enumerate(CLASSES):
        p = _logits64(small64, x[i : i + 1] * masks).softmax(1)[:, c]
        expected[i, 0] = (p[:, None, None] * masks[:, 0]).sum(0) / (64 * 0.5)
    ours = backlight.rise(small, x_small, CLASSES, num_masks=64, estimator="plain", progress=False)
    assert_close(ours, expected)


def test_smooth_grad_both_averages_match_their_formulas(small, small64, x_small) -> None:
    """The noisy inputs are recorded through a user method (the calling convention of every
    method), and both forms are recomputed from them in float64: the paper's mean of the maps
    ``1/n Σ max_c |g_c|`` and tf-keras-vis' ``max_c 1/n Σ |g_c|``."""
    seen: list[torch.Tensor] = []

    def recording(model, x, target, *, reduce="abs_max"):
        seen.append(x.detach().clone())
        return backlight.gradient(model, x, target, reduce=reduce)

    options = {"samples": 3, "noise": 0.2, "seed": 5, "progress": False}
    paper = backlight.smooth_grad(recording, small, x_small[:1], 1, **options)
    noisy = torch.cat(seen)
    seen.clear()
    tf_form = backlight.smooth_grad(recording, small, x_small[:1], 1, average="channels", **options)
    torch.testing.assert_close(torch.cat(seen), noisy)  # the same noise, seeded
    grads = torch.cat(
        [reference_gradient(small64, n.permute(0, 2, 3, 1).numpy(), [1]) for n in noisy[:, None]]
    )
    assert_close(paper, grads.abs().amax(1, keepdim=True).mean(0, keepdim=True))
    assert_close(tf_form, grads.abs().mean(0, keepdim=True).amax(1, keepdim=True))
    assert float((paper - tf_form).abs().max()) > 1e-3 * float(paper.abs().max())


# --- every registered method: the Keras model and its torch twin give the same maps ------------


class Twin(nn.Module):
    """The small Keras model written in torch (NCHW, Keras' weights transposed)."""

    def __init__(self, model: Any) -> None:
        super().__init__()

        def conv(name: str, cin: int, cout: int) -> nn.Conv2d:
            layer = nn.Conv2d(cin, cout, 3, padding=1)
            kernel, bias = model.get_layer(name).get_weights()
            layer.weight.data = torch.tensor(kernel).permute(3, 2, 0, 1).contiguous()
            layer.bias.data = torch.tensor(bias)
            return layer

        self.conv1 = nn.Sequential(conv("conv1", 3, 8), nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = conv("conv2", 8, 16)
        self.bn2 = nn.BatchNorm2d(16, eps=1e-3)
        gamma, beta, mean, var = model.get_layer("bn2").get_weights()
        for target, value in zip(
            (self.bn2.weight, self.bn2.bias, self.bn2.running_mean, self.bn2.running_var),
            (gamma, beta, mean, var),
            strict=True,
        ):
            target.data = torch.tensor(value)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Sequential(conv("conv3", 16, 16), nn.ReLU())
        self.predictions = nn.Linear(16, 5)
        kernel, bias = model.get_layer("predictions").get_weights()
        self.predictions.weight.data = torch.tensor(kernel.T).contiguous()
        self.predictions.bias.data = torch.tensor(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.bn2(self.conv2(self.pool1(self.conv1(x)))))
        return self.predictions(self.conv3(h).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def twin(small: Any) -> Twin:
    return Twin(small).eval()


def test_the_twin_is_the_keras_model(small, twin, x_small) -> None:
    x = torch.tensor(x_small)
    with torch.no_grad():
        probabilities = small(x).detach()
        torch.testing.assert_close(twin(x.permute(0, 3, 1, 2)).softmax(1), probabilities)


@pytest.mark.parametrize("info", backlight.list_methods(), ids=lambda info: info.name)
def test_every_method_gives_the_twins_maps(small, twin, x_small, info) -> None:
    options = cheap(info)
    if info.layered:
        options["layer"] = "conv3"
    if info.family == "excitation":
        options["layer"] = "conv2"
    ours = info.function(small, x_small, CLASSES, **options)
    theirs = info.function(twin, torch.tensor(x_small).permute(0, 3, 1, 2), CLASSES, **options)
    assert ours.shape == theirs.shape and ours.layer == theirs.layer
    scale = float(theirs.abs().max())
    assert scale > 0
    tolerance = 1e-3 if info.family == "perturbation" else 1e-4
    assert float((ours - theirs).abs().max()) <= tolerance * scale


def test_metrics_take_the_keras_model(small, twin, x_small) -> None:
    from backlight.metrics import deletion, insertion, randomization

    x_t = torch.tensor(x_small).permute(0, 3, 1, 2)
    saliency = backlight.gradient(small, x_small, CLASSES)
    for metric in (deletion, insertion):
        ours = metric(small, x_small, saliency, CLASSES, steps=8, progress=False)
        theirs = metric(twin, x_t, saliency, CLASSES, steps=8, progress=False)
        torch.testing.assert_close(ours.curves, theirs.curves, rtol=1e-4, atol=1e-5)
    before = [w.copy() for w in small.get_weights()]
    result = randomization(small, x_small, "gradient", CLASSES, progress=False)
    assert result.layers[:2] == ["predictions", "conv3"]  # output first, the layers with weights
    assert result.layers == ["predictions", "conv3", "bn2", "conv2", "conv1"]
    assert result.spearman_abs.shape == (5, 2) and bool(torch.isfinite(result.ssim).all())
    assert float(result.spearman_abs[-1].mean()) < 0.9  # all weights random: another map
    assert all(np.array_equal(a, b) for a, b in zip(before, small.get_weights(), strict=True))


# --- the default layer, layer names, the head ---------------------------------------------------


def test_default_layer_is_the_last_convolution(small, vgg16, resnet50, x_small) -> None:
    assert backlight.default_cam_layer(small, x_small) == "conv3"
    x = np.zeros((1, 224, 224, 3), "float32")
    assert backlight.default_cam_layer(vgg16, x) == "block5_conv3"  # not block5_pool
    assert backlight.default_cam_layer(resnet50, x[:, :96, :96]) == "conv5_block3_3_conv"
    assert backlight.grad_cam(small, x_small, CLASSES).layer == "conv3"


def test_layer_by_object_and_unknown_names(small, x_small) -> None:
    by_object = backlight.grad_cam(small, x_small, CLASSES, layer=small.get_layer("conv2"))
    by_name = backlight.grad_cam(small, x_small, CLASSES, layer="conv2")
    torch.testing.assert_close(by_object, by_name)
    assert by_object.layer == "conv2"
    with pytest.raises(backlight.LayerNotFoundError, match=r"did you mean 'conv3'"):
        backlight.grad_cam(small, x_small, CLASSES, layer="conv_3")


def test_nested_models_name_their_layers_with_dots(small, x_small) -> None:
    outer = keras.Sequential([keras.Input(SHAPE[1:]), small], name="outer")
    ours = backlight.grad_cam(outer, x_small, CLASSES, layer="small.conv2")
    torch.testing.assert_close(ours, backlight.grad_cam(small, x_small, CLASSES, layer="conv2"))


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_the_score_is_taken_before_the_final_activation(activation) -> None:
    inputs = keras.Input((4, 4, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, activation="relu", name="c")(inputs))
    for head in (
        keras.layers.Dense(3, activation=activation, name="head"),
        keras.layers.Activation(activation, name="head"),
    ):
        keras.utils.set_random_seed(3)
        body = keras.layers.Dense(3, name="body")(h) if head.name == "head" else h
        model = keras.Model(inputs, head(body if isinstance(head, keras.layers.Activation) else h))
        x = np.random.default_rng(0).normal(size=(2, 4, 4, 1)).astype("float32")
        pre = keras.Model(inputs, model.layers[-1].input)(torch.tensor(x))
        if isinstance(head, keras.layers.Dense):
            pre = pre @ head.kernel.value + head.bias.value
        result = backlight.gradient(model, x, [0, 2])
        torch.testing.assert_close(result.scores, pre.detach()[[0, 1], [0, 2]])


def test_probability_keeps_the_activation(small, x_small) -> None:
    adapter = backlight.KerasModel(small, probability=True)
    result = backlight.gradient(adapter, adapter.input(x_small), CLASSES)
    p = small(torch.tensor(x_small)).detach()
    torch.testing.assert_close(result.scores, p[[0, 1], CLASSES])


# --- the model and the input are left as they were ----------------------------------------------


def _state(model: Any) -> tuple[Any, ...]:
    return (
        [w.copy() for w in model.get_weights()],
        [
            (layer.name, getattr(layer, "activation", None), layer.trainable)
            for layer in model.layers
        ],
        [(v.path, v.trainable, v.value.requires_grad) for v in model.weights],
        [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), m.training)
            for m in model.layers
        ],
    )


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    weights_a, *rest_a = a
    weights_b, *rest_b = b
    same_weights = all(np.array_equal(u, v) for u, v in zip(weights_a, weights_b, strict=True))
    return same_weights and rest_a == rest_b


def test_model_and_input_unchanged_even_on_error(small, x_small) -> None:
    small.get_layer("conv1").trainable = False  # a flag the caller set stays set
    try:
        before, x_before = _state(small), x_small.copy()
        tensor = torch.tensor(x_small)
        tensor_before = tensor.clone()
        for info in backlight.list_methods():
            info.function(small, x_small, CLASSES, **cheap(info))
        backlight.guided_backprop(small, tensor, CLASSES)
        with pytest.raises(backlight.TargetError):
            backlight.grad_cam(small, x_small, 7)
        with pytest.raises(backlight.LayerError):  # raised after the forward pass
            backlight.grad_cam(small, x_small, CLASSES, layer="predictions")
        assert _same(_state(small), before)
        assert np.array_equal(x_small, x_before)
        assert torch.equal(tensor, tensor_before)
    finally:
        small.get_layer("conv1").trainable = True


def test_two_threads_explain_one_keras_model(small, x_small) -> None:
    """One thread takes logits through the linear-head mode while the other asks for guided
    maps of the probability: neither sees the other's mode or hooks."""
    adapter = backlight.KerasModel(small, probability=True)
    expected = {
        "logit": backlight.guided_backprop(small, x_small, CLASSES),
        "probability": backlight.gradient(adapter, adapter.input(x_small), CLASSES),
    }
    results: dict[str, list[torch.Tensor]] = {"logit": [], "probability": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(kind: str) -> None:
        try:
            start.wait()
            for _ in range(10):
                if kind == "logit":
                    results[kind].append(backlight.guided_backprop(small, x_small, CLASSES))
                else:
                    results[kind].append(
                        backlight.gradient(adapter, adapter.input(x_small), CLASSES)
                    )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for kind, maps in results.items():
        assert len(maps) == 10
        for m in maps:
            torch.testing.assert_close(m, expected[kind])


# --- input forms and typed errors ---------------------------------------------------------------


def test_numpy_and_tensor_inputs_agree(small, x_small) -> None:
    from_numpy = backlight.grad_cam(small, x_small, CLASSES)
    from_tensor = backlight.grad_cam(small, torch.tensor(x_small), CLASSES)
    from_float64 = backlight.grad_cam(small, x_small.astype("float64"), CLASSES)
    torch.testing.assert_close(from_numpy, from_tensor)
    torch.testing.assert_close(from_numpy, from_float64)


def test_bad_inputs_fail_typed(small, x_small) -> None:
    with pytest.raises(backlight.InputError, match=r"channels-first.*permute"):
        backlight.gradient(small, np.transpose(x_small, (0, 3, 1, 2)), CLASSES)
    with pytest.raises(backlight.InputError, match=r"batch dimension"):
        backlight.gradient(small, x_small[0], 1)
    with pytest.raises(backlight.InputTypeError, match=r"numeric"):
        backlight.gradient(small, np.array([["a"]]), 1)
    with pytest.raises(backlight.InputTypeError, match=r"keras.Model"):
        backlight.KerasModel(small.get_layer("conv1"))
    with pytest.raises(backlight.InputTypeError, match=r"probability"):
        backlight.KerasModel(small, probability="yes")
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(backlight.ModelError, match=r"not built"):
        backlight.gradient(unbuilt, x_small, 1)


def test_another_backend_is_refused_with_the_fix(small, x_small, monkeypatch) -> None:
    """Keras' other backends (TensorFlow, JAX) are not installed here, so the backend Keras reports
    is replaced for this test only; the model is then refused before anything runs."""
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(backlight.ModelError, match=r"'tensorflow' backend.*KERAS_BACKEND=torch"):
        backlight.grad_cam(small, x_small, CLASSES)


# --- loading ---------------------------------------------------------------------------------


def test_load_keras_files_names_and_weights(small, x_small, tmp_path) -> None:
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = backlight.load_keras(path)
    torch.testing.assert_close(
        backlight.grad_cam(loaded, x_small, CLASSES), backlight.grad_cam(small, x_small, CLASSES)
    )
    weights = tmp_path / "small.weights.h5"
    small.save_weights(weights)
    fresh = backlight.load_keras(path, weights)
    assert all(
        np.array_equal(a, b) for a, b in zip(fresh.get_weights(), small.get_weights(), strict=True)
    )
    with pytest.raises(backlight.ModelError, match=r"did you mean .*VGG16"):
        backlight.load_keras("keras:VGG61")
    with pytest.raises(backlight.ModelError, match=r"not found"):
        backlight.load_keras(tmp_path / "missing.keras")
    with pytest.raises(backlight.ModelError, match=r"\.weights\.h5"):
        backlight.load_keras(path, tmp_path / "w.h5")


def test_unsafe_keras_files_are_refused(tmp_path) -> None:
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(backlight.ModelError, match=r"safe mode"):
        backlight.load_keras(path)


# --- the full-size architectures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_64(vgg16: Any) -> Any:
    return _float64(_vgg16, vgg16)


@pytest.fixture(scope="module")
def resnet50_64(resnet50: Any) -> Any:
    return _float64(_resnet50, resnet50)


@pytest.fixture(scope="module")
def image224() -> np.ndarray:
    from skimage.data import chelsea

    image = chelsea()[:224, 50:274].astype("float32")[None]
    return keras.applications.vgg16.preprocess_input(image.copy())


def test_vgg16_references(vgg16, vgg16_64, image224) -> None:
    x, classes = image224, [281]
    g = reference_gradient(vgg16_64, x, classes)
    assert_close(backlight.gradient(vgg16, x, classes), g.abs().amax(1, keepdim=True))
    guided = reference_gradient(vgg16_64, x, classes, "guided")
    assert_close(backlight.guided_backprop(vgg16, x, classes), guided.abs().amax(1, keepdim=True))
    a, g, _ = reference_layer(vgg16_64, x, classes, "block5_conv3")
    assert_close(backlight.grad_cam(vgg16, x, classes), grad_cam_formula(a, g))
    assert_close(backlight.grad_cam_plus_plus(vgg16, x, classes), plus_plus_formula(a, g))


def test_resnet50_references(resnet50, resnet50_64) -> None:
    x = np.random.default_rng(2).normal(size=(2, 96, 96, 3)).astype("float32") * 50
    classes = [3, 999]
    g = reference_gradient(resnet50_64, x, classes)
    assert_close(backlight.gradient(resnet50, x, classes, reduce=None), g)
    rectified = reference_gradient(resnet50_64, x, classes, "rectified")
    assert_close(backlight.rectified(resnet50, x, classes, reduce=None), rectified)
    for layer in ("conv5_block3_out", "conv4_block6_out"):
        a, g, _ = reference_layer(resnet50_64, x, classes, layer)
        assert_close(backlight.grad_cam(resnet50, x, classes, layer=layer), grad_cam_formula(a, g))
        assert_close(
            backlight.layer_cam(resnet50, x, classes, layer=layer),
            (g.clamp(min=0) * a).sum(1, keepdim=True).clamp(min=0),
        )


# --- the command line ---------------------------------------------------------------------------


def test_cli_explains_a_keras_file(small, tmp_path, capsys) -> None:
    from PIL import Image
    from skimage.data import chelsea

    from backlight.cli import main

    model_path = tmp_path / "small.keras"
    small.save(model_path)
    image = tmp_path / "cat.png"
    Image.fromarray(chelsea()).save(image)
    out = tmp_path / "maps"
    command = ["explain", str(image), "--model", str(model_path), "--method", "grad_cam,gradient"]
    code = main([*command, "--out", str(out), "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "cat_grad_cam.png",
        "cat_gradient.png",
        "grid.png",
        "report.html",
    ]
    assert main(["layers", "--model", str(model_path)]) == 0
    listing = capsys.readouterr().out
    assert "conv3" in listing and "(1, 16, 16, 16)" in listing  # Keras' own layout
    # the CLI's model input is the image resized to the model's input, pixels 0-255
    from backlight.cli._models import load_model

    loaded = load_model(str(model_path), "DEFAULT")
    shown, model_input = loaded.preprocess(Image.open(image).convert("RGB"))
    assert model_input.shape == (3, 32, 32)
    torch.testing.assert_close(model_input, shown * 255)


def test_cli_keras_weights_errors(tmp_path, capsys) -> None:
    from backlight.cli import main

    bad = tmp_path / "vgg.weights.h5"
    bad.write_bytes(b"not hdf5")
    code = main(["layers", "--model", "keras:VGG16", "--weights", str(bad)])
    assert code == 1
    assert "does not fit the Keras model" in capsys.readouterr().err
    assert main(["layers", "--model", "keras:VGG61"]) == 2  # a usage error
    assert "did you mean keras:VGG19, keras:VGG16?" in capsys.readouterr().err


def test_cli_keras_applications_get_keras_preprocessing_and_imagenet_names() -> None:
    from PIL import Image

    from backlight.cli._models import load_model

    loaded = load_model("keras:VGG16", "random")
    assert isinstance(loaded.model, backlight.KerasModel)
    assert loaded.categories is not None and loaded.categories[281] == "tabby"
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    shown, model_input = loaded.preprocess(image)
    assert shown.shape == model_input.shape == (3, 224, 224)
    # VGG16's preprocess_input: BGR order, ImageNet means subtracted (caffe mode)
    torch.testing.assert_close(
        model_input[:, 0, 0], torch.tensor([-103.939, -116.779, 255 - 123.68])
    )


class Literal(nn.Module):
    """A Keras model run the literal way, as a plain torch module: (N, C, H, W) permuted by
    hand, a functional sub-model to the head's input and the logit written out. No adapter."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "body", keras.Model(model.inputs, _head(model).input))

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ):
        return self.model.named_parameters(prefix, recurse, remove_duplicate)  # its weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = _head(self.model)
        return self.body(x.permute(0, 2, 3, 1)) @ head.kernel.value + head.bias.value


@pytest.mark.parametrize(
    "info",
    [m for m in backlight.list_methods() if not m.layered or m.family == "excitation"],
    ids=lambda info: info.name,
)
def test_resnet50_every_input_level_method_equals_the_literal_forward(resnet50, info) -> None:
    """The methods whose map is at the input (the gradient family, excitation backprop at the
    input, RISE, extremal perturbation, SmoothGrad), on ResNet50 through backlight's adapter and
    through the literal forward pass: the same maps."""
    x = np.random.default_rng(3).normal(size=(2, 96, 96, 3)).astype("float32") * 50
    literal = Literal(resnet50)
    ours = info.function(resnet50, x, [3, 999], **cheap(info))
    theirs = info.function(literal, torch.tensor(x).permute(0, 3, 1, 2), [3, 999], **cheap(info))
    tolerance = 1e-3 if info.family == "perturbation" else 1e-4
    assert float((ours - theirs).abs().max()) <= tolerance * float(theirs.abs().max())


def test_vgg16_score_cam_matches_a_channel_by_channel_loop(vgg16, vgg16_64, image224) -> None:
    """Score-CAM on VGG16's block5_conv3, on the 4 channels of largest variance (its Faster form,
    ``channels=4``), against the loop written out in float64."""
    a, _, _ = reference_layer(vgg16_64, image224, [281], "block5_conv3")
    x = torch.tensor(image224.copy(), dtype=torch.float64).permute(0, 3, 1, 2)
    top = a[0].flatten(1).var(dim=1).topk(4).indices
    expected = torch.zeros(1, 1, *a.shape[2:], dtype=torch.float64)
    for k in top.tolist():
        up = F.interpolate(a[:, k : k + 1], size=(224, 224), mode="bilinear")
        mask = (up - up.min()) / (up.max() - up.min())
        p = _logits64(vgg16_64, x * mask).softmax(1)[0, 281]
        expected[0, 0] += p * a[0, k]
    ours = backlight.score_cam(vgg16, image224, 281, channels=4, progress=False)
    assert_close(ours, expected.clamp(min=0))
