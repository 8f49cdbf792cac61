"""DemoNet: a small ReLU CNN trained on :mod:`backlight.data` shapes, shipped with its weights."""

from __future__ import annotations

from collections import OrderedDict
from importlib import resources

import torch
from torch import nn

from ..data import CLASSES

__all__ = ["CAM_LAYER", "CLASSES", "WEIGHTS_FILE", "DemoNet", "load_demo_model"]

#: The last convolutional block's output (after its ReLU): 64 channels at 1/4 of the input's
#: side, 16x16 for the 64x64 images of :mod:`backlight.data`. The layer for Grad-CAM and CAM.
CAM_LAYER = "features.relu5"

#: The shipped state dict, a resource of this package.
WEIGHTS_FILE = "demo_net.pt"

# Inputs are images in [0, 1]; the network sees them centred and scaled.
_MEAN = 0.5
_STD = 0.25

# (name, input channels, output channels, dilation, max pooling after the block)
_BLOCKS = (
    ("1", 3, 24, 1, True),
    ("2", 24, 48, 1, True),
    ("3", 48, 64, 1, False),
    ("4", 64, 64, 2, False),
    ("5", 64, 64, 2, False),
)


class DemoNet(nn.Module):
    """A small ReLU CNN for the six shapes of :mod:`backlight.data` (113,310 parameters).

    Five blocks of 3x3 convolution, batch norm and ReLU, with 2x2 max pooling after the first
    two, then global average pooling and one linear layer. The last two convolutions are dilated
    (by 2), so that a unit of the last feature map sees 50x50 pixels, a whole shape, while that
    map (:data:`CAM_LAYER`) keeps 1/4 of the input's resolution. Every ReLU is an ``nn.ReLU``
    module called once, so every method applies.

    The modules are ``features.conv1``, ``features.bn1``, ``features.relu1``, ``features.pool1``,
    ... ``features.relu5``, then ``pool`` (global average) and ``classifier``.

    Args:
        num_classes: the number of outputs; the shipped weights have ``len(CLASSES)``.

    Attributes:
        classes: the class names, in output order.

    Example:
        >>> import torch
        >>> from backlight.demo import DemoNet
        >>> model = DemoNet().eval()
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 6])
        >>> dict(model.named_modules())["features.relu5"]
        ReLU()
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for name, c_in, c_out, dilation, pool in _BLOCKS:
            layers[f"conv{name}"] = nn.Conv2d(
                c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False
            )
            layers[f"bn{name}"] = nn.BatchNorm2d(c_out)
            layers[f"relu{name}"] = nn.ReLU()
            if pool:
                layers[f"pool{name}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(_BLOCKS[-1][2], num_classes)
        self.classes: tuple[str, ...] = CLASSES if num_classes == len(CLASSES) else ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images (N, 3, H, W) with values in [0, 1]."""
        x = (x - _MEAN) / _STD
        x = self.pool(self.features(x))
        logits: torch.Tensor = self.classifier(x.flatten(1))
        return logits


def load_demo_model() -> DemoNet:
    """The demo network with its shipped weights, in eval mode, on the CPU.

    The weights are a state dict stored in the package (``backlight/demo/demo_net.pt``), loaded
    with ``torch.load(..., weights_only=True)``; no download. They were trained by
    ``scripts/train_demo_model.py`` on :class:`backlight.data.SyntheticShapes` images of the
    default size. ``model.classes`` names the outputs.

    Example:
        >>> from backlight.data import make_batch
        >>> from backlight.demo import load_demo_model
        >>> model = load_demo_model()
        >>> images, labels, masks = make_batch(12, seed=2024)
        >>> predicted = model(images).argmax(1)
        >>> int((predicted == labels).sum())  # of 12
        12
        >>> [model.classes[int(k)] for k in predicted[:3]]
        ['triangle', 'star', 'cross']
    """
    model = DemoNet()
    with resources.files("backlight.demo").joinpath(WEIGHTS_FILE).open("rb") as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
