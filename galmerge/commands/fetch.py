"""`galmerge fetch` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command("fetch", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def fetch(args: tuple[str, ...]) -> None:
    """Not implemented yet."""
    raise click.ClickException("galmerge fetch is not implemented yet")
