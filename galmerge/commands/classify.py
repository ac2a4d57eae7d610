"""`galmerge classify` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command("classify", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def classify(args: tuple[str, ...]) -> None:
    """Not implemented yet."""
    raise click.ClickException("galmerge classify is not implemented yet")
