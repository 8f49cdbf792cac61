"""Bad input gets a typed error that names the argument and says the fix."""

from __future__ import annotations

import pytest
import torch

import backlight
from backlight import errors

from .conftest import explain, methods_with, torchvision_model
from .nets import NoReLU, TinyNet

METHODS = methods_with()
IDS = [m.name for m in METHODS]
LAYERED = methods_with("layer")


def test_exception_tree() -> None:
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.InputTypeError, TypeError)
    assert issubclass(errors.InputTypeError, errors.InputError)
    assert issubclass(errors.TargetError, ValueError)
    assert issubclass(errors.LayerNotFoundError, LookupError)
    assert issubclass(errors.LayerError, ValueError)
    assert issubclass(errors.OptionError, ValueError)
    assert issubclass(errors.MethodNotApplicableError, ValueError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), backlight.BacklightError)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        ([[1.0]], errors.InputTypeError, r"`x` must be a torch.Tensor .* not list"),
        (
            torch.zeros(1, 3, 12, 12, dtype=torch.uint8),
            errors.InputError,
            r"floating-point.*x.float\(\) / 255",
        ),
        (
            torch.zeros(3, 12, 12),
            errors.InputError,
            r"\(N, C, H, W\), got \(3, 12, 12\).*unsqueeze\(0\)",
        ),
        (torch.zeros(2, 1, 3, 12, 12), errors.InputError, r"got \(2, 1, 3, 12, 12\) \(5-D\)"),
        (torch.zeros(0, 3, 12, 12), errors.InputError, r"empty"),
        (torch.full((1, 3, 12, 12), float("nan")), errors.InputError, r"432 NaN or infinite"),
        (
            torch.zeros(1, 3, 12, 12, dtype=torch.float64),
            errors.InputError,
            r"torch.float64 but the model's parameters are torch.float32",
        ),
    ],
    ids=["list", "uint8", "3d", "5d", "empty", "nan", "dtype"],
)
def test_bad_input(method: backlight.MethodInfo, x: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        explain(method, TinyNet(), x, 0)


def test_inf_is_rejected_too() -> None:
    x = torch.zeros(1, 3, 12, 12)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(errors.InputError, match="1 NaN or infinite"):
        backlight.gradient(TinyNet(), x)


def test_model_must_be_a_module() -> None:
    with pytest.raises(errors.InputTypeError, match=r"`model` must be a torch\.nn\.Module"):
        backlight.gradient(lambda x: x, torch.zeros(1, 3, 4, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("method", LAYERED, ids=[m.name for m in LAYERED])
def test_layer_name_suggests_close_names(method: backlight.MethodInfo) -> None:
    model = torchvision_model("resnet18")
    with pytest.raises(errors.LayerNotFoundError) as info:
        explain(method, model, torch.randn(1, 3, 32, 32), 0, layer="layer5")
    message = str(info.value)
    assert "`layer` 'layer5' is not a module of ResNet; did you mean 'layer4'" in message
    assert "'layer1'" in message  # the other close names are listed too


def test_layer_name_far_from_everything_lists_top_level_modules() -> None:
    with pytest.raises(errors.LayerNotFoundError, match=r"top-level modules are 'conv1', 'conv2'"):
        backlight.gradient(TinyNet(), torch.zeros(1, 3, 12, 12), layer="xyzzy")


def test_layer_module_from_another_model() -> None:
    with pytest.raises(errors.LayerNotFoundError, match="not a submodule of TinyNet"):
        backlight.gradient(TinyNet(), torch.zeros(1, 3, 12, 12), layer=torch.nn.ReLU())


def test_layer_of_wrong_type() -> None:
    with pytest.raises(errors.OptionError, match="`layer` must be a dotted module name"):
        backlight.gradient(TinyNet(), torch.zeros(1, 3, 12, 12), layer=3)  # type: ignore[arg-type]


def test_layer_called_twice_is_rejected() -> None:
    with pytest.raises(errors.LayerError, match=r"'relu' \(ReLU\) is called more than once"):
        backlight.gradient(TinyNet(), torch.zeros(1, 3, 12, 12), layer="relu")


def test_layer_never_called_is_rejected() -> None:
    model = TinyNet()
    model.unused = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(errors.LayerError, match="'unused' was not called"):
        backlight.gradient(model, torch.zeros(1, 3, 12, 12), layer="unused")


def test_layer_without_a_feature_map() -> None:
    with pytest.raises(errors.LayerError, match=r"'fc1' outputs shape \(1, 8\), not a feature map"):
        backlight.gradient(TinyNet(), torch.zeros(1, 3, 12, 12), layer="fc1")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (5, r"`target` 5 is out of range for a model with 5 classes \(valid indices are 0 to 4\)"),
        (-1, r"`target` -1 is out of range for a model with 5 classes"),
        ([0, 1, 2], r"gives 3 classes for a batch of 2 samples"),
        (torch.tensor([0.0, 1.0]), r"1-D integer tensor"),
        (True, r"not the bool"),
        ("cat", r"got str"),
        ([0, 1.5], r"integer class indices"),
        (lambda out: out, r"return a 1-D tensor with one score per sample, got shape \(2, 5\)"),
        (lambda out: out[0], r"returned 5 scores for a batch of 2"),
        (lambda out: 3.0, r"got float"),
    ],
    ids=[
        "high",
        "negative",
        "length",
        "float",
        "bool",
        "str",
        "floats",
        "2d",
        "wrong-n",
        "float-score",
    ],
)
def test_bad_target(target: object, message: str) -> None:
    with pytest.raises(errors.TargetError, match=message):
        backlight.gradient(TinyNet(), torch.zeros(2, 3, 12, 12), target)  # type: ignore[arg-type]


def test_target_on_a_non_logit_output_asks_for_a_callable() -> None:
    class Seg(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x)

    with pytest.raises(errors.TargetError, match=r"returned shape \(1, 3, 4, 4\).*callable"):
        backlight.gradient(Seg(), torch.zeros(1, 3, 4, 4), 1)


@pytest.mark.parametrize("method", [backlight.guided_backprop, backlight.deconvnet])
def test_rule_method_on_a_model_without_relu(method: object) -> None:
    with pytest.raises(
        errors.MethodNotApplicableError, match=r"NoReLU computed no ReLU.*backlight.gradient"
    ):
        method(NoReLU(), torch.randn(1, 3, 8, 8), 0)  # type: ignore[operator]
    # the plain gradient is fine on the same model
    assert backlight.gradient(NoReLU(), torch.randn(1, 3, 8, 8), 0).abs().sum() > 0


def test_bad_options() -> None:
    with pytest.raises(errors.OptionError, match=r"`reduce` must be one of 'abs_max', 'l2', 'sum'"):
        backlight.gradient(TinyNet(), torch.zeros(1, 3, 12, 12), reduce="max")  # type: ignore[arg-type]
    with pytest.raises(errors.OptionError, match=r"`resize` must be True or False"):
        backlight.gradient(TinyNet(), torch.zeros(1, 3, 12, 12), resize=(12, 12))  # type: ignore[arg-type]


def test_detached_forward_is_explained() -> None:
    class Detached(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.detach().mean(dim=(2, 3)))

    with pytest.raises(errors.MethodNotApplicableError, match="does not depend on `x`"):
        backlight.gradient(Detached(), torch.zeros(1, 3, 4, 4), 0)


def test_layer_off_the_path_to_the_output() -> None:
    class SideBranch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main = torch.nn.Conv2d(3, 2, 1)
            self.side = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.side(x)  # computed, never used
            return self.main(x).mean(dim=(2, 3))

    with pytest.raises(errors.LayerError, match="does not depend on the output of `layer` 'side'"):
        backlight.gradient(SideBranch(), torch.zeros(1, 3, 4, 4), 0, layer="side")


def test_unknown_method_name_suggests() -> None:
    with pytest.raises(
        errors.OptionError, match="unknown method 'guided_backprob'; did you mean 'guided_backprop'"
    ):
        backlight.get_method("guided_backprob")
