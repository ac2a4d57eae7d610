"""`galmerge classify`: a thin layer over `galmerge.classification.pipeline.classify`."""

from __future__ import annotations

import click

from galmerge.commands.device_option import checked_device


@click.command("classify")
@click.argument("catalog", type=click.Path())
@click.option("--model", required=True, multiple=True,
              help="Run directory (its best.pt) or checkpoint file. Several --model: an "
                   "ensemble (mean p_merger and a p_merger_std column).")
@click.option("--survey", default="sdss", show_default=True,
              help="Survey whose cutout service cuts the stamps.")
@click.option("--output", type=click.Path(),
              help="Output file: .csv (default), .h5, .fits or .parquet (a HATS catalog: a "
                   "folder). Default: <catalog stem>_galmerge.csv in the working directory.")
@click.option("--cache", type=click.Path(),
              help="Cutout cache (HDF5); '{rank}' in the name gives each torchrun process its "
                   "own (a HATS catalog: a folder of per-partition caches). Default: "
                   "$GALMERGE_DATA/cache/<survey>-<kind>.h5.")
@click.option("--ra-col", help="RA column (default: ra, RA, ra_deg, raj2000, ...).")
@click.option("--dec-col", help="Dec column (default: dec, DEC, dec_deg, dej2000, ...).")
@click.option("--id-col", help="Id column (default: objID, objid, specobjid, id, ...).")
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="Images per forward pass.")
@click.option("--device", callback=checked_device, default="auto", show_default=True,
              help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--workers", type=int, default=4, show_default=True,
              help="Concurrent downloads.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="is_merger = 1 when p_merger >= threshold.")
@click.option("--domain", type=click.Choice(["target", "source"]), default="target",
              show_default=True,
              help="Whose preprocessing (and, for a model with per-domain BatchNorm "
              "statistics, whose statistics) to apply (the model adapted to target).")
@click.option("--chunk-rows", type=int, default=4096, show_default=True,
              help="Rows read, fetched and written per step (memory stays flat).")
@click.option("--shard-timeout", type=float, default=None,
              help="torchrun: seconds rank 0 waits for the other ranks once its own share is "
                   "done (default $GALMERGE_SHARD_TIMEOUT or 86400). A rank silent for "
                   "$GALMERGE_SHARD_HEARTBEAT_TIMEOUT s (default 300) is taken as dead sooner.")
@click.option("--cache-keepbits", type=click.IntRange(1, 23), default=None,
              help="Store new stamps rounded to this many float32 mantissa bits (lossy, "
                   "relative error <= 2^-(N+1); 12 halves the cache). Default: exact.")
@click.option("--scheduler", default=None,
              help="HATS catalogs: address of a running Dask scheduler (default: a local "
                   "cluster, one worker process per core).")
@click.option("--columns", default=None,
              help="HATS catalogs: comma-separated input columns to keep (default all).")
@click.option("--prior", default=None,
              help="Rescale p_merger to the survey's merger fraction: a value (e.g. 0.05) or "
                   "auto (EM estimate). Default: the training set's prior, unchanged.")
@click.option("--prior-rule", default=None,
              help="How --prior VALUE rescales: match (default) fits one logit offset so the "
                   "mean p_merger of the output equals VALUE (robust to an adapted model that "
                   "calls too many survey galaxies mergers); bayes uses Bayes' rule from the "
                   "training set's merger fraction (needs no sample).")
@click.option("--mc-dropout", type=int, default=None, metavar="N",
              help="MC-dropout: N passes with the dropout layers active (backbones with "
                   "dropout); mean p_merger and a p_merger_std column. Not with several --model.")
@click.option("--quiet", is_flag=True, help="No progress display or summary.")
def classify(catalog: str, model: tuple[str, ...], survey: str, output: str | None,
             cache: str | None,
             ra_col: str | None, dec_col: str | None, id_col: str | None, batch_size: int,
             device: str, workers: int, threshold: float, domain: str, chunk_rows: int,
             shard_timeout: float | None, cache_keepbits: int | None, scheduler: str | None,
             columns: str | None, prior: str | None, prior_rule: str | None,
             mc_dropout: int | None, quiet: bool) -> None:
    """Classify every galaxy of CATALOG (CSV/FITS/VOTable/Parquet, an HDF5 image file, or a
    HATS catalog folder, classified partition by partition on Dask).

    Writes every input row with p_merger, is_merger and status (and shift_score, shift_flag
    for runs trained with this version: how unlike the training set each stamp is). Under torchrun the catalog is
    sharded over the processes and rank 0 merges the parts in input order.
    """
    from galmerge.classification.pipeline import classify as run

    run(catalog, model[0] if len(model) == 1 else list(model), survey=survey, output=output,
        cache=cache, ra_col=ra_col,
        dec_col=dec_col, id_col=id_col, batch_size=batch_size, device=device, workers=workers,
        threshold=threshold, domain=domain, quiet=quiet, chunk_rows=chunk_rows,
        shard_timeout=shard_timeout, cache_keepbits=cache_keepbits, scheduler=scheduler,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        prior=prior, prior_rule=prior_rule, mc_dropout=mc_dropout)
