"""What `galmerge tune --max-source-drop` chooses on the held-out pairs, replayed on finished runs.

For each held-out pair and seed, the trials are the runs a guarded `tune --strategy dann` queues
first: the defaults (dann weight 0.3) and the ladder of `galmerge.training.source_guard.LADDER`
(weights 0.15, 0.1, 0.05), trained by `study_defaults.py` (grid ``weights24`` and the defaults
run of ``study_defaults23_heldout``) with checkpoints on the source validation loss; the
reference is the `none` run of the same pair and seed. The choice is made by the code `tune`
uses (`source_guard.drop_points`, `source_guard.choose`), from label-free columns of each run's
metrics.csv at its kept epoch; the target test accuracy of the chosen run is read afterwards.

Exact for ``--score source_val_loss`` (the trials keep their checkpoint by that score, as a
tune trial does). For the other scores, a tune trial would keep the epoch its score prefers;
here every score is read at the source-validation-loss epoch.

    python benchmarks/tune_guard_heldout.py --work-dir RUNS --guard 3 --name tune_guard_heldout
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from tables import mean_sd

from galmerge.config.rundir import read_metrics
from galmerge.scores import selection
from galmerge.training import source_guard

HERE = Path(__file__).resolve().parent
TRIALS = ("dann_weight_0.3", "dann_weight_0.15", "dann_weight_0.1", "dann_weight_0.05")
PAIRS = (1, 3, 5, 7)
SEEDS = (0, 1, 2)


def _run(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    epoch = int(summary["best_epoch"])
    row = next(r for r in read_metrics(run_dir) if int(r["epoch"]) == epoch)
    m = summary["metrics"]
    return {"row": row, "target": m["target_test"]["accuracy"],
            "source": m["source_test"]["accuracy"]}  # fmt: skip


def replay(work: Path, pairs: list[int], seeds: list[int], guard: float,
           names: tuple[str, ...] = TRIALS) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for pair in pairs:
        for seed in seeds:
            folder = work / f"pair{pair}-seed{seed}"
            ref = _run(folder / "none")
            trials = [_run(folder / name) for name in names]
            ref_acc = ref["row"]["source_val_accuracy"]
            rec: dict[str, Any] = {"pair": pair, "seed": seed, "none": ref, "choices": {}}
            rec["trials"] = [{"name": n, "target": t["target"], "source": t["source"],
                              "drop": source_guard.drop_points(ref_acc,
                                                               t["row"]["source_val_accuracy"])}
                             for n, t in zip(names, trials, strict=True)]  # fmt: skip
            for score in selection.SCORES:
                key = score if score == "source_val_loss" else f"score_{score}"
                rows = [{"state": "complete", "score": t["row"].get(key, math.nan),
                         source_guard.DROP: d["drop"]}
                        for t, d in zip(trials, rec["trials"], strict=True)]  # fmt: skip
                i = source_guard.choose(rows, score, guard)
                free = source_guard.choose(rows, score, math.inf)
                pick = ref if i is None else trials[i]
                rec["choices"][score] = {
                    "guarded": "none (reference)" if i is None else names[i],
                    "target": pick["target"], "source": pick["source"],
                    "unguarded": None if free is None else names[free],
                    "unguarded_target": None if free is None else trials[free]["target"],
                    "unguarded_source": None if free is None else trials[free]["source"],
                }  # fmt: skip
            out.append(rec)
    return out


def _ms(values: list[float], scale: float = 1.0) -> str:
    """Accuracies as "0.xxx ± 0.xxx"; with ``scale`` (100: points) a signed gain, one decimal."""
    if scale != 1.0:
        return mean_sd([scale * v for v in values], digits=1, signed=True)
    return mean_sd(values)


def report(records: list[dict[str, Any]], guard: float, names: tuple[str, ...]) -> list[str]:
    none_t = [r["none"]["target"] for r in records]
    none_s = [r["none"]["source"] for r in records]
    lines = [
        "| method | target | source | target gain vs none | source change vs none | "
        "runs below none | picks |",
        "| --- " * 7 + "|",
        f"| none | {_ms(none_t)} | {_ms(none_s)} | +0.0 | +0.0 | - | - |",
    ]

    def row(label: str, t: list[float], s: list[float], picks: list[str]) -> str:
        gain = [a - b for a, b in zip(t, none_t, strict=True)]
        cost = [a - b for a, b in zip(s, none_s, strict=True)]
        below = sum(g < 0 for g in gain)
        counts = ", ".join(f"{p} {picks.count(p)}" for p in sorted(set(picks)))
        return (f"| {label} | {_ms(t)} | {_ms(s)} | {_ms(gain, 100)} | {_ms(cost, 100)} | "
                f"{below} of {len(t)} | {counts} |")

    for i, name in enumerate(names):
        lines.append(row(f"always {name.replace('_', ' ')}",
                         [r["trials"][i]["target"] for r in records],
                         [r["trials"][i]["source"] for r in records], [name] * len(records)))
    for score in selection.SCORES:
        c = [r["choices"][score] for r in records]
        lines.append(row(f"guard {guard:g}, score {score}", [x["target"] for x in c],
                         [x["source"] for x in c], [x["guarded"] for x in c]))
        lines.append(row(f"no guard, score {score}", [x["unguarded_target"] for x in c],
                         [x["unguarded_source"] for x in c], [x["unguarded"] for x in c]))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--pairs", type=int, nargs="+", default=list(PAIRS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--guard", type=float, default=3.0)
    ap.add_argument("--trials", nargs="+", default=list(TRIALS),
                    help="run folder names of the candidates (default: the guarded dann ladder)")
    ap.add_argument("--name", default="tune_guard_heldout")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    names = tuple(args.trials)
    records = replay(Path(args.work_dir), args.pairs, args.seeds, args.guard, names)
    out = Path(args.out_dir)
    payload = {"guard_points": args.guard, "pairs": args.pairs, "seeds": args.seeds,
               "trials": list(names), "records": records,
               "load_average": os.getloadavg()}  # fmt: skip
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    per_run = ["| pair | seed | none | " + " | ".join(names) + " | guarded pick (source_val_loss) |",
               "| --- " * (len(names) + 4) + "|"]
    for r in records:
        cells = [f"{t['target']:.3f} / {t['source']:.3f} ({t['drop']:+.1f})" for t in r["trials"]]
        per_run.append(f"| {r['pair']} | {r['seed']} | {r['none']['target']:.3f} / "
                       f"{r['none']['source']:.3f} | " + " | ".join(cells)
                       + f" | {r['choices']['source_val_loss']['guarded']} |")
    text = [
        f"# Guarded label-free choice on held-out pairs ({args.name})",
        "",
        f"`tune --max-source-drop {args.guard:g}` replayed on finished runs (see the script's "
        f"docstring): pairs {args.pairs} x seeds {args.seeds}; candidates (run folders) "
        f"{', '.join(names)}; reference = `none`. Target / source test accuracy; gains in points "
        "against `none` on the same pair and seed.",
        "",
        *report(records, args.guard, names),
        "",
        "Per run: target / source test accuracy (source validation drop against `none`, "
        "points; what the guard reads):",
        "",
        *per_run,
        "",
        f"Load average when written: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
    ]
    (out / f"{args.name}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
