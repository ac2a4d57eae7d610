"""Errors meant for users: one line that names the problem and the fix."""

from __future__ import annotations


class GalmergeError(Exception):
    """A user mistake or an unavailable resource; the CLI prints it as one line, no traceback."""


class PluginError(GalmergeError):
    """A plugin conflict or an unknown component name."""
