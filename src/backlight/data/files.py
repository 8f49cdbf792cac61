"""Image files decoded the same way everywhere: every mode PIL opens, to 8-bit RGB.

``Image.convert("RGB")`` alone gets several modes wrong: a 16-bit grayscale PNG (``I;16``) or a
32-bit one (``I``, ``F``) is clipped to 255 and comes out white, an alpha channel is dropped
with whatever colour the transparent pixels happen to hold, and a photo's EXIF orientation is
ignored. :func:`read_image` scales high-bit-depth images to 8 bits, composites transparency on
white, applies the EXIF orientation, and raises :class:`backlight.DatasetError` with the reason
for anything it cannot decode.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DatasetError, DatasetNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "MIN_SIDE", "read_image"]

#: File name endings PIL can open (``.jpg``, ``.png``, ``.webp``, ``.tif``...), lower case.
IMAGE_EXTENSIONS = frozenset(Image.registered_extensions())
#: The smallest side, in pixels, of an image worth explaining: below it, every model's resize
#: makes a blur from a handful of pixels.
MIN_SIDE = 8


def read_image(source: str | os.PathLike[str] | bytes, *, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode an image file (a path or its bytes) to an 8-bit RGB PIL image.

    Args:
        source: a path, or the bytes of an image file.
        min_side: refuse images whose shorter side is below this many pixels.

    Returns:
        A loaded ``RGB`` image, turned upright by its EXIF orientation.

    Raises:
        DatasetNotFoundError: the path does not exist.
        DatasetError: not an image, truncated, an unsupported mode, or too small; the message
            says which.

    Example:
        >>> import io
        >>> import numpy as np
        >>> from PIL import Image
        >>> from backlight.data.files import read_image
        >>> buffer = io.BytesIO()
        >>> Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(buffer, format="PNG")
        >>> read_image(buffer.getvalue()).getpixel((0, 0))  # 16-bit white is 8-bit white
        (255, 255, 255)
    """
    where = "the image bytes" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise DatasetNotFoundError(f"image not found (or not a file): {where}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
            opened.load()
            image = _upright(opened)
            rgb = _rgb(image)
    except UnidentifiedImageError as e:
        raise DatasetError(f"not an image file (or an unsupported format): {where}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot decode image {where}: {e}") from e
    if min(rgb.size) < min_side:
        raise DatasetError(
            f"{where} is {rgb.size[0]}x{rgb.size[1]} pixels, smaller than {min_side} on a side"
        )
    return rgb


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        return image  # a broken EXIF block: the pixels are still good


def _rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
            values = np.nan_to_num(scaled) * 255.0
        else:  # integers: the full range of the stored bit depth is the full range of 8 bits
            top = 65535.0 if mode.startswith("I;16") or values.max() <= 65535 else 2.0**32 - 1
            values = np.clip(values, 0, None) / top * 255.0
        return Image.fromarray(np.rint(values).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise DatasetError(f"cannot convert an image of mode {mode!r} to RGB: {e}") from e
