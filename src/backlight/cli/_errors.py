"""The command line's two kinds of error, and their exit codes."""

from __future__ import annotations


class CliError(Exception):
    exit_code = 1


class UsageError(CliError):
    """The command line asks for something that does not exist (exit code 2)."""

    exit_code = 2


class Failure(CliError):
    """The command could not be carried out: a missing or unreadable file, no network (exit 1)."""

    exit_code = 1
