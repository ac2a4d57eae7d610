"""`galmerge tune` itself: the Optuna study (sampler, pruner, resume and re-queued trials) and
its objective, one `galmerge.train` run per trial."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from galmerge.config import paths, rundir
from galmerge.config.legacy import with_legacy_values
from galmerge.config.resolve import deep_merge, read_toml, resolve_config
from galmerge.errors import GalmergeError
from galmerge.scores import selection
from galmerge.training import source_guard
from galmerge.training.tuning.label_free import best_index, label_free_view, score_value
from galmerge.training.tuning.outputs import write_outputs
from galmerge.training.tuning.space import (
    check_space_values,
    default_params,
    params_layer,
    resolve_space,
    suggest,
)
from galmerge.training.tuning.storage import (
    CONFIG_ATTR,
    STUDY_NAME,
    check_one_study,
    lock_study,
    open_storage,
    prepare_dir,
    record_storage,
)

PRUNERS = ("median", "hyperband", "none")


SAMPLERS = ("tpe", "random")


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise GalmergeError(
            "galmerge tune needs Optuna: pip install 'galmerge[tune]' (or pip install optuna)"
        ) from None
    return optuna


def _settings(config: Mapping[str, Any], score: str, space: Mapping[str, Any],
              fixed: Mapping[str, Any], guard: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:  # fmt: skip
    settings = {
        "source": config["source"],
        "target": config["target"],
        "strategy": config["strategy"],
        "backbone": config["backbone"],
        "seed": int(config["seed"]),
        "score": score,
        "space": json.loads(json.dumps(space, sort_keys=True)),
        "fixed": json.loads(json.dumps(fixed, sort_keys=True, default=str)),
        # every other setting of the trials (the device may change between runs)
        "base": json.loads(json.dumps({k: v for k, v in config.items() if k != "device"},
                                      sort_keys=True, default=str)),  # fmt: skip
    }
    if guard is not None:  # (absent without a guard: studies from before stop 25 still resume)
        settings["guard"] = dict(guard)
    start = _init_identity(config)
    if start is not None:  # (absent without init_from: such studies resume as before)
        settings["init"] = start
    return settings


def _init_identity(config: Mapping[str, Any]) -> dict[str, str] | None:
    """The checkpoint every trial starts from (``init_from``): its path, resolved, and its
    SHA-256; None without one, or where it cannot be read (the first trial says why)."""
    init = str(config.get("init_from") or "")
    if not init:
        return None
    from galmerge.io.provenance import sha256_file
    from galmerge.models.model import resolve_checkpoint

    try:
        path = resolve_checkpoint(init)
        return {"path": str(path.resolve()), "sha256": sha256_file(path)}
    except (GalmergeError, OSError):
        return None


def _without_init_from(settings: Mapping[str, Any]) -> dict[str, Any]:
    base = {k: v for k, v in dict(settings.get("base") or {}).items() if k != "init_from"}
    return {**{k: v for k, v in settings.items() if k != "init"}, "base": base}


def _absolute_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A study's recorded settings with relative paths (a study from before they were recorded
    absolute, resumed from the folder it was started in) absolute from here."""
    out = paths.absolute(settings, paths.SPEC_KEYS)
    if isinstance(out.get("base"), Mapping):
        out["base"] = paths.absolute(out["base"])
    return out


#: the study's user attribute recording where its folder was when it started (absolute)
STUDY_DIR_ATTR = "study_dir"


def _moved(saved: Mapping[str, Any], settings: Mapping[str, Any], then: Any,
           study_dir: Path) -> dict[str, Any]:
    """``saved`` with each data spec (``source``, ``target``, and the base settings') whose
    file is gone replaced by the one in ``settings`` when that names the same file after the
    study folder moved with its data (`paths.same_moved_spec`: the recorded path from where
    the folder was, ``then``, rebased to ``study_dir``): identity by place, not spelling."""
    then = then if isinstance(then, str) else None

    def moved(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(old)
        for key in paths.SPEC_KEYS:
            if out.get(key) != new.get(key) and paths.same_moved_spec(
                    out.get(key), new.get(key), then, study_dir):
                out[key] = new[key]
        return out

    out = moved(saved, settings)
    if isinstance(out.get("base"), Mapping) and isinstance(settings.get("base"), Mapping):
        out["base"] = moved(out["base"], settings["base"])
    return out


def _check_same_study(study: Any, settings: Mapping[str, Any], study_dir: Path,
                      init_given: Any = None) -> None:
    """Refuse a study folder whose study has other settings; ``init_given``: init_from as the
    user spelt it, for the message."""
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", dict(settings))
        # where the folder was as its settings record their absolute paths (`_moved`)
        study.set_user_attr(STUDY_DIR_ATTR, os.path.abspath(study_dir))
        return
    as_written, saved = saved, _absolute_settings(saved)
    saved = _moved(saved, settings, study.user_attrs.get(STUDY_DIR_ATTR), study_dir)
    then, now = saved.get("init"), settings.get("init")
    if isinstance(then, dict) and now is not None:
        # the start is its content: init_from may be spelt otherwise (relative or absolute, a
        # run directory or its best.pt; another machine's path to the same file)
        if then.get("sha256") != now["sha256"]:
            given = init_given or settings["base"].get("init_from")
            raise GalmergeError(
                f"{study_dir} holds a study whose trials start from {then.get('path')} (SHA-256 "
                f"{str(then.get('sha256'))[:12]}...), but init_from {given} is another "
                f"checkpoint ({now['sha256'][:12]}..., changed or replaced); give init_from the "
                "study's checkpoint as it was to resume, or use another --study-dir")
        saved, settings = _without_init_from(saved), _without_init_from(settings)
    elif now is not None:  # a study from before the record (or its start unreadable then)
        settings = {k: v for k, v in settings.items() if k != "init"}
    diff = [k for k in settings if saved.get(k) != settings[k]]
    if diff:
        k, then, now = diff[0], saved.get(diff[0]), settings[diff[0]]
        written = as_written.get(k)
        if isinstance(then, dict) and isinstance(now, dict):  # name the first differing entry
            sub = sorted(j for j in {*then, *now} if then.get(j) != now.get(j))[0]
            k, then, now = f"{k}.{sub}", then.get(sub), now.get(sub)
            written = written.get(sub) if isinstance(written, Mapping) else then
        relative = written != then  # a path recorded as typed, by a study from before
        raise GalmergeError(
            f"{study_dir} holds a study with other settings ({k}: {written!r} there, "
            f"{now!r} now); rerun with the same settings to resume"
            + (" (from the folder the study was started in: its paths are relative to it)"
               if relative else "") + ", or use another --study-dir"
        )


def _requeue_interrupted(optuna: Any, study: Any, quiet_print: Callable[[str], None]) -> None:
    """Embedded study (one process): trials left RUNNING by a killed process are failed and
    their parameters queued again, so the interrupted configuration is retried first."""
    TrialState = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (process killed)")
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        queue_again(study, t.number, t.params, t.user_attrs)
        quiet_print(f"trial {t.number} was interrupted: marked failed, queued again")


# user attributes that describe one run of a trial, not what it is (defaults, ladder...)
RUN_ATTRS = ("error", "run_dir", "retry_of", CONFIG_ATTR, source_guard.DROP)


def queue_again(study: Any, number: int, params: Mapping[str, Any],
                user_attrs: Mapping[str, Any]) -> None:  # fmt: skip
    """Queue an interrupted trial's parameters again, with what its user attributes say it is
    (``defaults``, ``ladder``: a retried ladder trial is still never pruned) and ``retry_of``."""
    keep = {k: v for k, v in user_attrs.items() if k not in RUN_ATTRS}
    study.enqueue_trial(dict(params), user_attrs={**keep, "retry_of": number})


def _check_label_free(cfg: Mapping[str, Any], score: str) -> None:
    """Nothing a trial trains may read target labels: each trial's best epoch is its --score's,
    and its early stopping watches no oracle (a --set or --config could say otherwise)."""
    if cfg.get("select_by") != score:
        raise GalmergeError(
            f"select_by = {cfg.get('select_by')!r}: tune keeps each trial's best epoch by --score "
            f"({score}); drop select_by from --set and choose the --score instead")
    if cfg.get("stop_by") == selection.ORACLE:
        raise GalmergeError(
            f"stop_by = {selection.ORACLE!r} reads target labels, which tune never does; drop it "
            "(early stopping then watches --score) or name a label-free score")


def tune(
    source: str,
    target: str,
    strategy: str,
    n_trials: int,
    study_dir: str | Path,
    *,
    seed: int = 0,
    timeout: float | None = None,
    score: str = "im_src",
    space: str | Path | Mapping[str, Any] | None = None,
    storage: str | None = None,
    pruner: str = "median",
    sampler: str = "tpe",
    config: str | Path | Mapping[str, Any] | None = None,
    sets: list[str] | tuple[str, ...] = (),
    epochs: int | None = None,
    backbone: str | None = None,
    batch_size: int | None = None,
    max_steps_per_epoch: int | None = None,
    device: str | None = None,
    quiet: bool = False,
    max_source_drop: float | None = None,
    reference: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) a study until ``n_trials`` trials finished (complete or pruned); write
    ``trials.csv``, ``best.toml``, plots and ``report.md`` in ``study_dir``; return a summary.
    With ``max_source_drop`` (points), only trials whose source validation accuracy lies within
    that many points of a source-only reference run can be the best
    (`galmerge.training.source_guard`)."""
    from galmerge.config.resolve import cli_overrides

    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise GalmergeError(f"--n-trials must be a whole number >= 1, got {n_trials!r}")
    if timeout is not None and not timeout > 0:
        raise GalmergeError(f"--timeout must be > 0 seconds, got {timeout!r}")
    if score not in selection.SCORES:
        raise GalmergeError(
            f"unknown --score {score!r}; label-free scores: {', '.join(selection.SCORES)} "
            f"(target accuracy is never a tuning objective)"
        )
    if pruner not in PRUNERS:
        raise GalmergeError(f"unknown --pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")
    if sampler not in SAMPLERS:
        raise GalmergeError(f"unknown --sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GalmergeError(f"--seed must be a whole number >= 0, got {seed!r}")
    for role, spec in (("source", source), ("target", target)):  # before the study folder
        rundir.refuse_credentials(spec, f"--{role}")
    # recorded absolute (the study's settings, its trials' config.toml, best.toml): read from
    # any folder, and one study resumed from any folder however its paths are spelt
    source, target = paths.absolute_spec(source), paths.absolute_spec(target)
    source_guard.check_guard(max_source_drop, reference)
    if reference is not None and not Path(reference).is_dir():
        raise GalmergeError(f"--reference {reference}: no such run directory")
    if max_source_drop is not None and storage is not None and reference is None:
        raise GalmergeError(
            "--max-source-drop with --storage needs --reference RUN_DIR (a finished source-only "
            "run): processes sharing a study must compare with one reference"
        )
    optuna = _import_optuna()
    flags = {
        "source": source, "target": target, "strategy": strategy, "seed": seed, "epochs": epochs,
        "backbone": backbone, "batch_size": batch_size,
        "max_steps_per_epoch": max_steps_per_epoch, "device": device, "select_by": score,
    }  # fmt: skip
    base_layer = cli_overrides(flags, sets)
    file_layer: dict[str, Any] = {}
    if config is not None:
        file_layer = dict(config) if isinstance(config, Mapping) else read_toml(config)
        if not isinstance(config, Mapping) and rundir.is_run_record(Path(config)):
            # a run's own record: the settings it predates at the values it trained with, its
            # relative paths as its own files say (a run from before they were absolute)
            file_layer = with_legacy_values(paths.with_recorded_files(
                file_layer, Path(config).parent))
    base_layer = deep_merge(file_layer, base_layer)
    init_given = base_layer.get("init_from")  # as spelt, for messages
    base_layer = paths.absolute(base_layer)
    base = resolve_config(file=base_layer)  # validates every name and value up front
    _check_label_free(base, score)
    dims, fixed = resolve_space(base, space)
    if base_layer.get("target_encoder") == "separate":
        dims, fixed = _per_domain_batches(dims, fixed)
    base_layer = deep_merge(base_layer, params_layer(fixed, base))
    resolve_config(file=base_layer)  # the fixed values must be valid settings too
    check_space_values(base_layer, dims, space)

    study_dir = Path(study_dir)
    prepare_dir(study_dir)
    check_one_study(study_dir, storage)
    lock = contextlib.ExitStack()
    lock.enter_context(lock_study(study_dir, storage is None))
    console = None
    if not quiet:
        from rich.console import Console

        console = Console(stderr=True)

    def say(text: str) -> None:
        if console is not None:
            console.print(text, highlight=False)

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our own line
    try:
        store, embedded = open_storage(optuna, study_dir, storage)
        record_storage(study_dir, storage)  # only a database that opened binds the folder
        direction = "minimize" if selection.SCORES[score] == "min" else "maximize"
        guard = None
        if max_source_drop is not None:
            ref_acc, ref_dir = source_guard.reference_accuracy(
                study_dir, base_layer, base, reference, say)
            guard = {"max_source_drop": float(max_source_drop), "reference": ref_dir,
                     "reference_source_val_accuracy": ref_acc}  # fmt: skip
        samplers: dict[str, Callable[[int], Any]] = {
            "tpe": lambda s: _tpe(optuna, s, max_source_drop),
            "random": lambda s: optuna.samplers.RandomSampler(seed=s),
        }
        pruners = {
            # the first 3 trials run whole; a later one stops when below the median of epoch e
            "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=int(base["epochs"])
            ),
            "none": lambda: optuna.pruners.NopPruner(),
        }
        try:
            study = optuna.create_study(
                storage=store, study_name=STUDY_NAME, direction=direction,
                sampler=samplers[sampler](seed), pruner=pruners[pruner](), load_if_exists=True,
            )  # fmt: skip
        except ValueError as exc:  # e.g. an existing study with the other direction
            raise GalmergeError(f"{study_dir}: {exc}; use another --study-dir") from None
        # a resumed study or another worker must not draw the same points again
        study.sampler = samplers[sampler](sampler_seed(seed, len(study.trials), embedded))
        # the reference's accuracy, not its path (machines sharing a study see other paths)
        stored_guard = None if guard is None else {k: v for k, v in guard.items()
                                                   if k != "reference"}  # fmt: skip
        _check_same_study(study, _settings(base, score, dims, fixed, stored_guard), study_dir,
                          init_given)
        if embedded:
            _requeue_interrupted(optuna, study, say)
        if not study.trials:
            # trial 0 runs the base settings (the defaults): the search starts from them and
            # the report shows whether anything scored better
            start = default_params(base, dims)
            if start:
                study.enqueue_trial(start, user_attrs={"defaults": True})
                if guard is not None:  # milder variants of the defaults (source_guard.LADDER)
                    for params in source_guard.ladder(start, dims):
                        study.enqueue_trial(params, user_attrs={"ladder": True})
        start_from = _stage_start(study_dir, base_layer, reference, storage, say)
        if start_from is not None:
            start_from = _one_stage(study, start_from, study_dir)
            if reference is not None:
                start_from()  # another --reference than the study's is refused before any trial
        objective = _objective(optuna, study_dir, base_layer, dims, score, guard, start_from)
        _optimize(optuna, study, objective, n_trials, timeout, say, quiet)
        return write_outputs(study_dir, study, score, quiet=quiet, guard=guard)
    finally:
        lock.close()


def sampler_seed(seed: int, n_trials: int, embedded: bool) -> int:
    """The sampler's seed for one invocation on a study that holds ``n_trials`` trials:
    ``seed`` for a new embedded study (one uninterrupted study is reproducible), else drawn from
    (``seed``, ``n_trials``) so that a resumed study samples new points, plus fresh OS entropy
    for a process sharing ``--storage`` (workers starting together draw apart)."""
    if embedded and n_trials == 0:
        return seed
    import numpy as np

    entropy = [seed, n_trials]
    if not embedded:
        import secrets

        entropy.append(secrets.randbits(64))
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _tpe(optuna: Any, seed: int, max_drop: float | None) -> Any:
    if max_drop is None:
        return optuna.samplers.TPESampler(seed=seed)
    import warnings

    with warnings.catch_warnings():  # constraints_func is marked experimental in Optuna
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(
            seed=seed, constraints_func=source_guard.constraint_func(max_drop))


def _per_domain_batches(
    dims: Mapping[str, Mapping[str, Any]], fixed: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The space of a study that asks for the target's own encoder: joint batches cannot
    forward each domain through its own encoder, so ``domain_batchnorm`` loses "joint" (and
    is fixed when one choice is left)."""
    dims, fixed = {k: dict(v) for k, v in dims.items()}, dict(fixed)
    spec = dims.get("domain_batchnorm")
    if spec is not None and spec["type"] == "categorical" and "joint" in spec["choices"]:
        left = [c for c in spec["choices"] if c != "joint"]
        if len(left) > 1:
            spec["choices"] = left
        else:
            del dims["domain_batchnorm"]
            fixed["domain_batchnorm"] = left[0] if left else "separate"
    if fixed.get("domain_batchnorm") == "joint":
        raise GalmergeError("target_encoder=separate needs per-domain batches, but the search "
                            "space fixes domain_batchnorm = \"joint\"; set it to separate")
    return dims, fixed


def _stage_start(
    study_dir: Path, base_layer: Mapping[str, Any], reference: str | Path | None,
    storage: str | None, say: Callable[[str], None],
) -> Callable[[], str] | None:  # fmt: skip
    """Where trials with their own target encoder (ADDA's layout) start: the best.pt of the
    study's source-only reference (``--reference``, or ``study_dir/reference``, trained once
    when the first such trial needs it), so the trials share one source stage instead of each
    training its own; their searched lr, weight decay and epochs are the adaptation's. None
    (each trial trains its own stage) for processes sharing a ``--storage`` without a
    ``--reference``: they must not train one folder at once."""
    # absolute: best.toml and the trials' config.toml are read from other folders too
    if reference is not None:
        return lambda: str(Path(reference).resolve() / rundir.BEST)
    if storage is not None:
        return None

    @functools.cache  # trained (or found) once, when the first such trial needs it
    def start() -> str:
        path = source_guard.study_reference(
            study_dir, base_layer, say, "that trials with their own target encoder start from")
        return str(path.resolve() / rundir.BEST)

    return start


STAGE_ATTR = "stage_sha256"  # the source stage's best.pt that separate-encoder trials start from


def _one_stage(study: Any, start: Callable[[], str], study_dir: Path) -> Callable[[], str]:
    """``start`` that records the SHA-256 of the source stage the study's trials start from the
    first time it is resolved, and refuses another one later (a resumed study given another
    ``--reference``, or the first run's own reference replaced): its trials would have started
    from other weights unnoticed. Studies from before the record adopt the first one seen."""

    @functools.cache
    def checked() -> str:
        from galmerge.io.provenance import sha256_file

        path = start()
        digest = sha256_file(Path(path))
        then = study.user_attrs.get(STAGE_ATTR)
        if then is None:
            study.set_user_attr(STAGE_ATTR, digest)
        elif then != digest:
            raise GalmergeError(
                f"{study_dir} holds a study whose trials start from a source stage with SHA-256 "
                f"{str(then)[:12]}..., but {path} is another ({digest[:12]}...); give the study's "
                "--reference (or none, for its own) to resume, or use another --study-dir")
        return path

    return checked


def _objective(
    optuna: Any, study_dir: Path, base_layer: Mapping[str, Any],
    dims: Mapping[str, Mapping[str, Any]], score: str, guard: Mapping[str, Any] | None = None,
    start_from: Callable[[], str] | None = None,
) -> Callable[[Any], float]:  # fmt: skip
    from galmerge.training import train
    from galmerge.training.step import needs_source_stage

    def objective(trial: Any) -> float:
        params = suggest(trial, dims)
        layer = deep_merge(base_layer, params_layer(params, base_layer))
        run_dir = study_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(study_dir)))
        rows: list[dict[str, float]] = []

        def on_epoch(row: dict[str, Any]) -> None:
            rows.append(label_free_view(row))  # nothing else of the row is kept
            i = best_index(rows, score)
            if i is not None:
                trial.report(score_value(rows[i], score), int(rows[-1]["epoch"]))
                # the guard's ladder runs whole: a pruned trial has no source drop to compare
                if not trial.user_attrs.get("ladder") and trial.should_prune():
                    raise optuna.TrialPruned()

        try:
            if start_from is not None and needs_source_stage(resolve_config(file=layer)):
                layer = dict(layer, init_from=start_from())
            # absolute: a trial's own source stage is recorded as its init_from, and best.toml
            # is read from other folders
            train(config=layer, run_dir=run_dir.resolve(), quiet=True, on_epoch=on_epoch)
            trial.set_user_attr(CONFIG_ATTR, (run_dir / rundir.CONFIG).read_text())
        except KeyboardInterrupt:  # Ctrl-C: Optuna fails the trial; run it again on restart
            trial.set_user_attr("error", "interrupted (Ctrl-C)")
            queue_again(trial.study, trial.number, trial.params, trial.user_attrs)
            raise
        except Exception as exc:
            if not isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr("error", str(exc).splitlines()[0] if str(exc) else repr(exc))
            raise
        i = best_index(rows, score)
        if i is None:
            trial.set_user_attr("error", f"{score} was not finite at any epoch")
            return math.nan  # Optuna records a NaN value as a failed trial
        if guard is not None:  # source labels only: the drop against the reference
            acc = float(rows[i].get("source_val_accuracy", math.nan))
            drop = source_guard.drop_points(guard["reference_source_val_accuracy"], acc)
            if math.isfinite(drop):
                trial.set_user_attr(source_guard.DROP, drop)
        return score_value(rows[i], score)

    return objective


def _finished(optuna: Any, study: Any) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _optimize(
    optuna: Any, study: Any, objective: Callable[[Any], float], n_trials: int,
    timeout: float | None, say: Callable[[str], None], quiet: bool,
) -> None:  # fmt: skip
    from galmerge.errors import GalmergeError as _Err

    start = time.monotonic()
    failures = 0
    max_failures = max(3, n_trials)
    progress = task = None
    if not quiet:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False,
        )  # fmt: skip
        progress.start()
        task = progress.add_task("tune", total=n_trials, completed=_finished(optuna, study),
                                 info="")  # fmt: skip
    try:
        while _finished(optuna, study) < n_trials:
            if timeout is not None and time.monotonic() - start >= timeout:
                say(f"--timeout {timeout:g} s reached; rerun the command to continue the study")
                break
            if failures >= max_failures:
                raise GalmergeError(
                    f"{failures} trials failed in a row in this run (last error: "
                    f"{_last_error(study)}); see trials.csv and the trials' run directories"
                )
            study.optimize(objective, n_trials=1, catch=(_Err,), gc_after_trial=True)
            last = study.trials[-1]
            if last.state == optuna.trial.TrialState.FAIL:
                failures += 1
                say(f"trial {last.number} failed: {last.user_attrs.get('error', 'no score')}")
            else:
                failures = 0
            if progress is not None:
                value = "-" if last.value is None else f"{last.value:.4g}"
                try:
                    best = f"{study.best_value:.4g} (trial {study.best_trial.number})"
                except ValueError:
                    best = "-"
                progress.update(task, completed=min(n_trials, _finished(optuna, study)),
                                info=f"last {last.state.name.lower()} {value}, best {best}")
    finally:
        if progress is not None:
            progress.stop()


def _last_error(study: Any) -> str:
    for t in reversed(study.trials):
        if "error" in t.user_attrs:
            return str(t.user_attrs["error"])
    return "unknown"
