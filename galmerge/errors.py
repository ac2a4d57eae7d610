"""Errors meant for users: one line that names the problem and the fix."""

from __future__ import annotations


class GalmergeError(Exception):
    """A user mistake or an unavailable resource; the CLI prints it as one line, no traceback."""


class PluginError(GalmergeError):
    """A plugin conflict or an unknown component name."""


class PluginBug(RuntimeError):
    """An exception inside a plugin that is no user mistake and no network trouble: a bug there.

    The command fails with it, naming the plugin; the plugin's own traceback is its
    ``__cause__`` (printed above it), so the bug can be found and reported.
    """
