"""Errors meant for users: one line that names the problem and the fix."""

from __future__ import annotations

import contextlib
import contextvars
import shlex
from collections.abc import Iterator
from typing import Any

# whether the code runs under the command line (set by `galmerge.cli`): its messages name the
# command's options (--batch-size), a Python call's its arguments (batch_size)
_FROM_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("galmerge_cli", default=False)
_UNSET = object()


@contextlib.contextmanager
def from_cli() -> Iterator[None]:
    """Messages raised inside name command-line options (`named`)."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)


def named(argument: str, value: Any = _UNSET, *, literal: bool = False) -> str:
    """How a message names ``argument`` (a Python argument name, e.g. ``prior_rule``), and
    ``value`` when given: ``--prior-rule`` / ``--prior-rule bayes`` under the command line,
    ``prior_rule`` / ``prior_rule='bayes'`` from Python; ``literal``: ``value`` as written,
    unquoted (a placeholder such as ``VALUE``)."""
    if _FROM_CLI.get():
        flag = "--" + argument.replace("_", "-")
        if value is _UNSET:
            return flag
        shown = shlex.quote(value) if isinstance(value, str) and not literal else value
        return f"{flag} {shown}"
    if value is _UNSET:
        return argument
    return f"{argument}={value if literal else repr(value)}"


class GalmergeError(Exception):
    """A user mistake or an unavailable resource; the CLI prints it as one line, no traceback."""


class PluginError(GalmergeError):
    """A plugin conflict or an unknown component name."""


class PluginBug(RuntimeError):
    """An exception inside a plugin that is no user mistake and no network trouble: a bug there.

    The command fails with it, naming the plugin; the plugin's own traceback is its
    ``__cause__`` (printed above it), so the bug can be found and reported.
    """
