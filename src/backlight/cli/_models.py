"""Load the model to explain: a torchvision or timm name, or a user's own ``file.py:factory``,
with its weights (downloaded, from a state-dict file, or random) and its preprocessing."""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import math
import pickle
import sys
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

from .._checks import device_present
from ..errors import BacklightError
from ._errors import Failure, UsageError

#: The input sides --size accepts: below, no CNN has a feature map left; above, one image is
#: hundreds of megabytes of activations.
MIN_SIZE, MAX_SIZE = 8, 4096

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: ``--crop``: the centre of the image (the short side resized, then a square cut out, the
#: usual classification recipe), or the whole image resized to the square (its aspect ratio
#: lost, nothing cut off).
CROPS = ("center", "resize")


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side, crop the centre, and normalise: the usual classification recipe;
    or, with ``mode="resize"``, the whole image resized to ``crop`` x ``crop``.

    Returns the image twice: as shown (float (3, H, W) in [0, 1], the crop the map refers to)
    and as the model wants it.
    """

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    mode: str = "center"

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        whole = self.mode == "resize"  # else the centre: the short side resized, then cut
        side = [self.crop, self.crop] if whole else [self.resize]
        image = TF.resize(image, side, interpolation=self.interpolation, antialias=True)
        if not whole:
            image = TF.center_crop(image, [self.crop])
        shown = TF.to_tensor(image)
        return shown, TF.normalize(shown, list(self.mean), list(self.std))

    def describe(self) -> str:
        size = (
            f"whole image resized to {self.crop}x{self.crop}"
            if self.mode == "resize"
            else f"short side resized to {self.resize}, centre crop {self.crop}"
        )
        return f"{size}, mean {_floats(self.mean)}, std {_floats(self.std)}"


def parse_device(text: str | None) -> torch.device:
    """``--device``: a device torch knows (a usage error otherwise) and this machine has (a
    failure otherwise); CPU without it."""
    if text is None:
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise UsageError(
            f"--device {text!r} is not a device: write cpu, cuda, cuda:1 or mps"
        ) from e
    if not device_present(device):
        raise Failure(f"--device {text}: this machine has no such device (use --device cpu)")
    return device


def describe(preprocess: object) -> str:
    """What a preprocessing does, in words (its ``describe()``; else its repr), for the report
    and a run's manifest."""
    method = getattr(preprocess, "describe", None)
    return str(method()) if callable(method) else repr(preprocess)


def _floats(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def parse_floats(flag: str, text: str | None) -> tuple[float, ...] | None:
    """``--mean 0.5,0.5,0.5`` -> (0.5, 0.5, 0.5): three numbers, one per RGB channel (``--std``
    ones positive)."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} takes three numbers, one per channel: 0.5,0.5,0.5, not {text!r}")
    if flag == "--std" and min(values) <= 0:
        raise UsageError(f"{flag} values must be positive, not {text!r}")
    return values


def adjusted(
    preprocess: Callable[[Image.Image], tuple[torch.Tensor, torch.Tensor]],
    *,
    crop: str | None = None,
    mean: str | None = None,
    std: str | None = None,
) -> Callable[[Image.Image], tuple[torch.Tensor, torch.Tensor]]:
    """The model's preprocessing with ``--crop``, ``--mean`` and ``--std`` (those given)."""
    means, stds = parse_floats("--mean", mean), parse_floats("--std", std)
    if crop is None and means is None and stds is None:
        return preprocess
    if not isinstance(preprocess, Preprocess):
        raise UsageError(
            "--crop, --mean and --std apply to PyTorch models; a Keras model takes its own "
            "preprocess_input (and the whole image resized)"
        )
    changes: dict[str, Any] = {"mode": crop} if crop is not None else {}
    if means is not None:
        changes["mean"] = means
    if stds is not None:
        changes["std"] = stds
    return replace(preprocess, **changes)


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    weights: str
    categories: list[str] | None
    preprocess: Callable[[Image.Image], tuple[torch.Tensor, torch.Tensor]]


def _torchvision_names() -> list[str]:
    return list(torchvision.models.list_models(module=torchvision.models)) + _dense_names()


def _dense_names() -> list[str]:
    """torchvision's segmentation and detection models."""
    models = torchvision.models
    return list(models.list_models(module=models.segmentation)) + list(
        models.list_models(module=models.detection)
    )


def _build(name: str, weights: Any) -> nn.Module:
    """torchvision's ``name`` with ``weights``; a segmentation model or detector without them
    gets a random backbone too (its default, ImageNet weights, would be downloaded)."""
    if weights is None and name in _dense_names():
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    else:
        model = torchvision.models.get_model(name, weights=weights)
    assert isinstance(model, nn.Module)
    return model


def _torchvision_preprocess(name: str, transforms: Any, size: int | None) -> Preprocess:
    """The weights' recipe: a classifier's resize and crop, a segmentation model's resize (to a
    square here, so that images stack), a detector's pixels in [0, 1] (it resizes and
    normalises inside; made square here, 512 pixels unless ``--size`` says otherwise)."""
    if name in torchvision.models.list_models(module=torchvision.models.detection):
        side = size if size is not None else 512
        return Preprocess(resize=side, crop=side, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    resize = getattr(transforms, "resize_size", None) or [256]
    crop = getattr(transforms, "crop_size", None) or resize
    return Preprocess(
        resize=size if size is not None else int(resize[0]),
        crop=size if size is not None else int(crop[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=transforms.interpolation,
    )


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        return None
    return timm


def known_models() -> list[str]:
    """Every model name ``--model`` takes, each once (torchvision's and timm's overlap)."""
    timm = _timm()
    names = _torchvision_names() + (list(timm.list_models()) if timm is not None else [])
    return list(dict.fromkeys(names))


def load_model(spec: str, weights: str, *, size: int | None = None) -> LoadedModel:
    """``spec``: a torchvision name, a timm name (when timm is installed), or
    ``path/to/file.py:factory``, or ``demo`` (the shipped :class:`backlight.demo.DemoNet`).
    ``weights``: ``DEFAULT`` (or another weights name of the architecture), ``random``, or a
    state-dict file."""
    if size is not None and not MIN_SIZE <= size <= MAX_SIZE:
        raise UsageError(f"--size must be from {MIN_SIZE} to {MAX_SIZE} pixels, not {size}")
    if spec == "demo":
        return _load_demo(weights, size)
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        return _load_user_model(spec, weights, size)
    if spec.startswith("keras:") or spec.endswith(".keras"):
        return _load_keras(spec, weights, size)
    if spec in _torchvision_names():
        return _load_torchvision(spec, weights, size)
    timm = _timm()
    if timm is not None and spec in timm.list_models():
        return _load_timm(timm, spec, weights, size)
    close = difflib.get_close_matches(spec, known_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UsageError(
        f"unknown model {spec!r}{hint} (a torchvision name such as resnet50, a timm name when "
        "timm is installed, path/to/file.py:factory, keras:VGG16, model.keras or demo)"
    )


@dataclass(frozen=True)
class KerasPreprocess:
    """Keras' recipe: resize to ``size`` x ``size`` (``keras.utils.load_img(target_size=...)``),
    pixels in [0, 255], then the architecture's own ``preprocess_input`` (none for a ``.keras``
    file, whose model takes the pixels as they are); the model input is (C, H, W), as
    :class:`backlight.KerasModel` takes it."""

    size: tuple[int, int]
    preprocess_input: Callable[[Any], Any] | None

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        image = TF.resize(image, list(self.size), antialias=True)
        shown = TF.to_tensor(image)
        pixels = (shown * 255).permute(1, 2, 0)[None].numpy()
        if self.preprocess_input is not None:
            pixels = self.preprocess_input(pixels.copy())
        return shown, torch.as_tensor(pixels.copy(), dtype=torch.float32)[0].permute(2, 0, 1)

    def describe(self) -> str:
        how = getattr(self.preprocess_input, "__module__", None) or "none (pixels 0-255)"
        return f"resize {self.size}, Keras preprocess_input: {how}"


def _load_keras(spec: str, weights: str, size: int | None) -> LoadedModel:
    """``keras:Name`` (``keras.applications``) or ``model.keras``, on Keras' torch backend.
    ``--weights``: DEFAULT (ImageNet, downloaded by Keras; for a .keras file its own), random
    (seeded; for a .keras file its own), or a .weights.h5 file."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")  # this process's Keras, before its import
    from .. import _keras

    try:
        keras = _keras.keras_module()
        is_file = spec.endswith(".keras")
        unknown = None if is_file else _keras.unknown_application(spec)
        if unknown is not None:
            raise UsageError(unknown)
        chosen = {"DEFAULT": None if is_file else "imagenet", "random": None}.get(weights, weights)
        model = _keras.load_keras(spec, chosen)
    except BacklightError as e:
        raise Failure(str(e)) from e
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    side = (
        (int(shape[1]), int(shape[2])) if len(shape) == 4 and shape[1] and shape[2] else (224, 224)
    )
    preprocess_input = None
    if not is_file:
        module = importlib.import_module(getattr(keras.applications, spec[6:]).__module__)
        preprocess_input = getattr(module, "preprocess_input", None)
    adapter = _keras.KerasModel(model)
    classes = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else 0
    categories = None
    if classes == 1000:  # ImageNet's classes, in the order every framework uses
        categories = list(torchvision.models.ResNet50_Weights.DEFAULT.meta["categories"])
    label = {"DEFAULT": "own" if is_file else "imagenet"}.get(weights, weights)
    preprocess = KerasPreprocess((size, size) if size is not None else side, preprocess_input)
    return LoadedModel(adapter, spec, label, categories, preprocess)


def _load_torchvision(name: str, weights: str, size: int | None) -> LoadedModel:
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    categories = list(default.meta.get("categories") or []) or None
    preprocess = _torchvision_preprocess(name, default.transforms(), size)
    if weights == "random":
        torch.manual_seed(0)
        model = _build(name, None)
        return LoadedModel(model.eval(), name, "random", categories, preprocess)
    if weights == "DEFAULT" or weights in enum.__members__:
        chosen = default if weights == "DEFAULT" else enum[weights]
        try:
            with contextlib.redirect_stdout(sys.stderr):  # torch.hub's "Downloading: ..." line
                model = _build(name, chosen)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            raise Failure(
                f"could not get the {chosen} weights of {name} ({e}); without a network, pass "
                "--weights FILE (a state dict saved with torch.save(model.state_dict(), FILE)) "
                "or --weights random"
            ) from e
        categories = list(chosen.meta.get("categories") or []) or categories
        return LoadedModel(model.eval(), name, str(chosen), categories, preprocess)
    model = _build(name, None)
    load_state_file(model, weights)
    return LoadedModel(model.eval(), name, weights, categories, preprocess)


def _load_timm(timm: Any, name: str, weights: str, size: int | None) -> LoadedModel:
    pretrained = weights == "DEFAULT"
    if weights == "random":
        torch.manual_seed(0)  # as for torchvision: the same random model every run
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the command's own output
            model = timm.create_model(name, pretrained=pretrained)
    except Exception as e:  # timm raises many kinds of errors when offline
        raise Failure(
            f"could not create timm model {name} with pretrained weights ({e}); without a "
            "network, pass --weights FILE or --weights random"
        ) from e
    if weights not in ("DEFAULT", "random"):
        load_state_file(model, weights)
    config = timm.data.resolve_data_config({}, model=model)
    crop = size if size is not None else int(config["input_size"][-1])
    preprocess = Preprocess(
        resize=size if size is not None else round(crop / config.get("crop_pct", 0.875)),
        crop=crop,
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )
    return LoadedModel(model.eval(), name, weights, None, preprocess)


def _load_demo(weights: str, size: int | None) -> LoadedModel:
    """The demo network (weights shipped in the package, no download) on its 64 px images in
    [0, 1], not normalised."""
    from ..data import IMAGE_SIZE
    from ..demo import DemoNet, load_demo_model

    if weights == "DEFAULT":
        model = load_demo_model()
    else:
        with torch.random.fork_rng():  # seeded, as every random model here, and the caller's
            torch.manual_seed(0)  # random state left as it was
            model = DemoNet().eval()
    if weights not in ("DEFAULT", "random"):
        load_state_file(model, weights)
    side = size if size is not None else IMAGE_SIZE
    preprocess = Preprocess(resize=side, crop=side, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return LoadedModel(model, "demo", weights, list(model.classes), preprocess)


def _load_user_model(spec: str, weights: str, size: int | None) -> LoadedModel:
    path_text, factory_name = spec.rsplit(":", 1)
    path = Path(path_text)
    if not path.is_file():
        raise Failure(f"model file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_backlight_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise Failure(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise Failure(f"importing {path} failed: {type(e).__name__}: {e}") from e
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        names = [n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise UsageError(
            f"{path} has no callable {factory_name!r}; it defines {', '.join(sorted(names))}"
        )
    try:
        model = factory()
    except Exception as e:  # the user's code: any error is theirs to see, in one line
        raise Failure(f"{spec}() raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise Failure(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    if weights not in ("DEFAULT", "random"):
        load_state_file(model, weights)
    classes = getattr(model, "classes", None)
    categories = [str(c) for c in classes] if isinstance(classes, Sequence) and classes else None
    preprocess = Preprocess(
        resize=size if size is not None else 256, crop=size if size is not None else 224
    )
    return LoadedModel(model.eval(), spec, weights, categories, preprocess)


def load_state_file(model: nn.Module, path_text: str) -> None:
    """Load a state dict with ``torch.load(..., weights_only=True)``: no code is unpickled."""
    path = Path(path_text)
    if path.is_dir():
        raise Failure(f"--weights {path} is a folder; give a state-dict file")
    if not path.is_file():
        raise Failure(
            f"weights file not found: {path} (--weights takes DEFAULT, random, or a file)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise Failure(
                f"{path} is not a plain state dict (torch.load with weights_only=True refused it: "
                "it holds objects other than tensors); save it with "
                "torch.save(model.state_dict(), path)"
            ) from e
        raise Failure(f"{path} is not a file saved by torch.save (it cannot be unpickled)") from e
    except (
        Exception
    ) as e:  # torch.load raises KeyError, EOFError, RuntimeError... on non-torch files
        kind = "an empty file" if path.stat().st_size == 0 else "not a file saved by torch.save"
        raise Failure(f"cannot read weights from {path}: {kind} ({type(e).__name__})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise Failure(f"{path} holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise Failure(f"{path} holds a dict, but not one of parameter names to tensors")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ
        detail = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise Failure(f"{path} does not fit the model: {detail}") from e
    if result.missing_keys or result.unexpected_keys:
        raise Failure(
            f"{path} does not fit the model: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]})"
        )
