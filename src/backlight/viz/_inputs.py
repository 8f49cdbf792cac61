"""Turning what users hold (tensors, arrays, PIL images) into plain numpy, with typed errors.

Images become ``uint8`` arrays (H, W, 3); maps become ``float64`` arrays (N, C, h, w). Every
check names the argument it is about, as ``name`` (``"image"``, ``"maps['gradient']"``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image

if TYPE_CHECKING:  # torch is optional here: the visualisation serves backlight.jax too
    import torch

from .._arrays import is_array as _is_array
from .._arrays import is_tensor as is_tensor  # also for the other viz modules
from ..errors import InputError, InputTypeError, OptionError

#: An image: a float tensor (3, H, W) in [0, 1] (or uint8), a numpy array (H, W, 3) of uint8 or of
#: floats in [0, 1], a grey (H, W) array, or a PIL image.
ImageLike: TypeAlias = "torch.Tensor | npt.NDArray[Any] | Image.Image"

#: Several images: a tensor (N, 3, H, W), an array (N, H, W, 3), or a sequence of single images.
Images: TypeAlias = "torch.Tensor | npt.NDArray[Any] | Sequence[ImageLike]"

#: A map (h, w), a map with channels (C, h, w), or a batch (N, C, h, w); a tensor or an array.
MapLike: TypeAlias = "torch.Tensor | npt.NDArray[Any]"

U8: TypeAlias = npt.NDArray[np.uint8]
F64: TypeAlias = npt.NDArray[np.float64]

# Float images may overshoot [0, 1] a little (bicubic resizing, un-normalising in float32).
_RANGE_SLACK = 0.01


def _to_numpy(value: Any) -> npt.NDArray[Any]:
    if is_tensor(value):
        value = value.detach().cpu()
        if value.is_floating_point() and str(value.dtype) != "torch.float64":
            value = value.double()  # also makes bfloat16 and float16 convertible
        converted: npt.NDArray[Any] = value.numpy()
        return converted
    return np.asarray(value)


def as_image(image: Any, name: str = "image") -> U8:
    """One image as a uint8 array (H, W, 3)."""
    if isinstance(image, Image.Image):
        converted: U8 = np.array(image.convert("RGB"), dtype=np.uint8)
        return converted
    if is_tensor(image):
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise InputError(
                f"`{name}` must be a tensor (3, H, W) or (1, H, W), got {tuple(image.shape)}; "
                "a channels-last (H, W, 3) tensor needs .permute(2, 0, 1), a batch of one [0]"
            )
        array = _to_numpy(image).transpose(1, 2, 0)
    elif _is_array(image):
        array = _to_numpy(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3):
            array = array.transpose(1, 2, 0)  # a (3, H, W) array, as tensor.numpy() gives
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3):
            raise InputError(
                f"`{name}` must be an array (H, W, 3) or (H, W), got {array.shape}; "
                "drop an alpha channel with [..., :3], take one image of a batch with [i]"
            )
    else:
        raise InputTypeError(
            f"`{name}` must be a torch.Tensor (3, H, W), a numpy array (H, W, 3) or a PIL image, "
            f"not {type(image).__name__}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"`{name}` is empty (shape {array.shape}); pass an image with pixels")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _float_pixels(array, name)
    else:
        raise InputError(
            f"`{name}` must hold uint8 values or floats in [0, 1], not {array.dtype}; "
            "convert with .astype(np.uint8) (0-255) or / 255 (floats)"
        )
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def _float_pixels(array: npt.NDArray[Any], name: str) -> U8:
    if not np.isfinite(array).all():
        raise InputError(
            f"`{name}` contains NaN or infinite values; clean it with np.nan_to_num first"
        )
    low, high = float(array.min()), float(array.max())
    if low < -_RANGE_SLACK:
        raise InputError(
            f"`{name}` has values down to {low:.3g}, outside [0, 1]: it looks normalised for the "
            "model; pass the image before normalisation, or undo it with x * std + mean"
        )
    if high > 1 + _RANGE_SLACK:
        hint = "divide it by 255" if high <= 255 + _RANGE_SLACK else "rescale it to [0, 1]"
        raise InputError(f"`{name}` has values up to {high:.3g}, outside [0, 1]; {hint}")
    pixels: U8 = np.rint(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    return pixels


def as_images(images: Any, name: str = "images") -> list[U8]:
    """Several images (a batch tensor or array, a sequence, or one image) as uint8 arrays."""
    if is_tensor(images) and images.dim() == 4:
        return [as_image(im, f"{name}[{i}]") for i, im in enumerate(images)]
    if _is_array(images) and images.ndim == 4:
        return [as_image(im, f"{name}[{i}]") for i, im in enumerate(_to_numpy(images))]
    if is_tensor(images) or _is_array(images) or isinstance(images, Image.Image):
        return [as_image(images, name)]
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise InputError(f"`{name}` is empty; pass at least one image")
        return [as_image(im, f"{name}[{i}]") for i, im in enumerate(images)]
    raise InputTypeError(
        f"`{name}` must be a tensor (N, 3, H, W), an array (N, H, W, 3) or a list of images, "
        f"not {type(images).__name__}"
    )


def as_maps(maps: Any, name: str = "map") -> tuple[F64, bool]:
    """Maps as float64 (N, C, h, w), and whether the input was a batch (4-D)."""
    if not (is_tensor(maps) or _is_array(maps)):
        raise InputTypeError(
            f"`{name}` must be a torch.Tensor or numpy array (N, C, h, w), (C, h, w) or (h, w), "
            f"not {type(maps).__name__}"
        )
    array = _to_numpy(maps)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InputError(
            f"`{name}` must hold real numbers, not {array.dtype}; convert it with .astype(float)"
        )
    if array.ndim not in (2, 3, 4):
        raise InputError(
            f"`{name}` must have shape (N, C, h, w), (C, h, w) or (h, w), got {array.shape} "
            f"({array.ndim}-D); index one sample, or stack the maps into one batch"
        )
    batched = array.ndim == 4
    array = array.reshape((1,) * (4 - array.ndim) + array.shape).astype(np.float64)
    if array.size == 0:
        raise InputError(f"`{name}` is empty (shape {array.shape}); pass a map with values")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).sum())
        raise InputError(
            f"`{name}` contains {bad} NaN or infinite value(s); a map with NaN cannot be shown: "
            "check the method's input and options, or clean it with torch.nan_to_num"
        )
    return array, batched


def require_channels(maps: F64, channels: int, name: str, fix: str) -> None:
    if maps.shape[1] != channels:
        raise InputError(
            f"`{name}` must have {channels} channel(s), got shape {maps.shape} "
            f"({maps.shape[1]} channels); {fix}"
        )


def _real(value: Any) -> float | None:
    """``value`` as a float if it is a real number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def check_alpha(alpha: Any) -> float:
    value = _real(alpha)
    if value is None or not 0 <= value <= 1:
        raise OptionError(
            f"`alpha` must be a number in [0, 1] (0: only the image, 1: only the map), "
            f"not {alpha!r}"
        )
    return value


#: What a map is blended over: the image as it is, or its luminance (grey), which keeps a
#: saturated photo's colours from competing with the colormap's (Captum's blended heat map).
BACKGROUNDS = ("image", "gray")


def check_background(background: Any) -> str:
    if not isinstance(background, str) or background not in BACKGROUNDS:
        raise OptionError(
            f"`background` must be 'image' (the image as it is) or 'gray' (its luminance), "
            f"not {background!r}"
        )
    return background


def check_percentile(percentile: Any) -> float:
    value = _real(percentile)
    if value is None or not 50 < value <= 100:
        raise OptionError(
            f"`percentile` must be a number in (50, 100] (99 clips the top and bottom 1%, "
            f"100 does not clip), not {percentile!r}"
        )
    return value


def check_positive(name: str, value: Any) -> float:
    number = _real(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise OptionError(f"`{name}` must be a positive number, not {value!r}")
    return number


#: The largest panel, cell or font size in pixels: a 4096-pixel panel is already 48 MB.
MAX_PIXELS = 4096


def check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise OptionError(f"`{name}` must be a positive integer (pixels), not {value!r}")
    if int(value) > MAX_PIXELS:
        raise OptionError(f"`{name}` must be at most {MAX_PIXELS} pixels, not {value!r}")
    return int(value)
