"""Model randomization: the layers and their order, re-initialisation, what the model and the
random state look like afterwards, methods that ignore the model, and the similarity measures
against SciPy and scikit-image."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from skimage.metrics import structural_similarity
from torch import nn

import backlight
from backlight.errors import LayerNotFoundError, MethodNotApplicableError, OptionError
from backlight.metrics import randomization, spearman, ssim

ORDER = ["fc", "scale", "conv2", "bn1", "conv1"]


class Scale(nn.Module):
    """A layer with parameters and no ``reset_parameters``: the fallback re-initialises it."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(2.0 * torch.eye(features))
        self.bias = nn.Parameter(torch.full((features,), 3.0))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.weight.T + self.bias


class SmallNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> relu -> mean -> scale -> fc; 1x16x16 input, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.scale = Scale(4)
        self.fc = nn.Linear(4, 3)
        assert self.bn1.running_mean is not None and self.bn1.running_var is not None
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.2, 0.2)
            self.bn1.running_var.uniform_(0.5, 1.5)
            self.bn1.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h)).mean(dim=(2, 3))
        return self.fc(self.scale(h))


@pytest.fixture
def net() -> SmallNet:
    torch.manual_seed(5)
    return SmallNet().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(6))


def intensity(model: nn.Module, x: torch.Tensor, target: object = None) -> torch.Tensor:
    """A "method" that ignores the model: the input's intensity."""
    return x.abs().sum(dim=1, keepdim=True)


class Recorder:
    """A method that returns the intensity and records the target and the weights it saw."""

    def __init__(self) -> None:
        self.targets: list[object] = []
        self.states: list[dict[str, torch.Tensor]] = []

    def __call__(self, model: nn.Module, x: torch.Tensor, target: object = None) -> torch.Tensor:
        self.targets.append(target)
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return intensity(model, x)


def _changed(state: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> list[str]:
    """The layers (first part of the key) whose parameters differ from the original."""
    layers = {k.split(".")[0] for k, v in state.items() if not torch.equal(v, original[k])}
    return [name for name in ORDER if name in layers]


def test_steps_are_the_layers_with_parameters_named_from_the_output(
    net: SmallNet, x: torch.Tensor
) -> None:
    result = randomization(net, x, intensity, progress=False)
    assert result.layers == ORDER and len(result) == 5
    assert result.spearman_abs.shape == result.spearman.shape == result.ssim.shape == (5, 2)
    assert result.mode == "cascading" and result.maps is None


def test_a_method_that_ignores_the_weights_keeps_correlation_and_ssim_one(
    net: SmallNet, x: torch.Tensor
) -> None:
    for mode in ("cascading", "independent"):
        result = randomization(net, x, intensity, mode=mode, progress=False)
        for values in (result.spearman_abs, result.spearman, result.ssim):
            torch.testing.assert_close(values, torch.ones(5, 2, dtype=torch.float64))


def test_seeded_noise_independent_of_the_model_stays_near_zero(
    net: SmallNet, x: torch.Tensor
) -> None:
    generator = torch.Generator().manual_seed(7)

    def noise(model: nn.Module, x: torch.Tensor, target: object = None) -> torch.Tensor:
        return torch.randn(x.shape[0], 1, 32, 32, generator=generator)

    result = randomization(net, x, noise, progress=False)
    # 1024 independent pixels: the rank correlation has a standard deviation of about 0.03
    assert float(result.spearman_abs.abs().max()) < 0.15
    assert float(result.spearman.abs().max()) < 0.15
    assert float(result.ssim.abs().max()) < 0.2


def test_the_model_and_the_random_state_are_unchanged(net: SmallNet, x: torch.Tensor) -> None:
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.random.get_rng_state()
    randomization(net, x, "gradient", mode="independent", progress=False)
    randomization(net, x, "gradient", progress=False)
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(m.training for m in net.modules())
    assert all(p.requires_grad and p.grad is None for p in net.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_cascading_is_cumulative_and_independent_one_layer_at_a_time(
    net: SmallNet, x: torch.Tensor
) -> None:
    original = {k: v.clone() for k, v in net.state_dict().items()}
    cascading, independent = Recorder(), Recorder()
    randomization(net, x, cascading, progress=False)
    randomization(net, x, independent, mode="independent", progress=False)
    assert _changed(cascading.states[0], original) == []  # the original map
    for k in range(5):
        assert _changed(cascading.states[k + 1], original) == ORDER[: k + 1]
        assert _changed(independent.states[k + 1], original) == [ORDER[k]]
        # each layer draws from its own seed: the same weights in both modes
        layer = ORDER[k]
        for key, value in independent.states[k + 1].items():
            if key.startswith(layer + "."):
                assert torch.equal(value, cascading.states[k + 1][key])


def test_reinitialisation_uses_reset_parameters_or_the_documented_fallback(
    net: SmallNet, x: torch.Tensor
) -> None:
    recorder = Recorder()
    randomization(
        net, x, recorder, layers=["bn1", "scale", "fc"], mode="independent", progress=False
    )
    bn, scale, fc = recorder.states[1], recorder.states[2], recorder.states[3]
    # BatchNorm2d.reset_parameters: weight 1, bias 0, running statistics reset
    assert torch.equal(bn["bn1.weight"], torch.ones(4)) and torch.equal(
        bn["bn1.bias"], torch.zeros(4)
    )
    assert torch.equal(bn["bn1.running_mean"], torch.zeros(4))
    assert torch.equal(bn["bn1.running_var"], torch.ones(4))
    # fallback: kaiming_uniform_(a=√5) gives ±1/√fan_in = ±1/2 for the weight, and the bias
    # is uniform in ±1/√fan_in too
    assert not torch.equal(scale["scale.weight"], 2.0 * torch.eye(4))
    assert float(scale["scale.weight"].abs().max()) <= 0.5
    assert float(scale["scale.bias"].abs().max()) <= 0.5
    assert float(scale["scale.weight"].std()) > 0.1
    # Linear.reset_parameters
    assert not torch.equal(fc["fc.weight"], net.fc.weight)
    assert float(fc["fc.weight"].abs().max()) <= 0.5


def test_the_explained_class_is_fixed_on_the_original_model(net: SmallNet, x: torch.Tensor) -> None:
    recorder = Recorder()
    randomization(net, x, recorder, progress=False)
    predicted = net(x).argmax(dim=1)
    assert len(recorder.targets) == 6
    for target in recorder.targets:
        assert isinstance(target, torch.Tensor) and torch.equal(target, predicted)
    given = Recorder()
    randomization(net, x, given, [2, 0], progress=False)
    assert all(t == [2, 0] for t in given.targets)


def test_signed_and_absolute_rank_correlations_differ(net: SmallNet, x: torch.Tensor) -> None:
    """A map whose sign flips at every call: −1 signed, +1 in absolute value, SSIM 1."""
    calls = [0]

    def flipping(model: nn.Module, x: torch.Tensor, target: object = None) -> torch.Tensor:
        calls[0] += 1
        return (-1) ** (calls[0] + 1) * (x - 0.5)

    result = randomization(net, x, flipping, progress=False)
    signs = torch.tensor([-1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:, None].expand(5, 2)
    torch.testing.assert_close(result.spearman, signs)
    torch.testing.assert_close(result.spearman_abs, torch.ones(5, 2, dtype=torch.float64))
    torch.testing.assert_close(result.ssim, torch.ones(5, 2, dtype=torch.float64))


def test_a_registered_method_by_name_with_options(net: SmallNet, x: torch.Tensor) -> None:
    target = net(x).argmax(dim=1)
    by_name = randomization(
        net, x, "gradient", options={"reduce": "sum"}, seed=3, keep_maps=True, progress=False
    )
    by_function = randomization(
        net, x, backlight.gradient, options={"reduce": "sum"}, seed=3, progress=False
    )
    torch.testing.assert_close(by_name.spearman_abs, by_function.spearman_abs)
    expected = backlight.gradient(net, x, target, reduce="sum").double()
    torch.testing.assert_close(by_name.original, expected)
    assert by_name.maps is not None and by_name.maps.shape == (5, 2, 1, 16, 16)
    # the gradient does depend on the weights: randomizing changes the maps
    assert float(by_name.spearman_abs[-1].max()) < 0.99
    other_seed = randomization(
        net, x, "gradient", options={"reduce": "sum"}, seed=4, progress=False
    )
    assert not torch.equal(other_seed.spearman_abs, by_name.spearman_abs)


def test_spearman_matches_scipy() -> None:
    generator = torch.Generator().manual_seed(8)
    a = torch.randint(0, 6, (4, 3, 7, 5), generator=generator).double()  # many ties
    b = a + torch.rand(4, 3, 7, 5, generator=generator, dtype=torch.float64) * 3
    ours = spearman(a, b)
    for i in range(4):
        theirs = scipy.stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert float(ours[i]) == pytest.approx(float(theirs), abs=1e-12)
    assert math.isnan(float(spearman(torch.ones(1, 9), torch.rand(1, 9))[0]))


@pytest.mark.parametrize(
    ("shape", "win"), [((2, 16, 16), 7), ((2, 3, 12, 9), 7), ((1, 5, 6), 5), ((1, 4, 9), 3)]
)
def test_ssim_matches_scikit_image(shape: tuple[int, ...], win: int) -> None:
    """Channels averaged; a map smaller than 7 pixels uses the largest odd window that fits."""
    generator = torch.Generator().manual_seed(9)
    a = torch.rand(*shape, generator=generator, dtype=torch.float64)
    b = (a + 0.4 * torch.rand(*shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(shape[0]):
        channel_axis = 0 if len(shape) == 4 else None
        theirs = structural_similarity(
            a[i].numpy(), b[i].numpy(), data_range=1.0, win_size=win, channel_axis=channel_axis
        )
        assert float(ours[i]) == pytest.approx(float(theirs), abs=1e-10)
    assert float(ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))[0]) == 1.0


def test_errors_name_the_argument(net: SmallNet, x: torch.Tensor) -> None:
    with pytest.raises(OptionError, match="did you mean 'gradient'"):
        randomization(net, x, "gradiant", progress=False)
    with pytest.raises(LayerNotFoundError, match="conv3"):
        randomization(net, x, intensity, layers=["conv3"], progress=False)
    with pytest.raises(OptionError, match="mode"):
        randomization(net, x, intensity, mode="top-down", progress=False)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="options"):
        randomization(net, x, intensity, options=["reduce"], progress=False)  # type: ignore[arg-type]

    class NoParameters(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 3)

    with pytest.raises(MethodNotApplicableError, match="nothing to randomize"):
        randomization(NoParameters(), x, intensity, progress=False)
