"""What a `galmerge tune` study writes: ``trials.csv`` (with the oracle beside each trial, for
research only), ``best.toml``, the plots and ``report.md``."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from galmerge.config import paths, rundir
from galmerge.io import atomic
from galmerge.scores import selection
from galmerge.training import source_guard
from galmerge.training.tuning.label_free import best_index, label_free_view
from galmerge.training.tuning.storage import BEST_TOML, CONFIG_ATTR, REPORT, TRIALS_CSV


def _read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / rundir.METRICS
    if not path.is_file():
        return []
    with path.open() as fh:
        out = []
        for row in csv.DictReader(fh):
            parsed: dict[str, float] = {}
            for k, v in row.items():
                try:
                    parsed[k] = float(v)
                except (TypeError, ValueError):
                    continue
            out.append(parsed)
        return out


def _oracle(run_dir: Path, score: str) -> dict[str, float]:
    """Research only: target accuracies of a trial, read from its run directory."""
    rows = _read_metrics(run_dir)
    out = {"oracle_target_val_accuracy": math.nan, "oracle_target_test_accuracy": math.nan,
           "source_test_accuracy": math.nan}  # fmt: skip
    i = best_index([label_free_view(r) for r in rows], score)
    if i is not None:
        out["oracle_target_val_accuracy"] = rows[i].get("target_val_accuracy", math.nan)
    summary_path = run_dir / rundir.SUMMARY
    if summary_path.is_file():
        metrics = json.loads(summary_path.read_text()).get("metrics", {})
        out["oracle_target_test_accuracy"] = metrics.get("target_test", {}).get(
            "accuracy", math.nan
        )
        out["source_test_accuracy"] = metrics.get("source_test", {}).get("accuracy", math.nan)
    return out


def _label_free_at_best(run_dir: Path, score: str) -> dict[str, float]:
    rows = [label_free_view(r) for r in _read_metrics(run_dir)]
    i = best_index(rows, score)
    if i is None:
        return {}
    return {k: v for k, v in rows[i].items() if not k.startswith("loss_")}


def trial_rows(study_dir: Path, study: Any, score: str) -> list[dict[str, Any]]:
    """One row per trial: number, state, label-free value, params, oracle (labelled)."""
    names = sorted({p for t in study.trials for p in t.params})
    rows = []
    for t in study.trials:
        run_dir = study_dir / str(t.user_attrs.get("run_dir", f"trials/{t.number:04d}"))
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        duration = t.duration.total_seconds() if t.duration is not None else math.nan
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name.lower(),
            "score_name": score,
            "score": math.nan if value is None else value,
            "duration_s": round(duration, 3),
            "epochs_run": len(t.intermediate_values),
            "defaults": bool(t.user_attrs.get("defaults", False)),
        }
        for name in names:
            row[f"param_{name}"] = t.params.get(name, "")
        free = _label_free_at_best(run_dir, score)
        for key in ("epoch", "source_val_loss", "source_val_accuracy"):
            row[f"at_best_{key}"] = free.get(key, math.nan)
        for name in selection.SCORES:
            if name != "source_val_loss":
                row[f"at_best_score_{name}"] = free.get(f"score_{name}", math.nan)
        row.update(_oracle(run_dir, score))
        row["run_dir"] = str(run_dir.relative_to(study_dir))
        row["error"] = t.user_attrs.get("error", "")
        rows.append(row)
    return rows


def add_agreement(study_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Column ``agreement`` (label-free, `selection.ensemble_agreement`): each complete trial's
    agreement with the other complete trials on the target validation split (best.pt of each
    run; target labels are not read). NaN for other trials or with fewer than two."""
    from galmerge.data.datasets import load_imageset
    from galmerge.data.splits import split_indices
    from galmerge.models.inference import forward_in_batches
    from galmerge.models.model import load_model

    for r in rows:
        r["agreement"] = math.nan
    done = [r for r in rows if r["state"] == "complete"
            and (study_dir / r["run_dir"] / rundir.BEST).is_file()]
    if len(done) < 2:
        return
    sets: dict[str, Any] = {}
    probs = []
    for r in done:
        run_dir = study_dir / r["run_dir"]
        loaded = load_model(run_dir, "cpu")
        # where the trial's data is now (a study moved with its data: `paths.rebased`)
        spec = str(paths.with_recorded_files(dict(loaded.config), run_dir)["target"])
        if spec not in sets:
            sets[spec] = load_imageset(spec)
        target = sets[spec]
        # the trainer's target split: seed + 1 (galmerge.data.splits.domain_splits)
        idx = split_indices(len(target), int(loaded.config["seed"]) + 1)["val"]
        _, logits = forward_in_batches(loaded.model, target, idx, loaded.preprocess["target"],
                                       domain="target")
        probs.append(torch_softmax(logits))
    for r, value in zip(done, selection.ensemble_agreement(probs), strict=True):
        r["agreement"] = value


def torch_softmax(logits: Any) -> Any:
    import torch

    return torch.softmax(logits.double(), dim=1)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic.atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                             for k, v in r.items()})  # fmt: skip


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN pairs dropped."""
    import numpy as np

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan

    def ranks(v: list[float]) -> Any:
        arr = np.asarray(v, dtype=float)
        order = arr.argsort(kind="mergesort")
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=float)
        for val in np.unique(arr):
            m = arr == val
            r[m] = r[m].mean()
        return r

    rx, ry = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def write_outputs(study_dir: Path, study: Any, score: str, quiet: bool = True,
                  guard: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """trials.csv, best.toml, plots and report.md from the study's storage and run dirs."""
    rows = trial_rows(study_dir, study, score)
    if guard is not None:
        for r, t in zip(rows, study.trials, strict=True):
            drop = t.user_attrs.get(source_guard.DROP)
            r[source_guard.DROP] = math.nan if drop is None else float(drop)
            r["feasible"] = source_guard.feasible(r[source_guard.DROP], guard["max_source_drop"])
    add_agreement(study_dir, rows)
    _write_csv(study_dir / TRIALS_CSV, rows)
    complete = [r for r in rows if r["state"] == "complete" and math.isfinite(r["score"])]
    best: dict[str, Any] | None = None
    config_path: Path | None = None
    if guard is not None:
        i = source_guard.choose(rows, score, guard["max_source_drop"])
        best = None if i is None else rows[i]
        if best is None and complete:  # no adapted trial kept the guard: source only
            config_path = Path(guard["reference"]) / rundir.CONFIG
    elif complete:
        t = study.best_trial
        best = next(r for r in rows if r["trial"] == t.number)
    text: bytes | None = None
    note = None
    if best is not None:
        # the trial's own config.toml, byte for byte: `galmerge train --config` takes it
        config_path = study_dir / best["run_dir"] / rundir.CONFIG
        if not config_path.is_file():  # run by a process elsewhere on the shared --storage
            saved = next(t for t in study.trials if t.number == best["trial"]).user_attrs.get(
                CONFIG_ATTR)
            if saved is not None:
                text = str(saved).encode()
            else:
                note = (f"best trial {best['trial']} ran elsewhere ({config_path.parent} is not "
                        f"here) and the study holds no copy of its config; best.toml not "
                        f"written: take the trial's config.toml from the machine that ran it")
                config_path = None
    if text is None and config_path is not None:
        text = config_path.read_bytes()
    if text is not None:
        atomic.write_bytes(study_dir / BEST_TOML, text)
    sign = 1 if selection.SCORES[score] == "max" else -1
    rho = spearman([sign * r["score"] for r in complete],
                   [r["oracle_target_test_accuracy"] for r in complete])  # fmt: skip
    plots = _plots(study_dir, study, rows, score)
    summary = {
        "study_dir": str(study_dir),
        "score": score,
        "n_trials": len(rows),
        "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
        "best_trial": None if best is None else best["trial"],
        "best_score": None if best is None else best["score"],
        "best_params": None if best is None else {
            k[6:]: v for k, v in best.items() if k.startswith("param_")
        },
        "best_toml": None if text is None else str(study_dir / BEST_TOML),
        "note": note,
        "oracle_best_target_test_accuracy": None if best is None
        else best["oracle_target_test_accuracy"],
        "spearman_score_vs_oracle": rho,
        "plots": plots,
        "provenance": _provenance(study),
    }
    if guard is not None:
        summary["guard"] = {**guard, "feasible_trials": sum(bool(r["feasible"]) for r in rows),
                            "best_is_reference": best is None and config_path is not None}
    _report(study_dir, summary, rows)
    if note is not None:
        from rich.console import Console

        Console(stderr=True).print(f"galmerge tune: note: {note}", highlight=False)
    if not quiet and text is not None:
        from rich.console import Console

        text = (f"best trial {best['trial']}: {score} {best['score']:.4g}" if best is not None
                else f"no trial kept source validation accuracy within "
                     f"{guard['max_source_drop']:g} points of the source-only reference; "
                     f"best.toml is the reference (source only)")  # type: ignore[index]
        Console(stderr=True).print(
            f"{text}; train it again with: galmerge train --config {study_dir / BEST_TOML}",
            highlight=False,
        )
    return rundir._json_safe(summary)


def _provenance(study: Any) -> dict[str, Any]:
    """Who wrote these outputs and how the study searched: galmerge and Optuna versions, the
    sampler and pruner of this invocation (several processes on one study may differ), the
    study's seed, and the time."""
    import optuna

    from galmerge.io.provenance import code_identity

    settings = study.user_attrs.get("settings") or {}
    return {**code_identity(), "optuna_version": optuna.__version__,
            "sampler": type(study.sampler).__name__, "pruner": type(study.pruner).__name__,
            "seed": settings.get("seed"),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _plots(study_dir: Path, study: Any, rows: list[dict[str, Any]], score: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    done = [r for r in rows if r["state"] in ("complete", "pruned") and math.isfinite(r["score"])]
    if not done:
        return written
    better_min = selection.SCORES[score] == "min"

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r["trial"] for r in done]
    ys = [r["score"] for r in done]
    ax.scatter(xs, ys, s=18, c=["C0" if r["state"] == "complete" else "C7" for r in done])
    best, run = [], math.nan
    for r in done:
        if r["state"] == "complete" and (
            not math.isfinite(run) or (r["score"] < run if better_min else r["score"] > run)
        ):
            run = r["score"]
        best.append(run)
    ax.step(xs, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{score} ({'lower' if better_min else 'higher'} is better)")
    ax.set_title("optimisation history (grey: pruned)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, study_dir / "history.png", fixed_name=True, dpi=110)
    plt.close(fig)
    written.append("history.png")

    pts = [(r["score"], r["oracle_target_test_accuracy"]) for r in done
           if math.isfinite(r["oracle_target_test_accuracy"])]  # fmt: skip
    if pts:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18)
        ax.set_xlabel(f"{score} (label-free, {'lower' if better_min else 'higher'} is better)")
        ax.set_ylabel("ORACLE target test accuracy")
        ax.set_title("score vs oracle (research only: needs target labels)", fontsize=9)
        fig.tight_layout()
        atomic.save_figure(fig, study_dir / "score_vs_oracle.png", fixed_name=True, dpi=110)
        plt.close(fig)
        written.append("score_vs_oracle.png")

    importances = _importances(study)
    if importances:
        fig, ax = plt.subplots(figsize=(5, 0.4 * len(importances) + 1.2))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel(f"importance for {score} (fANOVA)")
        fig.tight_layout()
        atomic.save_figure(fig, study_dir / "importances.png", fixed_name=True, dpi=110)
        plt.close(fig)
        written.append("importances.png")
    return written


def _importances(study: Any) -> dict[str, float]:
    import warnings

    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, evaluator=None))
    except Exception:  # too few distinct trials for the forest: the plot is left out
        return {}


def _report(study_dir: Path, summary: Mapping[str, Any], rows: list[dict[str, Any]]) -> None:
    score = summary["score"]
    lines = [
        f"# galmerge tune: {study_dir.name}",
        "",
        f"Objective: label-free score `{score}` ({selection.SCORES[score]}imise); "
        f"trials by state: {summary['states']}.",
        "",
    ]
    prov = summary.get("provenance")
    if prov:
        from galmerge.io.provenance import describe_code

        lines += [f"Written {prov['created_utc']} by {describe_code(prov)}; Optuna "
                  f"{prov['optuna_version']}, {prov['sampler']}, {prov['pruner']}, study seed "
                  f"{prov['seed']}.", ""]
    guard = summary.get("guard")
    if guard is not None:
        lines += [
            f"Source guard (`--max-source-drop {guard['max_source_drop']:g}`): a trial may be the "
            f"best only if its source validation accuracy is within {guard['max_source_drop']:g} "
            f"points of the source-only reference `{guard['reference']}` "
            f"({guard['reference_source_val_accuracy']:.4f}); {guard['feasible_trials']} "
            f"trial(s) kept it.",
            "",
        ]
        if guard["best_is_reference"]:
            lines += ["No trial kept the guard: `best.toml` is the reference's configuration "
                      "(source only, no adaptation).", ""]  # fmt: skip
    if summary.get("note"):
        lines += [f"Note: {summary['note']}.", ""]
    if summary["best_trial"] is not None:
        lines += [
            f"Best trial: {summary['best_trial']} ({score} {summary['best_score']:.4g}); "
            f"config: `{BEST_TOML}` (`galmerge train --config {study_dir / BEST_TOML}`).",
            "",
            "| parameter | value |",
            "| --- | --- |",
            *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in (summary["best_params"] or {}).items()],
            "",
        ]  # fmt: skip
    rho = summary["spearman_score_vs_oracle"]
    lines += [
        "## Oracle (research only)",
        "",
        "The columns named `oracle_*` in trials.csv need target labels. They were read after "
        "each trial from its run directory and never reached the sampler, the pruner or the "
        "choice of the best trial.",
        "",
        f"Spearman rank correlation between the score (sign turned so that higher is better) "
        f"and the oracle target test accuracy over complete trials: "
        f"{'n/a (fewer than 3 trials, or no spread)' if not math.isfinite(rho) else f'{rho:+.2f}'}.",
        "",
        "`agreement` (label-free, computed once the trials finished): the share of target "
        "validation images on which a trial's prediction matches the vote of the other complete "
        "trials; it rewards a failure most trials share.",
        "",
        "| trial | state | score | source val acc | source drop (points) | agreement | "
        "ORACLE target test acc |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['state']} | {_fmt(r['score'])} | "
            f"{_fmt(r['at_best_source_val_accuracy'])} | "
            f"{_fmt(r.get(source_guard.DROP, math.nan))} | "
            f"{_fmt(r.get('agreement', math.nan))} | {_fmt(r['oracle_target_test_accuracy'])} |"
        )
    plots = summary["plots"]
    if plots:
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in plots) + "."]
    atomic.write_text(study_dir / REPORT, "\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else "-"
