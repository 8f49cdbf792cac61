"""RISE against the authors' mask construction, a literal float64 reference, maps known by hand,
TorchRay, and its promises: seeded, batch-size independent, bounded memory, quiet on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import resize
from torch import nn
from torch.profiler import ProfilerActivity, profile

import backlight
from backlight.methods.rise import AUTO_LIMIT, RiseMasks, rise

from .nets import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")


class PatchMean(nn.Module):
    """One logit: the mean of channel 0 over the patch rows 2..5, columns 9..12 (16x16 input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 2:6, 9:13].mean(dim=(1, 2))[:, None]


class Bump(nn.Module):
    """A random conv whose rectified response is pooled under a Gaussian bump centred at
    (8, 20) of a 32x32 image; logits [s, -s, 0] with s scaled to ±4 between the image ``x`` and
    a black image, so the masks' effect on the score is strong and local."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 5, padding=2)
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        bump = torch.exp(-((yy - 8) ** 2 + (xx - 20) ** 2) / 32.0)
        self.register_buffer("bump", bump / bump.sum())
        self.mid, self.span = 0.0, 1.0
        with torch.no_grad():
            full, black = float(self.raw(x)[0]), float(self.raw(0 * x)[0])
        self.mid, self.span = (full + black) / 2, (full - black) / 8

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.relu(self.conv(x)).mean(dim=1) * self.bump).sum(dim=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (self.raw(x) - self.mid) / self.span
        return torch.stack([s, -s, 0 * s], dim=1)


class ViewsItsInput(nn.Module):
    """Has a convolution, but flattens its input with ``view``: channels-last input fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(3 * 12 * 12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(x.shape[0], -1)) + self.conv(x).mean() * 0.1


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten().double() - a.double().mean()
    b = b.flatten().double() - b.double().mean()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize(("size", "cells"), [((12, 12), 3), ((30, 17), 4), ((16, 16), 7)])
def test_masks_are_the_authors_construction(size: tuple[int, int], cells: int) -> None:
    """Each mask is the authors' recipe: the grid resized with skimage (order 1, reflect, no
    anti-aliasing) to (cells + 1) · ⌈size / cells⌉, cropped at the drawn shift."""
    masks = RiseMasks(size, num_masks=12, cells=cells, p=0.5, seed=3)
    got = masks.render(0, 12, dtype=torch.float64)[:, 0].numpy()
    up = ((cells + 1) * masks.cell_size[0], (cells + 1) * masks.cell_size[1])
    for i in range(12):
        grid = masks.grids[i].double().numpy()
        full = resize(grid, up, order=1, mode="reflect", anti_aliasing=False)
        sy, sx = masks.shifts[i].tolist()
        np.testing.assert_allclose(got[i], full[sy : sy + size[0], sx : sx + size[1]], atol=1e-12)
    assert 0 < masks.grids.float().mean() < 1 and len({tuple(s) for s in masks.shifts.tolist()}) > 1


@pytest.mark.parametrize("estimator", ["plain", "control_variate"])
@pytest.mark.parametrize("probability", ["softmax", "sigmoid", None])
def test_matches_literal_float64_reference(
    probability: str | None, estimator: str, tiny64: TinyNet
) -> None:
    """Plain: S(λ) = Σ_i f_i M_i(λ) / (N p); control variate: with c = Σ_i f_i / N,
    S(λ) = N / (N - 1) · Σ_i (f_i - c) M_i(λ) / (N p) + c; one masked image at a time, with the
    same masks; 40 masks in batches of 16 leave a partial last batch."""
    torch.manual_seed(5)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    target = [1, 3]
    masks = RiseMasks((12, 12), num_masks=40, cells=3, p=0.4, seed=11)
    expected = torch.zeros(2, 1, 12, 12, dtype=torch.float64)
    errors = torch.zeros(2, 1, 12, 12, dtype=torch.float64)
    ratios = []
    with torch.no_grad():
        for n in range(2):
            scores, rendered = [], []
            for i in range(40):
                mask = masks.render(i, i + 1, dtype=torch.float64)[0, 0]
                logits = tiny64(x[n : n + 1] * mask)[0]
                if probability == "softmax":
                    logits = torch.softmax(logits, dim=0)
                elif probability == "sigmoid":
                    logits = torch.sigmoid(logits)
                scores.append(logits[target[n]])
                rendered.append(mask)
            c = sum(scores) / 40 if estimator == "control_variate" else 0.0
            for f, mask in zip(scores, rendered, strict=True):
                expected[n, 0] += (f - c) * mask / (40 * 0.4)
            if estimator == "control_variate":
                expected[n, 0] = expected[n, 0] * 40 / 39 + c
            # standard errors: of each pixel's mean of Z_i = (f_i - c) M_i / p, and of the same
            # mean with each Z_i's own mean over pixels taken out (what the look of a map sees)
            z = torch.stack([(f - c) * m / 0.4 for f, m in zip(scores, rendered, strict=True)])
            scale = 40 / 39 if estimator == "control_variate" else 1.0
            errors[n, 0] = z.std(dim=0) / 40**0.5 * scale
            centred = z - z.mean(dim=(1, 2), keepdim=True)
            noise = (centred.var(dim=0) / 40).mean().sqrt() * scale
            ratios.append(float(noise / expected[n, 0].std()))
    got = rise(
        tiny64,
        x,
        target,
        num_masks=40,
        cells=3,
        p=0.4,
        seed=11,
        batch_size=16,
        probability=probability,  # type: ignore[arg-type]
        estimator=estimator,  # type: ignore[arg-type]
        progress=False,
    )
    assert got.dtype == torch.float64 and got.shape == (2, 1, 12, 12)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert got.extras["masks_used"].tolist() == [40, 40]
    torch.testing.assert_close(got.extras["standard_error"], errors, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(
        got.extras["noise_to_signal"], torch.tensor(ratios, dtype=torch.float32), rtol=1e-5, atol=0
    )


class Corner(nn.Module):
    """One logit: ``offset`` plus the mean of channel 0 over the top-left 4x4 of an 8x8 input.
    A large offset is what makes the plain estimator noisy (``offset`` times the noise of the
    mask count)."""

    def __init__(self, offset: float = 5.0) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.offset + x[:, 0, :4, :4].mean(dim=(1, 2))[:, None]


def _every_mask() -> RiseMasks:
    """All 256 masks of 2x2 cells on 8x8 pixels (16 grids times 16 shifts), each as likely as
    under RiseMasks' draws with p = 0.5: their average is the exact expectation."""
    masks = RiseMasks((8, 8), num_masks=256, cells=2, p=0.5, seed=0)
    grids = torch.tensor([[(g >> k) & 1 for k in range(4)] for g in range(16)], dtype=torch.bool)
    shifts = torch.tensor([[a, b] for a in range(4) for b in range(4)])
    masks.grids = grids.view(16, 1, 2, 2).expand(16, 16, 2, 2).reshape(256, 2, 2)
    masks.shifts = shifts[None].expand(16, 16, 2).reshape(256, 2)
    return masks


def _exact_rise(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """S(λ) = E[f(x ⊙ M) M(λ)] / p over every mask: RISE's quantity, no sampling."""
    rendered = _every_mask().render(0, 256, dtype=torch.float64)
    with torch.no_grad():
        scores = model(x * rendered)[:, 0]
    return (scores[:, None, None, None] * rendered).mean(dim=0, keepdim=True) / 0.5


def test_exact_expectation_by_enumeration_is_the_mean_of_both_estimators() -> None:
    """Over 300 seeds of 16 masks each, both estimators average to the exact map (within four
    standard errors of that average at every pixel): the control variate changes the variance,
    not the mean; and its spread across seeds is a fraction of the plain estimator's."""
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = _exact_rise(Corner(), x)
    assert float(exact[0, 0, :4, :4].mean()) > float(exact[0, 0, 4:, 4:].mean())
    spread = {}
    for estimator in ("plain", "control_variate"):
        runs = torch.stack(
            [
                rise(
                    Corner(),
                    x,
                    0,
                    num_masks=16,
                    cells=2,
                    seed=s,
                    probability=None,
                    estimator=estimator,
                    progress=False,
                )  # type: ignore[arg-type]
                for s in range(300)
            ]
        )
        error_of_mean = runs.std(dim=0) / 300**0.5
        assert bool(((runs.mean(dim=0) - exact).abs() < 4 * error_of_mean + 1e-12).all())
        spread[estimator] = float(runs.std(dim=0).mean())
    assert spread["control_variate"] < 0.2 * spread["plain"]


@pytest.mark.parametrize("tolerance", [0.2, 0.1])
def test_auto_stops_within_its_tolerance_of_the_exact_map(tolerance: float) -> None:
    """num_masks="auto": for each seed the map's actual noise-to-signal ratio against the exact
    map (RMS error, less its mean over pixels, over the exact map's spread) is within twice the
    tolerance, where it stopped by its own estimate; a tighter tolerance takes more masks, in
    steps of 256."""
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = _exact_rise(Corner(1.0), x)

    def auto(tol: float, seed: int, batch_size: int = 100) -> torch.Tensor:
        return rise(
            Corner(1.0),
            x,
            0,
            num_masks="auto",
            tolerance=tol,
            cells=2,
            seed=seed,
            probability=None,
            batch_size=batch_size,
            progress=False,
        )

    used = []
    for seed in range(4):
        got = auto(tolerance, seed)
        difference = got - exact
        actual = float((difference - difference.mean()).pow(2).mean().sqrt() / exact.std())
        assert actual < 2 * tolerance, (seed, actual)
        assert float(got.extras["noise_to_signal"][0]) <= tolerance
        count = int(got.extras["masks_used"][0])
        assert count % 256 == 0 and count < AUTO_LIMIT
        used.append(count)
        # the stop does not depend on batch_size
        torch.testing.assert_close(auto(tolerance, seed, batch_size=64), got)
    if tolerance == 0.1:
        coarse = auto(0.2, 0, batch_size=32)
        assert int(coarse.extras["masks_used"][0]) < used[0]


def test_auto_stops_each_image_on_its_own() -> None:
    """Two images in one call: each takes the masks it needs, and its map is the one it gets
    alone."""
    torch.manual_seed(3)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    x[1, 0, :4, :4] = 0.5  # a flat corner: less signal, more masks
    both = rise(Corner(1.0), x, 0, num_masks="auto", cells=2, probability=None, progress=False)
    for i in range(2):
        alone = rise(
            Corner(1.0),
            x[i : i + 1],
            0,
            num_masks="auto",
            cells=2,
            probability=None,
            progress=False,
        )
        torch.testing.assert_close(both[i : i + 1], alone)
        assert both.extras["masks_used"][i] == alone.extras["masks_used"][0]


def test_auto_says_when_it_reaches_its_limit(caplog: pytest.LogCaptureFixture) -> None:
    """A map that cannot settle within 16,000 masks (a tolerance far too tight): all the masks,
    and a warning with the ratio reached."""
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with caplog.at_level("WARNING", logger="backlight"):
        got = rise(
            Corner(),
            x,
            0,
            num_masks="auto",
            tolerance=1e-4,
            cells=2,
            probability=None,
            batch_size=500,
            progress=False,
        )
    assert int(got.extras["masks_used"][0]) == AUTO_LIMIT
    assert (
        "rise: image 0 reached the limit of 16000 masks with a noise-to-signal ratio" in caplog.text
    )


def test_constant_masks_by_hand() -> None:
    """With one cell, every mask is all ones (kept) or all zeros, so for the linear patch-mean
    model on an image of twos, f_i = 2 if kept: the plain map is 2 k / (N p) everywhere (k
    kept), and the control variate's, with c = 2 k / N, is N / (N - 1) · 2 k (1 - k / N) / (N p)
    + c."""
    x = torch.full((1, 3, 16, 16), 2.0)
    masks = RiseMasks((16, 16), num_masks=10, cells=1, p=0.5, seed=4)
    k = int(masks.grids.sum())
    assert 0 < k < 10  # the seed draws both kinds, or the check below proves less
    options = {"num_masks": 10, "cells": 1, "p": 0.5, "seed": 4, "probability": None}
    plain = rise(PatchMean(), x, 0, estimator="plain", **options)  # type: ignore[arg-type]
    torch.testing.assert_close(plain, torch.full_like(plain, 2.0 * k / (10 * 0.5)))
    control = rise(PatchMean(), x, 0, **options)  # type: ignore[arg-type]
    expected = 10 / 9 * 2 * k * (1 - k / 10) / (10 * 0.5) + 2 * k / 10
    torch.testing.assert_close(control, torch.full_like(control, expected))


def test_patch_model_far_field_and_peak() -> None:
    """The patch-mean model on an image of ones: S(λ) = E[M(λ) · mean_patch(M)] / p. Far from
    the patch (more than two cells away, so M(λ) and the patch are independent) this is
    E[M(λ)] = p; it peaks on the patch. 3000 masks: the standard error of one pixel is about
    0.5 / √3000 / p ≈ 0.02, and the far-field mean averages many pixels, so ±0.03 is loose."""
    x = torch.ones(1, 3, 16, 16)
    got = rise(PatchMean(), x, 0, num_masks=3000, cells=4, p=0.5, probability=None, progress=False)
    far = got[0, 0, 12:, :4]  # the patch is rows 2..5, columns 9..12; cells are 4 px
    assert abs(float(far.mean()) - 0.5) < 0.03
    peak = int(got[0, 0].argmax())
    assert 2 <= peak // 16 <= 5 and 9 <= peak % 16 <= 12
    assert float(got[0, 0, 2:6, 9:13].mean()) > float(far.mean()) + 0.15


def test_agrees_with_torchray() -> None:
    """Independent masks, same model and settings (7 cells, p = 0.5, sigmoid, 1,000 masks):
    the maps must correlate as well as TorchRay correlates with itself under another seed
    (about 0.92 here; RISE is a Monte Carlo estimate, so that is the ceiling), less 0.05; and
    TorchRay divides by N instead of N · p, so our map times p has its mean within 10%.
    Our masks stretch the cells by (cells + 1) / cells as the paper does; TorchRay keeps the
    cell size and adds a reflected cell, so only statistical agreement is expected."""
    from torchray.attribution.rise import rise as torchray_rise

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).abs()
    model = Bump(x).eval()
    ours = rise(model, x, 0, num_masks=1000, probability="sigmoid", progress=False)
    with torch.no_grad():
        theirs = torchray_rise(model, x, seed=0, num_masks=1000)[:, :1]
        again = torchray_rise(model, x, seed=1, num_masks=1000)[:, :1]
    ceiling = _corr(theirs, again)
    assert ceiling > 0.85, "the model's signal is too weak for the comparison to mean anything"
    assert _corr(ours, theirs) > ceiling - 0.05
    assert 0.9 < float((ours * 0.5).mean() / theirs.mean()) < 1.1


def test_seeded_and_independent_of_batch_size(tiny: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12)
    first = rise(tiny, x, [0, 2], num_masks=50, batch_size=16, seed=7, progress=False)
    again = rise(tiny, x, [0, 2], num_masks=50, batch_size=16, seed=7, progress=False)
    other_batches = rise(tiny, x, [0, 2], num_masks=50, batch_size=7, seed=7, progress=False)
    other_seed = rise(tiny, x, [0, 2], num_masks=50, batch_size=16, seed=8, progress=False)
    assert torch.equal(first, again)
    torch.testing.assert_close(other_batches, first, rtol=1e-5, atol=1e-7)
    # another seed, other masks: a different map (by far more than float32 rounding; the
    # control variate makes two seeds' maps close, 5e-4 apart here)
    assert (other_seed - first).abs().max() > 1e-4


def test_every_class_equals_one_class_at_a_time(tiny: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12)
    options = {"num_masks": 40, "cells": 3, "progress": False}
    every = rise(tiny, x, "all", **options)  # type: ignore[arg-type]
    assert every.shape == (2, 5, 12, 12)
    for k in range(5):
        torch.testing.assert_close(every[:, k : k + 1], rise(tiny, x, k, **options))  # type: ignore[arg-type]
    # softmax maps of all classes sum to the map of a constant score 1: Σ_i M_i / (N p)
    ones = rise(tiny, x, lambda out: torch.ones(out.shape[0]), **options)  # type: ignore[arg-type]
    torch.testing.assert_close(every.sum(dim=1, keepdim=True), ones)


def _peak_bytes(fn: object) -> int:
    """Peak of the bytes allocated on the CPU while ``fn`` runs, from the profiler's record of
    every allocation and free, in order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()  # type: ignore[operator]
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_memory_is_bounded_by_batch_size() -> None:
    """32 or 1,024 masks of 64x64 in batches of 16: the same peak, within the 0.1 MiB of the
    grids themselves. Holding all 1,024 masks at once would take 16 MiB; the last check shows
    that the measurement does see that."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(1, 3, 64, 64)

    def run(num_masks: int) -> None:
        rise(model, x, 0, num_masks=num_masks, batch_size=16, progress=False)

    run(1024)  # draws and caches the grids, warms the allocator
    few, many = _peak_bytes(lambda: run(32)), _peak_bytes(lambda: run(1024))
    assert many < few + (1 << 20), (few, many)
    everything = _peak_bytes(lambda: RiseMasks((64, 64), num_masks=1024).render(0, 1024))
    assert everything > 16 * (1 << 20) > 4 * few


def test_progress_bar_can_be_turned_off(capsys: pytest.CaptureFixture[str], tiny: TinyNet) -> None:
    x = torch.randn(1, 3, 12, 12)
    rise(tiny, x, num_masks=20, progress=True)
    assert "RISE" in capsys.readouterr().err
    rise(tiny, x, num_masks=20, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_model_that_cannot_take_channels_last() -> None:
    """The fast channels-last layout is dropped for a model that views its input."""
    torch.manual_seed(0)
    model = ViewsItsInput().eval()
    x = torch.randn(2, 3, 12, 12)
    got = rise(model, x, [1, 2], num_masks=30, cells=3, estimator="plain", progress=False)
    masks = RiseMasks((12, 12), num_masks=30, cells=3).render(0, 30)
    with torch.no_grad():
        expected = torch.stack(
            [
                (torch.softmax(model(x[n] * masks), dim=1)[:, t, None, None] * masks[:, 0]).sum(0)
                for n, t in enumerate([1, 2])
            ]
        )[:, None] / (30 * 0.5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_callable_target_and_non_logit_output() -> None:
    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(x)}

    model = Dict().eval()
    x = torch.randn(2, 3, 12, 12)
    options = {"num_masks": 20, "cells": 3, "progress": False}
    raw = rise(model, x, lambda out: out["logits"][:, 2], probability=None, **options)  # type: ignore[arg-type]
    expected = rise(model.net, x, 2, probability=None, **options)  # type: ignore[arg-type]
    torch.testing.assert_close(raw, expected)
    with pytest.raises(
        backlight.OptionError, match=r"`probability='softmax'` with a callable .* logits.*dict"
    ):
        rise(model, x, lambda out: out["logits"][:, 2], **options)  # type: ignore[arg-type]
    # a class index reads the logits from the dict, so the softmax applies to them
    torch.testing.assert_close(rise(model, x, 2, **options), rise(model.net, x, 2, **options))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_masks": 0}, r"`num_masks` must be a positive int, not 0"),
        ({"num_masks": "many"}, r"`num_masks` must be a positive int or \"auto\", not 'many'"),
        ({"tolerance": 0.1}, r"`tolerance` applies to num_masks=\"auto\" only"),
        ({"num_masks": "auto", "tolerance": 0}, r"`tolerance` must be"),
        ({"estimator": "cv"}, r"`estimator` must be 'control_variate' or 'plain', not 'cv'"),
        ({"cells": 2.5}, r"`cells` must be a positive int"),
        ({"p": 0.0}, r"`p` must be a number in \(0, 1\]"),
        ({"p": 1.5}, r"`p` must be a number in \(0, 1\]"),
        ({"batch_size": -1}, r"`batch_size` must be a positive int"),
        ({"seed": "a"}, r"`seed` must be an int"),
        ({"probability": "relu"}, r"`probability` must be 'softmax', 'sigmoid' or None"),
        ({"progress": 1}, r"`progress` must be True or False"),
    ],
)
def test_bad_options(options: dict[str, object], message: str, tiny: TinyNet) -> None:
    with pytest.raises(backlight.OptionError, match=message):
        rise(tiny, torch.randn(1, 3, 12, 12), 0, **options)  # type: ignore[arg-type]


def test_autocast_is_a_close_approximation() -> None:
    """bfloat16 forward passes: the same masks, scores off by about 1e-2, the same map up to a
    fraction of the sampling noise; float32 results either way."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()
    x = torch.rand(2, 3, 24, 24)
    exact = rise(model, x, [1, 2], num_masks=400, progress=False)
    fast = rise(model, x, [1, 2], num_masks=400, autocast=torch.bfloat16, progress=False)
    assert fast.dtype == torch.float32
    assert _corr(exact, fast) > 0.98
    assert float((fast - exact).norm() / exact.norm()) < 0.05
    assert not torch.equal(fast, exact)  # it is an approximation, and says so
    with pytest.raises(backlight.OptionError, match=r"`autocast` must be None, torch\.bfloat16"):
        rise(model, x, 1, num_masks=8, autocast=torch.float64, progress=False)  # type: ignore[arg-type]
