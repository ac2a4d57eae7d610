"""Replay checkpoint-selection rules on finished runs: which epoch would each rule keep?

Every run's ``metrics.csv`` holds, per epoch, the label-free scores the trainer computes on the
validation splits (``score_*``, ``source_val_loss``) beside the research-only target validation
accuracy. A rule picks an epoch from the label-free columns only; the target validation accuracy
at that epoch then says what the rule was worth (target labels only score, never choose).
``none`` keeps the epoch its own run kept (``source_val_loss``), so gains are against the
source-only run of the same pair and seed, on the same target validation images.

Rules: ``source_val_loss`` (the trainer's default), ``im`` (information maximisation on the
target validation predictions), ``im_src`` (im + source validation loss) and ``last`` (the
final epoch). Why: with the target's own encoder (``target_encoder = "separate"``) the source
validation loss measures the source path, a source-only model trained on, and says nothing of
how far the target encoder has adapted.

Stop 32's rule, written before any replay of the dev runs: on the dev runs of the
separate-encoder defaults (study_seeds26's folders: pairs 0, 2, 4, 6, 8 x seeds 11, 12; adda,
mmd_separate, coral_separate, entropy_separate), a rule replaces ``source_val_loss`` as the
selection for runs with their own target encoder if its mean target gain is higher, it has no
more runs below ``none``, and its mean source change is at most 2.5 points lower; of several,
the one with the highest mean target gain. Then it is replayed once on the held-out runs.
(Outcome: ``im``, selection_replay32_dev.md.)

Stop 33's rule, written before the runs it reads: on held-out studies at 1,000 images and 10
epochs ``im`` kept early epochs whose source path had not converged (source -3.1 points against
``none``, selection_replay32_tune_n1000.md), so the choice is made again on dev runs of both
sizes: stop 32's 35 records (2,000 images, 15 epochs; ``--add``) and new runs of grid
``small33`` (1,000 images, 10 epochs; dev pairs 0, 2, 4, 6, 8 x seeds 11, 12; adda,
mmd_separate, coral_separate, entropy_separate). A rule qualifies if, at each size separately,
its mean source change against ``none`` is >= -2.5 points and it has no more runs below
``none`` than ``source_val_loss`` at that size. Of the qualifying rules the one with the
highest mean target gain over all dev runs of both sizes (each run once) becomes "auto"'s rule
for runs with their own target encoder; on a tie ``im`` stays. Then it is replayed once on
held-out runs at 1,000 images.

    python benchmarks/selection_replay.py --work-dir RUNS --names adda mmd_separate \\
        --pairs 0 2 4 6 8 --seeds 11 12 --out benchmarks/results/selection_replay_dev.json \\
        [--label "n=1000" --add benchmarks/results/selection_replay32_dev.json=n=2000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from tables import mean_sd

from galmerge.config.rundir import read_metrics
from galmerge.scores.selection import row_value, select_epoch

# selection names of galmerge.scores.selection, and "last" (the final epoch)
RULES = ("source_val_loss", "im", "im_src", "last")


def pick(rows: list[dict[str, float]], rule: str) -> dict[str, float] | None:
    """The row ``rule`` keeps: the trainer's choice under that selection name (best finite
    value, first on ties), or the last row for ``"last"``."""
    if rule == "last":
        return rows[-1] if rows else None
    i = select_epoch([row_value(r, rule) for r in rows], rule)
    return None if i is None else rows[i]


def replay(work: Path, names: list[str], pairs: list[int], seeds: list[int]) -> list[dict[str, Any]]:
    records = []
    for p in pairs:
        for s in seeds:
            folder = work / f"pair{p}-seed{s}"
            none_csv = folder / "none" / "metrics.csv"
            if not none_csv.is_file():
                continue
            none = pick(read_metrics(folder / "none"), "source_val_loss")
            for name in names:
                if not (folder / name / "metrics.csv").is_file():
                    continue
                rows = read_metrics(folder / name)
                rec: dict[str, Any] = {"pair": p, "seed": s, "name": name,
                                       "none_target_val": none["target_val_accuracy"],
                                       "none_source_val": none["source_val_accuracy"]}
                for rule in RULES:
                    r = pick(rows, rule)
                    rec[rule] = None if r is None else {
                        "epoch": int(r["epoch"]), "target_val": r["target_val_accuracy"],
                        "source_val": r["source_val_accuracy"],
                        "target_pred_merger": r.get("target_val_pred_merger", math.nan)}
                records.append(rec)
    return records


def _by_label(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records per label (data size), in first-seen order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get("label", ""), []).append(r)
    return out


def _gains(rs: list[dict[str, Any]], rule: str) -> tuple[list[float], list[float]]:
    got = [r for r in rs if r[rule] is not None]
    return ([100 * (r[rule]["target_val"] - r["none_target_val"]) for r in got],
            [100 * (r[rule]["source_val"] - r["none_source_val"]) for r in got])


def table(records: list[dict[str, Any]]) -> list[str]:
    """Per rule: all runs, then each label (data size) if there are several, then each
    strategy."""
    lines = ["| runs of | rule | runs | target val gain vs none | source val change vs none | "
             "runs below none (worst) | mean epoch |", "| --- " * 7 + "|"]
    labels = _by_label(records)
    groups: list[tuple[str, list[dict[str, Any]]]] = [("all", records)]
    if len(labels) > 1:
        groups += list(labels.items())
    groups += [(name, [r for r in records if r["name"] == name])
               for name in dict.fromkeys(r["name"] for r in records)]
    for name, rs in groups:
        for rule in RULES:
            got = [r for r in rs if r[rule] is not None]
            gains, src = _gains(got, rule)
            below = [g for g in gains if g < 0]
            worst = f" ({min(below):+.1f})" if below else ""
            epochs = statistics.fmean(r[rule]["epoch"] for r in got) if got else math.nan
            lines.append(f"| {name} | {rule} | {len(got)} | {mean_sd(gains, 1, signed=True)} | "
                         f"{mean_sd(src, 1, signed=True)} | {len(below)}{worst} | "
                         f"{epochs:.1f} |")
    return lines


def choose(records: list[dict[str, Any]], keep: str = "im") -> list[str]:
    """Stop 33's rule (module docstring) applied to the records, one line per rule and the
    outcome: qualifying needs, per label (data size), a mean source change >= -2.5 points and
    no more runs below none than source_val_loss; the best mean target gain over all runs wins,
    ``keep`` on a tie."""
    lines, qualified = [], {}
    for rule in RULES:
        why = []
        for label, rs in _by_label(records).items():
            gains, src = _gains(rs, rule)
            base_below = sum(g < 0 for g in _gains(rs, "source_val_loss")[0])
            if not src or statistics.fmean(src) < -2.5:
                why.append(f"{label or 'runs'}: mean source change "
                           f"{statistics.fmean(src) if src else math.nan:+.1f} < -2.5")
            if sum(g < 0 for g in gains) > base_below:
                why.append(f"{label or 'runs'}: {sum(g < 0 for g in gains)} runs below none "
                           f"> source_val_loss's {base_below}")
        gain = statistics.fmean(_gains(records, rule)[0])
        if not why:
            qualified[rule] = gain
        lines.append(f"- `{rule}`: mean target gain {gain:+.2f} over {len(records)} runs; "
                     + ("qualifies" if not why else "does not qualify (" + "; ".join(why) + ")"))
    best = max(qualified.values(), default=math.nan)
    winner = keep if qualified.get(keep) == best else next(
        (r for r, g in qualified.items() if g == best), keep)
    return [*lines, f"- Outcome: `{winner}`."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", action="append", required=True,
                    help="a study's run folders (pairP-seedS/NAME); repeat for several")
    ap.add_argument("--names", nargs="+", required=True, help="run folder names to replay")
    ap.add_argument("--pairs", type=int, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--title", default="Checkpoint selection replayed on finished runs")
    ap.add_argument("--out", required=True, help="JSON path; the markdown goes beside it")
    ap.add_argument("--label", default="", help="a label for this replay's runs (e.g. n=1000)")
    ap.add_argument("--add", action="append", default=[], metavar="JSON=LABEL",
                    help="also tabulate the records of an earlier replay's JSON, labelled")
    ap.add_argument("--choose", action="store_true",
                    help="apply stop 33's rule to the records (dev runs only) under the table")
    args = ap.parse_args()
    records = []
    for work in args.work_dir:
        records += replay(Path(work), args.names, args.pairs, args.seeds)
    for r in records:
        r["label"] = args.label
    for spec in args.add:
        path, sep, label = spec.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--add {spec!r}: give an earlier replay's JSON file and a label, JSON=LABEL")
        records += [dict(r, label=label) for r in json.loads(Path(path).read_text())["records"]]
    out = Path(args.out)
    out.write_text(json.dumps({"settings": vars(args), "records": records,
                               "load_average": os.getloadavg()}, indent=1) + "\n")
    lines = [f"# {args.title}", "",
             f"Runs: {', '.join(args.work_dir)}; names {args.names}; pairs {args.pairs}; seeds "
             f"{args.seeds}. Target/source validation accuracy (points) at the epoch each rule "
             "keeps, against the `none` run of the same pair and seed at the epoch it kept. "
             "Rules read label-free columns only; target labels only score.", "",
             *table(records), ""]
    if args.choose:  # on the choosing (dev) runs only; a held-out replay reports
        lines += ["Stop 33's rule (module docstring) on these records:", "", *choose(records), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
