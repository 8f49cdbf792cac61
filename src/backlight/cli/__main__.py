"""``python -m backlight.cli``: the same as the ``backlight`` command."""

from backlight.cli import console

console()
