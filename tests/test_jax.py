"""backlight.jax on Flax models: the notebook's model-defined-twice guided ReLU as the reference,
parity with backlight's PyTorch methods on the same network, float64 references for the CAMs,
jit caching, typed errors, NNX, and an import without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

import backlight

if os.environ.get("BACKLIGHT_REQUIRE_JAX") == "1":
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
else:
    jax = pytest.importorskip("jax")
    nn = pytest.importorskip("flax.linen")
    import jax.numpy as jnp

import backlight.jax as bj
from backlight.jax import _core

CLASSES = [1, 3]


def _relu_forms(x: Any, form: str, relu: Any) -> Any:
    """The three spellings of a ReLU a Flax model uses, or ``relu`` in their place."""
    if relu is not None:
        return relu(x)
    return {"nn": nn.relu, "jax": jax.nn.relu, "max": lambda t: jnp.maximum(t, 0)}[form](x)


class CNN(nn.Module):
    """Mixes ``nn.relu``, ``jax.nn.relu`` and ``jnp.maximum(x, 0)``; ``relu`` replaces all three
    (the notebook's second definition)."""

    relu: Any = None

    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = _relu_forms(nn.Conv(8, (3, 3), padding=1, name="conv1")(x), "nn", self.relu)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = _relu_forms(nn.Conv(16, (3, 3), padding=1, name="conv2")(x), "jax", self.relu)
        x = _relu_forms(nn.Conv(16, (3, 3), padding=1, name="conv3")(x), "max", self.relu)
        return nn.Dense(5, name="head")(x.mean(axis=(1, 2)))


def _rule_relu(rule: str) -> Any:
    """The notebook's hand-written ReLU with a custom backward pass."""

    @jax.custom_vjp
    def relu(x: Any) -> Any:
        return jnp.maximum(x, 0)

    def forward(x: Any) -> Any:
        return jnp.maximum(x, 0), x

    def backward(x: Any, g: Any) -> Any:
        keep = (g > 0) & (x > 0) if rule == "guided" else g > 0
        return (jnp.where(keep, g, 0.0),)

    relu.defvjp(forward, backward)
    return relu


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN, the shortcut added, ReLU."""

    features: int
    relu: Any = None

    @nn.compact
    def __call__(self, x: Any) -> Any:
        relu = self.relu or nn.relu
        y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False)(x)
        y = relu(nn.BatchNorm(use_running_average=True)(y))
        y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=True)(y)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), use_bias=False)(x)
        return relu(y + x)


class ResNet(nn.Module):
    relu: Any = None

    @nn.compact
    def __call__(self, x: Any) -> Any:
        relu = self.relu or nn.relu
        x = relu(nn.BatchNorm(use_running_average=True)(nn.Conv(8, (3, 3), use_bias=False)(x)))
        for i, features in enumerate((8, 16, 16)):
            x = Block(features, relu=self.relu, name=f"layer{i + 1}")(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def _randomise_batch_stats(variables: Any) -> Any:
    """Batch-norm statistics away from 0 and 1, so that no layer is the identity."""
    key = jax.random.PRNGKey(7)

    def draw(path: Any, t: Any) -> Any:
        if str(path[-1].key) == "var":
            return jax.random.uniform(key, t.shape, minval=0.5, maxval=1.5)
        return 0.1 * jax.random.normal(key, t.shape)

    stats = jax.tree_util.tree_map_with_path(draw, variables["batch_stats"])
    return {**variables, "batch_stats": stats}


@pytest.fixture(scope="module")
def cnn() -> tuple[Any, Any, Any]:
    model = CNN()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
    return model, model.init(jax.random.PRNGKey(0), x), x


@pytest.fixture(scope="module")
def resnet() -> tuple[Any, Any, Any]:
    model = ResNet()
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 24, 24, 3))
    return model, _randomise_batch_stats(model.init(jax.random.PRNGKey(0), x)), x


def _input_gradient(model: Any, variables: Any, x: Any, classes: list[int]) -> np.ndarray:
    def score(x: Any) -> Any:
        return model.apply(variables, x)[jnp.arange(len(classes)), jnp.array(classes)].sum()

    return np.asarray(jax.grad(score)(x))


# --- the notebook's reference: the model defined twice --------------------------------------------


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
@pytest.mark.parametrize("which", ["cnn", "resnet"])
def test_equals_the_model_defined_twice(cnn, resnet, rule, which) -> None:
    model, variables, x = cnn if which == "cnn" else resnet
    twice = type(model)(relu=_rule_relu(rule))
    expected = _input_gradient(twice, variables, x, CLASSES)
    method = bj.guided_backprop if rule == "guided" else bj.deconvnet
    ours = method(model, variables, x, CLASSES, reduce=None)
    np.testing.assert_array_equal(np.asarray(ours), expected)
    plain = _input_gradient(model, variables, x, CLASSES)
    assert np.abs(plain - expected).max() > 1e-3 * np.abs(expected).max()  # the rule did act
    np.testing.assert_allclose(
        np.asarray(bj.gradient(model, variables, x, CLASSES, reduce=None)), plain, rtol=1e-6
    )


# --- parity with backlight's PyTorch methods on the same network ----------------------------------


class TorchCNN(tnn.Module):
    def __init__(self, variables: Any) -> None:
        super().__init__()
        p = variables["params"]

        def conv(name: str) -> tnn.Conv2d:
            kernel = np.asarray(p[name]["kernel"])  # (kh, kw, in, out)
            layer = tnn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1)
            layer.weight.data = torch.tensor(kernel).permute(3, 2, 0, 1).contiguous()
            layer.bias.data = torch.tensor(np.asarray(p[name]["bias"]))
            return layer

        self.conv1, self.conv2, self.conv3 = conv("conv1"), conv("conv2"), conv("conv3")
        self.head = tnn.Linear(16, 5)
        self.head.weight.data = torch.tensor(np.asarray(p["head"]["kernel"]).T).contiguous()
        self.head.bias.data = torch.tensor(np.asarray(p["head"]["bias"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv3(F.relu(self.conv2(x))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def twin(cnn) -> TorchCNN:
    return TorchCNN(cnn[1]).eval()


def _nchw(x: Any) -> torch.Tensor:
    return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()


def _close(ours: Any, theirs: torch.Tensor, rtol: float = 1e-5) -> None:
    theirs = theirs.detach().double().numpy()
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == theirs.shape
    error = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)
    assert error < rtol, f"relative error {error:.2e}"


@pytest.mark.parametrize(
    "name",
    [
        "gradient",
        "guided_backprop",
        "deconvnet",
        "grad_cam",
        "grad_cam_plus_plus",
        "layer_cam",
        "linear_approx",
        "guided_grad_cam",
        "score_cam",
    ],
)
def test_same_maps_as_the_pytorch_methods(cnn, twin, name) -> None:
    model, variables, x = cnn
    options = {"layer": "conv3"} if name not in ("gradient", "guided_backprop", "deconvnet") else {}
    ours = getattr(bj, name)(model, variables, x, CLASSES, **options)
    torch_options = dict(options, progress=False) if name == "score_cam" else options
    theirs = getattr(backlight, name)(twin, _nchw(x), CLASSES, **torch_options)
    _close(ours, theirs[:, 0])


def test_rise_with_the_same_masks_as_pytorch(cnn, twin) -> None:
    model, variables, x = cnn
    masks = backlight.RiseMasks((16, 16), num_masks=64, cells=4, p=0.5, seed=0).render(0, 64)
    for estimator in ("control_variate", "plain"):
        ours = bj.rise(
            model, variables, x, CLASSES, masks=masks[:, 0].numpy(), p=0.5, estimator=estimator
        )
        theirs = backlight.rise(
            twin, _nchw(x), CLASSES, num_masks=64, cells=4, estimator=estimator, progress=False
        )
        _close(ours, theirs[:, 0])


def test_smooth_grad_on_the_same_noisy_inputs_as_pytorch(cnn, twin) -> None:
    """The noise generators differ (JAX's and torch's), so the noisy inputs are recorded through
    a user method and each is explained by the PyTorch gradient."""
    model, variables, x = cnn
    seen: list[Any] = []

    def recording(model: Any, variables: Any, x: Any, target: Any, **options: Any) -> Any:
        seen.append(np.asarray(x))
        return bj.gradient(model, variables, x, target, **options)

    ours = bj.smooth_grad(recording, model, variables, x, CLASSES, samples=3, noise=0.2)
    theirs = sum(backlight.gradient(twin, _nchw(noisy), CLASSES) for noisy in seen) / 3
    _close(ours, theirs[:, 0])
    assert not np.allclose(seen[0], seen[1])  # there was noise


# --- float64 references for the CAMs ------------------------------------------------------------


def test_cams_match_float64_formulas(cnn) -> None:
    """The network written out in float64 (jax.enable_x64), split at conv3: ``A`` its output,
    ``G`` the gradient of the class scores at it, then each paper's formula."""
    model, variables, x = cnn
    ours = {
        name: np.asarray(getattr(bj, name)(model, variables, x, CLASSES, layer="conv3"))
        for name in ("grad_cam", "grad_cam_plus_plus", "layer_cam", "linear_approx")
    }
    with jax.enable_x64(True):
        p = jax.tree_util.tree_map(lambda t: np.asarray(t, np.float64), variables["params"])

        def conv(name: str, t: Any) -> Any:
            out = jax.lax.conv_general_dilated(
                t,
                p[name]["kernel"],
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            return out + p[name]["bias"]

        def body(x: Any) -> Any:
            h = jnp.maximum(conv("conv1", x), 0)
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            return conv("conv3", jnp.maximum(conv("conv2", h), 0))

        def score(a: Any) -> Any:
            logits = jnp.maximum(a, 0).mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
            return logits[jnp.arange(2), jnp.array(CLASSES)].sum()

        a = body(jnp.asarray(np.asarray(x), jnp.float64))
        g = jax.grad(score)(a)
        a, g = np.asarray(a), np.asarray(g)
    s = a.sum(axis=(1, 2), keepdims=True)
    den = 2 * g**2 + s * g**3
    alpha = np.where(den != 0, g**2 / np.where(den != 0, den, 1), 0)
    expected = {
        "grad_cam": np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(-1), 0),
        "grad_cam_plus_plus": np.maximum(
            ((alpha * np.maximum(g, 0)).sum(axis=(1, 2), keepdims=True) * a).sum(-1), 0
        ),
        "layer_cam": np.maximum((np.maximum(g, 0) * a).sum(-1), 0),
        "linear_approx": (g * a).sum(-1),
    }
    for name, value in expected.items():
        error = np.abs(ours[name] - value).max() / np.abs(value).max()
        assert error < 1e-4, (name, error)


# --- compilation, batches, layers ----------------------------------------------------------------


def test_a_second_call_does_not_retrace(cnn) -> None:
    model, variables, x = cnn
    bj.guided_backprop(model, variables, x, CLASSES)
    bj.grad_cam(model, variables, x, CLASSES, layer="conv2")
    before = _core.TRACES["count"]
    bj.guided_backprop(model, variables, x * 2 + 1, [4, 0])
    bj.grad_cam(model, variables, -x, [0, 0], layer="conv2")
    bj.layer_cam(model, variables, x, [2, 2], layer="conv2")  # the same pass as Grad-CAM
    assert _core.TRACES["count"] == before


def test_batch_equals_per_sample(resnet) -> None:
    model, variables, x = resnet
    for method, options in ((bj.guided_backprop, {}), (bj.grad_cam, {"layer": "layer2"})):
        batch = np.asarray(method(model, variables, x, [3, 7], **options))
        for i, c in enumerate([3, 7]):
            single = np.asarray(method(model, variables, x[i : i + 1], c, **options))
            np.testing.assert_allclose(batch[i : i + 1], single, rtol=1e-5, atol=1e-7)


def test_predicted_class_and_callable_targets(cnn) -> None:
    model, variables, x = cnn
    predicted = np.asarray(model.apply(variables, x)).argmax(1).tolist()
    np.testing.assert_allclose(
        np.asarray(bj.gradient(model, variables, x)),
        np.asarray(bj.gradient(model, variables, x, predicted)),
    )
    by_callable = bj.gradient(model, variables, x, lambda out: out[:, 1] - out[:, 2])
    expected = np.asarray(bj.gradient(model, variables, x, 1, reduce=None)) - np.asarray(
        bj.gradient(model, variables, x, 2, reduce=None)
    )
    np.testing.assert_allclose(
        np.asarray(by_callable), np.abs(expected).max(-1), rtol=1e-5, atol=1e-7
    )


def test_layers_of_nested_modules_by_path(resnet) -> None:
    model, variables, x = resnet
    assert bj.grad_cam(model, variables, x, CLASSES, layer="layer3").shape == (2, 24, 24)
    inner = bj.grad_cam(model, variables, x, CLASSES, layer="layer2.Conv_1")
    assert inner.shape == (2, 24, 24)
    with pytest.raises(backlight.LayerNotFoundError, match=r"did you mean 'layer3'"):
        bj.grad_cam(model, variables, x, CLASSES, layer="layer_3")


# --- typed errors ----------------------------------------------------------------------------


def test_errors_are_typed(cnn) -> None:
    model, variables, x = cnn
    with pytest.raises(backlight.InputTypeError, match=r"torch tensor"):
        bj.gradient(model, variables, torch.zeros(1, 16, 16, 3))
    with pytest.raises(backlight.InputError, match=r"batch dimension"):
        bj.gradient(model, variables, x[0])
    with pytest.raises(backlight.TargetError, match=r"out of range"):
        bj.gradient(model, variables, x, 9)
    with pytest.raises(backlight.InputTypeError, match=r"variables"):
        bj.gradient(model, None, x)
    with pytest.raises(backlight.LayerError, match=r"linen module"):
        bj.grad_cam(lambda v, t: model.apply(variables, t), None, x, layer="conv3")
    with pytest.raises(backlight.OptionError, match=r"reduce"):
        bj.gradient(model, variables, x, reduce="max")


def test_a_model_without_relu_is_refused_by_the_rules() -> None:
    def apply(w: Any, x: Any) -> Any:
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w)

    w = jnp.ones((12, 3))
    x = jnp.ones((1, 2, 2, 3))
    assert bj.gradient(apply, w, x, 0).shape == (1, 2, 2)
    with pytest.raises(backlight.MethodNotApplicableError, match=r"no ReLU"):
        bj.guided_backprop(apply, w, x, 0)


def test_a_relu_inside_scan_is_refused() -> None:
    def apply(w: Any, x: Any) -> Any:
        h = x.reshape(x.shape[0], -1)

        def step(h: Any, _: Any) -> Any:
            return jax.nn.relu(h @ w), None

        h, _ = jax.lax.scan(step, h, None, length=2)
        return h

    w = jnp.eye(12) * 0.5
    x = jnp.ones((1, 2, 2, 3))
    with pytest.raises(backlight.MethodNotApplicableError, match=r"inside `scan`"):
        bj.guided_backprop(apply, w, x, 0)


# --- NNX and a plain function ---------------------------------------------------------------------


def test_nnx_module_and_plain_function(cnn) -> None:
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, relu: Any, rngs: Any) -> None:
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.head = nnx.Linear(4, 3, rngs=rngs)
            self.relu = relu

        def __call__(self, x: Any) -> Any:
            return self.head(self.relu(self.conv(x)).mean(axis=(1, 2)))

    x = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 8, 3))
    plain, twice = Net(nnx.relu, nnx.Rngs(0)), Net(_rule_relu("guided"), nnx.Rngs(0))

    def guided_reference(x: Any) -> Any:
        return twice(x)[jnp.arange(2), jnp.array([0, 2])].sum()

    expected = np.asarray(jax.grad(guided_reference)(x))
    ours = bj.guided_backprop(plain, None, x, [0, 2], reduce=None)
    np.testing.assert_array_equal(np.asarray(ours), expected)

    model, variables, x16 = cnn
    as_function = bj.guided_backprop(model.apply, variables, x16, CLASSES)
    np.testing.assert_array_equal(
        np.asarray(as_function), np.asarray(bj.guided_backprop(model, variables, x16, CLASSES))
    )


def test_imports_and_runs_without_torch() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NoTorch())
        import jax, jax.numpy as jnp, flax.linen as nn
        import backlight.jax as bj

        class M(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(3)(nn.relu(nn.Conv(4, (3, 3), name="conv")(x)).mean((1, 2)))

        m, x = M(), jnp.ones((1, 8, 8, 3))
        v = m.init(jax.random.PRNGKey(0), x)
        print(bj.guided_backprop(m, v, x, 1).shape, bj.grad_cam(m, v, x, 1, layer="conv").shape)
        from backlight import viz  # the visualisation serves both
        cam = bj.grad_cam(m, v, x, 1, layer="conv", resize=True)
        print(viz.overlay(jnp.full((8, 8, 3), 0.5), cam[0]).shape)
        print("torch" in sys.modules)
        import backlight
        try:
            backlight.grad_cam
        except ImportError as e:
            print(e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.splitlines()
    assert out[0] == "(1, 8, 8) (1, 8, 8)"
    assert out[1] == "(8, 8, 3)"
    assert out[2] == "False"
    assert "needs PyTorch" in out[3]


def test_relu6_and_remat_get_the_rule() -> None:
    """``jax.nn.relu6`` inside an ``nn.remat`` block: the rule reaches its ``max``, and the
    result equals a hand-written guided ReLU6 (``[0 < x < 6][g > 0] g``) in the model's place."""

    @jax.custom_vjp
    def guided_relu6(x: Any) -> Any:
        return jnp.clip(x, 0, 6)

    guided_relu6.defvjp(
        lambda x: (jnp.clip(x, 0, 6), x),
        lambda x, g: (jnp.where((x > 0) & (x < 6) & (g > 0), g, 0.0),),
    )

    class Inner(nn.Module):
        act: Any

        @nn.compact
        def __call__(self, x: Any) -> Any:
            return self.act(nn.Conv(6, (3, 3))(x) * 4)

    class Net(nn.Module):
        act: Any = jax.nn.relu6

        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.remat(Inner)(self.act, name="block")(x)
            return nn.Dense(4)(x.mean(axis=(1, 2)))

    x = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 3))
    variables = Net().init(jax.random.PRNGKey(0), x)
    expected = _input_gradient(Net(act=guided_relu6), variables, x, [0, 3])
    ours = bj.guided_backprop(Net(), variables, x, [0, 3], reduce=None)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-6, atol=1e-8)
    plain = bj.gradient(Net(), variables, x, [0, 3], reduce=None)
    assert float(jnp.abs(plain - ours).max()) > 1e-3 * float(jnp.abs(ours).max())


@pytest.mark.parametrize("name", ["gradient", "guided_backprop", "deconvnet"])
def test_gradient_family_at_a_layer_as_pytorch(cnn, twin, name) -> None:
    model, variables, x = cnn
    ours = getattr(bj, name)(model, variables, x, CLASSES, layer="conv2", reduce=None)
    theirs = getattr(backlight, name)(twin, _nchw(x), CLASSES, layer="conv2", reduce=None)
    _close(ours, theirs.permute(0, 2, 3, 1))
