"""`galmerge evaluate` and `galmerge compare`: thin layers over `galmerge.evaluation.pipeline` and
`galmerge.evaluation.comparison`."""

from __future__ import annotations

import click

from galmerge.commands.device_option import checked_device


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    default="best",
    show_default=True,
    help="Which checkpoint of the run to evaluate.",
)
@click.option("--device", callback=checked_device, default="auto", show_default=True,
              help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--bootstrap",
    type=int,
    default=200,
    show_default=True,
    help="Bootstrap resamples for the 68% intervals (0 = none).",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True),
    help="The embedding plot's 'before' run (same data and backbone; a `none` run, or drawn "
    "as its own strategy). Default: the run's source_only/ stage, else the sibling `none` run "
    "whose config.toml matches best (only the seed differing first, then the same seed, then the closest epochs).",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Write the temperature fitted on the source validation split into the "
    "checkpoint, so classify outputs calibrated p_merger.",
)
@click.option("--source", help="Source data spec if config.toml's cannot be reloaded here.")
@click.option("--target", help="Target data spec if config.toml's cannot be reloaded here.")
@click.option(
    "--embedding-points",
    type=click.IntRange(min=1),
    default=400,
    show_default=True,
    help="Test images per domain in the t-SNE/UMAP plot.",
)
@click.option("--quiet", is_flag=True, help="Do not print the summary tables.")
def evaluate(
    run_dir: str,
    checkpoint: str,
    device: str,
    bootstrap: int,
    baseline: str | None,
    calibrate: bool,
    source: str | None,
    target: str | None,
    embedding_points: int,
    quiet: bool,
) -> None:
    """Metrics, plots and report.html for RUN_DIR, written to RUN_DIR/report/."""
    from galmerge.evaluation.pipeline import evaluate as run_evaluate

    run_evaluate(
        run_dir,
        checkpoint=checkpoint,
        device=device,
        bootstrap=bootstrap,
        baseline=baseline,
        calibrate=calibrate,
        source=source,
        target=target,
        embedding_points=embedding_points,
        quiet=quiet,
    )


@click.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Also write the table: .md (markdown) or .csv (mean and std columns).",
)
def compare(runs: tuple[str, ...], output: str | None) -> None:
    """Paper-style table over RUNS (run directories or globs): mean ± std over seeds per
    strategy, backbone and data pair, and the target-accuracy gain over `none`."""
    from galmerge.errors import GalmergeError
    from galmerge.evaluation.comparison import compare as run_compare
    from galmerge.evaluation.comparison import expand_runs, print_table, write_table

    if output is not None and not output.lower().endswith((".md", ".csv")):
        raise GalmergeError(f"--output {output}: use a .md or .csv file name")
    rows = run_compare(expand_runs(runs))
    print_table(rows)
    from galmerge.evaluation.comparison import notes

    for line in notes(rows):  # shared seeds, a gain over another length's `none`
        click.echo(line, err=True)
    if output is not None:
        click.echo(f"wrote {write_table(rows, output)}")
