"""Deletion and insertion: curves and areas computed by hand on a model whose probability is a
known function of the image, the authors' blur, tie-breaking, batching, and the model's state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import nn

from backlight.errors import InputError, OptionError, TargetError
from backlight.metrics import blur, deletion, insertion

from .nets import TinyNet


class PatchMean(nn.Module):
    """Two logits, (m, 0), with m the mean of channel 0 over rows 2..3 and columns 2..3 (or the
    given patch): the softmax probability of class 0 is σ(m)."""

    def __init__(self, rows: slice = slice(2, 4), cols: slice = slice(2, 4)) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0, self.rows, self.cols].mean(dim=(1, 2))
        return torch.stack([m, torch.zeros_like(m)], dim=1)


def sigma(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def trapezoid(curve: list[float]) -> float:
    """The area under ``curve`` sampled at 0, 1/steps, ..., 1, written out."""
    steps = len(curve) - 1
    return sum((curve[i] + curve[i + 1]) / 2 for i in range(steps)) / steps


def test_deletion_by_hand_with_a_partial_last_step() -> None:
    """64 pixels in 5 steps: ⌈64/5⌉ = 13 per step. The map ranks pixels in row-major order, so
    step 1 deletes pixels 0..12 (none of the patch 18, 19, 26, 27), step 2 pixels 0..25 (two of
    them: m = ½), step 3 the rest of the patch."""
    x = torch.ones(1, 1, 8, 8)
    ramp = -torch.arange(64.0).reshape(1, 1, 8, 8)
    result = deletion(PatchMean(), x, ramp, steps=5, progress=False)
    expected = [sigma(1), sigma(1), sigma(0.5), 0.5, 0.5, 0.5]
    assert result.curves[0].tolist() == pytest.approx(expected, abs=1e-7)
    assert float(result.auc[0]) == pytest.approx(trapezoid(expected), abs=1e-7)
    by_hand = (sigma(1) / 2 + sigma(1) + sigma(0.5) + 0.5 + 0.5 + 0.5 / 2) / 5
    assert float(result.auc[0]) == pytest.approx(by_hand, abs=1e-7)
    assert result.pixels_per_step == 13
    assert result.fractions.tolist() == pytest.approx([0, 13 / 64, 26 / 64, 39 / 64, 52 / 64, 1])
    assert result.x.tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert result.classes is not None and result.classes.tolist() == [0]


def test_insertion_and_deletion_by_hand_two_pixels_per_step() -> None:
    """Patch pixels ranked first (4, 3, 2, 1), 2 pixels per step: inserting onto zeros gives
    m = 0, ½, 1, 1, ...; deleting gives m = 1, ½, 0, 0, ..."""
    x = torch.ones(1, 1, 8, 8)
    saliency = torch.zeros(1, 8, 8)
    saliency[0, 2:4, 2:4] = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    inserted = insertion(PatchMean(), x, saliency, 0, steps=32, substrate="zeros", progress=False)
    expected = [0.5, sigma(0.5)] + [sigma(1)] * 31
    assert inserted.curves[0].tolist() == pytest.approx(expected, abs=1e-7)
    by_hand = (0.5 / 2 + sigma(0.5) + 30 * sigma(1) + sigma(1) / 2) / 32
    assert float(inserted.auc[0]) == pytest.approx(by_hand, abs=1e-7)
    deleted = deletion(PatchMean(), x, saliency, 0, steps=32, progress=False)
    assert deleted.curves[0].tolist() == pytest.approx([sigma(1), sigma(0.5)] + [0.5] * 31)


def test_ties_are_broken_in_row_major_order() -> None:
    """A constant map, or one with ties inside the patch, orders pixels top row first, left to
    right: the same curve as the explicit row-major ramp."""
    x = torch.ones(2, 1, 8, 8)
    ramp = -torch.arange(64.0).reshape(1, 1, 8, 8).expand(2, 1, 8, 8)
    flat = torch.zeros(2, 1, 8, 8)
    for mode in (deletion, insertion):
        a = mode(PatchMean(), x, ramp, 0, steps=5, progress=False, substrate="zeros")
        b = mode(PatchMean(), x, flat, 0, steps=5, progress=False, substrate="zeros")
        assert torch.equal(a.curves, b.curves)
    tied = torch.zeros(1, 1, 8, 8)
    tied[0, 0, 2:4, 2:4] = 1.0  # the patch first, its four pixels tied: 18, 19 then 26, 27
    curve = deletion(PatchMean(), x[:1], tied, 0, steps=32, progress=False).curves[0]
    assert curve[:3].tolist() == pytest.approx([sigma(1), sigma(0.5), 0.5])


def _bright_patch() -> tuple[PatchMean, torch.Tensor, torch.Tensor]:
    x = torch.full((1, 1, 16, 16), 0.1)
    x[0, 0, 6:10, 6:10] = 3.0
    generator = torch.Generator().manual_seed(0)
    saliency = 0.01 * torch.rand(1, 1, 16, 16, generator=generator)
    saliency[0, 0, 6:10, 6:10] += 1.0
    return PatchMean(slice(6, 10), slice(6, 10)), x, saliency


def test_a_map_on_the_patch_beats_the_reversed_map() -> None:
    model, x, saliency = _bright_patch()
    good_del = deletion(model, x, saliency, steps=16, progress=False)
    bad_del = deletion(model, x, -saliency, steps=16, progress=False)
    good_ins = insertion(model, x, saliency, steps=16, progress=False)
    bad_ins = insertion(model, x, -saliency, steps=16, progress=False)
    assert float(good_del.auc[0]) < float(bad_del.auc[0]) - 0.3
    assert float(good_ins.auc[0]) > float(bad_ins.auc[0]) + 0.3
    # both curves run between the same end points
    assert float(good_del.curves[0, 0]) == pytest.approx(sigma(3.0), abs=1e-6)
    assert float(good_del.curves[0, -1]) == pytest.approx(0.5, abs=1e-6)
    assert float(good_ins.curves[0, -1]) == pytest.approx(sigma(3.0), abs=1e-6)


def _authors_kernel(size: int = 11, sig: float = 5.0) -> np.ndarray:
    """The RISE authors' kernel: SciPy's Gaussian filter applied to a centred delta."""
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1
    return scipy.ndimage.gaussian_filter(delta, sig)


def test_blur_is_a_gaussian_kernel_11_sigma_5_computed_independently() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 20, 23, generator=generator, dtype=torch.float64)
    kernel = _authors_kernel()
    expected = np.stack(
        [
            [scipy.ndimage.correlate(x[n, c].numpy(), kernel, mode="constant") for c in range(3)]
            for n in range(2)
        ]
    )
    np.testing.assert_allclose(blur(x).numpy(), expected, atol=1e-12)
    # the authors apply it as one conv2d with a diagonal (3, 3, 11, 11) kernel, padding 5
    diagonal = torch.zeros(3, 3, 11, 11, dtype=torch.float64)
    for c in range(3):
        diagonal[c, c] = torch.from_numpy(kernel)
    torch.testing.assert_close(blur(x), F.conv2d(x, diagonal, padding=5))
    # insertion starts from it
    model, image, saliency = _bright_patch()
    start = float(insertion(model, image, saliency, steps=4, progress=False).curves[0, 0])
    blurred = scipy.ndimage.correlate(image[0, 0].double().numpy(), kernel, mode="constant")
    assert start == pytest.approx(sigma(float(blurred[6:10, 6:10].mean())), abs=1e-6)


def test_batching_does_not_change_the_results(tiny: TinyNet) -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 12, 12, generator=generator)
    saliency = torch.rand(3, 1, 12, 12, generator=generator)
    for mode in (deletion, insertion):
        reference = mode(tiny, x, saliency, steps=6, batch_size=1, progress=False)
        assert reference.classes is not None
        assert reference.classes.tolist() == tiny(x).argmax(dim=1).tolist()
        for batch_size in (4, 100):  # 7 step images per image: uneven and whole batches
            other = mode(tiny, x, saliency, steps=6, batch_size=batch_size, progress=False)
            torch.testing.assert_close(other.curves, reference.curves, atol=1e-6, rtol=0)
            torch.testing.assert_close(other.auc, reference.auc, atol=1e-6, rtol=0)
        alone = mode(tiny, x[2:], saliency[2:], steps=6, progress=False)
        torch.testing.assert_close(alone.curves[0], reference.curves[2], atol=1e-6, rtol=0)


def test_probability_options_and_callable_targets() -> None:
    x = torch.ones(1, 1, 8, 8)
    x[0, 0, 2:4, 2:4] = 0.8
    saliency = torch.rand(1, 8, 8)
    raw = deletion(PatchMean(), x, saliency, 0, steps=4, probability=None, progress=False)
    assert float(raw.curves[0, 0]) == pytest.approx(0.8)
    sig = deletion(PatchMean(), x, saliency, [1], steps=4, probability="sigmoid", progress=False)
    assert sig.curves[0].tolist() == pytest.approx([0.5] * 5)  # sigmoid of the logit 0
    doubled = deletion(
        PatchMean(),
        x,
        saliency,
        lambda out: 2 * out[:, 0],
        steps=4,
        probability=None,
        progress=False,
    )
    assert float(doubled.curves[0, 0]) == pytest.approx(1.6) and doubled.classes is None
    with pytest.raises(TargetError, match="probability=None"):
        deletion(PatchMean(), x, saliency, lambda out: out[:, 0], progress=False)


def test_the_model_and_the_input_are_left_as_they_were(tiny: TinyNet) -> None:
    tiny.train()
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    x = torch.rand(2, 3, 12, 12)
    kept = x.clone()
    insertion(tiny, x, torch.rand(2, 12, 12), steps=3, progress=False)
    assert tiny.training and all(m.training for m in tiny.modules())
    assert all(p.requires_grad and p.grad is None for p in tiny.parameters())
    assert all(torch.equal(v, state[k]) for k, v in tiny.state_dict().items())
    assert torch.equal(x, kept)


def test_the_progress_bar_can_be_turned_off(capsys: pytest.CaptureFixture[str]) -> None:
    x, saliency = torch.ones(1, 1, 8, 8), torch.rand(1, 8, 8)
    deletion(PatchMean(), x, saliency, steps=2, progress=False)
    assert capsys.readouterr().err == ""
    deletion(PatchMean(), x, saliency, steps=2, progress=True)
    assert "deletion" in capsys.readouterr().err


def test_a_small_map_is_resized_to_the_image() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 8, 8, generator=generator)
    small = torch.rand(1, 1, 4, 4, generator=generator)
    large = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    a = deletion(PatchMean(), x, small, steps=8, progress=False)
    b = deletion(PatchMean(), x, large, steps=8, progress=False)
    assert torch.equal(a.curves, b.curves)


def test_errors_name_the_argument() -> None:
    x = torch.ones(2, 1, 8, 8)
    with pytest.raises(InputError, match="2 images"):
        deletion(PatchMean(), x, torch.rand(3, 1, 8, 8), progress=False)
    with pytest.raises(InputError, match="NaN"):
        deletion(PatchMean(), x, torch.full((2, 8, 8), math.nan), progress=False)
    with pytest.raises(OptionError, match="steps"):
        deletion(PatchMean(), x, torch.rand(2, 8, 8), steps=0, progress=False)
    with pytest.raises(OptionError, match="probability"):
        insertion(PatchMean(), x, torch.rand(2, 8, 8), probability="relu", progress=False)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="substrate"):
        insertion(PatchMean(), x, torch.rand(2, 8, 8), substrate=torch.zeros(3, 3), progress=False)
    with pytest.raises(OptionError, match="kernel_size"):
        blur(x, kernel_size=4)
