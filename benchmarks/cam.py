"""Time Grad-CAM and Score-CAM against Captum, pytorch-grad-cam, TorchRay and the bare bounds.

Grad-CAM's bound is one forward pass plus one ``torch.autograd.grad`` from the scores to the
layer's output. Score-CAM's bound is the masked forward passes alone, at the same number of
channels and the same batch size, on masked inputs prepared in advance. Contenders run
interleaved in a new random order each round (see _timing.py); medians and minimums are
compared as ratios to the bound. Score-CAM's peak memory is measured afterwards, one call each
(see ``_timing.peak_memory``).

    python benchmarks/cam.py                                  # both parts, default settings
    python benchmarks/cam.py --part score --rounds 2 --markdown BENCHMARKS.md

Needs the benchmark dependencies: ``pip install captum torchray grad-cam``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

import backlight
from _timing import interleave, peak_memory, publish, ratio_table, stamp


def grad_cam_contenders(
    model: torch.nn.Module, x: torch.Tensor, target: list[int], layer: str
) -> dict[str, Callable[[], object]]:
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchray.attribution.grad_cam import grad_cam as torchray_grad_cam

    module = dict(model.named_modules())[layer]
    kept: dict[str, torch.Tensor] = {}

    def bound() -> object:
        handle = module.register_forward_hook(lambda m, i, o: kept.update(a=o))
        try:
            out = model(x)
        finally:
            handle.remove()
        scores = out[torch.arange(x.shape[0]), torch.tensor(target)]
        return torch.autograd.grad(scores.sum(), kept["a"])[0]

    def pytorch_grad_cam() -> object:
        with GradCAM(model, [module]) as cam:
            return cam(x, [ClassifierOutputTarget(t) for t in target])

    return {
        "bound: forward + autograd.grad(layer)": bound,
        "backlight.grad_cam": lambda: backlight.grad_cam(model, x, target, layer=layer),
        "captum LayerGradCam": lambda: LayerGradCam(model, module).attribute(
            x, target=target, relu_attributions=True
        ),
        "pytorch-grad-cam GradCAM": pytorch_grad_cam,
        "torchray grad_cam": lambda: torchray_grad_cam(model, x, target, saliency_layer=layer),
    }


def score_cam_contenders(
    model: torch.nn.Module, x: torch.Tensor, target: int, layer: str, batch_size: int
) -> dict[str, Callable[[], object]]:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    kept: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda m, i, o: kept.update(a=o))
    with torch.no_grad():
        model(x)
    handle.remove()
    channels = kept["a"].shape[1]
    masks = F.interpolate(kept["a"], size=x.shape[-2:], mode="bilinear")[0, :, None]
    low = masks.amin(dim=(2, 3), keepdim=True)
    masks = (masks - low) / (masks.amax(dim=(2, 3), keepdim=True) - low).clamp(min=1e-8)
    masked = [x * masks[i : i + batch_size] for i in range(0, channels, batch_size)]

    def bound() -> object:
        with torch.inference_mode():
            return [model(batch).softmax(1)[:, target] for batch in masked]

    def pytorch_grad_cam() -> object:
        with ScoreCAM(model, [module]) as cam:
            cam.batch_size = batch_size
            return cam(x, [ClassifierOutputTarget(target)])

    return {
        f"bound: {channels} masked forward passes": bound,
        "backlight.score_cam": lambda: backlight.score_cam(
            model, x, target, layer=layer, batch_size=batch_size, progress=False
        ),
        "pytorch-grad-cam ScoreCAM": pytorch_grad_cam,
    }


def table(
    title: str,
    times: dict[str, list[float]],
    memory: dict[str, int] | None,
    argv: list[str] | None,
) -> str:
    rows = ratio_table(times, next(iter(times)), memory)
    return "\n".join([title, "", stamp("cam.py", argv), "", *rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["grad", "score", "both"], default="both")
    parser.add_argument("--batch", type=int, default=8, help="Grad-CAM batch")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--layer", default="layer4", help="Grad-CAM layer of ResNet-50")
    parser.add_argument("--score-layer", default="layer1", help="Score-CAM layer of ResNet-50")
    parser.add_argument("--score-batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="append the result tables to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    out = []
    if args.part in ("grad", "both"):
        x = torch.randn(args.batch, 3, args.size, args.size)
        target = [(37 * i + 11) % 1000 for i in range(args.batch)]
        times = interleave(grad_cam_contenders(model, x, target, args.layer), args.rounds, model)
        out.append(
            table(
                f"### Grad-CAM: ResNet-50 `{args.layer}`, batch {args.batch}, "
                f"{args.size}x{args.size}, CPU ({args.threads} threads), {args.rounds} rounds",
                times,
                None,
                argv,
            )
        )
    if args.part in ("score", "both"):
        x = torch.randn(1, 3, args.size, args.size)
        runs = score_cam_contenders(model, x, 281, args.score_layer, args.score_batch_size)
        times = interleave(runs, max(1, args.rounds // 2), model)
        memory = peak_memory(runs, model)
        out.append(
            table(
                f"### Score-CAM: ResNet-50 `{args.score_layer}`, one {args.size}x{args.size} "
                f"image, batch size {args.score_batch_size}, CPU ({args.threads} threads)",
                times,
                memory,
                argv,
            )
        )
    text = "\n".join(out)
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
