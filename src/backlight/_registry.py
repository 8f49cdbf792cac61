"""The method registry: each method registers itself by name; the CLI, the demo, the bench and the
contract tests read everything they need from here.

What a method is registered with is what cannot be read from its code and its documentation
(its family, whether its map belongs to a layer, cheap settings); the rest is read: its options
from its signature (the keyword-only parameters after ``model, x, target``), their descriptions
from the ``Args:`` section of its docstring, its summary from the docstring's first paragraph
(after the method's title and a colon), its reference from a ``Paper:`` section and its other
names from an ``Aliases:`` section, what its cheap settings cost from a ``Quick:`` section. So
the listing, the CLI and the documentation cannot drift apart.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import torch

from ._keras import adapt, is_keras_model
from ._result import Explanation
from ._state import Arguments, autograd_on, shaped_like
from .errors import OptionError

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")

#: The arguments every method takes first; the rest are its options.
_POSITIONAL = ("model", "x", "target")


@dataclass(frozen=True)
class MethodInfo:
    """A registered attribution method.

    Attributes:
        name: the public name (``backlight.<name>``, ``--method <name>``).
        function: the callable, ``fn(model, x, target=None, **options)``.
        family: ``"gradient"``, ``"attribution"`` (input times a gradient: Input×Gradient,
            Integrated Gradients, GradientSHAP), ``"cam"``, ``"excitation"``,
            ``"perturbation"`` or ``"wrapper"``.
        summary: one line for listings.
        paper: the reference, as "Authors, Title, Venue Year".
        aliases: other names for the same method.
        options: the keyword options beyond ``model, x, target``, read from the signature.
        quick: options that make a run cheap and still meaningful (fewer masks, steps or
            samples: ``--quick``); empty for methods that are one forward and one backward
            pass.
        quick_note: what ``quick`` costs in accuracy (the docstring's ``Quick:`` section), as
            ``backlight methods`` states it and a test checks it.
        demo: options, over ``quick``, that the demo and the bench use on the 64x64 shapes: cheap
            but enough for the map to converge.
        layered: the map belongs to a layer (a CAM layer by default), so a layer chosen for
            "the CAM methods" (the CLI's ``--layer``, the bench's) applies to it.
        smoothable: one deterministic gradient-based pass, which SmoothGrad can average.
        option_docs: each option's description, from the docstrings.
        public: the public function (``backlight.<name>``), when its calling convention differs
            from ``function`` (``smooth_grad`` takes the method first).
    """

    name: str
    function: Callable[..., Any]
    family: str
    summary: str
    paper: str
    aliases: tuple[str, ...] = ()
    options: tuple[str, ...] = field(default=())
    quick: dict[str, Any] = field(default_factory=dict)
    quick_note: str = ""
    demo: dict[str, Any] = field(default_factory=dict)
    layered: bool = False
    smoothable: bool = False
    option_docs: dict[str, str] = field(default_factory=dict)
    public: Callable[..., Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The name and the aliases."""
        return (self.name, *self.aliases)


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    name: str,
    *,
    family: str,
    quick: dict[str, Any] | None = None,
    demo: dict[str, Any] | None = None,
    layered: bool = False,
    smoothable: bool = False,
    public: Callable[..., Any] | None = None,
) -> Callable[[F], F]:
    """Register ``fn(model, x, target=None, *, **options)`` under ``name``.

    The decorated function runs with autograd available whatever the caller's mode
    (:func:`backlight._state.autograd_on`); ``quick`` and ``demo`` must name options it has.
    """

    def decorate(function: F) -> F:
        summary, paper, aliases = _described(function, name)
        taken = {n for info in _REGISTRY.values() for n in info.names}
        clash = [n for n in (name, *aliases) if n in taken]
        if clash:
            raise RuntimeError(f"method name(s) {clash} registered twice")
        options = options_of(function)
        quick_note = docstring_sections(inspect.getdoc(function) or "").get("Quick", "")
        if set(quick or {}) - {"progress"} and not quick_note:
            raise RuntimeError(f"{name}: quick settings need a 'Quick:' section saying their cost")
        for settings in (quick or {}, demo or {}):
            unknown = set(settings) - set(options)
            if unknown:
                raise RuntimeError(f"{name}: settings for unknown options {sorted(unknown)}")
        wrapped = _explaining(function, name, options)
        _REGISTRY[name] = MethodInfo(
            name=name,
            function=wrapped,
            family=family,
            summary=summary,
            paper=paper,
            aliases=aliases,
            options=options,
            quick=dict(quick or {}),
            quick_note=quick_note.rstrip("."),
            demo=dict(demo or {}),
            layered=layered,
            smoothable=smoothable,
            option_docs=docstring_args(function),
            public=public,
        )
        return wrapped

    return decorate


def _explaining(function: F, name: str, options: tuple[str, ...]) -> F:
    """``function`` run with autograd available whatever the caller's mode
    (:func:`backlight._state.autograd_on`), its result an :class:`Explanation` that names the
    method and holds every option it ran with (defaults included, the layer it chose)."""
    signature = inspect.signature(function)
    run = autograd_on(function)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Explanation:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return run(*args, **kwargs)  # type: ignore[no-any-return]  # Python's own message
        if is_keras_model(bound.arguments.get("model")):
            bound.arguments["model"], bound.arguments["x"] = adapt(
                bound.arguments["model"], bound.arguments.get("x")
            )
        result = run(*bound.args, **bound.kwargs)
        bound.apply_defaults()
        settings = {option: bound.arguments[option] for option in options}
        for key, value in bound.kwargs.items():  # a wrapper's options for the wrapped method
            settings.setdefault(key, value)
        if not isinstance(result, Explanation):
            result = Explanation.make(result)
        if result.layer is not None and "layer" in settings:
            settings["layer"] = result.layer  # the name, and the one chosen by default
        result.method, result.settings = name, settings
        return result

    return call  # type: ignore[return-value]


def register_like(
    template: Callable[P, R],
    body: Callable[[Arguments], R],
    name: str,
    doc: str,
    **registration: Any,
) -> Callable[P, R]:
    """Register, under ``name``, a method with ``template``'s signature whose work ``body``
    does (:func:`backlight._state.shaped_like`): how the methods of one family, which share a
    calling convention, are written."""
    made: Callable[P, R] = register(name, **registration)(shaped_like(template, body, name, doc))
    return made


def _described(function: Callable[..., Any], name: str) -> tuple[str, str, tuple[str, ...]]:
    """The summary, the paper and the aliases a method's docstring gives."""
    doc = inspect.getdoc(function) or ""
    first = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    _title, colon, summary = first.partition(": ")
    sections = docstring_sections(doc)
    if not colon or not summary or "Paper" not in sections:
        raise RuntimeError(
            f"{name}: the docstring must start 'Title: summary.' and have a 'Paper:' section"
        )
    aliases = tuple(a.strip() for a in sections.get("Aliases", "").split(",") if a.strip())
    return summary.rstrip("."), sections["Paper"].rstrip("."), aliases


def docstring_sections(doc: str) -> dict[str, str]:
    """The text of each ``Section:`` of a Google-style docstring, lines joined."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in doc.splitlines():
        if line and not line[0].isspace():
            head = line.strip()
            current = sections.setdefault(head[:-1], []) if head.endswith(":") else None
        elif current is not None and line.strip():
            current.append(line.strip())
    return {name: " ".join(lines) for name, lines in sections.items()}


def unregister(name: str) -> None:
    """Remove a method (for tests that register a toy one)."""
    _REGISTRY.pop(name, None)


def options_of(function: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword-only parameters of ``fn(model, x, target, *, ...)``, in order."""
    parameters = list(inspect.signature(function).parameters.values())
    head = [p.name for p in parameters[: len(_POSITIONAL)]]
    if tuple(head) != _POSITIONAL:
        raise RuntimeError(
            f"{function.__qualname__} must take (model, x, target, *, options...), not {head}"
        )
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def docstring_args(function: Callable[..., Any]) -> dict[str, str]:
    """``name: description`` entries of the ``Args:`` section of a Google-style docstring (a
    line naming several arguments, ``x, target, layer: ...``, gives each the description)."""
    doc = inspect.getdoc(function) or ""
    args: dict[str, str] = {}
    inside, current, indent = False, None, 0
    for line in doc.splitlines():
        stripped = line.strip()
        if not inside:
            inside = stripped == "Args:"
            continue
        if not stripped:
            current = None
            continue
        level = len(line) - len(line.lstrip())
        if level == 0:
            break  # the next section (Returns:, Example:)
        if current is not None and level > indent:
            for name in current:
                args[name] += " " + stripped
            continue
        head, _, rest = stripped.partition(": ")
        names = [n.strip() for n in head.split(",")]
        if rest and all(n.isidentifier() for n in names):
            current, indent = names, level
            for name in names:
                args[name] = rest.strip()
        else:
            current = None
    return args


def list_methods(family: str | None = None) -> list[MethodInfo]:
    """Every registered method, in registration order, optionally of one family."""
    families = {m.family for m in _REGISTRY.values()}
    if family is not None and (not isinstance(family, str) or family not in families):
        raise OptionError(
            f"`family` must be None or one of {', '.join(sorted(families))}, not {family!r}"
        )
    return [m for m in _REGISTRY.values() if family is None or m.family == family]


def get_method(name: str) -> MethodInfo:
    """The method registered under ``name`` or one of its aliases."""
    if not isinstance(name, str):
        raise OptionError(f"a method name must be a string, such as 'grad_cam', not {name!r}")
    for info in _REGISTRY.values():
        if name in info.names:
            return info
    owner = {n: m.name for m in _REGISTRY.values() for n in m.names}
    close = difflib.get_close_matches(name, list(owner), n=6, cutoff=0.5)
    methods = list(dict.fromkeys(owner[c] for c in close))[:3]  # a method once, by its name
    hint = f"; did you mean {', '.join(repr(m) for m in methods)}?" if methods else ""
    listed = ", ".join(sorted(_REGISTRY))
    raise OptionError(
        f"unknown method {name!r}{hint} (available: {listed}; see `backlight methods`)"
    )


def call_options(
    info: MethodInfo,
    *,
    quick: bool = False,
    demo: bool = False,
    layer: Any = None,
    progress: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The options an application calls ``info`` with: its ``quick`` settings (and its ``demo``
    ones over them), then ``overrides``; ``progress`` where the method takes it; ``layer``
    where the method's map belongs to a layer (not for the gradient family, where a layer
    would change what is explained)."""
    options = dict(info.quick) if quick else {}
    if demo:
        options.update(info.demo)
    options.update(overrides or {})
    if progress is not None and "progress" in info.options:
        options["progress"] = progress
    if layer is not None and info.layered and "layer" in info.options:
        options["layer"] = layer
    return options


def option_doc(info: MethodInfo, option: str) -> str:
    """The description of ``option`` of ``info``: from its own docstring, else from the first
    registered method that documents an option of that name (docstrings say "as for
    backlight.grad_cam" rather than repeat a description)."""
    if option in info.option_docs:
        return info.option_docs[option]
    for other in _REGISTRY.values():
        if option in other.option_docs:
            return other.option_docs[option]
    return ""


def setting_text(value: Any) -> str:
    """An option's value as the command line's ``--set`` writes it (``true``, ``none``,
    ``0.05,0.1``, ``bfloat16``), a tensor as its shape and a callable or module as its name:
    short enough for a summary line or a report's table."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.Tensor):
        if value.numel() <= 4:
            return setting_text([float(v) for v in value.flatten().tolist()])
        return f"tensor {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return ",".join(setting_text(v) for v in value)
    if isinstance(value, torch.nn.Module):
        return type(value).__name__
    if callable(value):
        return str(getattr(value, "__qualname__", None) or type(value).__name__)
    return repr(value)
