"""Target accuracy of trained runs before and after a prior correction of their probabilities.

On a target whose merger fraction differs from the (balanced) source's, accuracy at the 0.5
threshold rewards a model that calls every target image a non-merger; an adapted model that
ranks the target well (higher AUC) can still sit below it. ``classify --prior VALUE|auto``
rescales ``p_merger`` to a target merger fraction (Saerens et al. 2002). This script measures
what that does on the target test split of finished runs (from ``study_defaults.py``), with the
fraction given (what an astronomer expects) or estimated by EM from the model's own target test
probabilities (``--prior auto``: no label read). Target labels are used only to score.

    python benchmarks/prior_correction.py --runs /work/runs/dsbn_dev/pair8-seed10/* \\
        --given 0.2 --out benchmarks/results/prior_correction_dev.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p >= 0.5).astype(int) == y))


def score_run(run: Path, given: float | None) -> dict[str, Any]:
    from galmerge.data.datasets import load_imageset
    from galmerge.data.splits import domain_splits
    from galmerge.fractions.estimators import em_prior, prior_shift
    from galmerge.models.inference import forward_in_batches, merger_probability
    from galmerge.models.model import load_model
    from galmerge.scores.metrics import binary_metrics

    loaded = load_model(run)
    cfg = loaded.config
    source, target = load_imageset(cfg["source"]), load_imageset(cfg["target"])
    splits = domain_splits(len(source), len(target), int(cfg["seed"]))
    idx = splits["target"]["test"]
    _, logits = forward_in_batches(loaded.model, target, idx, loaded.preprocess["target"],
                                   domain="target")
    p = merger_probability(logits, loaded.temperature)
    y = target.labels.numpy()[idx]
    train_labels = source.labels.numpy()[splits["source"]["train"]]
    prior = float(np.mean(train_labels[train_labels >= 0]))
    em = em_prior(p, prior)
    row: dict[str, Any] = {
        "run": str(run), "strategy": cfg["strategy"], "domain_batchnorm": cfg["domain_batchnorm"],
        "source_prior": prior, "true_fraction": float(np.mean(y)),
        "auc": binary_metrics(y, p)["auc"], "accuracy": _accuracy(p, y),
        "em_fraction": em, "accuracy_prior_auto": _accuracy(prior_shift(p, em, prior), y),
    }
    if given is not None:
        row["given_fraction"] = given
        row["accuracy_prior_given"] = _accuracy(prior_shift(p, given, prior), y)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run directories")
    ap.add_argument("--given", type=float, default=None, help="the expected target fraction")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = [score_run(Path(r), args.given) for r in args.runs if (Path(r) / "best.pt").is_file()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "load_average": os.getloadavg()}, indent=1) + "\n")
    cols = ["accuracy", "accuracy_prior_auto", "em_fraction", "auc"]
    if args.given is not None:
        cols.insert(2, "accuracy_prior_given")
    lines = ["| run | true fraction | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 2) + "|"]
    for r in rows:
        name = "/".join(Path(r["run"]).parts[-2:])
        lines.append(f"| {name} | {r['true_fraction']:.3f} | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
