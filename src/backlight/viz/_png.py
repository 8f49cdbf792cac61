"""Writing files atomically: a temporary file in the target's folder, then one rename."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ._inputs import ImageLike, as_image

__all__ = ["save_png"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path``'s folders, let ``write`` fill a temporary file beside it, rename it over.

    Readers see the old file or the complete new one, never a part; if ``write`` raises, the
    temporary file is removed and the old file is left as it was. The file gets the usual
    permissions (0o666 minus the umask), not the 0o600 of :mod:`tempfile`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        # the name cut to 200 bytes, so that a name near the file system's limit still has room
        short = target.name.encode()[:200].decode(errors="ignore")
        temporary = target.with_name(f".{short}.{secrets.token_hex(6)}.tmp")
        try:
            descriptor = os.open(temporary, flags, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
        break
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def save_png(path: str | os.PathLike[str], image: ImageLike) -> Path:
    """Save an image as PNG, creating folders, atomically (never a half-written file).

    Args:
        path: where to write; missing parent folders are created.
        image: a uint8 array (H, W, 3) as returned by :func:`overlay`, :func:`colorize`,
            :func:`render_rgb` or :func:`grid`; or any single image :func:`overlay` accepts.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        InputError: ``image`` is not an image (wrong shape, dtype or range).
        OSError: the folder cannot be created or written.

    Example:
        >>> import tempfile, torch
        >>> from backlight.viz import save_png
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_png(f"{folder}/maps/one.png", torch.rand(3, 8, 8))
        ...     print(path.relative_to(folder), path.stat().st_size > 0)
        maps/one.png True
    """
    pixels = Image.fromarray(as_image(image, "image"))
    return atomic_write(path, lambda stream: pixels.save(stream, format="PNG"))
