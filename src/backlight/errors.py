"""The exceptions backlight raises.

Every error derives from :class:`BacklightError` and from the built-in exception a Python user
would expect for that kind of mistake, so ``except ValueError`` keeps working::

    BacklightError (Exception)
    ├── InputError (ValueError)            x is not a finite float tensor of shape (N, C, H, W)
    │   └── InputTypeError (TypeError)     x or model is not a tensor / module at all
    ├── ModelError (ValueError)            the model cannot run as given (parameters on the meta
    │                                      device, a Keras model on a backend that is not torch)
    ├── OptionError (ValueError)           a keyword option has a value the method does not accept
    ├── TargetError (ValueError)           target out of range, of the wrong length, or unusable
    ├── LayerNotFoundError (LookupError)   layer names no module of the model
    ├── LayerError (ValueError)            the layer exists but cannot be used (not called, called
    │                                      twice, output not a feature map)
    ├── DatasetError (ValueError)          a data set's files are malformed (metrics readers)
    │   └── DatasetNotFoundError (FileNotFoundError)
    └── MethodNotApplicableError (ValueError)
                                           the method's rule has nothing to act on in this model
                                           (guided backprop on a network without ReLU)

Messages name the argument, say what was expected and say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BacklightError",
    "DatasetError",
    "DatasetNotFoundError",
    "InputError",
    "InputTypeError",
    "LayerError",
    "LayerNotFoundError",
    "MethodNotApplicableError",
    "ModelError",
    "OptionError",
    "TargetError",
]


class BacklightError(Exception):
    """Root of every exception raised by backlight."""


class InputError(BacklightError, ValueError):
    """The input tensor ``x`` has the wrong shape, dtype or device, or holds NaN or inf."""


class InputTypeError(InputError, TypeError):
    """``x`` is not a tensor, or ``model`` is not a :class:`torch.nn.Module`."""


class ModelError(BacklightError, ValueError):
    """The model cannot be run as it is: parameters without data (meta device), or a framework
    setting that must change first."""


class OptionError(BacklightError, ValueError):
    """A keyword option (``reduce``, ``resize``, ...) has a value the method does not accept."""


class TargetError(BacklightError, ValueError):
    """``target`` is out of range, has the wrong length or type, or cannot select a score."""


class LayerNotFoundError(BacklightError, LookupError):
    """``layer`` names no module of the model."""

    def __str__(self) -> str:  # LookupError would otherwise quote the message like a KeyError
        return str(self.args[0]) if self.args else ""


class LayerError(BacklightError, ValueError):
    """The layer exists but cannot be used: never called, called twice, or not a feature map."""


class DatasetError(BacklightError, ValueError):
    """A data set's files are malformed or cannot be used as asked."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data set's folder or one of its files is missing."""


class MethodNotApplicableError(BacklightError, ValueError):
    """The method cannot apply to this model (for example guided backprop without any ReLU)."""
