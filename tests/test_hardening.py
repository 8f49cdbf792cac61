"""What a careless or hostile caller gives: models that write into their input, calls under
inference mode, meta tensors, compiled code the rules cannot see, absurd options and targets.
Each case asserts the typed error (naming the argument) or the right map, and that the caller's
tensors and the model are left as they were."""

from __future__ import annotations

import copy
import threading
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backlight
from backlight import metrics

from .conftest import cheap, explain, methods_with
from .test_guarantees import _assert_unchanged, _snapshot

METHODS = methods_with()
IDS = [m.name for m in METHODS]
RULED = ["guided_backprop", "deconvnet", "guided_grad_cam"]
EXCITATION = ["excitation_backprop", "contrastive_excitation_backprop"]


class Writes(nn.Module):
    """A small CNN whose first operation writes into its input: an in-place ReLU module or, with
    ``normalise``, ``x.sub_(mean).div_(std)``; ``inplace=False`` is the same network computing the
    same values without writing."""

    def __init__(self, *, normalise: bool = False, inplace: bool = True) -> None:
        super().__init__()
        self.normalise, self.inplace = normalise, inplace
        self.first = nn.ReLU(inplace=inplace)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = x.sub_(0.25).div_(0.5) if self.inplace else (x - 0.25) / 0.5
        else:
            x = self.first(x)
        h = self.relu(self.conv2(self.relu(self.conv(x))))
        return self.fc(h.mean(dim=(2, 3)))


def _twins(normalise: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(3)
    writes = Writes(normalise=normalise).eval()
    plain = Writes(normalise=normalise, inplace=False).eval()
    plain.load_state_dict(writes.state_dict())
    return writes, plain


@pytest.mark.parametrize("normalise", [False, True], ids=["relu_inplace_first", "sub_div_"])
@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_model_writing_into_its_input(method: backlight.MethodInfo, normalise: bool) -> None:
    """The caller's x is untouched and the map is the one of the same network without writes."""
    writes, plain = _twins(normalise)
    x = torch.randn(2, 3, 10, 10)
    original = x.clone()
    options = {"layer": "conv2"} if method.name in EXCITATION else {}
    if normalise and method.name in EXCITATION:
        # excitation backprop has no rule for a subtraction written in place; it says so
        with pytest.raises(backlight.MethodNotApplicableError, match="sub_"):
            explain(method, writes, x, [1, 2])
        assert torch.equal(x, original)
        return
    got = explain(method, writes, x, [1, 2], **options)
    assert torch.equal(x, original)
    expected = explain(method, plain, x, [1, 2], **options)
    torch.testing.assert_close(got, expected)
    assert got.abs().sum() > 0


def test_default_layer_and_metrics_leave_x_alone() -> None:
    writes, plain = _twins(True)
    x = torch.rand(2, 3, 10, 10)
    original = x.clone()
    assert backlight.default_cam_layer(writes, x) == backlight.default_cam_layer(plain, x)
    saliency = torch.rand(2, 1, 10, 10)
    for metric in (metrics.deletion, metrics.insertion):
        got = metric(writes, x, saliency, 1, steps=5, progress=False).curves
        assert torch.equal(x, original), metric.__name__
        torch.testing.assert_close(
            got, metric(plain, x, saliency, 1, steps=5, progress=False).curves
        )
    result = metrics.randomization(writes, x, "gradient", 1, progress=False)
    assert torch.equal(x, original)
    torch.testing.assert_close(
        result.spearman, metrics.randomization(plain, x, "gradient", 1, progress=False).spearman
    )


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_call_inside_inference_mode_or_no_grad(method: backlight.MethodInfo, mode: str) -> None:
    """The same map as outside, with the input (and a tensor target) made inside the block."""
    torch.manual_seed(0)
    model = Writes(inplace=False).eval()
    x = torch.randn(2, 3, 10, 10)
    options = {"layer": "conv2"} if method.name in EXCITATION else {}
    expected = explain(method, model, x, [1, 3], **options)
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        inner_x, inner_target = x.clone(), torch.tensor([1, 3])
        got = explain(method, model, inner_x, inner_target, **options)
    torch.testing.assert_close(got, expected)


def test_smooth_grad_and_metrics_inside_inference_mode() -> None:
    model = Writes(inplace=False).eval()
    x = torch.randn(2, 3, 10, 10)
    expected = backlight.smooth_grad("guided_backprop", model, x, None, samples=3, progress=False)
    saliency = torch.rand(2, 1, 10, 10)
    deleted = metrics.deletion(model, x, saliency, steps=4, progress=False).curves
    randomized = metrics.randomization(model, x, "gradient", progress=False).spearman
    with torch.inference_mode():
        inner = x.clone()
        got = backlight.smooth_grad(
            "guided_backprop", model, inner, None, samples=3, progress=False
        )
        got_deleted = metrics.deletion(model, inner, saliency, steps=4, progress=False).curves
        got_randomized = metrics.randomization(model, inner, "gradient", progress=False).spearman
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_deleted, deleted)
    torch.testing.assert_close(got_randomized, randomized)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_meta_tensors_are_refused(method: backlight.MethodInfo) -> None:
    model = Writes(inplace=False).eval()
    with pytest.raises(backlight.InputError, match=r"`x` is on the meta device"):
        explain(method, model, torch.randn(1, 3, 10, 10, device="meta"), 0)
    with pytest.raises(backlight.ModelError, match=r"meta device.*to_empty"):
        explain(method, Writes().to("meta"), torch.randn(1, 3, 10, 10, device="meta"), 0)
    with pytest.raises(backlight.TargetError, match="meta"):
        explain(
            method,
            model,
            torch.randn(1, 3, 10, 10),
            torch.zeros(1, dtype=torch.long, device="meta"),
        )


def test_sparse_input_is_refused() -> None:
    with pytest.raises(backlight.InputError, match="to_dense"):
        backlight.gradient(Writes(), torch.randn(1, 3, 10, 10).to_sparse(), 0)


class Learner:
    """What fastai's Learner looks like to backlight: an object holding the network."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Learner(Writes()), r"not a Learner; pass its network, `\.model`.*learn\.model"),
        (lambda x: x, r"wrap a plain function in an nn\.Module"),
        ("resnet50", r"not a str"),
    ],
)
def test_model_that_is_not_a_module_says_what_to_pass(model: Any, message: str) -> None:
    with pytest.raises(backlight.InputTypeError, match=message):
        backlight.grad_cam(model, torch.randn(1, 3, 10, 10))


def test_numpy_input_says_how_to_convert() -> None:
    with pytest.raises(backlight.InputTypeError, match=r"torch\.from_numpy.*permute\(0, 3, 1, 2\)"):
        backlight.gradient(Writes(), np.zeros((1, 10, 10, 3), dtype=np.float32))


# --- targets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (2**70, backlight.TargetError, "does not fit in 64 bits"),
        ([1, 2**70], backlight.TargetError, "does not fit in 64 bits"),
        (-(2**64), backlight.TargetError, "does not fit in 64 bits"),
        (4, backlight.TargetError, "out of range for a model with 4 classes"),
        (np.array([0.5, 1.5]), backlight.TargetError, "ndarray"),
        (np.array([[1], [2]]), backlight.TargetError, "1-D integer tensor"),
        ("cat", backlight.TargetError, "got str"),
        (b"1", backlight.TargetError, "got bytes"),
        ({1: 2}, backlight.TargetError, "got dict"),
    ],
)
@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_bad_targets(method: backlight.MethodInfo, target: Any, error: type, message: str) -> None:
    model = Writes(inplace=False).eval()
    before = _snapshot(model)
    with pytest.raises(error, match=message):
        explain(method, model, torch.randn(2, 3, 10, 10), target)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_numpy_targets_equal_python_ones(method: backlight.MethodInfo) -> None:
    model = Writes(inplace=False).eval()
    x = torch.randn(2, 3, 10, 10)
    expected = explain(method, model, x, [1, 3])
    torch.testing.assert_close(explain(method, model, x, np.array([1, 3])), expected)
    torch.testing.assert_close(
        explain(method, model, x, np.array([1, 3], dtype=np.uint8)), expected
    )
    torch.testing.assert_close(explain(method, model, x, np.int64(2)), explain(method, model, x, 2))


# --- options --------------------------------------------------------------------------------

INF, NAN = float("inf"), float("nan")

BAD_OPTIONS = [
    ("rise", {"seed": 1.5}, "`seed` must be an int that fits in 64 bits"),
    ("rise", {"seed": 2**64}, "`seed` must be an int that fits in 64 bits"),
    (
        "rise",
        {"num_masks": 10**12},
        r"`num_masks`=1000000000000 RISE masks.*would need .* TB.*use fewer masks",
    ),
    ("rise", {"cells": 10**6}, r"`cells` must be an int from 1 to 10"),
    ("rise", {"p": NAN}, r"`p` must be a number in \(0, 1\]"),
    (
        "rise",
        {"batch_size": 10**9, "num_masks": 10**9},
        r"`batch_size`=1000000000: RISE batches.*lower batch_size",
    ),
    (
        "extremal_perturbation",
        {"sigma": INF},
        r"`sigma` must be a positive number \(finite, at most 10\)",
    ),
    ("extremal_perturbation", {"sigma": 1e6}, r"`sigma` must be a positive number"),
    ("extremal_perturbation", {"sigma": NAN}, r"`sigma` must be a positive number"),
    ("extremal_perturbation", {"max_blur": INF}, r"`max_blur` must be a positive number"),
    ("extremal_perturbation", {"step": 10**6}, r"`step` must be an int from 1 to 10"),
    ("extremal_perturbation", {"num_levels": 10**6}, r"`num_levels` must be an int from 1 to 256"),
    (
        "extremal_perturbation",
        {"max_iter": 10**13},
        r"extremal perturbation with `max_iter`=10000000000000.* would need",
    ),
    ("extremal_perturbation", {"seed": 0.5}, "`seed` must be an int"),
    ("extremal_perturbation", {"areas": [NAN]}, r"`areas` must be a number in \(0, 1\)"),
    ("extremal_perturbation", {"areas": [INF]}, r"`areas` must be a number in \(0, 1\)"),
    ("score_cam", {"batch_size": 2.0}, "`batch_size` must be a positive int"),
    ("score_cam", {"channels": 1.5}, "`channels` must be None or a positive int"),
    ("guided_backprop", {"clipped_relu": "no"}, "`clipped_relu` must be True or False"),
    ("grad_cam", {"relu": None}, "`relu` must be True or False"),
]


@pytest.mark.parametrize(("name", "options", "message"), BAD_OPTIONS)
def test_absurd_options_are_refused_before_any_work(
    name: str, options: dict[str, Any], message: str
) -> None:
    model = Writes(inplace=False).eval()
    before = _snapshot(model)
    with pytest.raises(backlight.OptionError, match=message):
        getattr(backlight, name)(model, torch.randn(1, 3, 10, 10), 1, **options)
    _assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"noise": INF}, r"`noise` must be a non-negative number"),
        ({"noise": NAN}, r"`noise` must be a non-negative number"),
        ({"seed": 1.5}, "`seed` must be an int that fits in 64 bits"),
        (
            {"samples": 10**10},
            r"`samples`=10000000000 noise draws.* would need .*lower samples or batch_size",
        ),
    ],
)
def test_smooth_grad_absurd_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(backlight.OptionError, match=message):
        backlight.smooth_grad(
            backlight.gradient, Writes(), torch.randn(1, 3, 10, 10), 1, progress=False, **options
        )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m, x, s: metrics.deletion(m, x, s, steps=10**9),
            r"`steps` must be an int from 1 to 100",
        ),
        (lambda m, x, s: metrics.insertion(m, x, s, steps=0), "`steps` must be a positive int"),
        (lambda m, x, s: metrics.blur(x, sigma=INF), r"`sigma` must be a positive number"),
        (
            lambda m, x, s: metrics.blur(x, kernel_size=10**6 + 1),
            r"`kernel_size` must be an int from 1 to 21",
        ),
        (
            lambda m, x, s: metrics.randomization(m, x, "gradient", seed=1.5),
            "`seed` must be an int",
        ),
    ],
)
def test_metrics_absurd_options(call: Any, message: str) -> None:
    with pytest.raises(backlight.OptionError, match=message):
        call(Writes(), torch.randn(1, 3, 10, 10), torch.rand(1, 1, 10, 10))


# --- code the rules cannot see ---------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(y) if self.relu else y


class WithScripted(nn.Module):
    """conv → ReLU → ``block`` (scripted or not) → conv → ReLU → pool → linear."""

    def __init__(self, scripted: bool, relu: bool = True) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        block = Block(relu)
        self.block = torch.jit.script(block) if scripted else block
        self.top = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.top(self.block(F.relu(self.conv(x)))))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture
def no_jit_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.mark.usefixtures("no_jit_warnings")
@pytest.mark.parametrize("name", RULED + EXCITATION)
def test_rules_refuse_a_scripted_submodule_on_the_path(name: str) -> None:
    model = WithScripted(scripted=True).eval()
    before = _snapshot(model)
    for _ in range(3):  # TorchScript's executor changes the graph after a few runs
        with pytest.raises(
            backlight.MethodNotApplicableError, match=r"TorchScript module\(s\) 'block'"
        ):
            getattr(backlight, name)(model, torch.rand(1, 3, 8, 8), 1)
    _assert_unchanged(model, before)


@pytest.mark.usefixtures("no_jit_warnings")
@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet", "excitation_backprop"])
def test_scripted_code_below_the_layer_does_not_matter(name: str) -> None:
    """The map at a layer above the scripted block equals the eager model's: the rule saw every
    operation between the layer and the score."""
    scripted, eager = WithScripted(scripted=True).eval(), WithScripted(scripted=False).eval()
    eager.load_state_dict(scripted.state_dict())
    x = torch.rand(2, 3, 8, 8)
    got = getattr(backlight, name)(scripted, x, [1, 2], layer="top")
    torch.testing.assert_close(got, getattr(backlight, name)(eager, x, [1, 2], layer="top"))
    assert got.abs().sum() > 0
    with pytest.raises(backlight.LayerError, match=r"'block' is a TorchScript module"):
        getattr(backlight, name)(scripted, x, 1, layer="block")


@pytest.mark.usefixtures("no_jit_warnings")
def test_scripted_block_without_relu_does_not_matter_for_guided_backprop() -> None:
    scripted, eager = WithScripted(True, relu=False).eval(), WithScripted(False, relu=False).eval()
    eager.load_state_dict(scripted.state_dict())
    x = torch.rand(2, 3, 8, 8)
    for name in ("guided_backprop", "deconvnet"):
        got = getattr(backlight, name)(scripted, x, [0, 3])
        torch.testing.assert_close(got, getattr(backlight, name)(eager, x, [0, 3]))


@pytest.mark.usefixtures("no_jit_warnings")
def test_whole_scripted_model() -> None:
    eager = WithScripted(scripted=False).eval()
    scripted = torch.jit.script(eager)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(backlight.gradient(scripted, x, 1), backlight.gradient(eager, x, 1))
    with pytest.raises(backlight.LayerError, match=r"TorchScript module.*eager module"):
        backlight.grad_cam(scripted, x, 1)
    with pytest.raises(backlight.LayerError, match=r"TorchScript module.*eager module"):
        backlight.default_cam_layer(scripted, x)
    with pytest.raises(backlight.MethodNotApplicableError, match=r"TorchScript"):
        backlight.guided_backprop(scripted, x, 1)


@pytest.mark.usefixtures("no_jit_warnings")  # dynamo warns about reading .grad of non-leaves
def test_rules_refuse_a_compiled_submodule_on_the_path() -> None:
    class Compiled(WithScripted):
        def __init__(self) -> None:
            super().__init__(scripted=False)
            self.block = torch.compile(self.block, backend="aot_eager")  # type: ignore[assignment]

    model = Compiled().eval()
    x = torch.rand(2, 3, 8, 8)
    for name in ("guided_backprop", "excitation_backprop"):
        with pytest.raises(
            backlight.MethodNotApplicableError,
            match=r"torch\.compile'd module\(s\) 'block'.*CompiledFunctionBackward",
        ):
            getattr(backlight, name)(model, x, [1, 2])
    # the plain gradient goes through compiled code as it should
    eager = WithScripted(scripted=False).eval()
    torch.testing.assert_close(
        backlight.gradient(model, x, [1, 2]), backlight.gradient(eager, x, [1, 2])
    )


# --- porting friction -----------------------------------------------------------------------


class GuidedHook:
    """The course notebook's hook class: clamps gradients at every ReLU module and is never
    removed."""

    def __init__(self, model: nn.Module) -> None:
        self.handles = [
            m.register_full_backward_hook(lambda m, gi, go: (gi[0].clamp(min=0),))
            for m in model.modules()
            if isinstance(m, nn.ReLU)
        ]


def test_foreign_backward_hooks_are_warned_about() -> None:
    model = Writes(inplace=False).eval()
    x = torch.randn(1, 3, 10, 10)
    clean = backlight.gradient(model, x, 1)
    hooks = GuidedHook(model)
    with pytest.warns(backlight.ForeignHookWarning, match=r"'first', 'relu'.*handle\.remove\(\)"):
        hooked = backlight.gradient(model, x, 1)
    assert not torch.allclose(hooked, clean)  # the hooks did change the map
    for handle in hooks.handles:
        handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(backlight.gradient(model, x, 1), clean)


def test_clipped_relu_option_reproduces_torchray_and_captum() -> None:
    """With clipped_relu=False, ReLU6 keeps its plain gradient: the map equals the one of the
    context with the same setting, and differs from the default."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU6(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    with torch.no_grad():
        model[0].weight.mul_(20)
    x = torch.randn(1, 3, 10, 10)
    for name, context in (
        ("guided_backprop", backlight.GuidedBackpropContext),
        ("deconvnet", backlight.DeConvNetContext),
    ):
        leaf = x.clone().requires_grad_()
        with context(clipped_relu=False):
            model(leaf)[0, 1].backward()
        got = getattr(backlight, name)(model, x, 1, reduce=None, clipped_relu=False)
        torch.testing.assert_close(got, leaf.grad)
        assert not torch.allclose(got, getattr(backlight, name)(model, x, 1, reduce=None))
    gg = backlight.guided_grad_cam(model, x, 1, layer="2", clipped_relu=False)
    assert not torch.allclose(gg, backlight.guided_grad_cam(model, x, 1, layer="2"))


def test_linear_approx_at_the_input_is_torchrays_default() -> None:
    """TorchRay's linear_approx(model, x, c) is Σ_c x · ∂score/∂x at the input."""
    from torchray.attribution.linear_approx import linear_approx as torchray_linear_approx

    model = Writes(inplace=False).eval()
    x = torch.randn(2, 3, 10, 10)
    got = backlight.linear_approx(model, x, [1, 2], layer="input")
    grad = backlight.gradient(model, x, [1, 2], reduce=None)
    torch.testing.assert_close(got, (x * grad).sum(dim=1, keepdim=True))
    for i, c in enumerate([1, 2]):
        theirs = torchray_linear_approx(model, x[i : i + 1], c)
        torch.testing.assert_close(got[i : i + 1], theirs)
    # "input" also works for the gradient family, where it is the default
    torch.testing.assert_close(
        backlight.gradient(model, x, 1, layer="input"), backlight.gradient(model, x, 1)
    )


def test_channels_last_layer_output_is_refused_with_the_fix() -> None:
    # A model without a patch embedding whose layer output looks (N, H, W, C): its layout cannot
    # be read from the model (Swin's can, see test_beyond_classifiers), so it is refused.
    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3, padding=1)
            self.last = nn.Identity()
            self.head = nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.last(self.conv(x).permute(0, 2, 3, 1))  # (N, 6, 6, 32)
            return self.head(t.mean(dim=(1, 2)))

    torch.manual_seed(0)
    model = ChannelsLast().eval()
    x = torch.randn(1, 3, 6, 6)
    before = _snapshot(model)
    for name in ("grad_cam", "layer_cam", "gradient"):
        with pytest.raises(
            backlight.LayerError, match=r"looks channels-last.*permute\(0, 3, 1, 2\)"
        ):
            getattr(backlight, name)(model, x, 1, layer="last")
    _assert_unchanged(model, before)
    # with the layout given, the map is the one of the convolution itself
    for fix in (lambda t: t.permute(0, 3, 1, 2), "channels_last"):
        fixed = backlight.grad_cam(model, x, 1, layer="last", reshape=fix)
        assert fixed.shape == (1, 1, 6, 6) and fixed.abs().sum() > 0
        torch.testing.assert_close(fixed, backlight.grad_cam(model, x, 1, layer="conv"))


# --- threads --------------------------------------------------------------------------------


def test_four_threads_on_one_fresh_model_equal_sequential_runs() -> None:
    """Default-layer CAMs (a fresh model: the default layer is found while the others run),
    excitation backprop and RISE from four threads at once give the sequential maps."""
    import torchvision

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=10).eval()

    x = torch.randn(2, 3, 64, 64)
    calls = {
        "grad_cam": lambda m: backlight.grad_cam(m, x, [1, 2]),
        "score_cam": lambda m: backlight.score_cam(m, x, [1, 2], progress=False),
        "excitation_backprop": lambda m: backlight.excitation_backprop(
            m, x, [1, 2], layer="layer3"
        ),
        "rise": lambda m: backlight.rise(m, x, [1, 2], num_masks=64, progress=False),
    }
    reference = fresh()
    expected = {name: call(reference) for name, call in calls.items()}
    for _ in range(3):
        model = fresh()  # nothing cached for it yet
        before = _snapshot(model)
        results = _in_threads(model, calls)
        for name, maps in results.items():
            torch.testing.assert_close(maps, expected[name], rtol=1e-4, atol=1e-6)
        _assert_unchanged(model, before)


def _in_threads(model: nn.Module, calls: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Each call in a thread of its own, all started at once; their results."""
    start = threading.Barrier(len(calls))
    results: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            start.wait(timeout=30)
            results[name] = calls[name](model)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(name,)) for name in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return results


def test_default_layer_from_three_threads() -> None:
    """The issue's case: three threads calling grad_cam(m, x, 3) with no layer on one fresh
    ResNet-18 all get the layer4 map."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    twin = copy.deepcopy(model)  # computed on a copy: nothing is cached for `model` itself
    expected = backlight.grad_cam(twin, x, 3)
    torch.testing.assert_close(expected, backlight.grad_cam(twin, x, 3, layer="layer4"))
    calls = {str(i): lambda m: [backlight.grad_cam(m, x, 3) for _ in range(5)] for i in range(3)}
    results = _in_threads(model, calls)
    assert len(results) == 3
    for runs in results.values():
        for maps in runs:
            torch.testing.assert_close(maps, expected)


# --- the sweep: every public function, every argument, hostile values -------------------------

HOSTILE = [
    None,
    "x",
    -1,
    0,
    1.5,
    INF,
    NAN,
    10**12,
    -(10**12),
    True,
    [],
    [1, 2, 3],
    (1,),
    {},
    np.zeros((2, 2)),
    torch.zeros(0),
    torch.zeros(2, 2, 2, 2, 2),
    torch.full((2, 1, 8, 8), NAN),
    object(),
]


def _sweep_targets() -> dict[str, tuple[Any, list[str]]]:
    from backlight import bench, data, viz

    torch.manual_seed(0)
    model = Writes(inplace=False).eval()
    x, image, maps = torch.rand(2, 3, 8, 8), torch.rand(3, 8, 8), torch.rand(2, 1, 8, 8)
    masks = torch.ones(2, 8, 8, dtype=torch.bool)

    def bind(function: Any, **fixed: Any) -> Any:
        return lambda **k: function(**{**fixed, **k})

    targets: dict[str, tuple[Any, list[str]]] = {
        "viz.colorize": (bind(viz.colorize, maps=maps[0]), ["maps", "cmap", "mode", "percentile"]),
        "viz.normalize": (bind(viz.normalize, maps=maps), ["maps", "mode", "percentile"]),
        "viz.overlay": (
            bind(viz.overlay, image=image, map=maps[0]),
            ["image", "map", "alpha", "cmap", "mode", "percentile"],
        ),
        "viz.render_rgb": (
            bind(viz.render_rgb, gradient=torch.randn(3, 8, 8)),
            ["gradient", "mode", "k", "percentile"],
        ),
        "viz.grid": (
            bind(viz.grid, images=x, maps={"m": maps}),
            [
                "images",
                "maps",
                "row_titles",
                "show_images",
                "alpha",
                "cmap",
                "mode",
                "percentile",
                "rgb_k",
                "cell_size",
                "font_size",
            ],
        ),
        "viz.colormap": (viz.colormap, ["name"]),
        "metrics.pointing_game": (
            bind(metrics.pointing_game, saliency=maps, class_ids=[0, 1], masks=masks),
            ["saliency", "class_ids", "masks", "difficult", "tolerance", "num_classes"],
        ),
        "metrics.PointingGame": (metrics.PointingGame, ["num_classes", "tolerance"]),
        "metrics.spearman": (bind(metrics.spearman, a=maps, b=maps), ["a", "b"]),
        "metrics.ssim": (bind(metrics.ssim, a=maps, b=maps), ["a", "b", "win_size", "data_range"]),
        "metrics.max_point": (bind(metrics.max_point, saliency=maps[0]), ["saliency", "size"]),
        "metrics.boxes_to_mask": (
            bind(metrics.boxes_to_mask, boxes=[(0, 0, 4, 4)], size=(8, 8)),
            ["boxes", "size"],
        ),
        "metrics.polygons_to_mask": (
            bind(metrics.polygons_to_mask, polygons=[[0, 0, 4, 0, 4, 4]], size=(8, 8)),
            ["polygons", "size"],
        ),
        "metrics.deletion": (
            bind(metrics.deletion, model=model, x=x, saliency=maps, progress=False),
            ["model", "x", "saliency", "target", "steps", "batch_size", "probability", "substrate"],
        ),
        "metrics.randomization": (
            bind(metrics.randomization, model=model, x=x, method="gradient", progress=False),
            ["model", "x", "method", "target", "options", "mode", "layers", "seed", "keep_maps"],
        ),
        "metrics.blur": (bind(metrics.blur, x=x), ["x", "kernel_size", "sigma"]),
        "data.make_batch": (bind(data.make_batch, n=2, size=16), ["n", "seed", "start", "size"]),
        "RiseMasks": (
            bind(backlight.RiseMasks, size=(8, 8), num_masks=4),
            ["size", "num_masks", "cells", "p", "seed"],
        ),
        "vit_reshape": (
            bind(backlight.vit_reshape, tokens=torch.zeros(1, 5, 4)),
            ["tokens", "prefix_tokens"],
        ),
        "GuidedBackpropContext": (backlight.GuidedBackpropContext, ["clipped_relu", "warn"]),
        "get_method": (backlight.get_method, ["name"]),
        "list_methods": (backlight.list_methods, ["family"]),
        "default_cam_layer": (bind(backlight.default_cam_layer, model=model, x=x), ["model", "x"]),
        "smooth_grad": (
            bind(
                backlight.smooth_grad,
                method="gradient",
                model=model,
                x=x,
                samples=2,
                progress=False,
            ),
            ["method", "model", "x", "target", "samples", "noise", "seed", "batch_size"],
        ),
        "bench.benchmark": (
            bind(
                bench.benchmark,
                methods=["gradient"],
                images=2,
                randomization_images=1,
                progress=False,
            ),
            [
                "methods",
                "images",
                "seed",
                "tolerance",
                "steps",
                "randomization_images",
                "quick",
                "batch_size",
                "baseline",
            ],
        ),
    }
    for info in backlight.list_methods():
        function = bind(info.function, model=model, x=x, target=1, **cheap(info))
        options = [o for o in info.options if o != "progress"]
        targets[info.name] = (function, ["model", "x", "target", *options])
    return targets


def test_every_public_function_fails_typed_on_hostile_values() -> None:
    """About 4,000 calls: each works or raises a BacklightError, never another exception (a raw
    TypeError from deep inside, an OverflowError, an allocation of terabytes)."""
    untyped = []
    calls = 0
    for label, (function, arguments) in _sweep_targets().items():
        for argument in arguments:
            for value in HOSTILE:
                calls += 1
                try:
                    function(**{argument: value})
                except backlight.BacklightError:
                    pass
                except Exception as e:  # collected and shown all at once
                    untyped.append(f"{label}({argument}={value!r:.30}): {type(e).__name__}: {e}")
    assert calls > 3000
    assert untyped == []
