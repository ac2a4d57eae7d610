"""`galmerge train` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args: tuple[str, ...]) -> None:
    """Not implemented yet."""
    raise click.ClickException("galmerge train is not implemented yet")
