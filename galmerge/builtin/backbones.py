"""Built-in plugin module (being written)."""

from __future__ import annotations
