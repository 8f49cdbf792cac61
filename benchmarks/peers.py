"""Time backlight against Captum, TorchRay and pytorch-grad-cam, method by method, in one run.

For every method a peer also implements, backlight's call and each peer's call with the same
semantics run on the same model (a torchvision architecture with random weights), the same inputs
and targets (a different class per sample) and the same settings. Each contender is called once
before timing: that call is its warm-up, and its map is checked against backlight's (relative
error, or correlation where a peer normalises and resizes its maps; the warning column says when
they disagree, so that a row never compares different computations silently). Then the
contenders of a row run in interleaved rounds (A B C ... A B C ...) so that drift in the machine's
speed hits them alike. Each row reports backlight's median time and peak memory, and for each
peer the ratio of its median time to backlight's (> 1: the peer is slower) and its peak memory.
Peak memory is the peak resident set size above the level before the call (the kernel's
high-water mark, reset before each call), the median over the rounds. Parameter gradients and
``requires_grad`` flags that peers leave behind are reset after every call.

The expensive methods run on fewer images, as their rows say: Score-CAM (one forward pass per
channel of ``layer1``), RISE (256 masks) and extremal perturbation (per-iteration cost) on one
image, SmoothGrad (16 samples) on two.

    python benchmarks/peers.py                            # ResNet-50, batch 8, 224x224, 3 rounds
    python benchmarks/peers.py --methods grad_cam,rise --rounds 5 --markdown BENCHMARKS.md
    python benchmarks/peers.py --quick --model resnet18 --size 32   # smoke run in seconds

Needs the benchmark dependencies: ``pip install captum torchray grad-cam``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import backlight
from _timing import publish, random_setup
from backlight.methods.extremal import extremal_perturbation as backlight_extremal
from backlight.methods.rise import RiseMasks
from backlight.methods.rise import rise as backlight_rise

PEERS = ("Captum", "TorchRay", "pytorch-grad-cam")
METHODS = (
    "gradient",
    "guided_backprop",
    "deconvnet",
    "grad_cam",
    "guided_grad_cam",
    "linear_approx",
    "grad_cam_plus_plus",
    "layer_cam",
    "score_cam",
    "smooth_grad",
    "excitation_backprop",
    "contrastive_excitation_backprop",
    "rise",
    "rise_all_classes",
    "extremal_perturbation",
)
RELATIVE_TOLERANCE = 1e-3  # relative L2 error where both compute the same numbers
CORRELATION_FLOOR = 0.99  # per-image Pearson correlation where a peer normalises and resizes
# (Score-CAM layer, excitation layer, TorchRay's contrast layer) for the architectures we know;
# other models fall back to the CAM layer and need --contrast-layer for contrastive excitation.
KNOWN_LAYERS = {
    "resnet": ("layer1", "layer3", "avgpool"),
    "wide_resnet": ("layer1", "layer3", "avgpool"),
    "resnext": ("layer1", "layer3", "avgpool"),
    "vgg16": ("features.16", "features.23", "classifier.4"),
}


# ----------------------------------------------------------------------------------------------
# Measuring


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_mark() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets the peak RSS to the current RSS (Linux 4.0+)
    except OSError:
        return False
    return True


def _release_free_memory() -> None:
    """Return the C heap's free pages to the system, so the next baseline is not inflated."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak resident memory above the level before the block.

    Exact where the kernel lets us reset the high-water mark (``/proc/self/clear_refs``);
    otherwise sampled every 2 ms by a thread.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        _release_free_memory()
        self._base = _rss()
        if not _reset_high_water_mark():
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss() - self._base)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            self.peak = max(0, _high_water_mark() - self._base)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss() - self._base)


# ----------------------------------------------------------------------------------------------
# What a row is made of


@dataclass(frozen=True)
class Agreement:
    """How a peer's map compares with backlight's: ``value`` is a relative error or a
    correlation, as ``kind`` says; ``ok`` whether it is within the tolerance; ``problem`` what
    is wrong besides the value (NaNs in a map)."""

    kind: str
    value: float
    ok: bool
    note: str = ""
    problem: str = ""

    def value_text(self) -> str:
        if self.kind == "corr.":
            return f"{self.kind} {self.value:.5f}"
        return f"{self.kind} {'0' if self.value == 0 else f'{self.value:.2g}'}"

    def text(self) -> str:
        return self.value_text() + (f" ({self.note})" if self.note else "")


Check = Callable[[Any, Any], Agreement]


@dataclass
class Contender:
    library: str  # "backlight" or one of PEERS
    call: str  # the call, as the legend prints it
    run: Callable[..., Any]  # () -> output, or (iterations) -> output for per-iteration rows
    check: Check | None = None  # peers: (backlight's output, this one's) -> agreement


@dataclass
class Row:
    method: str
    setting: str
    contenders: list[Contender]  # backlight's first
    per_iteration: tuple[int, int] | None = None  # (short, long) runs for per-iteration cost
    note: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, list[int]] = field(default_factory=dict)
    agreement: dict[str, Agreement] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    model: str
    batch: int
    size: int
    rounds: int
    threads: int
    layer: str  # the CAM layer
    score_layer: str
    ebp_layer: str
    contrast_layer: str | None
    smooth_batch: int
    samples: int
    noise: float
    masks: int
    mask_batch: int  # images per forward pass for RISE, Score-CAM and SmoothGrad
    areas: tuple[float, ...]
    short: int
    long: int


# ----------------------------------------------------------------------------------------------
# Agreement checks


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    scale = float(theirs.norm())
    difference = float((ours - theirs).norm())
    return difference / scale if scale > 0 else difference


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest per-image Pearson correlation (1 for two constant images)."""
    a = a.detach().double().flatten(1)
    b = b.detach().double().flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    both_flat = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
    r = torch.where(both_flat, 1.0, (a * b).sum(1) / norms.clamp(min=1e-300))
    return float(r.min())


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out)
    if isinstance(out, torch.Tensor):
        return out.detach()
    raise TypeError(f"cannot compare a {type(out).__name__}")


def _abs_max(t: torch.Tensor) -> torch.Tensor:
    return t.abs().amax(dim=1, keepdim=True)


def same_values(
    ours_view: Callable[[Any], torch.Tensor] = _as_tensor,
    theirs_view: Callable[[Any], torch.Tensor] = _as_tensor,
) -> Check:
    """Relative L2 error ``‖ours − theirs‖ / ‖theirs‖`` after the given views."""

    def check(ours: Any, theirs: Any) -> Agreement:
        mine, their = ours_view(ours), theirs_view(theirs)
        finite = mine.isfinite() & their.isfinite()
        error = _relative_error(mine[finite], their[finite])
        bad = [
            f"{int((~t.isfinite()).sum())} NaN or infinite values in {who} map"
            for t, who in ((mine, "backlight's"), (their, "the peer's"))
            if not t.isfinite().all()
        ]
        if bad:
            note = "; ".join(bad) + ", error over the rest"
            return Agreement("rel. error", error, False, note, problem="; ".join(bad))
        return Agreement("rel. error", error, error < RELATIVE_TOLERANCE)

    return check


def normalised_resized(size: int) -> Check:
    """pytorch-grad-cam min-max normalises each map and resizes it with OpenCV: compare the
    per-image correlation with backlight's map upsampled bilinearly to the same size."""

    def check(ours: Any, theirs: Any) -> Agreement:
        mine = F.interpolate(_as_tensor(ours), size=(size, size), mode="bilinear")
        r = _correlation(mine, _as_tensor(theirs)[:, None])
        return Agreement("corr.", r, r > CORRELATION_FLOOR)

    return check


# ----------------------------------------------------------------------------------------------
# The rows


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _pgc(cls_name: str, model: nn.Module, layer: str, x: torch.Tensor, target: list[int]) -> Any:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with getattr(pytorch_grad_cam, cls_name)(model, [_module(model, layer)]) as cam:
        return cam(x, [ClassifierOutputTarget(t) for t in target])


def gradient_rows(model: nn.Module, x: torch.Tensor, target: list[int], s: Settings) -> list[Row]:
    from captum.attr import Deconvolution, GuidedBackprop, Saliency
    from torchray.attribution.deconvnet import deconvnet as tr_deconvnet
    from torchray.attribution.gradient import gradient as tr_gradient
    from torchray.attribution.guided_backprop import guided_backprop as tr_guided

    rows = []
    # TorchRay reduces the channels by the largest absolute value; Captum keeps them.
    torchray_check = same_values(_abs_max)
    for method, captum_cls, torchray_fn, captum_kwargs in (
        ("gradient", Saliency, tr_gradient, {"abs": False}),
        ("guided_backprop", GuidedBackprop, tr_guided, {}),
        ("deconvnet", Deconvolution, tr_deconvnet, {}),
    ):
        ours_fn = getattr(backlight, method)
        extra = ", abs=False" if captum_kwargs else ""

        def captum(cls: Any = captum_cls, kwargs: dict[str, Any] = captum_kwargs) -> Any:
            return cls(model).attribute(x.clone(), target=target, **kwargs)

        def torchray(fn: Any = torchray_fn) -> Any:
            return fn(model, x.clone().requires_grad_(True), target)

        def ours(fn: Any = ours_fn) -> Any:
            return fn(model, x, target, reduce=None)

        rows.append(
            Row(
                method,
                f"batch {x.shape[0]}, input",
                [
                    Contender("backlight", f"backlight.{method}(model, x, t, reduce=None)", ours),
                    Contender(
                        "Captum",
                        f"{captum_cls.__name__}(model).attribute(x, target=t{extra})",
                        captum,
                        same_values(),
                    ),
                    Contender(
                        "TorchRay",
                        f"torchray.attribution.{method}(model, x, t)",
                        torchray,
                        torchray_check,
                    ),
                ],
            )
        )
    return rows


def cam_rows(model: nn.Module, x: torch.Tensor, target: list[int], s: Settings) -> list[Row]:
    from captum.attr import GuidedGradCam, LayerGradCam
    from torchray.attribution.grad_cam import grad_cam as tr_grad_cam
    from torchray.attribution.linear_approx import linear_approx as tr_linear_approx

    layer, module = s.layer, _module(model, s.layer)
    setting = f"batch {x.shape[0]}, `{layer}`"
    pgc_check = normalised_resized(s.size)
    return [
        Row(
            "grad_cam",
            setting,
            [
                Contender(
                    "backlight",
                    f'backlight.grad_cam(model, x, t, layer="{layer}")',
                    lambda: backlight.grad_cam(model, x, target, layer=layer),
                ),
                Contender(
                    "Captum",
                    f"LayerGradCam(model, model.{layer}).attribute(x, target=t, "
                    "relu_attributions=True)",
                    lambda: LayerGradCam(model, module).attribute(
                        x, target=target, relu_attributions=True
                    ),
                    same_values(),
                ),
                Contender(
                    "TorchRay",
                    f'torchray.attribution.grad_cam(model, x, t, saliency_layer="{layer}")',
                    lambda: tr_grad_cam(model, x.clone(), target, saliency_layer=layer),
                    same_values(),
                ),
                Contender(
                    "pytorch-grad-cam",
                    f"GradCAM(model, [model.{layer}])(x, targets)",
                    lambda: _pgc("GradCAM", model, layer, x, target),
                    pgc_check,
                ),
            ],
        ),
        Row(
            "guided_grad_cam",
            setting,
            [
                Contender(
                    "backlight",
                    f'backlight.guided_grad_cam(model, x, t, layer="{layer}", reduce=None)',
                    lambda: backlight.guided_grad_cam(model, x, target, layer=layer, reduce=None),
                ),
                Contender(
                    "Captum",
                    f"GuidedGradCam(model, model.{layer}).attribute(x, target=t, "
                    'interpolate_mode="bilinear")',
                    lambda: GuidedGradCam(model, module).attribute(
                        x.clone(), target=target, interpolate_mode="bilinear"
                    ),
                    same_values(),
                ),
            ],
        ),
        Row(
            "linear_approx",
            setting,
            [
                Contender(
                    "backlight",
                    f'backlight.linear_approx(model, x, t, layer="{layer}")',
                    lambda: backlight.linear_approx(model, x, target, layer=layer),
                ),
                Contender(
                    "TorchRay",
                    f'torchray.attribution.linear_approx(model, x, t, saliency_layer="{layer}")',
                    lambda: tr_linear_approx(model, x.clone(), target, saliency_layer=layer),
                    same_values(),
                ),
            ],
        ),
        Row(
            "grad_cam_plus_plus",
            setting,
            [
                Contender(
                    "backlight",
                    f'backlight.grad_cam_plus_plus(model, x, t, layer="{layer}")',
                    lambda: backlight.grad_cam_plus_plus(model, x, target, layer=layer),
                ),
                Contender(
                    "pytorch-grad-cam",
                    f"GradCAMPlusPlus(model, [model.{layer}])(x, targets)",
                    lambda: _pgc("GradCAMPlusPlus", model, layer, x, target),
                    pgc_check,
                ),
            ],
        ),
        Row(
            "layer_cam",
            setting,
            [
                Contender(
                    "backlight",
                    f'backlight.layer_cam(model, x, t, layer="{layer}")',
                    lambda: backlight.layer_cam(model, x, target, layer=layer),
                ),
                Contender(
                    "pytorch-grad-cam",
                    f"LayerCAM(model, [model.{layer}])(x, targets)",
                    lambda: _pgc("LayerCAM", model, layer, x, target),
                    pgc_check,
                ),
            ],
        ),
    ]


def score_cam_row(model: nn.Module, x: torch.Tensor, target: list[int], s: Settings) -> Row:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    one, t = x[:1], target[:1]
    layer, module = s.score_layer, _module(model, s.score_layer)
    with torch.inference_mode():
        kept: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o: kept.append(o))
        model(one)
        handle.remove()
    channels = kept[0].shape[1]

    def theirs() -> Any:
        with ScoreCAM(model, [module]) as cam:
            cam.batch_size = s.mask_batch
            return cam(one, [ClassifierOutputTarget(t[0])])

    return Row(
        "score_cam",
        f"1 image, `{layer}` ({channels} channels: one forward pass each), "
        f"batches of {s.mask_batch}",
        [
            Contender(
                "backlight",
                f'backlight.score_cam(model, x, t, layer="{layer}", '
                f'weighting="channel_softmax", batch_size={s.mask_batch})',
                lambda: backlight.score_cam(
                    model,
                    one,
                    t,
                    layer=layer,
                    weighting="channel_softmax",
                    batch_size=s.mask_batch,
                    progress=False,
                ),
            ),
            Contender(
                "pytorch-grad-cam",
                f"ScoreCAM(model, [model.{layer}]) with batch_size = {s.mask_batch}",
                theirs,
                normalised_resized(s.size),
            ),
        ],
        note="pytorch-grad-cam upsamples the masks with align_corners=True, backlight with "
        "align_corners=False; hence a correlation, not equal values",
    )


def smooth_grad_row(model: nn.Module, x: torch.Tensor, target: list[int], s: Settings) -> Row:
    """Captum's noise has one standard deviation for the whole batch, backlight's is ``noise ×
    (max − min)`` per sample: the images are rescaled to the same range so that both are
    ``noise × range``."""
    from captum.attr import NoiseTunnel, Saliency

    n = min(s.smooth_batch, x.shape[0])
    spans = x[:n].flatten(1).amax(1) - x[:n].flatten(1).amin(1)
    span = float(spans.mean())
    images = x[:n] * (span / spans).view(-1, 1, 1, 1)
    t = target[:n]
    stdev = s.noise * span
    per_example = max(1, s.mask_batch // n)  # Captum's batches hold this many noisy copies each

    def ours(seed: int = 0) -> Any:
        return backlight.smooth_grad(
            backlight.gradient,
            model,
            images,
            t,
            samples=s.samples,
            noise=s.noise,
            batch_size=s.mask_batch,
            seed=seed,
            reduce=None,
            progress=False,
        )

    def captum() -> Any:
        return NoiseTunnel(Saliency(model)).attribute(
            images.clone(),
            nt_type="smoothgrad",
            nt_samples=s.samples,
            nt_samples_batch_size=per_example,
            stdevs=stdev,
            target=t,
            abs=False,
        )

    def check(mine: Any, theirs: Any) -> Agreement:
        # Independent noise draws: Captum's map must agree with ours as well as ours with
        # another seed does (the Monte Carlo ceiling), less 0.05, and have the same magnitude.
        again = ours(seed=1)
        ceiling = _correlation(_abs_max(mine), _abs_max(again))
        r = _correlation(_abs_max(mine), _abs_max(_as_tensor(theirs)))
        scale = float(theirs.abs().mean() / mine.abs().mean())
        ok = r > ceiling - 0.05 and 0.9 < scale < 1.1
        return Agreement("corr.", r, ok, f"seed-to-seed {ceiling:.2g}, scale {scale:.2f}")

    return Row(
        "smooth_grad",
        f"batch {n}, {s.samples} samples, noise {s.noise}, batches of {per_example * n}",
        [
            Contender(
                "backlight",
                f"backlight.smooth_grad(backlight.gradient, model, x, t, samples={s.samples}, "
                f"noise={s.noise}, batch_size={per_example * n}, reduce=None)",
                ours,
            ),
            Contender(
                "Captum",
                f'NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", '
                f"nt_samples={s.samples}, nt_samples_batch_size={per_example}, "
                f"stdevs={s.noise} × range, target=t, abs=False)",
                captum,
                check,
            ),
        ],
        note="images rescaled to one range so that Captum's single stdev equals backlight's "
        "per-image noise × range; independent noise draws, so the check is statistical",
    )


def excitation_rows(
    model: nn.Module, x: torch.Tensor, target: list[int], s: Settings
) -> tuple[list[Row], list[nn.Module]]:
    from torchray.attribution import excitation_backprop as ebp

    # TorchRay needs the residual sums of a ResNet as modules, and its contrastive variant
    # negates the classifier's weights in place for a moment: it works on a copy.
    theirs_model = copy.deepcopy(model)
    if isinstance(model, torchvision.models.ResNet):
        theirs_model = ebp.update_resnet(theirs_model)
    layer = s.ebp_layer
    setting = f"batch {x.shape[0]}, `{layer}`"
    rows = [
        Row(
            "excitation_backprop",
            setting,
            [
                Contender(
                    "backlight",
                    f'backlight.excitation_backprop(model, x, t, layer="{layer}")',
                    lambda: backlight.excitation_backprop(model, x, target, layer=layer),
                ),
                Contender(
                    "TorchRay",
                    f'excitation_backprop(update_resnet(copy), x, t, saliency_layer="{layer}")',
                    lambda: ebp.excitation_backprop(
                        theirs_model, x.clone(), target, saliency_layer=layer
                    ),
                    same_values(),
                ),
            ],
        )
    ]
    if s.contrast_layer is not None:
        contrast = s.contrast_layer
        rows.append(
            Row(
                "contrastive_excitation_backprop",
                setting,
                [
                    Contender(
                        "backlight",
                        f'backlight.contrastive_excitation_backprop(model, x, t, layer="{layer}")',
                        lambda: backlight.contrastive_excitation_backprop(
                            model, x, target, layer=layer
                        ),
                    ),
                    Contender(
                        "TorchRay",
                        f"contrastive_excitation_backprop(update_resnet(copy), x, t, "
                        f'saliency_layer="{layer}", contrast_layer="{contrast}")',
                        lambda: ebp.contrastive_excitation_backprop(
                            theirs_model,
                            x.clone(),
                            target,
                            saliency_layer=layer,
                            contrast_layer=contrast,
                        ),
                        same_values(),
                    ),
                ],
            )
        )
    else:
        print(
            f"contrastive_excitation_backprop skipped: no contrast layer known for {s.model}; "
            "pass --contrast-layer",
            file=sys.stderr,
        )
    return rows, [theirs_model]


def rise_rows(
    model: nn.Module, x: torch.Tensor, target: list[int], s: Settings, methods: Sequence[str]
) -> list[Row]:
    """TorchRay's RISE always computes the maps of every class (its class-specific
    ``rise_class`` indexes them afterwards); backlight computes the targets' maps, or every
    class's with ``target="all"``: a row for each."""
    from torchray.attribution.rise import rise as tr_rise

    one = x[:1]
    # The class whose sigmoid score is least saturated: random ResNet-50 logits reach ±100, and
    # a score of exactly 1 under every mask would make the check below trivially true.
    with torch.inference_mode():
        t = [int((torch.sigmoid(model(one)[0]) - 0.5).abs().argmin())]
    size = (int(x.shape[-2]), int(x.shape[-1]))
    p = 0.5
    common = f"num_masks={s.masks}, batch_size={s.mask_batch}"

    def theirs() -> Any:
        return tr_rise(model, one, num_masks=s.masks, batch_size=s.mask_batch)

    def on_our_masks() -> torch.Tensor:
        # TorchRay run on backlight's masks: then the two differ only in the normalisation,
        # N instead of N · p (backlight's plain estimator; its default control variate differs
        # from TorchRay's by a term of mean zero).
        masks = RiseMasks(size, num_masks=s.masks, cells=7, p=p, seed=0).render(0, s.masks)
        theirs: torch.Tensor = tr_rise(
            model, one, num_masks=s.masks, batch_size=s.mask_batch, filter_masks=masks
        )
        return theirs

    def check_class(ours: Any, _theirs: Any) -> Agreement:
        error = _relative_error(ours * p, on_our_masks()[:, t[0] : t[0] + 1])
        return Agreement("rel. error", error, error < RELATIVE_TOLERANCE, "on the same masks")

    def check_all(ours: Any, _theirs: Any) -> Agreement:
        error = _relative_error(ours * p, on_our_masks())
        return Agreement("rel. error", error, error < RELATIVE_TOLERANCE, "on the same masks")

    setting = f"1 image, {s.masks} masks, batches of {s.mask_batch}, sigmoid"
    rows = []
    if "rise" in methods:
        rows.append(
            Row(
                "rise",
                f"{setting}, class {t[0]} (the least saturated)",
                [
                    Contender(
                        "backlight",
                        f'backlight.rise(model, x, t, {common}, probability="sigmoid", estimator="plain")',
                        lambda: backlight_rise(
                            model,
                            one,
                            t,
                            num_masks=s.masks,
                            batch_size=s.mask_batch,
                            probability="sigmoid",
                            estimator="plain",
                            progress=False,
                        ),
                    ),
                    Contender(
                        "TorchRay",
                        f"torchray.attribution.rise(model, x, {common}) (every class)",
                        theirs,
                        check_class,
                    ),
                ],
                note="TorchRay computes every class's map whatever the target",
            )
        )
    if "rise_all_classes" in methods:
        rows.append(
            Row(
                "rise (every class)",
                setting,
                [
                    Contender(
                        "backlight",
                        f'backlight.rise(model, x, "all", {common}, probability="sigmoid", estimator="plain")',
                        lambda: backlight_rise(
                            model,
                            one,
                            "all",
                            num_masks=s.masks,
                            batch_size=s.mask_batch,
                            probability="sigmoid",
                            estimator="plain",
                            progress=False,
                        ),
                    ),
                    Contender(
                        "TorchRay",
                        f"torchray.attribution.rise(model, x, {common})",
                        theirs,
                        check_all,
                    ),
                ],
            )
        )
    return rows


def extremal_row(model: nn.Module, x: torch.Tensor, target: list[int], s: Settings) -> Row:
    """Time per iteration: (time of a ``long`` run − time of a ``short`` run) / (long − short),
    so that one-off costs such as the blur pyramid drop out."""
    from torchray.attribution.extremal_perturbation import extremal_perturbation as tr_ep

    one, t = x[:1], target[0]
    areas = list(s.areas)
    # TorchRay's mask resolution is fixed for 224 pixels (step 7, sigma 21) and its strongest
    # blur at 20 pixels; both get the same values, scaled to the image size.
    step = max(1, round(7 * s.size / 224))
    sigma = 3.0 * step
    shared = f"areas={areas}, step={step}, sigma={sigma:g}"

    def ours(iterations: int) -> Any:
        return backlight_extremal(
            model,
            one,
            t,
            areas=areas,
            max_iter=iterations,
            step=step,
            sigma=sigma,
            max_blur=20.0,
            area_with_margin=True,  # TorchRay measures the area over the mask and its margin
            progress=False,
        )

    def theirs(iterations: int) -> Any:
        return tr_ep(model, one, t, areas=areas, max_iter=iterations, step=step, sigma=sigma)

    def check(mine: Any, their: Any) -> Agreement:
        # The energy (reward and area term) of every iteration and area. The masks themselves
        # drift apart by a few 1e-3 after a few iterations: the area penalty sorts the mask,
        # whose many tied values the two sort in different orders once they differ in the
        # last bit (tests/test_extremal.py).
        their_masks, history = their
        error = _relative_error(mine.history[0], history)
        centred = [
            m - m.mean(dim=(-2, -1), keepdim=True) for m in (mine.masks[0], their_masks[:, 0])
        ]
        drift = _relative_error(*centred)
        return Agreement(
            "rel. error",
            error,
            error < RELATIVE_TOLERANCE,
            f"energy over {s.long} iterations; masks minus their mean: {drift:.1g}",
        )

    return Row(
        "extremal_perturbation",
        f"1 image, areas {areas}, per iteration ({s.long} minus {s.short} iterations)",
        [
            Contender(
                "backlight",
                f"backlight.extremal_perturbation(model, x, t, {shared}, max_blur=20, "
                "area_with_margin=True, max_iter=k)",
                ours,
            ),
            Contender(
                "TorchRay",
                f"torchray.attribution.extremal_perturbation(model, x, t, {shared}, max_iter=k)",
                theirs,
                check,
            ),
        ],
        per_iteration=(s.short, s.long),
    )


def build_rows(
    model: nn.Module, x: torch.Tensor, target: list[int], s: Settings, methods: Sequence[str]
) -> tuple[list[Row], list[nn.Module]]:
    rows: list[Row] = []
    copies: list[nn.Module] = []
    if any(m in methods for m in ("gradient", "guided_backprop", "deconvnet")):
        rows += [r for r in gradient_rows(model, x, target, s) if r.method in methods]
    if any(m in methods for m in METHODS[3:8]):
        rows += [r for r in cam_rows(model, x, target, s) if r.method in methods]
    if "score_cam" in methods:
        rows.append(score_cam_row(model, x, target, s))
    if "smooth_grad" in methods:
        rows.append(smooth_grad_row(model, x, target, s))
    if "excitation_backprop" in methods or "contrastive_excitation_backprop" in methods:
        excitation, copies = excitation_rows(model, x, target, s)
        rows += [r for r in excitation if r.method in methods]
    if "rise" in methods or "rise_all_classes" in methods:
        rows += rise_rows(model, x, target, s, methods)
    if "extremal_perturbation" in methods:
        rows.append(extremal_row(model, x, target, s))
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: order.get(r.method, order["rise_all_classes"]))
    return rows, copies


# ----------------------------------------------------------------------------------------------
# Running


class Reset:
    """Puts back what peers change: parameter ``.grad`` s (pytorch-grad-cam computes them) and
    ``requires_grad`` flags (TorchRay's extremal perturbation clears them and leaves them so)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.flags = [(p, p.requires_grad) for m in models for p in m.parameters()]

    def __call__(self) -> None:
        for p, flag in self.flags:
            p.grad = None
            p.requires_grad_(flag)


def check_row(row: Row, reset: Reset) -> None:
    """Call every contender once (its warm-up) and compare each peer's output with backlight's.
    A per-iteration row runs ``long`` iterations, so that the masks have moved."""
    args = (row.per_iteration[1],) if row.per_iteration else ()
    print(f"{row.method}: warm-up and agreement check", file=sys.stderr)
    outputs: dict[str, Any] = {}
    for c in row.contenders:
        outputs[c.library] = c.run(*args)
        reset()
    ours = outputs["backlight"]
    for c in row.contenders[1:]:
        assert c.check is not None
        row.agreement[c.library] = c.check(ours, outputs[c.library])
        reset()


def time_row(row: Row, rounds: int, reset: Reset) -> None:
    """Interleaved rounds: every contender once per round, in the same order."""
    short_long = row.per_iteration
    row.times = {c.library: [] for c in row.contenders}
    row.memory = {c.library: [] for c in row.contenders}
    for r in range(rounds):
        for c in row.contenders:
            if short_long is None:
                with PeakMemory() as peak:
                    start = time.perf_counter()
                    c.run()
                    elapsed = time.perf_counter() - start
                reset()
            else:
                short, long = short_long
                with PeakMemory():
                    start = time.perf_counter()
                    c.run(short)
                    first = time.perf_counter() - start
                reset()
                with PeakMemory() as peak:
                    start = time.perf_counter()
                    c.run(long)
                    elapsed = (time.perf_counter() - start - first) / (long - short)
                reset()
            row.times[c.library].append(elapsed)
            row.memory[c.library].append(peak.peak)
        print(
            f"{row.method}: round {r + 1}/{rounds} (load {os.getloadavg()[0]:.2f})",
            file=sys.stderr,
        )


# ----------------------------------------------------------------------------------------------
# Reporting


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def render(rows: list[Row], s: Settings, command: str, load: tuple[float, ...], quick: bool) -> str:
    peers = [p for p in PEERS if any(c.library == p for r in rows for c in r.contenders)]
    head = "| method | setting | backlight time | backlight memory |"
    rule = "| --- | --- | ---: | ---: |"
    for p in peers:
        head += f" {p} time ratio | {p} memory |"
        rule += " ---: | ---: |"
    head += " agreement with backlight | warning |"
    rule += " --- | --- |"
    lines = [
        f"### backlight and its peers: {s.model} (random weights), batch {s.batch}, "
        f"{s.size}x{s.size}, CPU ({s.threads} threads), {s.rounds} interleaved rounds"
        + (" (quick smoke run)" if quick else ""),
        "",
        f"`{command}`",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; torch {torch.__version__}, captum "
        f"{_version('captum')}, torchray {_version('torchray')}, grad-cam {_version('grad-cam')}; "
        f"{_machine()}; load average before the run {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} "
        f"(1, 5, 15 min), after {os.getloadavg()[0]:.2f}.",
        "",
        "Time ratio = the peer's median time / backlight's median time (> 1: the peer is "
        "slower). Memory = peak resident memory above the level before the call, the median "
        "over the rounds, with its ratio to backlight's. Agreement, checked once before timing: "
        f"relative L2 error ‖ours − theirs‖ / ‖theirs‖ after the same reduction (must be < "
        f"{RELATIVE_TOLERANCE:g}), or, for pytorch-grad-cam's normalised and resized maps, the "
        "smallest per-image Pearson correlation with ours resized the same way (must be > "
        f"{CORRELATION_FLOOR:g}).",
        "",
        head,
        rule,
    ]
    for row in rows:
        ours_time = statistics.median(row.times["backlight"])
        ours_memory = int(statistics.median(row.memory["backlight"]))
        unit = " s/iteration" if row.per_iteration else " s"
        cells = [row.method, row.setting, f"{ours_time:.3f}{unit}", _mib(ours_memory)]
        for p in peers:
            if p not in row.times:
                cells += ["—", "—"]
                continue
            ratio = statistics.median(row.times[p]) / ours_time
            memory = int(statistics.median(row.memory[p]))
            memory_ratio = f"×{memory / ours_memory:.2f}" if ours_memory >= 2**20 else "×n/a"
            cells += [f"{ratio:.2f}", f"{_mib(memory)} ({memory_ratio})"]
        agreement = [f"{p}: {a.text()}" for p, a in row.agreement.items()]
        warning = [
            f"**{p} differs: {a.problem or a.value_text()}**"
            for p, a in row.agreement.items()
            if not a.ok
        ]
        cells += ["; ".join(agreement), "; ".join(warning)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The calls (t: the targets, one class per image):", ""]
    for row in rows:
        calls = "; ".join(f"{c.library} `{c.call}`" for c in row.contenders)
        note = f" Note: {row.note}." if row.note else ""
        lines.append(f"- **{row.method}**: {calls}.{note}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Command line


def parse(argv: list[str]) -> tuple[argparse.Namespace, Settings, list[str]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="torchvision architecture")
    parser.add_argument("--batch", type=int, help="images per call (default 8; quick: 2)")
    parser.add_argument("--size", type=int, help="image side (default 224; quick: 64)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 3; quick: 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of: {', '.join(METHODS)}",
    )
    parser.add_argument("--layer", help="CAM layer (default: backlight.default_cam_layer)")
    parser.add_argument("--score-layer", help="Score-CAM layer (ResNets: layer1)")
    parser.add_argument("--ebp-layer", help="excitation backprop layer (ResNets: layer3)")
    parser.add_argument("--contrast-layer", help="TorchRay's contrast layer (ResNets: avgpool)")
    parser.add_argument("--smooth-batch", type=int, help="SmoothGrad images (default 2)")
    parser.add_argument("--samples", type=int, help="SmoothGrad samples (default 16; quick: 4)")
    parser.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise level")
    parser.add_argument("--masks", type=int, help="RISE masks (default 256; quick: 32)")
    parser.add_argument(
        "--mask-batch", type=int, help="RISE, Score-CAM, SmoothGrad batch size (default 32)"
    )
    parser.add_argument("--areas", type=float, nargs="+", help="extremal perturbation areas")
    parser.add_argument(
        "--iterations",
        type=int,
        nargs=2,
        metavar=("SHORT", "LONG"),
        help="extremal perturbation runs whose difference gives the per-iteration cost "
        "(default 1 3)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--markdown", help="append the table to this file")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    def pick(value: Any, normal: Any, quick: Any) -> Any:
        if value is not None:
            return value
        return quick if args.quick else normal

    size = pick(args.size, 224, 64)
    iterations = pick(args.iterations, (1, 3), (1, 5))
    if iterations[1] <= iterations[0] or iterations[0] < 1:
        parser.error("--iterations SHORT LONG needs 1 <= SHORT < LONG")
    s = Settings(
        model=args.model,
        batch=pick(args.batch, 8, 2),
        size=size,
        rounds=pick(args.rounds, 3, 1),
        threads=args.threads,
        layer=args.layer or "",
        score_layer=args.score_layer or "",
        ebp_layer=args.ebp_layer or "",
        contrast_layer=args.contrast_layer,
        smooth_batch=pick(args.smooth_batch, 2, 1),
        samples=pick(args.samples, 16, 4),
        noise=args.noise,
        masks=pick(args.masks, 256, 32),
        mask_batch=pick(args.mask_batch, 32, 16),
        areas=tuple(pick(args.areas, [0.05, 0.1, 0.2], [0.1])),
        short=iterations[0],
        long=iterations[1],
    )
    return args, s, methods


def with_default_layers(s: Settings, model: nn.Module, x: torch.Tensor) -> Settings:
    cam = s.layer or backlight.default_cam_layer(model, x[:1])
    known = next((v for k, v in KNOWN_LAYERS.items() if s.model.startswith(k)), (cam, cam, None))
    return replace(
        s,
        layer=cam,
        score_layer=s.score_layer or known[0],
        ebp_layer=s.ebp_layer or known[1],
        contrast_layer=s.contrast_layer or known[2],
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, s, methods = parse(argv)
    load = os.getloadavg()
    warnings.filterwarnings("ignore")  # Captum warns on every call; TorchRay's deprecations
    model, x, target = random_setup(s.model, s.batch, s.size, s.threads)
    s = with_default_layers(s, model, x)

    rows, copies = build_rows(model, x, target, s, methods)
    reset = Reset([model, *copies])
    for row in rows:
        check_row(row, reset)
        time_row(row, s.rounds, reset)

    command = " ".join(["python benchmarks/peers.py", *argv])
    table = render(rows, s, command, load, args.quick)
    publish(table, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
