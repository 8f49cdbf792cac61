"""Small networks built for the tests, each exercising one thing the methods must handle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """Every way a ReLU is written: a module reused twice and in place, ``F.relu`` in place after
    a residual addition, ``torch.relu_``, ReLU6 as a module, and ``Tensor.relu``; plus max
    pooling, global average pooling and two linear layers. 3x12x12 input, 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv4 = nn.Conv2d(6, 6, 1)
        self.relu = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 5)
        with torch.no_grad():  # large enough weights that ReLU6 clips somewhere
            self.conv4.weight.mul_(30.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv1(x))
        b = F.relu(self.conv2(a) + a, inplace=True)
        c = self.pool(b)
        d = self.relu(self.conv3(c))
        e = torch.relu_(self.conv4(d))
        f = self.relu6(e)
        g = f.mean(dim=(2, 3))
        h = self.fc1(g).relu()
        return self.fc2(h)


class OneConv(nn.Module):
    """A net you can explain on paper: 1x1 conv with weights (2, -1), ReLU, global sum, a linear
    layer [[1, -1], [-1, 3]] without bias. Class 0 scores sum(relu(2x)) - sum(relu(-x))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([2.0, -1.0]).reshape(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 3.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).sum(dim=(2, 3)))


class NoReLU(nn.Module):
    """A CNN with GELU only: the guided and deconvnet rules have nothing to act on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class Raises(nn.Module):
    """Runs a ReLU, then raises mid-forward when ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        self.fail = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x))
        if self.fail:
            raise RuntimeError("boom in forward")
        return self.fc(h.mean(dim=(2, 3)))


def tiny_detector() -> nn.Module:
    """torchvision's smallest Faster R-CNN with random weights, on 64 px images, keeping every
    detection (a random detector scores none above the usual threshold)."""
    import torchvision

    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=64,
        max_size=64,
        box_score_thresh=0.0,
    )
    return model.eval()
