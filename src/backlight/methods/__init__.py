"""One module per method family; importing this package registers every method."""

from . import cam, gradients

__all__ = ["cam", "gradients"]
