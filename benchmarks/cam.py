"""Time Grad-CAM and Score-CAM against Captum, pytorch-grad-cam, TorchRay and the bare bounds.

Grad-CAM's bound is one forward pass plus one ``torch.autograd.grad`` from the scores to the
layer's output. Score-CAM's bound is the masked forward passes alone, at the same number of
channels and the same batch size, on masked inputs prepared in advance. Contenders run
interleaved (A B C ... A B C ...) and medians are compared as ratios to the bound. Score-CAM's
peak memory is the peak resident set size above the level before the call, sampled every 2 ms.

    python benchmarks/cam.py                                  # both parts, default settings
    python benchmarks/cam.py --part score --rounds 2 --markdown BENCHMARKS.md

Needs the benchmark dependencies: ``pip install captum torchray grad-cam``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

import backlight


class PeakMemory:
    """Peak resident memory above the starting level while the block runs (Linux /proc)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        self._base = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._base)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._base)


def interleave(
    runs: dict[str, Callable[[], object]], rounds: int, model: torch.nn.Module
) -> tuple[dict[str, list[float]], dict[str, int]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    memory: dict[str, int] = dict.fromkeys(runs, 0)
    for fn in runs.values():  # warm-up
        fn()
    for r in range(rounds):
        for name, fn in runs.items():
            with PeakMemory() as peak:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
            memory[name] = max(memory[name], peak.peak)
            for p in model.parameters():  # peers leave parameter gradients behind
                p.grad = None
                p.requires_grad_(True)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return times, memory


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
    title: str, note: str, times: dict[str, list[float]], memory: dict[str, int] | None
) -> str:
    bound = statistics.median(next(iter(times.values())))
    head = "| contender | ratio to bound |" + (" peak memory above start |" if memory else "")
    rule = "| --- | ---: |" + (" ---: |" if memory else "")
    lines = [title, "", note, "", head, rule]
    for name, ts in times.items():
        row = f"| {name} | {statistics.median(ts) / bound:.3f} |"
        if memory:
            row += f" {memory[name] / 2**20:.0f} MiB |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["grad", "score", "both"], default="both")
    parser.add_argument("--batch", type=int, default=8, help="Grad-CAM batch")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--layer", default="layer4", help="Grad-CAM layer of ResNet-50")
    parser.add_argument("--score-layer", default="layer1", help="Score-CAM layer of ResNet-50")
    parser.add_argument("--score-batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="append the result tables to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    command = "python benchmarks/cam.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stamp = (
        f"`{command.strip()}` on {platform.machine()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}, load average before the run "
        f"{os.getloadavg()[0]:.2f}. Ratio = median time / median time of the bound."
    )
    out = []
    if args.part in ("grad", "both"):
        x = torch.randn(args.batch, 3, args.size, args.size)
        target = [(37 * i + 11) % 1000 for i in range(args.batch)]
        times, _ = interleave(grad_cam_contenders(model, x, target, args.layer), args.rounds, model)
        out.append(
            table(
                f"### Grad-CAM: ResNet-50 `{args.layer}`, batch {args.batch}, "
                f"{args.size}x{args.size}, CPU ({args.threads} threads), {args.rounds} rounds",
                stamp,
                times,
                None,
            )
        )
    if args.part in ("score", "both"):
        x = torch.randn(1, 3, args.size, args.size)
        runs = score_cam_contenders(model, x, 281, args.score_layer, args.score_batch_size)
        times, memory = interleave(runs, max(1, args.rounds // 2), model)
        out.append(
            table(
                f"### Score-CAM: ResNet-50 `{args.score_layer}`, one {args.size}x{args.size} "
                f"image, batch size {args.score_batch_size}, CPU ({args.threads} threads)",
                stamp,
                times,
                memory,
            )
        )
    text = "\n".join(out)
    print(text)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
