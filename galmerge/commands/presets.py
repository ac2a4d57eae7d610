"""`galmerge presets`: the hyperparameter presets and, for the DeepMerge II ones, where each value
comes from."""

from __future__ import annotations

import click


@click.command("presets")
@click.argument("name", required=False)
@click.option("--strategy", help="Show the values for this strategy expression only, e.g. "
              "mmd+mcc (any installed strategies; one the preset sets nothing for shows its own "
              "defaults). Without it: the paper's five methods, or a few examples.")
@click.option("--backbone", help="Backbone name.  [default: deepmerge]")
def presets_cmd(name: str | None, strategy: str | None, backbone: str | None) -> None:
    """List presets; with NAME, every value the preset sets and its source, and the defaults
    of a strategy it sets nothing for (a plugin's). Lines marked "!" (DeepMerge II presets) were
    not found for this exact experiment, method or backbone, or their sources disagree."""
    from galmerge.config.presets import (
        PAPER_METHODS,
        PRESETS,
        SOURCES,
        cited_values,
        preset_names,
        unset_strategy_options,
    )
    from galmerge.plugin.manager import get_plugin_manager
    from galmerge.plugin.strategy_api import canonical_strategies

    if name is None and (strategy is not None or backbone is not None):
        from galmerge.errors import GalmergeError

        raise GalmergeError("--strategy and --backbone choose a preset's values: give the "
                            "preset's NAME too, e.g. galmerge presets synthetic-sim-real "
                            "--strategy dann")  # they were ignored, unsaid
    backbone = backbone or "deepmerge"
    if name is None:
        for preset in preset_names():
            click.echo(f"{preset}: {PRESETS[preset]['description']}")
        click.echo("\n`galmerge presets NAME [--strategy S] [--backbone B]` shows the sources.")
        return
    pm = get_plugin_manager()
    bname = pm.get("backbones", backbone).name
    if name in PRESETS and "paper" not in PRESETS[name]:
        _show_tuned(name, strategy, bname)
        return
    expressions = [strategy] if strategy else list(PAPER_METHODS)
    borrowed = 0
    for expression in expressions:
        names = canonical_strategies(expression)
        # a strategy the preset has no values for (a plugin's) runs with its own defaults
        rows = cited_values(name, names, bname) + unset_strategy_options(name, names, bname)
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


#: the strategies `galmerge presets synthetic-sim-real` shows without --strategy: the rows of
#: the README's "Does domain adaptation help?" table
TUNED_EXAMPLES = ("none", "mmd+fisher+entropy", "dann+fisher")


def _flat(layer: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Dotted config paths, as the DeepMerge II presets' lines and config.toml name them."""
    out: list[tuple[str, object]] = []
    for key, value in layer.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _show_tuned(name: str, strategy: str | None, bname: str) -> None:
    """Every value a preset without paper sources sets, per strategy expression."""
    from galmerge.config.presets import PRESETS, preset_values, unset_strategy_options
    from galmerge.plugin.strategy_api import canonical_strategies

    # checked before any line is printed: a refused --strategy is the only line
    expressions = [canonical_strategies(e) for e in ([strategy] if strategy else TUNED_EXAMPLES)]
    click.echo(f"{name}: {PRESETS[name]['description']}")
    click.echo("Source: tuned by hand on seed 0 of the built-in pair, looking at target test\n"
               "accuracy (benchmarks/results/da_sim_real.md).")
    for names in expressions:
        click.echo(f"\n{name}  --strategy {'+'.join(names)}  --backbone {bname}")
        for key, value in _flat(preset_values(name, names, bname)):
            click.echo(f"   {key} = {value!r}")
        # a strategy the preset has no values for (a plugin's) runs with its own defaults;
        # the source on a line of its own, as these lines carry none
        shown = None
        for key, cited in unset_strategy_options(name, names, bname):
            if shown not in (None, cited.source):
                click.echo(f"     ({shown})")
            click.echo(f"   {key} = {cited.value!r}")
            shown = cited.source
        if shown is not None:
            click.echo(f"     ({shown})")
    click.echo("\nOptions given on the command line override these; the run's config.toml "
               "records every value.")
