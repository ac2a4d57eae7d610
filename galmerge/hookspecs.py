"""The whole plugin contract: four hooks. Implement any of them with ``@galmerge.hookimpl``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from galmerge.records import Backbone, Strategy, Survey

PROJECT = "galmerge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backbones() -> Iterable[Backbone]:
    """Return (or yield) the `Backbone` records this plugin provides."""


@hookspec
def register_strategies() -> Iterable[Strategy]:
    """Return (or yield) the domain-adaptation `Strategy` records this plugin provides."""


@hookspec
def register_surveys() -> Iterable[Survey]:
    """Return (or yield) the `Survey` records (data sources) this plugin provides."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the `galmerge` command group."""
