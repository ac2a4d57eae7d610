"""`galmerge presets`: the hyperparameter presets and, for the DeepMerge II ones, where each value
comes from."""

from __future__ import annotations

import click


@click.command("presets")
@click.argument("name", required=False)
@click.option("--strategy", help="Show the values for this strategy expression only.")
@click.option("--backbone", default="deepmerge", show_default=True, help="Backbone name.")
def presets_cmd(name: str | None, strategy: str | None, backbone: str) -> None:
    """List presets; with NAME, every value a DeepMerge II preset sets and its source. Lines
    marked "!" were not found for this exact experiment, method or backbone, or their sources
    disagree."""
    from galmerge.config.presets import PAPER_METHODS, PRESETS, SOURCES, cited_values, preset_names
    from galmerge.plugin.manager import get_plugin_manager
    from galmerge.plugin.strategy_api import parse_strategy_expression

    if name is None:
        for preset in preset_names():
            click.echo(f"{preset}: {PRESETS[preset]['description']}")
        click.echo("\n`galmerge presets NAME [--strategy S] [--backbone B]` shows the sources.")
        return
    if name in PRESETS and "paper" not in PRESETS[name]:
        click.echo(f"{name}: {PRESETS[name]['description']} (values in galmerge/config/presets.py)")
        return
    pm = get_plugin_manager()
    bname = pm.get("backbones", backbone).name
    expressions = [strategy] if strategy else list(PAPER_METHODS)
    borrowed = 0
    for expression in expressions:
        names = [pm.get("strategies", n).name for n in parse_strategy_expression(expression)]
        rows = cited_values(name, names, bname)
        click.echo(f"{name}  --strategy {'+'.join(names)}  --backbone {bname}")
        width = max(len(f"{k} = {c.value!r}") for k, c in rows)
        for key, cited in rows:
            mark = "!" if cited.caveat else " "
            click.echo(f" {mark} {f'{key} = {cited.value!r}':<{width}}  {cited.source}")
            if cited.caveat:
                borrowed += 1
                click.echo(f"   {'':<{width}}  ! {cited.caveat}")
        click.echo("")
    if PRESETS[name].get("needs_init_from"):
        click.echo("Needs --init-from RUN_DIR: a finished deepmerge2-sim-sim run of the same "
                   "strategy and backbone (its normalisation is kept).")
    click.echo(f"{borrowed} value(s) marked '!' carry a caveat: not found for this exact "
               "experiment, method or backbone, or the sources disagree.")
    click.echo("Sources:")
    for tag, text in SOURCES.items():
        click.echo(f"  {tag:<7} {text}")
