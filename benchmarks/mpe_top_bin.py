"""Does a top-bin mixture-proportion estimate find a survey's merger fraction under domain shift?

Issue 17's label-free estimators (`acc`, `em`, `bbse`) lean on the source's error rates over
the whole score range, which domain shift breaks (stop 35: the target's false-positive rate is
3.5 times the source's). Best Bin Estimation (BBE; Garg et al. 2021, "Mixture Proportion
Estimation and PU Learning: A Modern Approach", NeurIPS) reads the fraction off the top of the
score range only, where false positives are rarest: with ``q_T(t)`` the share of survey rows
scoring at least ``t`` and ``q_P(t)`` that of the source validation split's mergers,
``F = q_T(t*) / q_P(t*)``, ``t*`` minimising the upper confidence bound
``(q_T + sqrt(log(4/delta) / 2 n_T)) / (q_P - sqrt(log(4/delta) / 2 n_P))`` (delta 0.1). It
assumes the mergers' scores transfer at the top and the non-mergers reach it rarely.

Scored on finished runs of `bench_fraction.py` (stop 43: ``RUNS/runs_sS/dann-F`` is the `dann`
default trained with a survey of merger fraction F as its unlabelled target, ``none`` the
source-only model), each classifying fresh renders ``synthetic:sdss?n=N&seed=100+r&
merger_fraction=F`` (scenes never used in training) with `galmerge.predict`. Reported against
the truth: naive classify-and-count, `em` (what `galmerge fraction` recommends without labels)
and BBE. Nothing is trained or tuned; the truth only scores.

    python benchmarks/mpe_top_bin.py --runs /work/runs/frac43 --seeds 1 2 3 --repeats 3 \\
        --name mpe_top_bin46
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from tables import mean_sd

HERE = Path(__file__).resolve().parent
TARGET_TEST = "synthetic:sdss?n={n}&seed={seed}&merger_fraction={f}"
ESTIMATORS = ("naive", "em", "bbe")


def bbe(p_target: np.ndarray, p_mergers: np.ndarray, delta: float = 0.1) -> float:
    """Best Bin Estimation of the share of mergers among ``p_target`` (NaN when no threshold
    keeps a positive lower bound on the mergers' share above it)."""
    n_t, n_p = len(p_target), len(p_mergers)
    best, chosen = math.inf, None
    for t in np.unique(np.quantile(p_target, np.linspace(0.5, 0.999, 200))):
        q_t, q_p = float((p_target >= t).mean()), float((p_mergers >= t).mean())
        low = q_p - math.sqrt(math.log(4 / delta) / (2 * n_p))
        if low <= 0:
            continue
        bound = (q_t + math.sqrt(math.log(4 / delta) / (2 * n_t))) / low
        if bound < best:
            best, chosen = bound, t
    if chosen is None:
        return math.nan
    return min(1.0, float((p_target >= chosen).mean()) / float((p_mergers >= chosen).mean()))


def score(run: Path, f: float, repeats: int, n: int) -> list[dict[str, Any]]:
    import galmerge
    from galmerge.fractions.estimators import estimate
    from galmerge.fractions.validation_stats import load_validation

    val = load_validation(run)
    mergers = val.p[val.labels == 1]
    rows = []
    for r in range(repeats):
        survey = galmerge.load_imageset(TARGET_TEST.format(n=n, seed=100 + r, f=f))
        p = np.asarray(galmerge.predict(survey, run, device="cpu")["p_merger"], dtype=float)
        rows.append({"run": str(run), "f": f, "repeat": r,
                     "truth": float((survey.labels.numpy() == 1).mean()),
                     "naive": float((p >= 0.5).mean()),
                     "em": estimate(p, val, 0.5, 0, 0)["estimators"]["em"]["fraction"],
                     "bbe": bbe(p, mergers), "source_val_mergers": int(len(mergers))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--name", default="mpe_top_bin")
    args = ap.parse_args()
    load0, t0 = os.getloadavg()[0], time.time()
    rows = []
    for s in args.seeds:
        for f in args.fractions:
            for model in (f"dann-{f}", "none"):
                rows += score(args.runs / f"runs_s{s}" / model, f, args.repeats, args.n)
    out = {"rows": rows, "seconds": round(time.time() - t0, 1),
           "load_before": load0, "load_after": os.getloadavg()[0],
           "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "command": vars(args) | {
               "runs": str(args.runs)}}
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"# {args.name}: top-bin mixture-proportion estimate (BBE) against `em`", "",
             "Runs of `bench_fraction.py` (stop 43, no field), "
             f"{args.repeats} fresh renders of {args.n} survey galaxies per seed and fraction; "
             "absolute error against the true fraction, mean ± sd over seeds of the per-seed "
             "mean over renders (the truth only scores).", "",
             "| model | true F | " + " | ".join(f"{e} error" for e in ESTIMATORS)
             + " | BBE estimates (per seed) |", "|---|---|" + "---|" * (len(ESTIMATORS) + 1)]
    for f in args.fractions:
        for kind in ("dann", "none"):
            per_seed: dict[str, list[float]] = {e: [] for e in ESTIMATORS}
            shown = []
            for s in args.seeds:
                mine = [r for r in rows if r["f"] == f and f"runs_s{s}/" in r["run"]
                        and Path(r["run"]).name.startswith(kind)]
                for e in ESTIMATORS:
                    per_seed[e].append(statistics.fmean(abs(r[e] - r["truth"]) for r in mine))
                shown.append(f"{statistics.fmean(r['bbe'] for r in mine):.2f}")
            lines.append(f"| `{kind}` | {f:g} | "
                         + " | ".join(mean_sd(per_seed[e]) for e in ESTIMATORS)
                         + f" | {', '.join(shown)} |")
    lines += ["", f"Machine: {out['machine']}, load {load0:.1f} before, "
              f"{out['load_after']:.1f} after; {out['seconds']:.0f} s."]
    (HERE / "results" / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
