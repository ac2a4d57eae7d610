"""`galmerge tune`: a thin layer over `galmerge.training.tuning.tune`."""

from __future__ import annotations

import click

from galmerge.commands.device_option import checked_device

SCORE_HELP = (
    "Label-free objective: im_src (default: information maximisation + source val loss), im, "
    "snd, dev, entropy or source_val_loss. Target labels are never used."
)


@click.command("tune")
@click.option("--source", required=True, help="Labelled source survey spec.")
@click.option("--target", required=True, help="Target survey spec (its labels only fill the oracle columns of trials.csv).")
@click.option("--strategy", required=True, help="DA strategy expression, e.g. mmd+fisher+entropy.")
@click.option("--n-trials", type=int, required=True,
              help="Trials to finish (complete or pruned), counting those already in the study.")
@click.option("--study-dir", type=click.Path(file_okay=False), required=True,
              help="Study folder: study.db, trials/, trials.csv, best.toml, plots, report.md.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampler and of every trial's training.")
@click.option("--timeout", type=float, help="Start no new trial after this many seconds.")
@click.option("--score", default="im_src", show_default=True, help=SCORE_HELP)
@click.option("--space", "space_file", type=click.Path(dir_okay=False),
              help="TOML file overriding the declared search space.")
@click.option("--storage", help="Shared Optuna storage URL for several processes/machines, e.g. "
              "postgresql://USER:PASSWORD@HOST/DB (default: sqlite in --study-dir).")
@click.option("--pruner", default="median", show_default=True,
              help="median, hyperband or none (per-epoch score values).")
@click.option("--sampler", default="tpe", show_default=True, help="tpe or random.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Base TOML config of every trial (e.g. a run's config.toml).")
@click.option("--epochs", type=int, help="Base (and largest searched) number of epochs.")
@click.option("--backbone", help="Backbone name.")
@click.option("--batch-size", type=int, help="Images per domain per step.")
@click.option("--max-steps-per-epoch", type=int, help="Cap on steps per epoch.")
@click.option("--device", callback=checked_device, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--set", "sets", multiple=True, metavar="[SECTION.]OPTION=VALUE",
              help="Fixed setting or option of every trial, e.g. --set epoch_steps=ceil or "
              "--set fisher.form=tr.")
@click.option("--max-source-drop", type=float, metavar="POINTS",
              help="Source guard: the best trial must keep source validation accuracy within "
              "POINTS of a source-only reference run; milder variants of the defaults are tried "
              "first.")
@click.option("--reference", type=click.Path(file_okay=False),
              help="Finished source-only run (same source and seed) for --max-source-drop "
              "(default: the study trains one in STUDY_DIR/reference).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def tune(
    source: str,
    target: str,
    strategy: str,
    n_trials: int,
    study_dir: str,
    seed: int,
    timeout: float | None,
    score: str,
    space_file: str | None,
    storage: str | None,
    pruner: str,
    sampler: str,
    config_file: str | None,
    epochs: int | None,
    backbone: str | None,
    batch_size: int | None,
    max_steps_per_epoch: int | None,
    device: str | None,
    sets: tuple[str, ...],
    max_source_drop: float | None,
    reference: str | None,
    quiet: bool,
) -> None:
    """Search hyperparameters with Optuna on a label-free score; resumable (rerun the command)."""
    from galmerge.training.tuning import tune as run_tune

    summary = run_tune(
        source, target, strategy, n_trials, study_dir, seed=seed, timeout=timeout, score=score,
        space=space_file, storage=storage, pruner=pruner, sampler=sampler, config=config_file,
        sets=sets, epochs=epochs, backbone=backbone, batch_size=batch_size,
        max_steps_per_epoch=max_steps_per_epoch, device=device, quiet=quiet,
        max_source_drop=max_source_drop, reference=reference,
    )
    guard = summary.get("guard")
    best = ("reference (source only)" if guard is not None and guard["best_is_reference"]
            else summary["best_trial"])  # fmt: skip
    click.echo(f"{summary['study_dir']}: {summary['states']}, best trial {best}")
