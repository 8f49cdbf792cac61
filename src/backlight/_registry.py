"""The method registry: each method registers itself by name; tests and the CLI iterate over it."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._state import autograd_on
from .errors import OptionError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class MethodInfo:
    """A registered attribution method.

    Attributes:
        name: the public name (``backlight.<name>``, ``--method <name>``).
        function: the callable, ``fn(model, x, target=None, **options)``.
        family: ``"gradient"``, ``"cam"``, ``"excitation"`` or ``"perturbation"``.
        summary: one line for listings.
        paper: the reference, as "Authors, Title, Venue Year".
        aliases: other names for the same method.
        options: the keyword options beyond ``model, x, target``.
        quick: options that make a run cheap (fewer masks or iterations) for tests, the demo and
            smoke runs; empty for methods that are one forward and one backward pass.
    """

    name: str
    function: Callable[..., Any]
    family: str
    summary: str
    paper: str
    aliases: tuple[str, ...] = ()
    options: tuple[str, ...] = field(default=())
    quick: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    name: str,
    *,
    family: str,
    summary: str,
    paper: str,
    aliases: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
    quick: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        if name in _REGISTRY:
            raise RuntimeError(f"method {name!r} registered twice")
        public = autograd_on(function)
        _REGISTRY[name] = MethodInfo(
            name, public, family, summary, paper, aliases, options, dict(quick or {})
        )
        return public

    return decorate


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
        if name == info.name or name in info.aliases:
            return info
    names = [n for m in _REGISTRY.values() for n in (m.name, *m.aliases)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise OptionError(f"unknown method {name!r}{hint} (available: {', '.join(sorted(names))})")
