"""`classify --prior VALUE` by each rule: target accuracy of finished runs given the merger fraction.

An astronomer who knows roughly the survey's merger fraction gives it to `classify --prior`.
Two rules turn it into one logit offset (`galmerge.fractions.prior`): ``bayes`` shifts from the
training set's merger fraction (Bayes' rule; right for a model whose survey probabilities are
off only by the class prior), ``match`` fits the offset so that the mean p_merger of the
classified rows equals the given fraction (`galmerge.fractions.estimators.matched_prior`). This
script scores each run's target test split as `classify` would write it (p_merger at the
checkpoint's temperature, as its CSV holds it; the test split plays the survey) with
``is_merger`` after each rule, at the true merger fraction F of the split and at misjudged ones
(F - 0.1, F + 0.1, F / 2, 1.5 F; clipped to [0.01, 0.99]), against source-only `none` at 0.5 on
the same pair and seed (issue 14's baseline). Target labels only score, and give F.

    python benchmarks/prior_rule.py --root RUNS --names adda adabn ... --pairs 0 2 4 6 8 \\
        --seeds 11 12 --name prior_rule37_dev
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from finished_runs import add_arguments, scored_runs
from tables import mean_sd

GIVEN = {"F": lambda f: f, "F-0.1": lambda f: f - 0.1, "F+0.1": lambda f: f + 0.1,
         "F/2": lambda f: f / 2, "1.5F": lambda f: 1.5 * f}
RULES = ("bayes", "match")


def rule_accuracies(margin: np.ndarray, labels: np.ndarray, train_prior: float
                    ) -> dict[str, float]:
    """Accuracy at 0.5 and after each rule at each given fraction (keys ``RULE@GIVEN``)."""
    from galmerge.fractions.estimators import matched_prior, sigmoid
    from galmerge.fractions.prior import rescale

    # p_merger as classify's CSV holds it: softmax(logits / T) in float32 (margin is already
    # / T), written with 6 significant digits (so p above 1 - 5e-7 reads as exactly 1)
    p = np.array([float(f"{v:.6g}") for v in sigmoid(margin).astype(np.float32).tolist()])
    f = float(labels.mean())
    out = {"at_0.5": float(((p >= 0.5) == labels).mean()), "true_fraction": f}
    for tag, given in GIVEN.items():
        prior = float(np.clip(given(f), 0.01, 0.99))
        for rule in RULES:
            old = train_prior if rule == "bayes" else matched_prior(p, prior)
            shifted = rescale(p, prior, old, clip=rule == "match")  # as classify --prior does
            out[f"{rule}@{tag}"] = float(((shifted >= 0.5) == labels).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, "prior_rule")
    args = ap.parse_args()
    from galmerge.config.rundir import cpu_description

    rows: list[dict[str, Any]] = []
    for pair, seed, name, scores, base_scores in scored_runs(Path(args.root), args.pairs,
                                                             args.seeds, args.names):
        base = float(((base_scores[0] > 0) == base_scores[1]).mean())
        rows.append({"pair": pair, "seed": seed, "name": name, **rule_accuracies(*scores),
                     "none_at_0.5": base})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    cpu = cpu_description()
    (out / f"{args.name}.json").write_text(json.dumps(
        {"args": vars(args), "rows": rows, "cpu": cpu, "load_average": load}, indent=1))
    keys = ["at_0.5"] + [f"{rule}@{tag}" for tag in GIVEN for rule in RULES]
    lines = [f"# classify --prior VALUE: bayes against match ({args.name})", "",
             f"{args.label} Target test split of each run as `classify` writes it "
             "(`benchmarks/prior_rule.py`; its docstring says what each column is). Cells: "
             "target accuracy gain in points over the `none` run of the same pair and seed at "
             "0.5 (mean ± sd), and in brackets the runs below it. F is the split's true merger "
             "fraction; the other columns give the rule a misjudged one.", "",
             "| run | runs | " + " | ".join(keys) + " |", "| --- " * (len(keys) + 2) + "|"]
    for name in ["none", *args.names]:
        rs = [r for r in rows if r["name"] == name]
        if not rs:
            continue
        cells = []
        for key in keys:
            gains = [100 * (r[key] - r["none_at_0.5"]) for r in rs]
            cells.append(f"{mean_sd(gains, digits=1, signed=True)} "
                         f"({sum(g < 0 for g in gains)})")
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += ["", f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; CPU "
              f"{cpu.get('model')} ({cpu.get('torch_cpu_capability')})."]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
