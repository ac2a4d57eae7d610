"""`galmerge fraction`: a thin layer over `galmerge.fractions.report.survey_fraction`."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from galmerge.commands.device_option import checked_device


@click.command("fraction")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--model", required=True,
              help="Run directory of the model that classified RESULTS (its best.pt; its "
                   "source validation split gives the error rates), or RUN_DIR/last.pt if "
                   "classify was given that.")
@click.option("--by", help="Column to bin by (e.g. redshift or stellar mass).")
@click.option("--bins", help="With --by: increasing edges (0,0.1,0.2) or a number of "
                             "equal-count bins (4).")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="p_merger >= threshold counts as a merger (naive and ACC).")
@click.option("--bootstrap", type=int, default=1000, show_default=True,
              help="Bootstrap resamples (survey rows and source validation images): 0 for no "
                   "intervals, else at least 10.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write a figure (.png/.pdf/.svg): one panel per bin.")
@click.option("--source", help="Source data spec if the run's config.toml's cannot be "
                               "reloaded here (needed once, to score its validation split).")
@click.option("--target", help="Target data spec if the run's config.toml's cannot be "
                               "reloaded here (read only by runs whose source was observed "
                               "with the target's field sources, observe.field).")
@click.option("--device", callback=checked_device, default="cpu", show_default=True,
              help="Device for scoring the validation split (once; cached in the run).")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="A labelled random sample of the survey (CSV, FITS or Parquet: an "
                   "identifier and a 0/1 merger column, e.g. galaxies classified by eye): adds "
                   "the ppi estimator, unbiased under domain shift.")
@click.option("--id-col", help="With --labels: the identifier column both files have "
                               "[default: the first common catalog id name, e.g. objid].")
@click.option("--label-col", help="With --labels: its 0/1 column [default: merger].")
def fraction(results: str, model: str, by: str | None, bins: str | None, threshold: float,
             bootstrap: int, seed: int, as_json: bool, plot: str | None, source: str | None,
             target: str | None, device: str, labels: str | None, id_col: str | None,
             label_col: str | None) -> None:
    """Merger fraction of RESULTS (a classify output) with 68% and 95% intervals.

    Four estimators side by side: naive classify-and-count; adjusted classify-and-count
    (error rates from the run's source validation split); EM prior adjustment (Saerens et al.
    2002) on Platt-recalibrated probabilities; soft black-box shift estimation (Lipton et al.
    2018). All corrections assume label shift (the classifier errs on the survey as on the
    source): none corrects a change of the error rates by domain shift. With --labels, a
    fifth: prediction-powered inference (PPI++), the labelled sample's merger fraction
    corrected by the classifier over the whole survey; it needs no label-shift assumption,
    only labelled rows drawn at random from the survey.
    """
    from galmerge.fractions.report import survey_fraction

    payload = survey_fraction(results, model, by=by, bins=bins, threshold=threshold,
                              bootstrap=bootstrap, seed=seed, source=source, target=target,
                              device=device, plot=plot, labels=labels, id_col=id_col,
                              label_col=label_col)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    _print(payload)


def _cell(e: dict[str, Any]) -> str:
    if e["fraction"] is None:
        return "undefined"
    text = f"{e['fraction']:.4f}"
    for key in ("ci68", "ci95"):
        if e[key] is not None:
            text += f" [{e[key][0]:.4f}, {e[key][1]:.4f}]"
    return text


def _print(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from galmerge.fractions.estimators import ESTIMATORS, LABELLED

    console = Console(file=sys.stdout)
    entries = payload.get("bins") or [{**payload, "lo": math.nan, "hi": math.nan}]
    table = Table(title="merger fraction: estimate [68%] [95%] bootstrap intervals")
    if "by" in payload:  # user text: printed as given, never read as rich markup
        table.add_column(escape(payload["by"]))
    table.add_column("n", justify="right")
    names = [k for k in (*ESTIMATORS, LABELLED) if k in entries[0]["estimators"]]
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("recommended")
    for e in entries:
        cells = [str(e["n"])] + [_cell(e["estimators"][k]) for k in names]
        if "by" in payload:
            cells.insert(0, escape(f"[{e['lo']:g}, {e['hi']:g}]"))
        table.add_row(*cells, e["recommended"])
    console.print(table)
    v = payload["validation"]
    console.print(f"source validation: {v['n']} images, tpr {v['tpr']:.3f}, fpr {v['fpr']:.3f} "
                  f"at threshold {payload['threshold']:g}; excluded rows: "
                  + (", ".join(f"{k} {n}" for k, n in payload["excluded"].items()) or "none"),
                  markup=False)
    lab = payload.get("labels")
    if lab is not None:
        console.print(f"labelled sample: {lab['rows']} ok rows of {lab['file']} matched by "
                      f"{lab['id_column']} ({lab['unmatched']} labelled identifiers not among "
                      "them); ppi assumes they are a random sample of the survey rows",
                      markup=False)
    cut = payload.get("labelled_threshold")
    if cut is not None:
        console.print(
            f"decision threshold from the labelled sample (Platt fit on {cut['n']} rows, "
            f"{cut['mergers']} mergers): "
            + (f"p_merger >= {cut['threshold']:.4g} (the model's own p_merger; classify "
               f"--threshold {cut['threshold']:.4g} sets is_merger so) is where the "
               "survey-calibrated probability is at least 0.5" if cut["threshold"] is not None
               else f"none ({cut['reason']})"), markup=False)
    check = payload.get("label_shift_check")
    if check is not None:
        verdict = ("WARNING: the survey's p_merger distribution is no mixture of the source "
                   "classes' (domain shift): the corrected fractions are biased by an unknown "
                   "amount" if check["p_value"] < 0.01 else "consistent with label shift")
        console.print(f"label-shift check: KS {check['ks']:.3f}, p = {check['p_value']:.3g}; "
                      f"{verdict}")
    adapted = payload.get("adaptation_check")
    if adapted is not None:
        console.print(("WARNING: " if adapted["warning"] else "note: ") + adapted["message"],
                      markup=False)
    if payload.get("plot"):
        from galmerge.runtime.progress import print_path

        print_path(console, "plot:", payload["plot"])
