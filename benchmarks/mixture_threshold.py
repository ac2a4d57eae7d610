"""Does a two-component mixture on the target's own logits give a better label-free threshold?

An adapted model often ranks the target well (AUC 0.75-0.9) but calls too many or too few of its
galaxies mergers at 0.5, and the estimators that correct for that (EM, BBSE, ACC) lean on the
source's error rates, which domain shift breaks. This script tries the one label-free rule that
uses neither the source nor the training prior: fit a two-component Gaussian mixture
(scikit-learn's ``GaussianMixture``, 3 initialisations, seed 0) to the run's target test margins
(logit(merger) - logit(non-merger)) and

- ``mixture``: call a merger where the upper component's posterior is at least 0.5;
- ``mixture_match``: call the top ``w`` of the rows mergers, ``w`` the upper component's weight
  (what ``classify --prior w`` with the match rule does);
- ``valley`` (stop 40): no shape assumed: the threshold is the lowest point of a Gaussian
  kernel density estimate of the margins (scipy's ``gaussian_kde``, Scott's bandwidth, 512
  points between the 0.5th and 99.5th percentiles) between its two highest modes; 0 where the
  estimate has one mode (low-density separation, the cluster assumption);

and reports, against source-only `none` at 0.5 on the same pair and seed (issue 14's baseline),
target accuracy at 0.5 and by each rule, plus the error of the merger fraction each reads off
(the fraction called at 0.5 against the mixture weight). Target labels only score. Nothing is
chosen from held-out runs.

    python benchmarks/mixture_threshold.py --root RUNS --names adda adabn ... --pairs 0 2 4 6 8 \\
        --seeds 11 12 --name mixture36_dev [--cache DIR]

``--cache DIR`` keeps each run's margins as ``DIR/pairP-seedS__NAME.npz`` (margin, labels,
prior), so a second look does not classify the runs again.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from finished_runs import add_arguments, target_scores
from tables import mean_sd

RULES = ("at_0.5", "mixture", "mixture_match", "valley")


def valley_threshold(margin: np.ndarray) -> float:
    """The lowest point of the margins' kernel density estimate between its two highest
    modes, or 0 (the 0.5 threshold) where it has one mode."""
    from scipy.signal import argrelextrema
    from scipy.stats import gaussian_kde

    m = np.asarray(margin, dtype=np.float64)
    grid = np.linspace(*np.percentile(m, [0.5, 99.5]), 512)
    density = gaussian_kde(m)(grid)
    modes = argrelextrema(density, np.greater)[0]
    if len(modes) < 2:
        return 0.0
    a, b = sorted(modes[np.argsort(density[modes])[-2:]])
    return float(grid[a + int(np.argmin(density[a : b + 1]))])


def mixture_rules(margin: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy at 0.5 and by each mixture rule, and the fraction each reads off."""
    from sklearn.mixture import GaussianMixture

    m = np.asarray(margin, dtype=np.float64)[:, None]
    gm = GaussianMixture(2, n_init=3, random_state=0).fit(m)
    upper = int(np.argmax(gm.means_.ravel()))
    weight = float(gm.weights_[upper])
    called = gm.predict_proba(m)[:, upper] >= 0.5
    cut = np.quantile(m[:, 0], 1.0 - weight)
    f = float(labels.mean())
    return {"true_fraction": f,
            "at_0.5": float(((m[:, 0] > 0) == labels).mean()),
            "mixture": float((called == labels).mean()),
            "mixture_match": float(((m[:, 0] > cut) == labels).mean()),
            "valley": float(((m[:, 0] > valley_threshold(m[:, 0])) == labels).mean()),
            "fraction_error_at_0.5": abs(float((m[:, 0] > 0).mean()) - f),
            "fraction_error_mixture": abs(weight - f)}


def _scores(folder: Path, name: str, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    stored = None if cache is None else cache / f"{folder.name}__{name.replace('/', '_')}.npz"
    if stored is not None and stored.is_file():
        with np.load(stored, allow_pickle=False) as d:
            return d["margin"], d["labels"]
    margin, labels, prior = target_scores(folder / name)
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        np.savez(stored, margin=margin, labels=labels, prior=prior)
    return margin, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, "mixture_threshold")
    ap.add_argument("--cache", default=None, help="folder for the runs' margins (npz)")
    args = ap.parse_args()
    from galmerge.config.rundir import cpu_description

    root, cache = Path(args.root), (Path(args.cache) if args.cache else None)
    rows: list[dict[str, Any]] = []
    for pair in args.pairs:
        for seed in args.seeds:
            folder = root / f"pair{pair}-seed{seed}"
            if not (folder / "none" / "best.pt").is_file():
                continue  # no baseline
            base_margin, base_labels = _scores(folder, "none", cache)
            base = float(((base_margin > 0) == base_labels).mean())
            for name in ["none", *args.names]:
                if not (folder / name / "best.pt").is_file():
                    continue
                rows.append({"pair": pair, "seed": seed, "name": name, "none_at_0.5": base,
                             **mixture_rules(*_scores(folder, name, cache))})
                print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    cpu = cpu_description()
    (out / f"{args.name}.json").write_text(json.dumps(
        {"args": vars(args), "rows": rows, "cpu": cpu, "load_average": load}, indent=1))
    lines = [f"# Label-free threshold from the target's own logits ({args.name})", "",
             f"{args.label} Target test split of each run (`benchmarks/mixture_threshold.py`; "
             "its docstring says what each column is). Accuracy cells: gain in points over the "
             "`none` run of the same pair and seed at 0.5 (mean ± sd), in brackets the runs "
             "below it. Fraction cells: mean absolute error of the merger fraction called at "
             "0.5 and of the mixture's weight.", "",
             "| run | runs | " + " | ".join(RULES) + " | fraction error at 0.5 | "
             "fraction error mixture |", "| --- " * (len(RULES) + 4) + "|"]
    for name in ["none", *args.names]:
        rs = [r for r in rows if r["name"] == name]
        if not rs:
            continue
        cells = []
        for key in RULES:
            gains = [100 * (r[key] - r["none_at_0.5"]) for r in rs]
            cells.append(f"{mean_sd(gains, digits=1, signed=True)} "
                         f"({sum(g < 0 for g in gains)})")
        for key in ("fraction_error_at_0.5", "fraction_error_mixture"):
            cells.append(f"{np.mean([r[key] for r in rs]):.3f}")
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += ["", f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; CPU "
              f"{cpu.get('model')} ({cpu.get('torch_cpu_capability')})."]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
