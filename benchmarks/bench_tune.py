"""What is label-free selection worth? `none`, the defaults, `tune` per score and the oracle on
held-out pairs of a family of shifted renderer pairs.

The family (``PAIRS``): a labelled source and a target of the built-in renderer that differ in
seeing, noise, field stars and galaxies, pixel scale, merger fraction or galaxy sizes
(redshift), through the synthetic survey's observing options. Pairs are split by role:
``DEV_PAIRS`` (rendered with data seeds 100+) are for choosing defaults, ``HELD_OUT_PAIRS``
(data seeds 200+) only for reporting; this script reports on held-out pairs.

For each held-out pair and training seed:

- ``none`` (one `galmerge.train`), the strategy with galmerge's default options (trial 0 of
  the study below) and, with ``--also``, other strategies with their defaults;
- one study of ``--n-trials`` trials (`galmerge.training.tuning.tune`: trial 0 runs the defaults, the
  rest are random draws from the declared search space; no pruning; each trial's checkpoint
  chosen by ``--score``, the source validation loss unless given: ``--score im_src`` is what
  `galmerge tune` does by default). The pick of ``--score`` is the study's own choice; every other
  label-free score picks one trial among the same trials by its value at that checkpoint ("tune
  with score S", a replay); the oracle picks the trial with the best
  target test accuracy (a ceiling, research only). Random search shared by all scores keeps the
  comparison about the scores, not about which trials a sampler happened to draw.

Reports target/source test accuracy mean ± std over seeds and, per score, the Spearman rank
correlation between the score (sign turned so higher is better) and target test accuracy across
the trials of each study (mean over studies). Nothing here is tuned on target labels.

    nice -n 5 python benchmarks/bench_tune.py --pairs 1 3 --seeds 0 1 2 --n-trials 4 \\
        --epochs 5 --n 600
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _all_scores() -> dict[str, str]:
    from galmerge.scores import selection

    return {**selection.SCORES, **selection.CROSS_MODEL_SCORES}

# (source spec options, target spec options); n and seed are added per run
PAIRS: list[tuple[str, str, str]] = [
    ("illustris", "sdss", "baseline sim-to-real"),
    ("illustris", "sdss?seeing=1.5", "worse seeing"),
    ("illustris", "sdss?noise=2.5", "2.5x sky noise"),
    ("illustris", "sdss?stars=2&field_galaxies=6", "crowded fields"),
    ("illustris", "sdss?pixel_scale=0.5", "coarser pixels (0.5 arcsec)"),
    ("illustris", "sdss?merger_fraction=0.3", "30% mergers in the target"),
    ("illustris", "sdss?z_scale=1.6", "smaller, fainter galaxies (z x1.6)"),
    ("sdss?seeing=0.7&noise=0.5", "sdss?seeing=1.4&noise=2", "deep/sharp to shallow/blurred"),
    # added in stop 23: a prior-shift pair for choosing (held-out pair 5 has 30%)
    ("illustris", "sdss?merger_fraction=0.2", "20% mergers in the target"),
]
DEV_PAIRS = (0, 2, 4, 6, 8)
HELD_OUT_PAIRS = (1, 3, 5, 7)


def pair_specs(index: int, n: int, base: int | None = None) -> tuple[str, str]:
    """Source and target specs of a pair; data seeds 100+ for dev pairs, 200+ for held-out
    (``base``: other renders of the same pair, e.g. 300 for a fresh held-out set)."""
    src, tgt, _ = PAIRS[index]
    if base is None:
        base = 200 if index in HELD_OUT_PAIRS else 100
    seed = base + 2 * index

    def spec(s: str, k: int) -> str:
        preset, _, opts = s.partition("?")
        extra = f"n={n}&seed={k}"
        return f"synthetic:{preset}?{opts + '&' if opts else ''}{extra}"

    return spec(src, seed), spec(tgt, seed + 1)


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def _train(out: Path, **kwargs: Any) -> dict[str, Any]:
    import galmerge

    summary_path = out / "summary.json"
    if summary_path.is_file():  # reuse a finished run (the script is resumable)
        return json.loads(summary_path.read_text())
    if out.exists():
        import shutil

        shutil.rmtree(out)
    return galmerge.train(run_dir=out, quiet=True, **kwargs)


def _acc(summary: dict[str, Any], domain: str) -> float:
    return float(summary["metrics"][f"{domain}_test"]["accuracy"])


def _best(values: list[float], direction: str) -> int | None:
    best: int | None = None
    for i, v in enumerate(values):
        if math.isfinite(v) and (best is None or (v < values[best] if direction == "min"
                                                  else v > values[best])):
            best = i
    return best


def _float(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def run(args: argparse.Namespace) -> dict[str, Any]:
    from galmerge.scores import selection
    from galmerge.training import tuning

    ALL_SCORES = _all_scores()  # noqa: N806
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    common = dict(epochs=args.epochs, batch_size=args.batch_size, device="cpu")
    results: list[dict[str, Any]] = []
    for p in args.pairs:
        source, target = pair_specs(p, args.n, args.data_seeds)
        for seed in args.seeds:
            tag = f"pair{p}-seed{seed}"
            t0 = time.time()
            none = _train(work / tag / "none", source=source, target=target, strategy="none",
                          seed=seed, **common)  # fmt: skip
            others = {
                name: _train(work / tag / f"default-{name}", source=source, target=target,
                             strategy=name, seed=seed, **common)
                for name in args.also
            }  # fmt: skip
            study_dir = work / tag / "study"
            tuning.tune(
                source, target, args.strategy, args.n_trials, study_dir, seed=seed,
                score=args.score, sampler="random", pruner="none", epochs=args.epochs,
                batch_size=args.batch_size, device="cpu", quiet=True,
            )  # fmt: skip
            with (study_dir / tuning.TRIALS_CSV).open() as fh:
                trials = [r for r in csv.DictReader(fh) if r["state"] == "complete"]
            # trial 0 runs the defaults with the same seed and settings: it is the default run
            # (checked bit for bit against a separate run by the first version of this script)
            zero = next(r for r in trials if r["defaults"] == "True")
            default = {"target": _float(zero["oracle_target_test_accuracy"]),
                       "source": _float(zero["source_test_accuracy"])}
            picks: dict[str, Any] = {}
            rho: dict[str, float] = {}
            oracle = [_float(r["oracle_target_test_accuracy"]) for r in trials]
            for score, direction in ALL_SCORES.items():
                col = "score" if score == args.score else (
                    "at_best_source_val_loss" if score == "source_val_loss" else
                    score if score in selection.CROSS_MODEL_SCORES
                    else f"at_best_score_{score}")  # fmt: skip
                values = [_float(r[col]) for r in trials]
                i = _best(values, direction)  # best value, first on ties
                sign = 1 if direction == "max" else -1
                rho[score] = tuning.spearman([sign * v for v in values], oracle)
                picks[score] = None if i is None else {
                    "trial": int(trials[i]["trial"]),
                    "target": oracle[i],
                    "source": _float(trials[i]["source_test_accuracy"]),
                }
            j = selection.select_epoch(oracle, selection.ORACLE)
            picks["oracle"] = None if j is None else {
                "trial": int(trials[j]["trial"]), "target": oracle[j],
                "source": _float(trials[j]["source_test_accuracy"]),
            }  # fmt: skip
            results.append({
                "pair": p, "seed": seed, "source": source, "target": target,
                "none": {"target": _acc(none, "target"), "source": _acc(none, "source")},
                "default": default,
                "also": {k: {"target": _acc(v, "target"), "source": _acc(v, "source")}
                         for k, v in others.items()},
                "load_average": os.getloadavg(),
                "tune": picks, "spearman": rho, "n_complete_trials": len(trials),
                "seconds": round(time.time() - t0, 1),
            })  # fmt: skip
            print(f"{tag}: none {results[-1]['none']}, default {results[-1]['default']}, "
                  f"picks {picks}", flush=True)  # fmt: skip
            _write(args, results)
    return _write(args, results)


def _write(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    scores = _all_scores()
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, entry: dict[str, Any] | None) -> None:
        r = rows.setdefault(name, {"target": [], "source": []})
        r["target"].append(math.nan if entry is None else entry["target"])
        r["source"].append(math.nan if entry is None else entry["source"])

    for res in results:
        add("none", res["none"])
        add(f"{args.strategy} (defaults)", res["default"])
        for name, entry in res.get("also", {}).items():
            add(f"{name} (defaults)", entry)
        for score in scores:
            add(f"tune, score {score}", res["tune"].get(score))
        add("oracle-chosen trial (research only)", res["tune"].get("oracle"))
    table = {
        name: {
            "target_mean_std": _mean_std(v["target"]),
            "source_mean_std": _mean_std(v["source"]),
            "target_gain_vs_none_points": 100 * (
                _mean_std(v["target"])[0] - _mean_std(rows["none"]["target"])[0]),
        }
        for name, v in rows.items()
    }  # fmt: skip
    rho = {
        s: _mean_std([r["spearman"][s] for r in results]) for s in scores
    } if results else {}  # fmt: skip
    from galmerge.config.rundir import cpu_description

    load = os.getloadavg()
    out = {
        "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "pairs": {i: {"source": pair_specs(i, args.n, args.data_seeds)[0],
                      "target": pair_specs(i, args.n, args.data_seeds)[1],
                      "shift": PAIRS[i][2]} for i in args.pairs},  # fmt: skip
        "dev_pairs": list(DEV_PAIRS), "held_out_pairs": list(HELD_OUT_PAIRS),
        "table": table, "spearman_mean_std": rho, "runs": results,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_write": load, "python": sys.version.split()[0],
                    "cpu": cpu_description()},  # fmt: skip
    }  # fmt: skip
    outdir = Path(args.out_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{args.name}.json").write_text(json.dumps(out, indent=1, default=str))
    lines = [
        f"# Label-free tuning on held-out shifted pairs ({args.name})",
        "",
        f"Scale: pairs {args.pairs} ({', '.join(PAIRS[i][2] for i in args.pairs)}), training "
        f"seeds {args.seeds}, data seeds {args.data_seeds or 200} + 2 * pair (source; target + 1), "
        f"n={args.n} images per domain, {args.epochs} epochs, batch "
        f"{args.batch_size}, strategy `{args.strategy}`, {args.n_trials} trials per pair and seed "
        f"(trial 0 = the defaults, then random search over the declared space, each trial's "
        f"checkpoint chosen by `{args.score}`); DeepMerge "
        f"backbone on CPU. Test accuracy (target test split of "
        f"{round(0.2 * args.n)} images) mean ± std over {len(results)} pair x seed runs.",
        "",
        "| method | target accuracy | source accuracy | target gain vs none (points) |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in table.items():
        (tm, ts), (sm, ss) = t["target_mean_std"], t["source_mean_std"]
        lines.append(f"| {name} | {tm:.3f} ± {ts:.3f} | {sm:.3f} ± {ss:.3f} | "
                     f"{t['target_gain_vs_none_points']:+.1f} |")  # fmt: skip
    lines += ["", "Spearman rank correlation between each score (higher = better) and target "
              "test accuracy across the trials of a study (mean ± std over studies):", "",
              "| score | Spearman |", "| --- | --- |"]  # fmt: skip
    for s, (m, sd) in rho.items():
        lines.append(f"| {s} | {m:+.2f} ± {sd:.2f} |")
    lines += ["", "Per run (target / source test accuracy):", "",
              "| pair | seed | none | defaults | " + " | ".join(scores)
              + " | oracle |", "| --- " * (5 + len(scores)) + "|"]  # fmt: skip
    for r in results:
        cells = [f"{r['none']['target']:.3f} / {r['none']['source']:.3f}",
                 f"{r['default']['target']:.3f} / {r['default']['source']:.3f}"]  # fmt: skip
        for s in (*scores, "oracle"):
            e = r["tune"].get(s)
            cells.append("-" if e is None else f"{e['target']:.3f} (t{e['trial']})")
        lines.append(f"| {r['pair']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", f"Load average when written: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
              f"{os.cpu_count()} CPUs (shared machine)."]  # fmt: skip
    (outdir / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=list(HELD_OUT_PAIRS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--strategy", default="mmd")
    ap.add_argument("--score", default="source_val_loss",
                    help="the studies' score: each trial's checkpoint and the study's choice "
                    "(`galmerge tune` defaults to im_src)")
    ap.add_argument("--also", nargs="*", default=[],
                    help="more strategies to run with their defaults (no study)")
    ap.add_argument("--data-seeds", type=int, default=None, metavar="BASE",
                    help="render the pairs with data seeds BASE + 2 * pair (default 200 for "
                    "held-out pairs; 300: the held-out renders of stop 26 on)")
    ap.add_argument("--work-dir", default="bench_tune_runs")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--name", default="tune_shifted_pairs")
    ap.add_argument("--combine", nargs="*", default=None,
                    help="only merge the runs of these result names (JSON in --out-dir) into "
                         "--name; for studies run as several processes")
    args = ap.parse_args()
    if args.combine:
        results = []
        for name in args.combine:
            results += json.loads((Path(args.out_dir) / f"{name}.json").read_text())["runs"]
        args.pairs = sorted({r["pair"] for r in results})
        args.seeds = sorted({r["seed"] for r in results})
        args.data_seeds = json.loads((Path(args.out_dir) / f"{args.combine[0]}.json")
                                     .read_text())["settings"].get("data_seeds")
        _write(args, sorted(results, key=lambda r: (r["pair"], r["seed"])))
        return
    bad = [p for p in args.pairs if p not in HELD_OUT_PAIRS]
    if bad:
        ap.error(f"pairs {bad} are for choosing defaults; report on {list(HELD_OUT_PAIRS)}")
    run(args)


if __name__ == "__main__":
    main()
