"""`galmerge plugins` and `galmerge list`."""

from __future__ import annotations

import json

import click

from galmerge.plugin.manager import KINDS, get_plugin_manager


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_cmd(as_json: bool) -> None:
    """List installed plugins: name, components, distribution, version, built-in or not.

    More plugins: PyPI packages with the keyword `galmerge-plugin` (none is published yet);
    install one with `galmerge install NAME`, or a local one with `galmerge install PATH`.
    """
    infos = get_plugin_manager().plugin_infos()
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("plugin", "components", "distribution", "version", "built-in", "status")
    for info in infos:
        comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.components.items() if v)
        if "register_commands" in info.hooks:
            comps = f"{comps}; commands" if comps else "commands"
        table.add_row(*map(escape, (  # names and errors come from plugins: not markup
            info.name,
            comps or "-",
            info.distribution or "-",
            info.version or "-",
            "yes" if info.builtin else "no",
            f"failed: {info.error}" if info.error else "ok",
        )))
    Console().print(table)
    from galmerge.commands.install import PLUGIN_INDEX_URL

    click.echo(f"More plugins: {PLUGIN_INDEX_URL}  (none is published yet; install one with "
               "`galmerge install NAME`, a local one with `galmerge install PATH`)")


@click.command("list")
@click.argument("kind", type=click.Choice(sorted(KINDS)))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(kind: str, as_json: bool) -> None:
    """List the backbones, strategies or surveys that plugins provide."""
    manager = get_plugin_manager()
    records = manager.components(kind)
    rows = []
    for name, record in records.items():
        owner = manager.owner(kind, name)
        row = {
            "name": name,
            "description": record.description,
            "plugin": owner.name if owner else None,
            "distribution": owner.distribution if owner else None,
            "version": owner.version if owner else None,
        }
        schemas = {"options": record.options}
        if kind == "strategies":
            row["aliases"] = list(record.aliases)
        if kind == "surveys":
            row["presets"] = list(record.presets)
            row["training_data"] = record.load is not None
            row["cutouts"] = record.cutouts is not None
            schemas = {"options": record.options, "cutout_options": record.cutout_options}
        else:
            row["options"] = dict(record.defaults)  # name -> default, as before
        # each option's default, type, help and allowed values (the record's schema)
        row["option_schema"] = {key: {n: o.as_dict() for n, o in schema.items()}
                                for key, schema in schemas.items()}
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("name")
    # fold long tokens (a survey spec) rather than cut them with an ellipsis at 80 columns
    table.add_column("description", overflow="fold")
    table.add_column("distribution")
    for row in rows:
        name = row["name"]
        if row.get("aliases"):
            name += f" (alias {', '.join(row['aliases'])})"
        if row.get("presets"):
            name += f" [{'|'.join(row['presets'])}]"
        text = str(row["description"])
        for key, schema in row["option_schema"].items():
            for option, spec in schema.items():
                where = " (classify)" if key == "cutout_options" else ""
                text += f"\n  {option}{where}: {_describe(spec)}"
        table.add_row(*map(escape, (name, text, row["distribution"] or "-")))
    Console().print(table)


def _describe(spec: dict) -> str:
    from galmerge.plugin.options import Option

    return Option.from_dict(spec).describe()
