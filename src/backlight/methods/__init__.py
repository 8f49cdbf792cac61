"""One module per method family; importing this package registers every method."""

from . import cam, excitation, gradients

__all__ = ["cam", "excitation", "gradients"]
