"""`galmerge evaluate` (placeholder until its issue lands)."""

from __future__ import annotations

import click


@click.command("evaluate", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def evaluate(args: tuple[str, ...]) -> None:
    """Not implemented yet."""
    raise click.ClickException("galmerge evaluate is not implemented yet")


@click.command("compare", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def compare(args: tuple[str, ...]) -> None:
    """Not implemented yet."""
    raise click.ClickException("galmerge compare is not implemented yet")
