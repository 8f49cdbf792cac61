"""The command line's two kinds of error, and their exit codes."""

from __future__ import annotations

from ..errors import BacklightError, LayerError, LayerNotFoundError, OptionError, TargetError

#: backlight's errors that mean the command line asked for something wrong (exit code 2).
_USAGE = (OptionError, TargetError, LayerError, LayerNotFoundError)


class CliError(Exception):
    exit_code = 1


class UsageError(CliError):
    """The command line asks for something that does not exist (exit code 2)."""

    exit_code = 2


class Failure(CliError):
    """The command could not be carried out: a missing or unreadable file, no network (exit 1)."""

    exit_code = 1


def cli_error(e: BacklightError, prefix: str = "") -> UsageError | Failure:
    """The command line's error for one of backlight's: a usage error (exit 2) for a bad option,
    target or layer, otherwise a failure (exit 1); ``prefix`` is put before the message."""
    kind = UsageError if isinstance(e, _USAGE) else Failure
    return kind(f"{prefix}{e}")
