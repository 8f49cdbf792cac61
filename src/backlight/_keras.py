"""Keras 3 models as torch modules, so every method runs on them unchanged.

On Keras' torch backend a Keras model is a :class:`torch.nn.Module` whose layers run torch
operations, so backlight's rules, hooks and autograd apply to it. Three things differ from a
torch model, and :class:`KerasModel` bridges them without touching the Keras model:

* **Layout.** Keras takes (N, H, W, C) images and its layers output (N, h, w, K) feature maps.
  The adapter takes backlight's (N, C, H, W) and hands Keras (N, H, W, C) views; the layer probe
  sees channels-last feature maps and turns them into (N, K, h, w) (:func:`channels_last`).
* **Layers.** Keras keeps its layers out of ``named_modules()``; the adapter lists them under
  their Keras names (``"block5_conv3"``; a nested model's layers as ``"inner.conv"``), so
  ``layer=`` takes a Keras name or layer object.
* **The head.** ``keras.applications`` models end in a softmax. The score is the logit, taken
  before the output layer's final softmax or sigmoid, as tf-keras-vis' ``ReplaceToLinear`` does,
  but without editing the model: while the output layer runs (seen by this thread only), a
  torch function mode returns that softmax's or sigmoid's input instead of calling it.
  ``probability=True`` keeps the activation.

Nothing imports Keras unless a Keras model is passed.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import BacklightError, InputError, InputTypeError, ModelError

_BACKEND_FIX = (
    "set the environment variable KERAS_BACKEND=torch before Keras is first imported "
    "(os.environ['KERAS_BACKEND'] = 'torch' at the top of the notebook, or "
    "`KERAS_BACKEND=torch backlight ...`); a .keras file saved under TensorFlow or JAX loads "
    "under torch"
)


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras 3 model (whatever the backend), without importing Keras."""
    keras = sys.modules.get("keras")
    if keras is None or isinstance(model, KerasModel):
        return False
    try:
        return isinstance(model, keras.Model)
    except AttributeError:  # a partly imported or foreign ``keras`` module
        return False


def keras_module() -> Any:
    """The ``keras`` package, on the torch backend, or a typed error saying how to get it."""
    try:
        import keras
    except ImportError as error:
        raise ModelError(
            "Keras is not installed; install backlight's Keras extra: pip install 'backlight[keras]'"
        ) from error
    backend = keras.backend.backend()
    if backend != "torch":
        raise ModelError(
            f"Keras runs on the {backend!r} backend, but backlight explains Keras models on the "
            f"torch backend; {_BACKEND_FIX}"
        )
    return keras


def adapt(model: Any, x: Any) -> tuple[Any, Any]:
    """``(model, x)`` as a method takes them: a Keras model becomes its :class:`KerasModel` and
    its Keras-style input (N, H, W, C), a NumPy array or tensor, becomes (N, C, H, W);
    anything else is returned as it is."""
    if not is_keras_model(model):
        return model, x
    adapter = KerasModel(model)
    return adapter, adapter.input(x)


def _named_layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every layer of ``model`` in its order, nested models' layers after the model itself."""
    for layer in getattr(model, "layers", ()):
        name = f"{prefix}{layer.name}"
        yield name, layer
        if getattr(layer, "layers", None):
            yield from _named_layers(layer, f"{name}.")


class _LinearHead(TorchFunctionMode):
    """While the output layer runs in this thread, its softmax or sigmoid returns its input."""

    DROPPED = frozenset(
        {
            torch.softmax,
            torch.nn.functional.softmax,
            torch.Tensor.softmax,
            torch.special.softmax,
            torch.sigmoid,
            torch.nn.functional.sigmoid,
            torch.Tensor.sigmoid,
            torch.special.expit,
        }
    )

    def __init__(self, heads: list[Any]) -> None:
        super().__init__()
        self.heads = heads
        self.thread = threading.get_ident()
        self.inside = 0
        self.dropped = 0
        self.handles: list[Any] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if self.inside and func in self.DROPPED and threading.get_ident() == self.thread:
            self.dropped += 1
            return args[0]
        return func(*args, **(kwargs or {}))

    def _enter_head(self, module: nn.Module, inputs: Any) -> None:
        if threading.get_ident() == self.thread:
            self.inside += 1

    def _leave_head(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if threading.get_ident() == self.thread:
            self.inside -= 1

    def __enter__(self) -> _LinearHead:
        for head in self.heads:
            self.handles.append(head.register_forward_pre_hook(self._enter_head))
            self.handles.append(head.register_forward_hook(self._leave_head))
        try:
            super().__enter__()  # type: ignore[no-untyped-call]
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)  # type: ignore[no-untyped-call]
        finally:
            self._remove()

    def _remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _unwrapped(error: BacklightError) -> BacklightError:
    """The error backlight raised inside a Keras layer, as it raised it: Keras re-raises each
    error with the layer's call arguments written into its message."""
    inner: BaseException = error
    while isinstance(inner.__context__, type(error)):
        inner = inner.__context__
    return inner if isinstance(inner, BacklightError) else error


def _activation_name(layer: Any) -> str | None:
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    if name in ("softmax", "sigmoid"):
        return str(name)
    if type(layer).__name__ == "Softmax":
        return "softmax"
    return None


class KerasModel(nn.Module):
    """A Keras 3 model as the torch module backlight explains.

    Passing a Keras model to any method or metric wraps it in this adapter (and converts its
    Keras-style input): build one yourself only for ``probability=True``, and give it
    (N, C, H, W) tensors (:meth:`input` converts Keras-style ones).

    Args:
        model: a ``keras.Model`` (functional, sequential or subclassed) on the torch backend.
        probability: explain the output as the model gives it (after its final softmax or
            sigmoid), instead of the logit before it.

    Attributes:
        keras_model: the Keras model, never modified.
        channels_last: Keras' image data format is ``"channels_last"``.

    Example:
        >>> import os; os.environ.setdefault("KERAS_BACKEND", "torch")  # doctest: +SKIP
        >>> import keras, backlight  # doctest: +SKIP
        >>> kmodel = keras.applications.VGG16(weights=None)  # doctest: +SKIP
        >>> probability = backlight.KerasModel(kmodel, probability=True)  # doctest: +SKIP
    """

    keras_model: Any

    def __init__(self, model: Any, *, probability: bool = False) -> None:
        super().__init__()
        keras = keras_module()
        if not isinstance(model, keras.Model):
            raise InputTypeError(
                f"`model` must be a keras.Model, not {type(model).__name__}; wrap a layer in "
                "keras.Sequential([...]) or keras.Model(inputs, outputs)"
            )
        if not isinstance(probability, bool):
            raise InputTypeError(f"`probability` must be True or False, not {probability!r}")
        if not model.built:
            raise ModelError(
                f"the Keras model {model.name!r} is not built (it has no weights yet); call it "
                "once on an input or build it with model.build((None, H, W, C))"
            )
        object.__setattr__(self, "keras_model", model)  # not a child: its layers are listed
        self.probability = probability
        self.channels_last = keras.config.image_data_format() == "channels_last"
        self.layers: dict[str, Any] = dict(_named_layers(model))
        #: the output layers whose final softmax or sigmoid the logit is taken before
        self.heads = [h for h in self._output_layers(model) if _activation_name(h) is not None]
        self.name = model.name

    @staticmethod
    def _output_layers(model: Any) -> list[Any]:
        """The layers whose outputs are the model's outputs (the last layer if it has no graph)."""
        names = getattr(model, "output_names", None) or []
        heads = []
        for name in names:
            with contextlib.suppress(ValueError):  # an output that is not a layer's
                heads.append(model.get_layer(name))
        if not heads and getattr(model, "layers", None):
            heads = [model.layers[-1]]
        # a nested model at the output: its own output layers are the head
        return [
            inner
            for head in heads
            for inner in (
                KerasModel._output_layers(head) if getattr(head, "layers", None) else [head]
            )
        ]

    def __deepcopy__(self, memo: dict[int, Any]) -> KerasModel:
        """An adapter of a clone of the Keras model with a copy of its weights (Keras' own
        ``clone_model``; a plain deep copy would not keep the layers the adapter lists)."""
        keras = keras_module()
        try:
            clone = keras.models.clone_model(self.keras_model)
        except Exception as error:  # Keras raises several kinds for models it cannot clone
            raise ModelError(
                f"the Keras model {self.name!r} cannot be copied with keras.models.clone_model "
                f"({type(error).__name__}: {error}); a subclassed model must implement "
                "get_config and from_config to be copied"
            ) from error
        clone.set_weights(self.keras_model.get_weights())
        return KerasModel(clone, probability=self.probability)

    def __repr__(self) -> str:
        return f"KerasModel({self.name!r}, probability={self.probability})"

    def named_modules(
        self, memo: Any = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Module]]:
        """The adapter (``""``) and every Keras layer under its Keras name."""
        yield prefix, self
        for name, layer in self.layers.items():
            yield (f"{prefix}.{name}" if prefix else name), layer

    def get_submodule(self, target: str) -> nn.Module:
        """A Keras layer by its name in :meth:`named_modules` (``""`` is the adapter)."""
        if target == "":
            return self
        if target in self.layers:
            return self.layers[target]  # type: ignore[no-any-return]
        raise AttributeError(f"{self.name!r} has no layer {target!r}")

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """The Keras model's variables, as torch parameters."""
        return self.keras_model.named_parameters(prefix, recurse, remove_duplicate)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> Any:
        """The Keras model on ``x`` (N, C, H, W), in inference mode (``training=False``)."""
        try:
            return self._forward(x)
        except BacklightError as error:
            raise _unwrapped(error) from None

    def _forward(self, x: torch.Tensor) -> Any:
        inp = x.permute(0, 2, 3, 1) if self.channels_last and x.dim() == 4 else x
        if self.probability or not self.heads:
            return self.keras_model(inp, training=False)
        with _LinearHead(self.heads) as linear:
            output = self.keras_model(inp, training=False)
        if not linear.dropped:
            names = ", ".join(repr(h.name) for h in self.heads)
            raise ModelError(
                f"the output layer {names} of {self.name!r} has a softmax or sigmoid activation "
                "that did not run through torch's softmax or sigmoid, so the logit before it "
                "cannot be taken; pass backlight.KerasModel(model, probability=True) to explain "
                "the probability"
            )
        return output

    def input(self, x: Any) -> torch.Tensor:
        """``x`` as Keras takes it (N, H, W, C), a NumPy array or a tensor, as the (N, C, H, W)
        tensor backlight's methods take (a view of a tensor's memory, never a changed copy)."""
        if type(x).__module__.startswith("numpy") or isinstance(x, (list, tuple)):
            array = np.asarray(x)
            if not np.issubdtype(array.dtype, np.number):
                raise InputTypeError(
                    f"`x` must be a numeric array (N, H, W, C), not of dtype {array.dtype}"
                )
            dtype = next(iter(self.parameters()), torch.zeros(())).dtype
            # a copy only where NumPy's layout cannot be shared (preprocess_input's reversed
            # channels have negative strides) or the dtype differs
            x = torch.as_tensor(np.ascontiguousarray(array), dtype=dtype)
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(
                f"`x` must be a NumPy array or a tensor (N, H, W, C) for a Keras model, not "
                f"{type(x).__name__}"
            )
        if x.dim() == 4 and self.channels_last:
            expected = self._input_channels()
            if expected is not None and x.shape[-1] != expected and x.shape[1] == expected:
                raise InputError(
                    f"`x` has shape {tuple(x.shape)}, which looks channels-first (N, C, H, W); a "
                    f"Keras model takes (N, H, W, C) (here C = {expected}): pass "
                    "x.permute(0, 2, 3, 1), or give backlight.KerasModel(model) the (N, C, H, W) "
                    "tensor"
                )
            return x.permute(0, 3, 1, 2)
        if x.dim() == 3:
            raise InputError(
                f"`x` must have shape (N, H, W, C), got {tuple(x.shape)}; add the batch "
                "dimension with x[None]"
            )
        return x

    def _input_channels(self) -> int | None:
        inputs = getattr(self.keras_model, "inputs", None) or []
        try:
            shape = tuple(inputs[0].shape)
        except (IndexError, AttributeError, TypeError, ValueError):
            return None
        return int(shape[-1]) if len(shape) == 4 and shape[-1] is not None else None

    def default_layer(self) -> str:
        """The last convolution, as tf-keras-vis' ``penultimate_layer=-1`` seeks it
        (``block5_conv3`` in VGG16, not ``block5_pool``)."""
        keras = keras_module()
        from keras.src.layers.convolutional.base_conv import BaseConv

        kinds: tuple[type, ...] = (BaseConv,)
        for extra in ("DepthwiseConv2D", "SeparableConv2D"):
            kind = getattr(keras.layers, extra, None)
            if isinstance(kind, type):
                kinds += (kind,)
        for name, layer in reversed(list(self.layers.items())):
            if isinstance(layer, kinds):
                return str(name)
        raise ModelError(
            f"the Keras model {self.name!r} has no convolution layer, so there is no default "
            "layer; pass `layer=` with a Keras layer name (model.summary() lists them)"
        )


def is_keras_layer(module: Any) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(module, keras.layers.Layer)


def own_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters a module holds itself: for a Keras layer (which keeps its variables in a
    child ``ParameterDict``), its variables unless it is a model of layers."""
    if is_keras_layer(module):
        return [] if getattr(module, "layers", None) else list(module.parameters())
    return list(module.parameters(recurse=False))


def reinitialise_keras(layer: Any, seed: int) -> None:
    """Fresh values for a Keras layer's variables from the layer's own initializers
    (``kernel_initializer``, ``moving_variance_initializer``...), seeded from ``seed`` and the
    variable's position; Keras' global seed is left alone."""
    for index, variable in enumerate(layer.weights):
        initializer = getattr(layer, f"{variable.name}_initializer", None)
        if initializer is None:
            raise ModelError(
                f"the Keras layer {layer.name!r} has no initializer for its variable "
                f"{variable.name!r}, so it cannot be re-initialised; pass `layers=` without it"
            )
        config = initializer.get_config()
        if "seed" in config:
            initializer = type(initializer).from_config({**config, "seed": (seed + index) % 2**31})
        variable.assign(initializer(tuple(variable.shape), dtype=variable.dtype))


def channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s 4-D layer outputs are (N, h, w, K): a channels-last Keras model."""
    return isinstance(model, KerasModel) and model.channels_last


def application_names() -> list[str]:
    """The architectures of ``keras.applications`` (``"VGG16"``, ``"ResNet50"``...)."""
    keras = keras_module()
    return sorted(
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    )


def unknown_application(spec: str) -> str | None:
    """Why ``spec`` (``"VGG16"`` or ``"keras:VGG16"``) names no ``keras.applications``
    architecture, with the closest names; ``None`` when it names one."""
    name = spec.removeprefix("keras:")
    names = application_names()
    if name in names:
        return None
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join('keras:' + c for c in close)}?" if close else ""
    return (
        f"unknown Keras model {spec!r}{hint} (a .keras file, or a keras.applications name such "
        "as keras:VGG16)"
    )


def load_keras(spec: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None) -> Any:
    """A Keras model from a ``.keras`` file or a ``keras.applications`` architecture.

    Args:
        spec: a ``.keras`` file, loaded with Keras' safe mode on (no code in it is run), or a
            ``keras.applications`` name, ``"VGG16"`` or ``"keras:VGG16"``.
        weights: for an architecture: ``None`` (random weights, seeded 0: the same every
            call), ``"imagenet"`` (Keras downloads them), or a ``.weights.h5`` file saved with
            ``model.save_weights``; for a ``.keras`` file: ``None``, or a ``.weights.h5`` file
            to load over it.

    Raises:
        ModelError: Keras is missing or on another backend, the file or name is unknown, the
            weights do not fit, or they cannot be downloaded.

    Example:
        >>> import backlight  # doctest: +SKIP
        >>> model = backlight.load_keras("keras:VGG16")  # doctest: +SKIP
    """
    keras = keras_module()
    if not isinstance(spec, (str, os.PathLike)):
        raise InputTypeError(f"`spec` must be a path or a name, not {type(spec).__name__}")
    text = os.fspath(spec)
    if text.endswith(".keras"):
        path = Path(text)
        if not path.is_file():
            raise ModelError(f"Keras model file not found: {path}")
        try:
            model = keras.saving.load_model(path, safe_mode=True)
        except Exception as error:  # Keras raises ValueError, TypeError, OSError...
            raise ModelError(
                f"cannot load {path} with Keras' safe mode ({type(error).__name__}: {error}); a "
                "file with Lambda layers or custom objects needs them registered "
                "(keras.saving.register_keras_serializable) and is not loaded unsafely here"
            ) from error
        if weights is not None:
            _load_weights(model, weights)
        return model
    name = text.removeprefix("keras:")
    unknown = unknown_application(text)
    if unknown is not None:
        raise ModelError(unknown)
    factory = getattr(keras.applications, name)
    if weights == "imagenet":
        try:
            return factory(weights="imagenet")
        except Exception as error:  # offline: URLError, OSError, ValueError (fetch failed)
            raise ModelError(
                f"could not get the ImageNet weights of {name} ({type(error).__name__}: "
                f"{error}); without a network, save them once with model.save_weights(FILE) "
                "and pass that file"
            ) from error
    keras.utils.set_random_seed(0)
    model = factory(weights=None)
    if weights is not None:
        _load_weights(model, weights)
    return model


def _load_weights(model: Any, weights: str | os.PathLike[str]) -> None:
    path = Path(weights)
    if not path.name.endswith(".weights.h5"):
        raise ModelError(
            f"Keras weights must be a .weights.h5 file saved with model.save_weights, not {path}"
        )
    if not path.is_file():
        raise ModelError(f"Keras weights file not found: {path}")
    try:
        model.load_weights(path)
    except Exception as error:  # shapes or layers that do not match
        raise ModelError(
            f"{path} does not fit the Keras model {model.name!r} ({type(error).__name__}: {error})"
        ) from error
