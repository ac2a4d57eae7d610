"""`galmerge reproduce`: a thin layer over `galmerge.surveys.deepmerge.reproduce.reproduce`."""

from __future__ import annotations

import click

from galmerge.commands.device_option import checked_device
from galmerge.config.presets import PAPER_METHODS
from galmerge.surveys.deepmerge.reproduce import BACKBONES, PAPERS


@click.command("reproduce")
@click.argument("paper", type=click.Choice(PAPERS))
@click.option("--experiment", type=click.Choice(["sim-sim", "sim-real"]), required=True,
              help="sim-sim: Illustris z=2 pristine -> noisy; sim-real: Illustris z=0 -> SDSS.")
@click.option("--tl", is_flag=True,
              help="sim-real with transfer learning from the sim-sim run of each method "
              "(trained first when missing).")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds 1..N per method.")
@click.option("--backbone", "backbones", multiple=True, default=("deepmerge",), show_default=True,
              help=f"Backbone, repeatable: the paper's {' and '.join(BACKBONES)}, or any "
              "installed one (galmerge list backbones).")
@click.option("--method", "methods", multiple=True, type=click.Choice(PAPER_METHODS),
              help="Only these methods (repeatable; default all five).")
@click.option("--epochs", type=int, help="Fewer epochs than the paper's 200, for a quick look.")
@click.option("--max-steps-per-epoch", type=int, help="Cap on steps per epoch (quick look).")
@click.option("--batch-size", type=int, help="Override the paper's 128 (quick look).")
@click.option("--out", default="reproduce-deepmerge2", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the runs and tables.")
@click.option("--source", help="Replace the experiment's source data spec (e.g. the synthetic "
              "pair 'synthetic:illustris?n=2000&seed=0').")
@click.option("--target", help="Replace the experiment's target data spec.")
@click.option("--tl-source", help="With --tl: replace the source data spec of the sim-sim runs "
              "it starts from (e.g. 'synthetic:pristine?n=2000&seed=0').")
@click.option("--tl-target", help="With --tl: replace the target data spec of those sim-sim runs.")
@click.option("--device", callback=checked_device, help="auto (default), cpu, cuda, cuda:N or mps.")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="Write each run's report/ (galmerge evaluate).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=200, show_default=True,
              help="Bootstrap resamples in each evaluation.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def reproduce(
    paper: str,
    experiment: str,
    tl: bool,
    seeds: int,
    backbones: tuple[str, ...],
    methods: tuple[str, ...],
    epochs: int | None,
    max_steps_per_epoch: int | None,
    batch_size: int | None,
    out: str,
    source: str | None,
    target: str | None,
    tl_source: str | None,
    tl_target: str | None,
    device: str | None,
    evaluate: bool,
    bootstrap: int,
    quiet: bool,
) -> None:
    """Train PAPER's method grid with its presets, evaluate each run and write the paper-style
    table (mean ± std over seeds, gain over source-only) to OUT/EXPERIMENT/table.md and table.csv. Needs the
    data of `galmerge fetch illustris` and `galmerge fetch sdss`. Rerun the same command after a kill: finished runs
    are skipped, interrupted ones resumed."""
    from galmerge.errors import GalmergeError
    from galmerge.surveys.deepmerge.reproduce import reproduce as run_reproduce

    if tl and experiment != "sim-real":
        raise GalmergeError("--tl is the sim-real experiment's transfer learning; use "
                            "--experiment sim-real --tl")
    if (tl_source or tl_target) and not tl:
        raise GalmergeError("--tl-source/--tl-target name the data of the sim-sim runs that "
                            "--tl starts from; add --tl, or use --source/--target")
    settings = {k: v for k, v in (("epochs", epochs), ("max_steps_per_epoch",
                max_steps_per_epoch), ("batch_size", batch_size)) if v is not None}
    run_reproduce(
        paper,
        "sim-real-tl" if tl else experiment,
        seeds=seeds,
        backbones=backbones,
        methods=methods or PAPER_METHODS,
        out=out,
        settings=settings,
        data={k: v for k, v in (("source", source), ("target", target),
                                ("sim_sim_source", tl_source), ("sim_sim_target", tl_target))
              if v},
        device=device,
        evaluate=evaluate,
        bootstrap=bootstrap,
        quiet=quiet,
    )
