"""SmoothGrad against a plain loop over noisy copies, and its guarantees."""

from __future__ import annotations

import pytest
import torch

import backlight

from .nets import TinyNet


def _reference(
    method: object,
    model: TinyNet,
    x: torch.Tensor,
    target: list[int],
    samples: int,
    noise: float,
    seed: int,
    **options: object,
) -> torch.Tensor:
    """The paper's average, one noisy image at a time, with the documented noise draws."""
    eps = torch.randn(
        (samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=x.dtype
    )
    out = []
    for i in range(x.shape[0]):
        sigma = noise * float(x[i].max() - x[i].min())
        maps = [
            method(model, x[i : i + 1] + sigma * eps[j], target[i], **options)
            for j in range(samples)
        ]  # type: ignore[operator]
        out.append(torch.stack(maps).mean(dim=0))
    return torch.cat(out)


@pytest.mark.parametrize(
    "method", [backlight.gradient, backlight.guided_backprop, backlight.grad_cam]
)
def test_matches_the_plain_loop(method: object, tiny64: TinyNet) -> None:
    torch.manual_seed(31)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    options = {"layer": "conv3"} if method is backlight.grad_cam else {"reduce": None}
    expected = _reference(method, tiny64, x, [1, 3], samples=6, noise=0.2, seed=5, **options)
    got = backlight.smooth_grad(
        method,
        tiny64,
        x,
        [1, 3],
        samples=6,
        noise=0.2,
        seed=5,
        batch_size=4,
        progress=False,
        **options,
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    plain = method(tiny64, x, [1, 3], **options)  # type: ignore[operator]
    assert not torch.allclose(got, plain)


def test_zero_noise_is_the_method_itself(tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(
        backlight.smooth_grad("deconvnet", tiny64, x, [0, 1], samples=3, noise=0.0, progress=False),
        backlight.deconvnet(tiny64, x, [0, 1]),
    )


def test_default_target_is_the_prediction_on_the_clean_input(tiny64: TinyNet) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 12, 12, dtype=torch.float64)
    predicted = tiny64(x).argmax(1).tolist()
    assert len(set(predicted)) > 1
    torch.testing.assert_close(
        backlight.smooth_grad(backlight.gradient, tiny64, x, samples=3, progress=False),
        backlight.smooth_grad(backlight.gradient, tiny64, x, predicted, samples=3, progress=False),
    )


def test_seeded_and_batch_equals_per_sample(tiny: TinyNet) -> None:
    x = torch.randn(3, 3, 12, 12)
    run = lambda xx, t, seed=0: backlight.smooth_grad(  # noqa: E731
        backlight.guided_backprop, tiny, xx, t, samples=5, seed=seed, progress=False
    )
    batch = run(x, [0, 1, 2])
    assert torch.equal(batch, run(x, [0, 1, 2]))
    assert not torch.allclose(batch, run(x, [0, 1, 2], seed=1))
    single = torch.cat([run(x[i : i + 1], [i]) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-7)


def test_model_and_input_unchanged(tiny: TinyNet) -> None:
    tiny.train()
    x = torch.randn(2, 3, 12, 12)
    original = x.clone()
    backlight.smooth_grad(backlight.gradient, tiny, x, 1, samples=2, progress=False)
    assert tiny.training and all(m.training for m in tiny.modules())
    assert all(p.requires_grad and p.grad is None for p in tiny.parameters())
    assert torch.equal(x, original)


def test_callable_target_is_passed_through(tiny64: TinyNet) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(
        backlight.smooth_grad(
            backlight.gradient, tiny64, x, lambda o: o[:, 2], samples=3, progress=False
        ),
        backlight.smooth_grad(backlight.gradient, tiny64, x, 2, samples=3, progress=False),
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"samples": 0}, backlight.OptionError, "`samples` must be a positive int"),
        ({"noise": -0.1}, backlight.OptionError, "`noise` must be a non-negative number"),
        ({"batch_size": 0}, backlight.OptionError, "`batch_size` must be a positive int"),
        ({"method": "guided_backprob"}, backlight.OptionError, "did you mean 'guided_backprop'"),
        ({"method": 3}, backlight.OptionError, "`method` must be a method name or function"),
        ({"target": 9}, backlight.TargetError, "out of range"),
    ],
)
def test_bad_arguments(tiny: TinyNet, kwargs: dict[str, object], error: type, message: str) -> None:
    arguments: dict[str, object] = {"method": backlight.gradient, "target": 0, **kwargs}
    method, target = arguments.pop("method"), arguments.pop("target")
    with pytest.raises(error, match=message):
        backlight.smooth_grad(
            method, tiny, torch.randn(1, 3, 12, 12), target, progress=False, **arguments
        )  # type: ignore[arg-type]


def test_forward_passes_are_the_noisy_batches_only(tiny: TinyNet) -> None:
    """With explicit targets, one forward pass per batch of noisy copies and no other; with
    ``target=None`` one more, on the clean input, to find the predicted classes."""
    calls = []
    handle = tiny.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        x = torch.randn(2, 3, 12, 12)
        backlight.smooth_grad("gradient", tiny, x, [0, 1], samples=5, batch_size=4, progress=False)
        assert calls == [4, 4, 2]
        calls.clear()
        backlight.smooth_grad("gradient", tiny, x, samples=5, batch_size=4, progress=False)
        assert calls == [2, 4, 4, 2]
    finally:
        handle.remove()
