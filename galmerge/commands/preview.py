"""`galmerge preview` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command("preview", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def preview(args: tuple[str, ...]) -> None:
    """Not implemented yet."""
    raise click.ClickException("galmerge preview is not implemented yet")
