"""backlight for JAX and Flax: the gradient family, the CAM family, SmoothGrad and RISE on an
unmodified model, jit-compiled.

Every method is ``fn(model, variables, x, target=None, **options)``: ``model`` is a
``flax.linen`` module (with the ``variables`` ``module.init`` returned), an ``nnx.Module``
(``variables=None``) or any function ``apply(variables, x)``; ``x`` is a JAX or NumPy array
(N, H, W, C); ``target`` is ``None`` (each sample's predicted class), an int, one int per sample
or a callable ``output -> (N,)`` scores, as for the PyTorch methods. Maps come back as JAX arrays
(N, h, w), or (N, H, W, C) with ``reduce=None``.

The rules of guided backprop and deconvnet are applied by rewriting the traced function
(:mod:`backlight.jax._rules`): the model is never copied or edited. Layers are linen submodule
paths (``"layer4"``, ``"ResNetBlock_15"``, ``"stage2.block1"``), captured with
``flax.linen.intercept_methods``. Each pass is jit-compiled once per (model, method, layer,
target kind) and input shape, and cached: a second call on new inputs does not retrace.

Importing ``backlight.jax`` does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, OptionError
from ._core import Capture, Memo, Model, as_model, check_images, run, targets

__all__ = [
    "deconvnet",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient",
    "guided_backprop",
    "guided_grad_cam",
    "layer_cam",
    "linear_approx",
    "rectified",
    "rise",
    "score_cam",
    "smooth_grad",
]

Reduce = Literal["abs_max", "l2", "sum"] | None


def _reduce(grad: Any, reduce: Reduce) -> Any:
    return grad if reduce is None else _reduced(grad, reduce)


@partial(jax.jit, static_argnums=1)
def _reduced(grad: Any, reduce: str) -> Any:
    if reduce is None:
        return grad
    if reduce == "abs_max":
        return jnp.abs(grad).max(axis=-1)
    if reduce == "l2":
        return jnp.sqrt((grad**2).sum(axis=-1))
    if reduce == "sum":
        return grad.sum(axis=-1)
    raise OptionError(f"`reduce` must be 'abs_max', 'l2', 'sum' or None, not {reduce!r}")


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise OptionError(f"`{name}` must be True or False, not {value!r}")
    return bool(value)


def _saliency(
    rule: str | None,
    model: Any,
    variables: Any,
    x: Any,
    target: Any,
    layer: str | None,
    reduce: Reduce,
) -> Any:
    if reduce is not None and reduce not in ("abs_max", "l2", "sum"):
        raise OptionError(f"`reduce` must be 'abs_max', 'l2', 'sum' or None, not {reduce!r}")
    m, x = as_model(model, variables), check_images(x)
    c = run(m, x, target, layer=layer, rule=rule)
    return _reduce(c.gradient, reduce)


def _named(function: Callable[..., Any], name: str, doc: str) -> Callable[..., Any]:
    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    return function


def _gradient_method(rule: str | None, name: str, doc: str) -> Callable[..., Any]:
    """A gradient-family method: the gradient at the input or ``layer``, under ``rule``."""

    def method(
        model: Any,
        variables: Any,
        x: Any,
        target: Any = None,
        *,
        layer: str | None = None,
        reduce: Reduce = "abs_max",
    ) -> Any:
        return _saliency(rule, model, variables, x, target, layer, reduce)

    return _named(method, name, doc)


gradient = _gradient_method(
    None,
    "gradient",
    """The gradient of the class score with respect to the input (or ``layer``'s output),
    ``reduce``-d over the channels (last axis), as :func:`backlight.gradient`.""",
)
guided_backprop = _gradient_method(
    "guided_backprop",
    "guided_backprop",
    """Guided backprop: at every ReLU ``∂x = [x > 0] · max(∂y, 0)``, as
    :func:`backlight.guided_backprop`; every ``max(x, 0)`` the function computes gets the rule.""",
)
deconvnet = _gradient_method(
    "deconvnet",
    "deconvnet",
    """DeConvNet (tf-keras-vis' "rectified"): at every ReLU ``∂x = max(∂y, 0)``.""",
)
rectified = deconvnet


def _layer_pass(
    model: Any, variables: Any, x: Any, target: Any, layer: str, rule: str | None = None
) -> tuple[Model, Any, Capture]:
    """The model and input, checked, and the pass at ``layer``, a feature map (N, h, w, K)."""
    if layer is None:
        raise OptionError("the CAM methods need `layer`, a linen submodule path such as 'layer4'")
    m, x = as_model(model, variables), check_images(x)
    c = run(m, x, target, layer=layer, rule=rule)
    if c.activation.ndim != 4:
        raise InputError(
            f"`layer` {layer!r} outputs shape {tuple(c.activation.shape)}, not a feature map "
            "(N, h, w, K); choose a convolutional stage"
        )
    return m, x, c


def _resize(maps: Any, size: tuple[int, int]) -> Any:
    """(N, h, w) bilinearly to (N, H, W), half-pixel centres (torch's align_corners=False)."""
    if maps.shape[1:] == size:
        return maps
    return jax.image.resize(maps, (maps.shape[0], *size), "bilinear", antialias=False)


def _cam(combine: Callable[[Any, Any], Any], signed: bool = False) -> Callable[..., Any]:
    def method(
        model: Any,
        variables: Any,
        x: Any,
        target: Any = None,
        *,
        layer: str,
        resize: bool = False,
        relu: bool = True,
    ) -> Any:
        _, x, c = _layer_pass(model, variables, x, target, layer)
        maps = combine(c.activation, c.gradient)
        if _flag("relu", relu) and not signed:
            maps = jnp.maximum(maps, 0)
        size = (int(jnp.shape(x)[1]), int(jnp.shape(x)[2]))
        return _resize(maps, size) if _flag("resize", resize) else maps

    return method


def _grad_cam_map(a: Any, g: Any) -> Any:
    return (g.mean(axis=(1, 2), keepdims=True) * a).sum(axis=-1)


def _plus_plus_map(a: Any, g: Any) -> Any:
    denominator = 2 + a.sum(axis=(1, 2), keepdims=True) * g
    usable = (g > 0) & (denominator != 0)
    weights = jnp.where(usable, g / jnp.where(usable, denominator, 1), 0).sum(
        axis=(1, 2), keepdims=True
    )
    return (weights * a).sum(axis=-1)


grad_cam = _cam(_grad_cam_map)
grad_cam.__name__ = grad_cam.__qualname__ = "grad_cam"
grad_cam.__doc__ = """Grad-CAM at ``layer``: ``ReLU(Σ_k mean_ij(∂score/∂A_k) · A_k)`` (N, h, w), as
    :func:`backlight.grad_cam`; ``resize=True`` upsamples bilinearly to the input."""
grad_cam_plus_plus = _cam(_plus_plus_map)
grad_cam_plus_plus.__name__ = grad_cam_plus_plus.__qualname__ = "grad_cam_plus_plus"
grad_cam_plus_plus.__doc__ = (
    """Grad-CAM++ in the closed form of :func:`backlight.grad_cam_plus_plus`."""
)
layer_cam = _cam(lambda a, g: (jnp.maximum(g, 0) * a).sum(axis=-1))
layer_cam.__name__ = layer_cam.__qualname__ = "layer_cam"
layer_cam.__doc__ = """LayerCAM: ``ReLU(Σ_k ReLU(∂score/∂A_k) · A_k)``."""
linear_approx = _cam(lambda a, g: (g * a).sum(axis=-1), signed=True)
linear_approx.__name__ = linear_approx.__qualname__ = "linear_approx"
linear_approx.__doc__ = """TorchRay's linear approximation: ``Σ_k A_k · ∂score/∂A_k``, signed."""


def guided_grad_cam(
    model: Any,
    variables: Any,
    x: Any,
    target: Any = None,
    *,
    layer: str,
    reduce: Reduce = "abs_max",
) -> Any:
    """Guided backprop at the input times the Grad-CAM map upsampled to the input (Selvaraju et
    al.), as :func:`backlight.guided_grad_cam`."""
    cam = grad_cam(model, variables, x, target, layer=layer, resize=True)
    guided = guided_backprop(model, variables, x, target, reduce=None)
    return _reduce(guided * cam[..., None], reduce)


def _minmax(masks: Any) -> Any:
    low = masks.min(axis=(1, 2), keepdims=True)
    span = masks.max(axis=(1, 2), keepdims=True) - low
    return jnp.where(span > 0, (masks - low) / jnp.where(span > 0, span, 1), 0)


_PROBABILITIES = Memo()
_PREDICTIONS = Memo()


def _predicted(m: Model, x: Any) -> Any:
    """Each sample's predicted class, by a forward pass jitted once per model."""
    predict = _PREDICTIONS.get(
        (m.key,), lambda: jax.jit(lambda v, x: jnp.argmax(m.apply(v, x), axis=1)), m.owner
    )
    return predict(m.variables, x)


def _probabilities(m: Any, kind: str, value: Any) -> Callable[..., Any]:
    """``(variables, images, classes) -> p`` the softmax probability of each image's class (the
    callable's score for a callable target), jitted once per model and target kind."""
    key = (m.key, kind == "callable", id(value) if kind == "callable" else None)
    made: Callable[..., Any] = _PROBABILITIES.get(
        key, lambda: _compile_probabilities(m, kind, value), (m.owner, value)
    )
    return made


def _compile_probabilities(m: Any, kind: str, value: Any) -> Callable[..., Any]:
    def p(variables: Any, images: Any, classes: Any) -> Any:
        output = m.apply(variables, images)
        if kind == "callable":
            return value(output)
        return jnp.take_along_axis(jax.nn.softmax(output, axis=-1), classes[:, None], axis=1)[:, 0]

    return jax.jit(p)


def score_cam(
    model: Any,
    variables: Any,
    x: Any,
    target: Any = None,
    *,
    layer: str,
    resize: bool = False,
    relu: bool = True,
    batch_size: int = 32,
) -> Any:
    """Score-CAM at ``layer``: each channel, upsampled and min-max scaled, masks the input;
    ``w_k = softmax(f(x ⊙ M_k))_c``; constant channels weigh 0; as :func:`backlight.score_cam`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"`batch_size` must be a positive int, not {batch_size!r}")
    m, x, c = _layer_pass(model, variables, x, target, layer)
    kind, value = targets(target, x.shape[0])
    probability = _probabilities(m, kind, value)
    a = c.activation  # (N, h, w, K)
    n, k = a.shape[0], a.shape[-1]
    weights = np.zeros((n, k), np.float64)
    size = tuple(x.shape[1:3])
    for i in range(n):
        channels = jnp.moveaxis(a[i], -1, 0)  # (K, h, w)
        active = np.asarray(channels.reshape(k, -1).max(1) > channels.reshape(k, -1).min(1))
        for start in range(0, k, batch_size):
            idx = np.arange(start, min(start + batch_size, k))
            masks = _minmax(_resize(channels[idx], size))
            classes = jnp.full((len(idx),), 0 if c.classes is None else c.classes[i], jnp.int32)
            p = probability(m.variables, x[i][None] * masks[..., None], classes)
            weights[i, idx] = np.where(active[idx], np.asarray(p), 0.0)
    maps = (jnp.asarray(weights, a.dtype)[:, None, None, :] * a).sum(axis=-1)
    if _flag("relu", relu):
        maps = jnp.maximum(maps, 0)
    return _resize(maps, size) if _flag("resize", resize) else maps


def rise(
    model: Any,
    variables: Any,
    x: Any,
    target: Any = None,
    *,
    masks: Any = None,
    num_masks: int = 4000,
    cells: int = 7,
    p: float = 0.5,
    seed: int = 0,
    batch_size: int = 32,
    estimator: str = "control_variate",
) -> Any:
    """RISE: ``S(λ) = E[softmax(f(x ⊙ M))_c · M(λ)] / p``, as :func:`backlight.rise`, with its
    two estimators: ``"control_variate"`` (the default: the mean score ``c`` subtracted,
    ``N / (N - 1) · Σ_i (f_i - c) M_i / (N p) + c``) or ``"plain"`` (the paper's
    ``Σ_i f_i M_i / (N p)``).

    ``masks`` (num_masks, H, W) gives the masks (``backlight.RiseMasks(...).render`` gives
    PyTorch's, for identical maps); otherwise they are drawn the paper's way with NumPy from
    ``seed``: a ``cells`` x ``cells`` grid of cells kept with probability ``p``, upsampled
    bilinearly to ``(cells + 1)`` cells' size and cropped at a random shift."""
    if estimator not in ("control_variate", "plain"):
        raise OptionError(f"`estimator` must be 'control_variate' or 'plain', not {estimator!r}")
    m, x = as_model(model, variables), check_images(x)
    n, height, width = x.shape[0], x.shape[1], x.shape[2]
    if masks is None:
        masks = _rise_masks((height, width), num_masks, cells, p, seed)
    masks = jnp.asarray(masks, x.dtype)
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise InputError(f"`masks` must be (num_masks, {height}, {width}), got {masks.shape}")
    kind, value = targets(target, n)
    probability = _probabilities(m, kind, value)
    if kind == "predicted":
        value = _predicted(m, x)
    total = jnp.zeros((n, height, width), x.dtype)  # Σ f M
    scores = jnp.zeros((n,), x.dtype)  # Σ f
    for i in range(n):
        for start in range(0, masks.shape[0], batch_size):
            batch = masks[start : start + batch_size]
            classes = jnp.full((batch.shape[0],), 0 if kind == "callable" else value[i], jnp.int32)
            weights = probability(m.variables, x[i][None] * batch[..., None], classes)
            total = total.at[i].add(jnp.tensordot(weights, batch, axes=1))
            scores = scores.at[i].add(weights.sum())
    count = masks.shape[0]
    if estimator == "plain" or count < 2:
        return total / (count * p)
    c = (scores / count)[:, None, None]
    return (total - c * masks.sum(axis=0)) / (count * p) * (count / (count - 1)) + c


def _rise_masks(size: tuple[int, int], count: int, cells: int, p: float, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    h, w = size
    cell_h, cell_w = -(-h // cells), -(-w // cells)
    grid = (rng.random((count, cells, cells)) < p).astype(np.float32)
    up_h, up_w = (cells + 1) * cell_h, (cells + 1) * cell_w
    up = np.asarray(jax.image.resize(jnp.asarray(grid), (count, up_h, up_w), "bilinear"))
    dy, dx = rng.integers(0, cell_h, count), rng.integers(0, cell_w, count)
    return np.stack([up[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(count)])


def smooth_grad(
    method: Callable[..., Any],
    model: Any,
    variables: Any,
    x: Any,
    target: Any = None,
    *,
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    **options: Any,
) -> Any:
    """SmoothGrad: ``1/n Σ_j method(x + σ ε_j)``, ``σ = noise · (max x − min x)`` per sample,
    the targets fixed on the clean input, as :func:`backlight.smooth_grad`."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise OptionError(f"`samples` must be a positive int, not {samples!r}")
    m, x = as_model(model, variables), check_images(x)
    kind, _ = targets(target, x.shape[0])
    if kind == "predicted":  # the classes of the clean input, for every noisy copy
        target = _predicted(m, x)
    eps = jax.random.normal(jax.random.PRNGKey(seed), (samples, *x.shape[1:]), x.dtype)
    spread = (x.reshape(x.shape[0], -1).max(1) - x.reshape(x.shape[0], -1).min(1)) * noise
    total: Any = 0
    for j in range(samples):
        noisy = x + spread[:, None, None, None] * eps[j]
        total = total + method(model, variables, noisy, target, **options)
    return total / samples
