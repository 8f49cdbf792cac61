"""One module per method family; importing this package registers every method."""

from . import gradients

__all__ = ["gradients"]
