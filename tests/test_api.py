"""The public surface is exactly the documented names, and every method is registered once."""

from __future__ import annotations

import inspect

import backlight

DOCUMENTED = {
    # methods
    "gradient",
    "guided_backprop",
    "deconvnet",
    "rectified",
    "grad_cam",
    "guided_grad_cam",
    "linear_approx",
    "grad_cam_plus_plus",
    "score_cam",
    "layer_cam",
    "smooth_grad",
    "excitation_backprop",
    "contrastive_excitation_backprop",
    "rise",
    "extremal_perturbation",
    "input_x_gradient",
    "integrated_gradients",
    "gradient_shap",
    "occlusion",
    "hires_cam",
    "xgrad_cam",
    "eigen_cam",
    "ablation_cam",
    # results and helpers
    "Explanation",
    "RiseMasks",
    "default_cam_layer",
    "vit_reshape",
    # a whole data set
    "run",
    # ready targets (backlight.targets.Class, Sigmoid, Segmentation, Detection, ...)
    "targets",
    # front ends
    "KerasModel",
    "load_keras",
    # backward-rule contexts
    "GuidedBackpropContext",
    "DeConvNetContext",
    "ExcitationBackpropContext",
    "RuleNotAppliedWarning",
    "ForeignHookWarning",
    # the registry
    "MethodInfo",
    "get_method",
    "list_methods",
    # errors
    "BacklightError",
    "DatasetError",
    "DatasetNotFoundError",
    "InputError",
    "InputTypeError",
    "LayerError",
    "LayerNotFoundError",
    "MethodNotApplicableError",
    "ModelError",
    "OptionError",
    "TargetError",
}


def test_all_is_exactly_the_documented_names() -> None:
    assert set(backlight.__all__) == DOCUMENTED
    for name in backlight.__all__:
        assert hasattr(backlight, name), name


def test_every_registered_method_is_public_and_documented() -> None:
    for info in backlight.list_methods():
        assert getattr(backlight, info.name) is (info.public or info.function)
        doc = inspect.getdoc(info.function) or ""
        assert "Example:" in doc, info.name
        assert info.paper and info.summary


def test_gradient_family_shares_one_signature() -> None:
    expected = inspect.signature(backlight.gradient)
    assert str(expected) == (
        "(model: 'nn.Module', x: 'torch.Tensor', target: 'Target' = None, *, "
        "layer: 'Layer | None' = None, reduce: 'Reduce' = 'abs_max', resize: 'bool' = False)"
        " -> 'Explanation'"
    )
    # the rule methods add one option: whether ReLU6 counts as a ReLU
    ruled = expected.replace(
        parameters=[
            *expected.parameters.values(),
            inspect.Parameter(
                "clipped_relu", inspect.Parameter.KEYWORD_ONLY, default=True, annotation="bool"
            ),
        ]
    )
    for info in backlight.list_methods("gradient"):
        want = expected if info.name == "gradient" else ruled
        assert inspect.signature(info.function) == want, info.name


def test_docstring_examples_run() -> None:
    import doctest

    for info in backlight.list_methods():
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in finder.find(info.function, info.name, globs={}):
            runner.run(test)
        assert runner.tries > 0 and runner.failures == 0, info.name
    for cls in (backlight.GuidedBackpropContext,):
        runner = doctest.DocTestRunner()
        for test in doctest.DocTestFinder().find(cls, cls.__name__, globs={}):
            runner.run(test)
        assert runner.tries > 0 and runner.failures == 0


def test_registry_options_are_the_signature_and_are_documented() -> None:
    """Options come from the signature; every one has a description in a docstring, and the
    quick and demo settings name options the method has."""
    from backlight._registry import option_doc

    for info in backlight.list_methods():
        parameters = inspect.signature(info.function).parameters.values()
        keyword = tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)
        assert info.options == keyword, info.name
        for option in info.options:
            assert len(option_doc(info, option)) > 10, (info.name, option)
        assert set(info.quick) | set(info.demo) <= set(info.options), info.name


def test_readme_method_table_is_the_registry() -> None:
    """The README's table of methods lists each registered method once, with the paper the
    registry gives."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Methods", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    names = [re.match(r"\| `([a-z_]+)`", row).group(1) for row in rows]  # type: ignore[union-attr]
    registered = {info.name: info for info in backlight.list_methods()}
    assert sorted(names) == sorted(registered) and len(set(names)) == len(names)
    for row, name in zip(rows, names, strict=True):
        info = registered[name]
        authors = info.paper.split(",")[0].split("&")[0].split()[0]
        assert authors in row, (info.name, authors)
