"""One module per method family; importing this package registers every method."""

from . import cam, excitation, extremal, gradients, rise

__all__ = ["cam", "excitation", "extremal", "gradients", "rise"]
