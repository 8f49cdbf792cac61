"""Explain skimage's cat photo with a ResNet-50 and write the maps side by side to a PNG.

    python examples/quickstart.py                      # random weights, works offline
    python examples/quickstart.py --weights DEFAULT    # ImageNet weights (downloads once)

With random weights the maps show what the architecture alone responds to (edges, texture);
with trained weights they show the evidence for the predicted class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from skimage import data

import backlight

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def to_gray(saliency: torch.Tensor) -> np.ndarray:
    """(1, h, w) map -> uint8 image, min-max scaled after clipping the top 1%."""
    m = saliency[0].numpy()
    top = np.percentile(m, 99)
    m = np.clip(m, m.min(), top)
    m = (m - m.min()) / (m.max() - m.min() + 1e-12)
    return (np.stack([m] * 3, axis=-1) * 255).astype(np.uint8)


def to_rgb(gradient: torch.Tensor) -> np.ndarray:
    """(3, h, w) signed gradient -> uint8 image, centred on grey: 0.5 + 0.15 * g / std(g)."""
    g = gradient.numpy()
    g = 0.5 + 0.15 * (g - g.mean()) / (g.std() + 1e-12)
    return (np.clip(g, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="torchvision weights name, e.g. DEFAULT")
    parser.add_argument("--out", default="out/quickstart.png")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=args.weights).eval()
    image = Image.fromarray(data.chelsea()).resize((args.size, args.size))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    x = ((pixels - MEAN) / STD)[None]

    predicted = int(model(x).argmax())
    panels = [
        np.asarray(image),
        to_gray(backlight.gradient(model, x, predicted)[0]),
        to_rgb(backlight.guided_backprop(model, x, predicted, reduce=None)[0]),
        to_gray(backlight.deconvnet(model, x, predicted)[0]),
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(panels, axis=1)).save(out)
    print(f"class {predicted}: image | gradient | guided backprop (RGB) | deconvnet -> {out}")


if __name__ == "__main__":
    main()
