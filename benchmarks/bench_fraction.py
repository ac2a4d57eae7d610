"""Do the merger-fraction estimators of `galmerge fraction` find the true fraction?

Source synthetic:illustris (balanced), targets synthetic:sdss whose merger fraction is 5%, 20%
and 50%. Models: one `none` run, and one `mmd+fisher+entropy` run per target fraction (its
unlabelled target training set has that fraction), from the tuned configs in
``benchmarks/configs/`` with fewer images and epochs (see TRAIN). For every fraction and repeat
r, an independent target set ``synthetic:sdss?n=N&seed=100+r&merger_fraction=f`` (scenes never
used in training) is classified with `galmerge.classification.pipeline.classify` (the HDF5 image file as
input, CSV out) and `galmerge.fractions.report.survey_fraction` estimates its merger fraction.
Reported per model, fraction and estimator: mean absolute error and bias against the set's true
fraction, and how often the 95% (68%) interval covers it.

With ``--labelled N``, N galaxies of each test render, drawn at random (seed 1000 + r), get
their true labels as a by-eye sample of the survey would: `galmerge fraction --labels`'s ``ppi``
estimator (prediction-powered inference) is then reported beside the label-free ones, and so
is the labelled sample's own merger fraction with a bootstrap interval ("labels only", what the
sample gives without the classifier), with each interval's mean width.

Independence: the repeats' target sets are independent renders, but every repeat uses the same
trained model and the same source validation split (one training run per model), so the
coverage measures the survey-sampling part of the interval over independent draws and the
validation-sampling part from one draw only.

    python benchmarks/bench_fraction.py --runs-dir /tmp/fracbench/runs --train
    python benchmarks/bench_fraction.py --quick     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FRACTIONS = (0.05, 0.2, 0.5)
SOURCE = "synthetic:illustris?n={n}&seed=0&merger_fraction=0.5"
TARGET_TRAIN = "synthetic:sdss?n={n}&seed=1&merger_fraction={f}"
TARGET_TEST = "synthetic:sdss?n={n}&seed={seed}&merger_fraction={f}"
# --control: the source's own renderer as the survey (label shift only, no domain shift)
CONTROL_TEST = "synthetic:illustris?n={n}&seed={seed}&merger_fraction={f}"
ESTIMATORS = ("naive", "acc", "em", "bbse")
LABELLED = ("ppi", "labels_only")  # with --labelled N


def _train(runs: Path, name: str, strategy: str, f: float, n: int, epochs: int,
           steps: int | None, sets: tuple[str, ...] = (), seed: int = 1) -> None:
    if (runs / name / "best.pt").is_file():
        return
    # any expression but the tuned config: galmerge's own defaults (per-domain BatchNorm; dann
    # weight 0.3), no config file
    how = (["--config", str(HERE / "configs" / f"{strategy}.toml")]
           if strategy == "mmd+fisher+entropy" else ["--strategy", strategy, "--batch-size", "32"])
    cmd = [sys.executable, "-m", "galmerge", "train", *how, "--source", SOURCE.format(n=n),
           "--target", TARGET_TRAIN.format(n=n, f=f), "--epochs", str(epochs), "--patience",
           "0", "--seed", str(seed), "--device", "cpu", "--run-dir", str(runs / name), "--quiet"]
    if steps:
        cmd += ["--max-steps-per-epoch", str(steps)]
    # the `none` baseline gets no sets; `--da none --set observe...` is a second source-only
    # model trained per target fraction
    for item in sets:  # "{f}" in a value: the target training set's merger fraction
        cmd += ["--set", item.replace("{f}", f"{f:g}")]
    subprocess.run(cmd, check=True)


def models_for(f: float, control: bool = False, da: str = "mmd+fisher+entropy",
               sets: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(label, run name) of the models evaluated on targets with merger fraction ``f``."""
    if control:
        return [("none, survey = source renderer (label shift only)", "none")]
    if da == "mmd+fisher+entropy":
        return [("none", "none"), ("mmd+fisher+entropy", f"mmd-{f:g}")]
    how = "galmerge defaults" + "".join(f", {item}" for item in sets)
    return [("none", "none"), (f"{da} ({how})", f"{_slug(da)}-{f:g}")]


def _slug(da: str) -> str:
    return da.replace("+", "_")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from galmerge.classification.pipeline import classify
    from galmerge.data.datasets import load_imageset
    from galmerge.fractions.estimators import estimate, label_shift_test
    from galmerge.fractions.report import read_results
    from galmerge.fractions.validation_stats import load_validation

    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.train:
        _train(runs, "none", "none", 0.5, args.n_train, args.epochs, args.max_steps,
               seed=args.train_seed)
        for f in args.fractions:
            if args.control:
                continue
            name = models_for(f, False, args.da, tuple(args.set))[1][1]
            _train(runs, name, args.da, f, args.n_train, args.epochs, args.max_steps,
                   tuple(args.set), seed=args.train_seed)
    train_s = time.time() - t0
    records: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-fraction-"))
    for f in args.fractions:
        for r in range(args.repeats):
            spec = (CONTROL_TEST if args.control else TARGET_TEST).format(
                n=args.n_target, seed=100 + r, f=f)
            imageset = load_imageset(spec)
            truth = float(imageset.labels.numpy().mean())
            h5 = imageset.meta["cache_path"]
            for label, name in models_for(f, args.control, args.da, tuple(args.set)):
                run_dir = runs / name
                if not (run_dir / "best.pt").is_file():
                    raise SystemExit(f"{run_dir} has no best.pt; train it (--train)")
                out = work / f"{name}-{f:g}-{r}.csv"
                # the control's survey is the source renderer: the source preprocessing
                classify(h5, run_dir, output=out, quiet=True, device="cpu",
                         domain="source" if args.control else "target")
                p = read_results(out).p
                val = load_validation(run_dir)
                lab = None
                if args.labelled:
                    y = imageset.labels.numpy()
                    if len(y) != len(p):
                        raise SystemExit(f"{out}: {len(p)} ok rows for {len(y)} images")
                    pick = np.random.default_rng(1000 + r).choice(len(p), args.labelled,
                                                                  replace=False)
                    lab = (p[pick], y[pick])
                est = estimate(p, val, n_boot=args.bootstrap, seed=r, labelled=lab)
                rec = {"fraction": f, "repeat": r, "seed": 100 + r, "model": label,
                       "run": name, "truth": truth, "n": est["n"],
                       "recommended": est["recommended"], "validation": est["validation"],
                       "label_shift_check": label_shift_test(p, val, n_sim=100, seed=r)}
                for k in ESTIMATORS:
                    rec[k] = est["estimators"][k]
                if lab is not None:
                    rec["ppi"] = est["estimators"]["ppi"]
                    rec["ppi_lambda"] = est["labelled"]["lambda"]
                    rec["labels_only"] = labels_only(lab[1], args.bootstrap, 1000 + r)
                records.append(rec)
                print(f"f={f:g} r={r} {label}: truth {truth:.3f} "
                      + " ".join(f"{k} {_fmt(rec[k]['fraction'])}" for k in ESTIMATORS),
                      flush=True)
    return {"records": records, "train_seconds": train_s, "seconds": time.time() - t0}


def labels_only(y: Any, n_boot: int, seed: int) -> dict[str, Any]:
    """The labelled sample's merger fraction with percentile bootstrap intervals."""
    y = np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = y[rng.integers(0, len(y), size=(n_boot, len(y)))].mean(1)
    lo68, hi68, lo95, hi95 = np.percentile(draws, [16, 84, 2.5, 97.5])
    return {"fraction": float(y.mean()), "ci68": [float(lo68), float(hi68)],
            "ci95": [float(lo95), float(hi95)]}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from galmerge.fractions.estimators import CORRECTED, DEFAULT_RECOMMENDED

    rows = []
    keys = sorted({(r["fraction"], r["model"]) for r in records})
    for f, model in keys:
        recs = [r for r in records if r["fraction"] == f and r["model"] == model]
        row: dict[str, Any] = {"fraction": f, "model": model, "repeats": len(recs)}
        extra = tuple(k for k in LABELLED if all(k in r for r in recs))
        for k in ESTIMATORS + extra + ("recommended",):
            errs, bias, cov95, cov68, width95, undefined = [], [], [], [], [], 0
            for r in recs:
                e = r[k] if k != "recommended" else r[r["recommended"]]
                if e["fraction"] is None:
                    undefined += 1
                    continue
                errs.append(abs(e["fraction"] - r["truth"]))
                bias.append(e["fraction"] - r["truth"])
                for ci, acc in (("ci95", cov95), ("ci68", cov68)):
                    if e[ci] is not None:
                        acc.append(e[ci][0] <= r["truth"] <= e[ci][1])
                if e["ci95"] is not None:
                    width95.append(e["ci95"][1] - e["ci95"][0])
            row[k] = {
                "mae": statistics.fmean(errs) if errs else None,
                "width95": statistics.fmean(width95) if width95 else None,
                "bias": statistics.fmean(bias) if bias else None,
                "coverage95": statistics.fmean(cov95) if cov95 else None,
                "coverage68": statistics.fmean(cov68) if cov68 else None,
                "undefined": undefined,
            }
        checks = [r["label_shift_check"]["p_value"] for r in recs if r.get("label_shift_check")]
        row["label_shift_rejected"] = (statistics.fmean([pv < 0.01 for pv in checks])
                                       if checks else None)
        naive = row["naive"]["mae"]
        # issue 17's goal is judged on the estimator `fraction` recommends without labels,
        # named before any run (em); the corrected estimator of least error is picked with the
        # true fraction, which no user has: an oracle column, never the verdict (stop 43)
        goal = DEFAULT_RECOMMENDED
        row["goal_estimator"] = goal
        row["error_ratio_to_naive"] = (row[goal]["mae"] / naive
                                       if row[goal]["mae"] is not None and naive else None)
        corrected = [k for k in CORRECTED if row[k]["mae"] is not None]
        best = min(corrected, key=lambda k: row[k]["mae"]) if corrected else None
        row["oracle_best_corrected"] = best
        row["oracle_error_ratio_best_to_naive"] = (row[best]["mae"] / naive if best and naive
                                                   else None)
        rows.append(row)
    return rows


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Merger fractions under prior and domain shift",
        "",
        payload["setup"],
        "",
        "Mean absolute error of each estimator against the true fraction of each target set, "
        f"and the coverage of its 95% interval, over {payload['repeats']} independent target "
        "sets per row (see Independence). Goal (issue 17): the corrected estimator's error "
        "<= 1/3 of the naive one's at 5% and 20%, 95% coverage >= 90%, judged on `em`, the "
        "estimator `galmerge fraction` recommends without labels. The oracle column gives the "
        "corrected estimator of least error, picked with the true fraction (no user can), "
        "for research only. `recommended` is what `fraction` recommends: `ppi` where a "
        "labelled sample was given. Last column: fraction of the repeats whose label-shift "
        "check (`galmerge.fractions.estimators.label_shift_test`, 100 simulations) rejects "
        "label shift at p < 0.01.",
        "",
        "| true fraction | model | naive MAE | acc MAE (cov95) | em MAE (cov95) | bbse MAE "
        "(cov95) | recommended MAE (cov95) | em / naive | goal (em) | oracle pick / naive | "
        "label shift rejected |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if payload.get("note"):
        lines[4:4] = [payload["note"], ""]
    for row in payload["summary"]:
        def cell(k: str, row: dict[str, Any] = row) -> str:
            e = row[k]
            if e["mae"] is None:
                return "undefined"
            cov = "-" if e["coverage95"] is None else f"{e['coverage95']:.2f}"
            return f"{e['mae']:.3f} ({cov})" + (f", {e['undefined']} undef." if e["undefined"]
                                                else "")
        best = row["oracle_best_corrected"]
        oracle = row["oracle_error_ratio_best_to_naive"]
        ratio = row["error_ratio_to_naive"]
        goal = "-"
        if row["fraction"] < 0.5 and ratio is not None:
            cov = row[row["goal_estimator"]]["coverage95"] or 0.0
            goal = "met" if ratio <= 1 / 3 and cov >= 0.9 else (
                "error met, coverage not" if ratio <= 1 / 3 else "not met")
        lines.append(
            f"| {row['fraction']:g} | {row['model']} | {row['naive']['mae']:.3f} | "
            f"{cell('acc')} | {cell('em')} | {cell('bbse')} | {cell('recommended')} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {goal} | "
            f"{'-' if oracle is None else f'{oracle:.2f} ({best})'} | "
            + ("-" if row["label_shift_rejected"] is None
               else f"{row['label_shift_rejected']:.2f}") + " |")
    lines += ["", "Bias (mean estimate minus truth):", "",
              "| true fraction | model | naive | acc | em | bbse |", "| --- | --- | --- | --- | --- | --- |"]
    for row in payload["summary"]:
        lines.append(f"| {row['fraction']:g} | {row['model']} | " + " | ".join(
            "-" if row[k]["bias"] is None else f"{row[k]['bias']:+.3f}" for k in ESTIMATORS)
            + " |")
    labelled = [row for row in payload["summary"] if "ppi" in row]
    if labelled:
        n_lab = payload["args"]["labelled"]
        lines += ["", f"With {n_lab} labelled galaxies of each test render (drawn at random; "
                  "`fraction --labels`): MAE (95% coverage) and mean width of the 95% interval. "
                  "`ppi` = prediction-powered inference on the model's p_merger; `labels only` "
                  "= the labelled sample's fraction alone.", "",
                  "| true fraction | model | naive MAE | ppi MAE (cov95) | ppi width95 | "
                  "labels only MAE (cov95) | labels only width95 | ppi / naive | goal |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in labelled:
            ppi, only, naive = row["ppi"], row["labels_only"], row["naive"]["mae"]
            ratio = ppi["mae"] / naive if ppi["mae"] is not None and naive else None
            goal = "-"
            if row["fraction"] < 0.5 and ratio is not None:
                goal = "met" if ratio <= 1 / 3 and (ppi["coverage95"] or 0) >= 0.9 else "not met"
            lines.append(
                f"| {row['fraction']:g} | {row['model']} | {naive:.3f} | "
                f"{_fmt(ppi['mae'])} ({_fmt(ppi['coverage95'])}) | {_fmt(ppi['width95'])} | "
                f"{_fmt(only['mae'])} ({_fmt(only['coverage95'])}) | {_fmt(only['width95'])} | "
                f"{'-' if ratio is None else f'{ratio:.2f}'} | {goal} |")
    lines += ["", "Independence: " + payload["independence"], "", "Machine: " +
              payload["machine"], ""]
    return "\n".join(lines)


def _main_table(lines: list[str]) -> tuple[int, int]:
    """Where the paragraph before the main table starts and the table ends."""
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("Mean absolute error of each estimator"))
    end = start + 1
    while end < len(lines) and not lines[end].startswith("|"):
        end += 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def _replace_main_table(md: Path, payload: dict[str, Any]) -> None:
    """Rewrite only the main table (and the paragraph and note before it) of ``md``: what was
    added to the file by hand after the run stays."""
    new = markdown(payload).splitlines()
    if not md.is_file():
        md.write_text("\n".join(new) + "\n")
        return
    old = md.read_text().splitlines()
    (o_start, o_end), (n_start, n_end) = _main_table(old), _main_table(new)
    note = [payload["note"], ""] if payload.get("note") else []
    if note and old[max(0, o_start - 2):o_start] == note:  # rewritten before: one note
        o_start -= 2
    md.write_text("\n".join(old[:o_start] + note + new[n_start:n_end] + old[o_end:]) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs/bench-fraction")
    ap.add_argument("--train", action="store_true", help="Train the missing runs first.")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--n-target", type=int, default=500)
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--name", default="fraction")
    ap.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    ap.add_argument("--da", default="mmd+fisher+entropy",
                    help="the adapted models: mmd+fisher+entropy (the tuned config of "
                    "benchmarks/configs), or any strategy expression with galmerge's defaults")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.OPTION=VALUE",
                    help="option of the adapted models (e.g. dann.weight=0.1; {f} in a value is the "
                    "target training fraction); not of the `none` baseline")
    ap.add_argument("--train-seed", type=int, default=1,
                    help="training seed of every model (1: the seed of the committed results)")
    ap.add_argument("--labelled", type=int, default=0, metavar="N",
                    help="label N random galaxies of each test render: report the ppi estimator "
                    "(fraction --labels) and the labelled sample alone")
    ap.add_argument("--control", action="store_true",
                    help="Survey = the source renderer (label shift only): the `none` model.")
    ap.add_argument("--from-json", metavar="FILE",
                    help="no run: summarise FILE's records again and rewrite its .md beside it "
                    "(for a summary rule changed after the run)")
    ap.add_argument("--note", help="with --from-json: a sentence put under the setup")
    args = ap.parse_args()
    if args.from_json:
        path = Path(args.from_json)
        payload = json.loads(path.read_text())
        payload["summary"] = summarise(payload["records"])
        if args.note:
            payload["note"] = args.note
        path.write_text(json.dumps(payload, indent=1) + "\n")
        _replace_main_table(path.with_suffix(".md"), payload)
        return
    if args.quick:
        args.repeats, args.n_target, args.n_train, args.epochs = 2, 60, 60, 1
        args.max_steps, args.bootstrap, args.train = 2, 50, True
        args.name = "fraction_quick"
        if args.runs_dir == ap.get_default("runs_dir"):
            args.runs_dir = tempfile.mkdtemp(prefix="bench-fraction-runs-")
    load_before = os.getloadavg()
    result = run(args)
    from galmerge.config.rundir import cpu_description

    payload = {
        "benchmark": "merger-fraction estimators under prior and domain shift",
        "setup": (
            f"Source `{SOURCE.format(n=args.n_train)}`; target training sets "
            f"`{TARGET_TRAIN.format(n=args.n_train, f='F')}`; test targets "
            f"`{(CONTROL_TEST if args.control else TARGET_TEST).format(n=args.n_target, seed='100+r', f='F')}`, r = 0..."
            f"{args.repeats - 1}. Models: `none` (target F = 0.5 for its preprocessing) and "
            + ("`mmd+fisher+entropy` per F, configs of benchmarks/configs"
               if args.da == "mmd+fisher+entropy"
               else f"`{args.da}` with galmerge's defaults (batch 32)"
               + (f" and {', '.join(args.set)}" if args.set else "") + " per F")
            + f" with {args.epochs} epochs, seed {args.train_seed}, checkpoint chosen by the "
            "run's `select_by` (the source validation loss for `none` and the presets; `im` for "
            "defaults with the target's own encoder, since stop 32). "
            f"{args.bootstrap} bootstrap resamples per estimate."
        ),
        "independence": (
            "the target sets of the repeats are independent renders (scene seeds 100+r, never "
            "used in training), but each model is one training run with one source validation "
            "split, shared by all repeats: the coverage tests the survey-sampling part of the "
            "interval over independent draws, the validation-sampling part over a single draw."
        ),
        "repeats": args.repeats,
        "machine": (f"{platform.machine()} {os.cpu_count()} CPUs shared with other jobs, load "
                    f"average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; "
                    f"{result['seconds']:.0f} s in all (training {result['train_seconds']:.0f} "
                    "s)"),
        "cpu": cpu_description(),
        "args": vars(args),
        "summary": summarise(result["records"]),
        "records": result["records"],
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{args.name}.md").write_text(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
