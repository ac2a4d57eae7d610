"""How far could a better decision threshold take an adapted model under prior shift?

Issue 14's rule compares target accuracy at the 0.5 threshold with source-only `none`'s. On a
target with few mergers `none` often calls every galaxy a non-merger and scores 1 - F, while an
adapted model ranks the target better but calls too many mergers. This script scores finished
runs on their target test split three ways: at the 0.5 threshold (what `evaluate` reports), at
the threshold Bayes' rule gives for the TRUE merger fraction F of the target test split (what
`classify --prior F` does, here with an exact prior: a best case for any prior estimate), and at
the best threshold over all (an oracle ceiling that reads the target labels; research only,
nothing is chosen from it). With ``--labelled K`` a fourth: the threshold of a Platt fit
(`galmerge.fractions.estimators.platt_fit`) on K target test galaxies drawn at random with their
labels, as a by-eye sample of the survey would give, scored on the other test galaxies (mean over
``--draws`` draws; `none` is scored on the same galaxies). Each run is compared with the `none`
run of the same pair and seed.
If even the ceiling is below `none`'s accuracy, no threshold, prior estimate or calibration of
that model can meet the rule there: the ranking itself must improve.

    python benchmarks/threshold_ceiling.py --root RUNS --names adda mmd_separate ... \\
        --pairs 8 --seeds 11 12 --name threshold_ceiling36_dev
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from finished_runs import add_arguments, scored_runs
from tables import mean_sd


def accuracies(margin: np.ndarray, labels: np.ndarray, train_prior: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    f = float(labels.mean())
    # Bayes' rule from the training prior to the true one: call a merger where
    # logit(p) > log((1 - f) / f) - log((1 - q) / q), q the training prior
    shift = np.log((1 - f) / f) - np.log((1 - train_prior) / train_prior)
    order = np.sort(np.unique(margin))
    cuts = np.concatenate([[order[0] - 1.0], (order[:-1] + order[1:]) / 2, [order[-1] + 1.0]])
    best = max(float(((margin > c) == labels).mean()) for c in cuts)
    return {"at_0.5": float(((margin > 0) == labels).mean()),
            "at_true_prior": float(((margin > shift) == labels).mean()),
            "ceiling": best, "auc": float(roc_auc_score(labels, margin)), "true_fraction": f,
            "called_merger": float((margin > 0).mean())}


def labelled(margin: np.ndarray, labels: np.ndarray, base: np.ndarray, k: int,
             draws: int) -> dict[str, float]:
    """Accuracy on the unlabelled rest after a Platt fit on ``k`` random labelled rows (draw d
    uses seed 1000 + d, the same rows for every run of a pair and seed), and `none`'s (margins
    ``base``) at 0.5 on the same rows."""
    from galmerge.fractions.estimators import platt_fit

    picks = [np.random.default_rng(1000 + d).permutation(len(labels)) for d in range(draws)]
    a, b = platt_fit(np.stack([margin[p[:k]] for p in picks]),
                     np.stack([labels[p[:k]] for p in picks]))
    ours = [float(((a[d] * margin[p[k:]] + b[d] > 0) == labels[p[k:]]).mean())
            for d, p in enumerate(picks)]
    theirs = [float(((base[p[k:]] > 0) == labels[p[k:]]).mean()) for p in picks]
    return {"labelled": float(np.mean(ours)), "labelled_none": float(np.mean(theirs)),
            "labelled_draws_below": float(np.mean(np.array(ours) < np.array(theirs)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, "threshold_ceiling")
    ap.add_argument("--labelled", type=int, default=0, metavar="K",
                    help="also fit the threshold on K labelled target test galaxies")
    ap.add_argument("--draws", type=int, default=50, help="random labelled samples per run")
    args = ap.parse_args()
    from galmerge.config.rundir import cpu_description

    rows: list[dict[str, Any]] = []
    for pair, seed, name, scores, base_scores in scored_runs(Path(args.root), args.pairs,
                                                             args.seeds, args.names):
        acc = accuracies(*scores)
        if args.labelled:
            acc.update(labelled(scores[0], scores[1], base_scores[0], args.labelled,
                                args.draws))
        rows.append({"pair": pair, "seed": seed, "name": name, **acc,
                     "none_at_0.5": accuracies(*base_scores)["at_0.5"]})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    (out / f"{args.name}.json").write_text(json.dumps(
        {"args": vars(args), "rows": rows, "cpu": cpu_description(), "load_average": load},
        indent=1))
    lines = [f"# Decision threshold against ranking under prior shift ({args.name})", "",
             f"{args.label} Target test split of each run (`benchmarks/threshold_ceiling.py`; "
             "its docstring says what each column is). `none` at 0.5 is the rule's baseline; "
             "'below none' counts runs whose accuracy is under that of the `none` run of the same "
             "pair and seed. The ceiling reads the target labels: research only.", "",
             "| run | runs | target AUC | called merger | at 0.5 (below none) | at the true prior "
             "(below none) | ceiling (below none) |"
             + (f" Platt on {args.labelled} labels (below none; share of draws below) |"
                if args.labelled else ""),
             "| --- " * (8 if args.labelled else 7) + "|"]
    for name in ["none", *args.names]:
        rs = [r for r in rows if r["name"] == name]
        if not rs:
            continue

        def cell(key: str, rs: list[dict[str, Any]] = rs) -> str:
            below = sum(r[key] < r["none_at_0.5"] for r in rs)
            return f"{mean_sd([r[key] for r in rs])} ({below})"

        lines.append(f"| {name} | {len(rs)} | {mean_sd([r['auc'] for r in rs])} | "
                     f"{mean_sd([r['called_merger'] for r in rs])} | {cell('at_0.5')} | "
                     f"{cell('at_true_prior')} | {cell('ceiling')} |"
                     + (f" {mean_sd([r['labelled'] for r in rs])} "
                        f"({sum(r['labelled'] < r['labelled_none'] for r in rs)}; "
                        f"{statistics.fmean(r['labelled_draws_below'] for r in rs):.2f}) |"
                        if args.labelled else ""))
    lines += ["", "Per run (accuracy at 0.5 / at the true prior / ceiling; AUC):", "",
              "| pair | seed | " + " | ".join(["none", *args.names]) + " |",
              "| --- " * (len(args.names) + 3) + "|"]
    for pair in args.pairs:
        for seed in args.seeds:
            got = {r["name"]: r for r in rows if r["pair"] == pair and r["seed"] == seed}
            cells = [f"{got[n]['at_0.5']:.3f} / {got[n]['at_true_prior']:.3f} / "
                     f"{got[n]['ceiling']:.3f}; {got[n]['auc']:.2f}" if n in got else "-"
                     for n in ["none", *args.names]]
            lines.append(f"| {pair} | {seed} | " + " | ".join(cells) + " |")
    cpu = cpu_description()
    lines += ["", f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; CPU "
              f"{cpu.get('model')} ({cpu.get('torch_cpu_capability')})."]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
