"""A source-accuracy guard for `galmerge tune` (``--max-source-drop POINTS``).

Alignment trades source accuracy for target accuracy, and no label-free score sees the price:
across dann weights on the dev pairs the weakest adversaries score best on ``im`` while they
barely adapt (benchmarks/results/study_weights24_dev.md). The guard states the price the
astronomer accepts, in points of *source* validation accuracy (source labels only), against a
source-only reference run on the same source split:

- the reference is ``--reference RUN_DIR`` (a finished source-only run with the same source
  and seed: the same validation images) or, without it, a `none` run the study trains once in
  ``DIR/reference`` (resumable like any run);
- every trial records ``source_drop_points`` = 100 × (reference − trial) source validation
  accuracy at the trial's kept checkpoint, and is *feasible* when that is ≤ the guard;
- the TPE sampler gets the constraint (Optuna's ``constraints_func``), so the search learns
  where the feasible region is; the best trial is the best-scoring feasible one; when no trial
  is feasible, ``best.toml`` is the reference's configuration (source only), and the report
  says so;
- a new study queues, after the defaults (trial 0), the defaults with every searched strategy
  weight × 1/2, 1/3 and 1/6 (``LADDER``): milder alignment is where the feasible trials are.
  The pruner never stops a ladder trial (a pruned trial has no source drop to compare).

Nothing here reads a target label: the reference's and the trials' source validation
accuracies are source-only metrics columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from galmerge.config import rundir
from galmerge.config.resolve import resolve_config
from galmerge.errors import GalmergeError
from galmerge.io.private import check_private

REFERENCE_DIR = "reference"
LADDER = (1 / 2, 1 / 3, 1 / 6)
# what the Optuna storage records for a trial without a measured drop (pruned, failed): infeasible
UNMEASURED = 1e9
DROP = "source_drop_points"


def check_guard(max_source_drop: float | None, reference: str | Path | None) -> None:
    if max_source_drop is None:
        if reference is not None:
            raise GalmergeError(
                "--reference is the source-only run that --max-source-drop compares with; "
                "give --max-source-drop POINTS too"
            )
        return
    if (
        isinstance(max_source_drop, bool)
        or not isinstance(max_source_drop, int | float)
        or not (math.isfinite(max_source_drop) and max_source_drop >= 0)
    ):
        raise GalmergeError(
            f"--max-source-drop must be a number of accuracy points >= 0 (e.g. 3), "
            f"got {max_source_drop!r}"
        )


def ladder(
    start: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The defaults with every searched strategy weight scaled by each ``LADDER`` factor
    (clipped into its range); [] when no strategy weight is searched."""
    weights = [n for n in start if n.endswith(".weight") and n in space
               and space[n]["type"] == "float" and n.split(".")[0] not in
               ("schedule", "optimizer", "backbone")]  # fmt: skip
    if not weights:
        return []
    out = []
    for factor in LADDER:
        params = dict(start)
        for name in weights:
            spec = space[name]
            value = float(f"{float(start[name]) * factor:.12g}")  # 0.1, not 0.09999999999999999
            params[name] = min(max(value, float(spec["low"])), float(spec["high"]))
        out.append(params)
    return out


def _accuracy_at_best(run_dir: Path) -> float:
    import json

    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    rows = rundir.read_metrics(run_dir)
    epoch = int(summary["best_epoch"])
    row = next((r for r in rows if int(r.get("epoch", -1)) == epoch), None)
    value = float("nan") if row is None else float(row.get("source_val_accuracy", math.nan))
    if not math.isfinite(value):
        raise GalmergeError(
            f"--reference {run_dir}: its metrics.csv has no source validation accuracy at its "
            f"best epoch {epoch}; use a finished run with a source validation split"
        )
    return value


def check_reference(run_dir: Path, base: Mapping[str, Any]) -> None:
    """A user's ``--reference``: a finished source-only run on the same source split."""
    from galmerge.training.step import needs_target

    if not (run_dir / rundir.SUMMARY).is_file() or not (run_dir / rundir.CONFIG).is_file():
        raise GalmergeError(
            f"--reference {run_dir} is not a finished galmerge run (no summary.json or "
            f"config.toml); give the run directory of a finished `galmerge train --strategy none`"
        )
    cfg = rundir.read_config(run_dir)
    for key in ("source", "seed"):
        if cfg.get(key) != base[key]:
            raise GalmergeError(
                f"--reference {run_dir} was trained with {key} {cfg.get(key)!r}, this study with "
                f"{base[key]!r}; the reference must see the same source validation images"
            )
    try:
        adapted = needs_target(cfg)
    except GalmergeError:
        adapted = True
    if adapted:
        raise GalmergeError(
            f"--reference {run_dir} trained with strategy {cfg.get('strategy')!r}, which reads "
            f"target images; the reference must be source only (--strategy none)"
        )


def reference_layer(base_layer: Mapping[str, Any]) -> dict[str, Any]:
    """The study's own reference run: its base settings made source only the way `train`
    makes its source-only stage (``galmerge.training.step.source_only_layer``)."""
    from galmerge.training.step import source_only_layer

    return source_only_layer(resolve_config(file=dict(base_layer)))


def reference_accuracy(
    study_dir: Path, base_layer: Mapping[str, Any], base: Mapping[str, Any],
    reference: str | Path | None, say: Any,
) -> tuple[float, str]:  # fmt: skip
    """(source validation accuracy of the reference, its run directory); trains the study's
    own reference when none is given and it is not there yet."""
    if reference is not None:
        path = Path(reference)
        check_reference(path, base)
        return _accuracy_at_best(path), str(path)
    path = study_reference(study_dir, base_layer, say, "for --max-source-drop")
    return _accuracy_at_best(path), str(path)


def study_reference(study_dir: Path, base_layer: Mapping[str, Any], say: Any,
                    why: str) -> Path:  # fmt: skip
    """``study_dir/reference``, the study's source-only run with its base settings; trained
    (or continued after a kill) when it is not finished yet."""
    path = study_dir / REFERENCE_DIR
    if (path / rundir.SUMMARY).is_file():  # reused: its best.pt starts the trials
        for part in (path, path / rundir.BEST, path / rundir.CONFIG, path / rundir.SUMMARY):
            check_private(part, "pass another --study-dir")
    else:
        from galmerge.training import train

        say(f"training the source-only reference {why} in {path}")
        if (path / rundir.LAST).is_file():  # a killed study: continue its reference
            train(resume=path, quiet=True)
        else:
            train(config=reference_layer(base_layer), run_dir=path, quiet=True)
    return path


def drop_points(reference: float, accuracy: float) -> float:
    return 100.0 * (reference - accuracy)


def feasible(drop: float | None, max_drop: float) -> bool:
    """Whether a trial's measured drop (None or NaN: not measured) keeps the guard."""
    return drop is not None and math.isfinite(drop) and drop <= max_drop


def constraint_func(max_drop: float) -> Callable[[Any], tuple[float]]:
    """Optuna ``constraints_func`` for a guard: ≤ 0 is feasible (the trial's drop minus the
    guard); a trial without a measured drop (pruned, failed) is infeasible."""

    def constraint(trial: Any) -> tuple[float]:
        drop = trial.user_attrs.get(DROP)
        return (float(drop) - max_drop if drop is not None else UNMEASURED,)

    return constraint


def choose(rows: list[Mapping[str, Any]], score: str, max_drop: float) -> int | None:
    """Index of the best complete trial under ``score`` whose drop keeps the guard (first on
    ties, as `selection.select_epoch`); None when there is none (the reference is the choice)."""
    from galmerge.scores import selection

    values = [float(r.get("score", math.nan))
              if r.get("state") == "complete"
              and feasible(float(r.get(DROP, math.nan)), max_drop) else math.nan
              for r in rows]  # fmt: skip
    return selection.select_epoch(values, score)
