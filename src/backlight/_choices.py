"""Choices among strings, tested without ``==`` on arrays: torch-free, for every front end."""

from __future__ import annotations

from typing import Any


def is_choice(value: Any, choices: tuple[Any, ...]) -> bool:
    """Whether ``value`` is one of ``choices`` (strings, ``None``), tested without ``==`` on
    arrays or tensors, whose comparison has no single truth value."""
    if value is None:
        return None in choices
    return isinstance(value, str) and value in choices
