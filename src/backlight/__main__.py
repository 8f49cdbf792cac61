"""``python -m backlight``: the command line, as the ``backlight`` script."""

from .cli import console

if __name__ == "__main__":
    console()
