"""`galmerge tune`: hyperparameter search on Optuna with a label-free objective.

Each trial is one `galmerge.train` run in ``DIR/trials/NNNN`` with options drawn from the search
space (declared by the strategy and backbone records, ``CORE_SPACE`` for lr, weight decay and
epochs, overridable from a TOML file). Its value is a label-free score (``selection.SCORES``) at
the checkpoint the trainer keeps under that score; per-epoch values feed the pruner.

Target labels stay out structurally: the objective reads metrics rows only through
``label_free_view``, which keeps a fixed list of source/label-free columns; the Optuna storage
holds parameters, label-free values, states and each complete trial's config.toml (settings,
no metrics) only. The oracle (target accuracy) is read
afterwards from each trial's run directory, for ``trials.csv`` and the report, and never reaches
the sampler or pruner.

Storage: by default ``sqlite:///DIR/study.db``. SQLite commits atomically (a rollback journal)
and its locks die with the process, so a ``kill -9`` leaves a consistent study; Optuna's journal
file can be left with a torn last line or a stale lock file by such a kill. ``--storage URL``
(e.g. ``postgresql://user:pw@host/db``) lets several processes or machines share one study.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from galmerge.config import rundir
from galmerge.config.legacy import with_legacy_values
from galmerge.config.resolve import deep_merge, read_toml, resolve_config
from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.private import check_private
from galmerge.io.provenance import redact
from galmerge.scores import selection
from galmerge.training import source_guard

STUDY_NAME = "galmerge-tune"
STORAGE_FILE = "study.db"
#: which database holds the folder's study (a redacted URL), written on its first start
STORAGE_RECORD = "storage.json"
TRIALS_CSV = "trials.csv"
BEST_TOML = "best.toml"
REPORT = "report.md"
LOCK = ".tune.lock"
# user attribute: a complete trial's config.toml text, for best.toml where its folder is absent
# (processes on other machines sharing the study through --storage)
CONFIG_ATTR = "config_toml"
# Heartbeats for shared storage: a trial silent for GRACE_S seconds (its process died) is failed
# and retried once by whichever process looks next.
HEARTBEAT_S = 60
GRACE_S = 180

PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")

# The only metrics columns the objective may read (target columns and the oracle are not here).
LABEL_FREE_COLUMNS = ("epoch", "source_val_loss", "source_val_accuracy")
LABEL_FREE_PREFIXES = ("score_", "loss_")

SPACE_TYPES = ("float", "int", "categorical")
CORE_KEYS = ("lr", "weight_decay", "epochs", "domain_batchnorm")
# How BatchNorm sees the two domains is a choice with no label-free answer known in advance:
# searched when a strategy forwards the target (`none` never does, so there it is moot).
LAYOUT_SPACE = {"type": "categorical", "choices": ["separate", "joint"]}
SECTION_KEYS = ("schedule", "optimizer", "backbone")


def core_space(epochs: int) -> dict[str, dict[str, Any]]:
    """lr and weight decay on log ranges around the defaults; epochs from half to all of the
    base number (``--epochs``)."""
    return {
        "lr": {"type": "float", "low": 1e-4, "high": 5e-3, "log": True},
        "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "epochs": {"type": "int", "low": max(1, math.ceil(epochs / 2)), "high": max(1, epochs)},
    }


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise GalmergeError(
            "galmerge tune needs Optuna: pip install 'galmerge[tune]' (or pip install optuna)"
        ) from None
    return optuna


# --------------------------------------------------------------------------------------------
# search space


def _check_spec(name: str, spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = spec.get("type")
    if kind not in SPACE_TYPES:
        raise GalmergeError(
            f"search space {where}: {name} has type {kind!r}; use one of {', '.join(SPACE_TYPES)}"
        )
    allowed = {"type", "low", "high", "log", "step"} if kind != "categorical" else {"type",
                                                                                   "choices"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise GalmergeError(
            f"search space {where}: {name} has unknown key(s) {', '.join(extra)}; "
            f"a {kind} takes {', '.join(sorted(allowed))}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            raise GalmergeError(f"search space {where}: {name} needs a non-empty list 'choices'")
        bad = [c for c in choices if not isinstance(c, str | int | float | bool)]
        if bad:  # Optuna stores strings, numbers and booleans only
            raise GalmergeError(f"search space {where}: {name} has choice {bad[0]!r}; choices "
                                "are strings, numbers or true/false")
        return {"type": kind, "choices": list(choices)}
    low, high = spec.get("low"), spec.get("high")
    number = int if kind == "int" else (int, float)
    if (isinstance(low, bool) or isinstance(high, bool) or not isinstance(low, number)
            or not isinstance(high, number) or not low <= high):  # fmt: skip
        raise GalmergeError(
            f"search space {where}: {name} needs numbers low <= high ({kind}), got "
            f"low={low!r} high={high!r}"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise GalmergeError(f"search space {where}: {name} has log = {log!r}; write log = true "
                            "or log = false")
    if log and low <= 0:
        raise GalmergeError(f"search space {where}: {name} has log = true, so low must be > 0")
    out = {"type": kind, "low": low, "high": high, "log": log}
    if "step" in spec:
        step = spec["step"]
        if isinstance(step, bool) or not isinstance(step, number) or not step > 0:
            raise GalmergeError(
                f"search space {where}: {name} has step = {step!r}; a step is a "
                f"{'whole ' if kind == 'int' else ''}number > 0 (e.g. step = "
                f"{1 if kind == 'int' else 0.1})")
        if log and not (kind == "int" and step == 1):  # Optuna: a log range has no steps
            # (an int range's step 1 is its default, which Optuna accepts with log)
            raise GalmergeError(f"search space {where}: {name} has log = true and a step; "
                                "drop one of them")
        out["step"] = step
    return out


def declared_space(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The default space for a resolved config: core (+ ``domain_batchnorm`` when a strategy
    forwards the target) + the backbone's + each strategy's (``NAME.OPTION`` for strategy
    options, ``backbone.OPTION`` for backbone options)."""
    from galmerge.plugin.manager import get_plugin_manager
    from galmerge.training.step import needs_target

    pm = get_plugin_manager()
    space = {k: _check_spec(k, v, "core") for k, v in core_space(int(config["epochs"])).items()}
    if needs_target(config):
        space["domain_batchnorm"] = _check_spec("domain_batchnorm", LAYOUT_SPACE, "core")
    backbone = pm.get("backbones", config["backbone"])
    for option, spec in dict(getattr(backbone, "search_space", {}) or {}).items():
        space[f"backbone.{option}"] = _check_spec(option, spec, f"of backbone {backbone.name}")
    for name in config["strategies"]:
        record = pm.get("strategies", name)
        for option, spec in dict(getattr(record, "search_space", {}) or {}).items():
            space[f"{name}.{option}"] = _check_spec(option, spec, f"of strategy {name}")
    return space


def _flatten_space_file(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TOML tables -> {"lr": spec-or-value, "mmd.weight": spec-or-value, ...}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and "type" not in value:
            for option, inner in value.items():
                if isinstance(inner, Mapping) and "type" not in inner:
                    raise GalmergeError(
                        f"search space {where}: {key}.{option} is nested too deep; write "
                        f"[{key}] {option} = {{type = \"float\", low = ..., high = ...}}"
                    )
                flat[f"{key}.{option}"] = inner
        else:
            flat[str(key)] = value
    return flat


def resolve_space(
    config: Mapping[str, Any], space_file: str | Path | Mapping[str, Any] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(searched dimensions, fixed values) after a space file's overrides.

    In the file a table with ``type`` replaces or adds a dimension; a plain value fixes the
    option (it is not searched): ``lr = 0.001``, ``[mmd] weight = {type = "float", low = 0.1,
    high = 1, log = true}``, ``[entropy] diversity = 1.0``.
    """
    from galmerge.plugin.manager import get_plugin_manager

    space = declared_space(config)
    fixed: dict[str, Any] = {}
    if space_file is None:
        return space, fixed
    if isinstance(space_file, Mapping):
        data, where = dict(space_file), "given"
    else:
        path = Path(space_file)
        where = str(path)
        try:
            data = read_toml(path)
        except GalmergeError as exc:
            raise GalmergeError(f"--space: {exc}") from None
    pm = get_plugin_manager()
    aliases = {}
    for name in config["strategies"]:
        record = pm.get("strategies", name)
        for alias in (record.name, *record.aliases):
            aliases[alias.lower()] = record.name
    for key, value in _flatten_space_file(data, where).items():
        section, dot, option = key.partition(".")
        if not dot:
            if key not in CORE_KEYS:
                raise GalmergeError(
                    f"search space {where}: unknown setting {key!r}; top-level keys are "
                    f"{', '.join(CORE_KEYS)}, tables are {', '.join(SECTION_KEYS)} or a "
                    f"strategy of the expression ({', '.join(config['strategies'])})"
                )
            name = key
        elif section in ("schedule", "optimizer"):
            if option not in config[section]:
                raise GalmergeError(
                    f"search space {where}: unknown {section} option {option!r}; known: "
                    f"{', '.join(sorted(config[section]))}"
                )
            name = key
        elif section == "backbone":
            if option not in config["backbone_options"]:
                raise GalmergeError(
                    f"search space {where}: backbone {config['backbone']} has no option "
                    f"{option!r}; known: {', '.join(sorted(config['backbone_options'])) or 'none'}"
                )
            name = key
        else:
            strategy = aliases.get(section.lower())
            if strategy is None:
                raise GalmergeError(
                    f"search space {where}: {section!r} is not a strategy of "
                    f"{config['strategy']}, nor {', '.join(SECTION_KEYS)}"
                )
            if option not in config["strategies"][strategy]:
                raise GalmergeError(
                    f"search space {where}: strategy {strategy} has no option {option!r}; "
                    f"known: {', '.join(sorted(config['strategies'][strategy]))}"
                )
            name = f"{strategy}.{option}"
        if isinstance(value, Mapping):
            space[name] = _check_spec(name, value, where)
            fixed.pop(name, None)
        else:
            space.pop(name, None)
            fixed[name] = value
    return space, fixed


def check_space_values(base_layer: Mapping[str, Any], dims: Mapping[str, Mapping[str, Any]],
                       space: str | Path | Mapping[str, Any] | None = None) -> None:
    """Each searched range's ends and each choice, resolved as a trial's config is: a value no
    trial could train with is a one-line error before the study starts (or is stored)."""
    where = f" {space}" if isinstance(space, str | Path) else ""
    for name in sorted(dims):
        spec = dims[name]
        if spec["type"] == "categorical":
            values = list(spec["choices"])
        else:
            cast = int if spec["type"] == "int" else float
            values = [cast(spec["low"]), cast(spec["high"])]
        for value in values:
            try:
                resolve_config(file=deep_merge(base_layer, params_layer({name: value},
                                                                        base_layer)))
            except GalmergeError as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise GalmergeError(
                    f"search space{where}: {name} = {value!r} is not a valid setting ({first}); "
                    f"narrow the range or drop that choice") from None


def params_layer(params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat parameter names -> a config layer (``mmd.weight`` -> strategies.mmd.weight)."""
    layer: dict[str, Any] = {}
    for name, value in params.items():
        section, dot, option = name.partition(".")
        if not dot:
            layer[name] = value
        elif section in ("schedule", "optimizer"):
            layer.setdefault(section, {})[option] = value
        elif section == "backbone":
            layer.setdefault("backbone_options", {})[option] = value
        else:
            layer.setdefault("strategies", {}).setdefault(section, {})[option] = value
    return layer


def default_params(config: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]
                   ) -> dict[str, Any]:  # fmt: skip
    """The base config's value of each searched option that lies inside its range."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        section, dot, option = name.partition(".")
        if not dot:
            value = config.get(name)
        elif section in ("schedule", "optimizer"):
            value = config[section].get(option)
        elif section == "backbone":
            value = config["backbone_options"].get(option)
        else:
            value = config["strategies"].get(section, {}).get(option)
        if spec["type"] == "categorical":
            if value in spec["choices"]:
                out[name] = value
        elif (isinstance(value, int | float) and not isinstance(value, bool)
              and spec["low"] <= value <= spec["high"]):  # fmt: skip
            out[name] = int(value) if spec["type"] == "int" else float(value)
    return out


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Draw every dimension of ``space`` (sorted by name: a stable order for the sampler)."""
    params: dict[str, Any] = {}
    for name in sorted(space):
        spec = space[name]
        if spec["type"] == "float":
            params[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=spec["log"],
                step=spec.get("step"),
            )
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(
                name, int(spec["low"]), int(spec["high"]), log=spec["log"],
                step=int(spec.get("step", 1)),
            )
        else:
            params[name] = trial.suggest_categorical(name, spec["choices"])
    return params


# --------------------------------------------------------------------------------------------
# label-free values


def label_free_view(row: Mapping[str, Any]) -> dict[str, float]:
    """The columns of a metrics row the objective may read: source and label-free ones only."""
    return {
        k: float(v)
        for k, v in row.items()
        if k in LABEL_FREE_COLUMNS or k.startswith(LABEL_FREE_PREFIXES)
    }


def score_value(row: Mapping[str, float], score: str) -> float:
    key = score if score == "source_val_loss" else f"score_{score}"
    return float(row.get(key, math.nan))


def best_index(rows: list[Mapping[str, float]], score: str) -> int | None:
    return selection.select_epoch([score_value(r, score) for r in rows], score)


# --------------------------------------------------------------------------------------------
# the study


def _storage(optuna: Any, study_dir: Path, url: str | None) -> tuple[Any, bool]:
    """(storage, embedded)."""
    embedded = url is None
    if embedded:
        url = f"sqlite:///{study_dir / STORAGE_FILE}"
    assert url is not None
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes on one SQLite file wait for each other's short writes
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    import warnings

    with warnings.catch_warnings():
        # heartbeats and their retry callback are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if not embedded:
            import inspect

            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
            params = inspect.signature(optuna.storages.RDBStorage).parameters
            kwargs.update(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
            if retry is not None and "heartbeat_stale_trial_callback" in params:
                kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=1)
            else:
                kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(
                    max_retry=1
                )
        error: Exception | None = None
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, **kwargs), embedded
            except Exception as exc:  # a bad URL or an unreachable server: one line below
                error = exc
                # processes opening a new database at once race to create its tables; the
                # loser finds them on the next try
                text = str(exc)
                if attempt < 4 and ("already exists" in text or "UNIQUE constraint" in text):
                    time.sleep(0.5 + attempt)
                    continue
                break
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if embedded:  # no --storage was given: name the study's own file
        raise GalmergeError(
            f"{study_dir / STORAGE_FILE}: the study's database cannot be opened ({first}); "
            "restore it from a copy, or start the study in a new --study-dir")
    raise GalmergeError(
        f"--storage {redact(url)}: cannot open it ({redact(first)}); e.g. sqlite:///DIR/study.db or "
        f"postgresql://USER:PASSWORD@HOST/DB"
    )


def _lock_study(study_dir: Path, embedded: bool) -> Any:
    """A lock on the study folder for the whole study (a context manager): exclusive for the
    embedded storage (it fails and re-queues RUNNING trials at start), shared for ``--storage``
    processes (several work at once, none while an embedded run holds the folder)."""
    if not embedded:
        return atomic.exclusive_lock(
            study_dir / LOCK,
            f"a galmerge tune without --storage is running on {study_dir}; wait for it, or stop "
            f"it and run every process with --storage", shared=True)
    return atomic.exclusive_lock(
        study_dir / LOCK,
        f"another galmerge tune is running on {study_dir}; wait for it, or run several "
        f"processes on one study with --storage (e.g. --storage sqlite:///{study_dir}/"
        f"{STORAGE_FILE})",
    )


def _storage_identity(study_dir: Path, storage: str | None) -> str:
    """The database a study lives in, as recorded: its URL without password, SQLite paths
    resolved (the embedded database is ``sqlite:///STUDY_DIR/study.db``)."""
    url = storage if storage is not None else f"sqlite:///{study_dir / STORAGE_FILE}"
    if url.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return redact(url)


def _check_one_study(study_dir: Path, storage: str | None) -> None:
    """One study per folder: its trials, best.toml and report would be overwritten by another
    study's. The folder records the database of its first start (`STORAGE_RECORD`); a start
    with another is refused. Folders from before the record: an embedded ``study.db`` beside a
    ``--storage`` study, or the trials of a ``--storage`` study under a plain tune, refused."""
    identity = _storage_identity(study_dir, storage)
    record = study_dir / STORAGE_RECORD
    if record.is_file():
        try:
            recorded = json.loads(record.read_text()).get("storage")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != identity:
            raise GalmergeError(
                f"--study-dir {study_dir} holds the study of another database ({recorded}); "
                "pass that --storage to continue it (or none, if it is the folder's own "
                "study.db), or choose another --study-dir")
        return
    own = study_dir / STORAGE_FILE
    if storage is not None and own.exists() and identity != _storage_identity(study_dir, None):
        raise GalmergeError(
            f"--study-dir {study_dir} holds a study of its own ({STORAGE_FILE}); give a "
            f"--storage study another --study-dir (its outputs would overwrite this one's)")
    if storage is None and not own.exists() and any((study_dir / "trials").glob("[0-9]*")):
        raise GalmergeError(
            f"--study-dir {study_dir} holds the trials of a study kept in a --storage database; "
            "pass that --storage to continue it, or choose another --study-dir")
    atomic.write_text(record, json.dumps({"storage": identity}) + "\n")


def _prepare_dir(study_dir: Path) -> None:
    if (study_dir / rundir.CONFIG).is_file() and not (study_dir / STORAGE_FILE).exists() \
            and not (study_dir / "trials").is_dir():
        raise GalmergeError(f"--study-dir {study_dir} is a training run directory, not a study "
                            "folder; choose a new folder for the study")
    if (study_dir / STORAGE_FILE).exists():  # a study to continue: its trials must be the user's
        for path in (study_dir, study_dir / STORAGE_FILE):
            check_private(path, "pass another --study-dir")
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        atomic.temp_beside(study_dir / ".write-test").unlink()  # a new file, no link followed
    except OSError as exc:
        raise GalmergeError(
            f"--study-dir {study_dir}: cannot write there ({exc.strerror}); pick a writable folder"
        ) from None


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
    return settings


def _check_same_study(study: Any, settings: Mapping[str, Any], study_dir: Path) -> None:
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", dict(settings))
        return
    diff = [k for k in settings if saved.get(k) != settings[k]]
    if diff:
        k, then, now = diff[0], saved.get(diff[0]), settings[diff[0]]
        if isinstance(then, dict) and isinstance(now, dict):  # name the first differing entry
            sub = sorted(j for j in {*then, *now} if then.get(j) != now.get(j))[0]
            k, then, now = f"{k}.{sub}", then.get(sub), now.get(sub)
        raise GalmergeError(
            f"{study_dir} holds a study with other settings ({k}: {then!r} there, "
            f"{now!r} now); rerun with the same settings to resume, or use another "
            f"--study-dir"
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
            # a run's own record: the settings it predates at the values it trained with
            file_layer = with_legacy_values(file_layer)
    base_layer = deep_merge(file_layer, base_layer)
    base = resolve_config(file=base_layer)  # validates every name and value up front
    dims, fixed = resolve_space(base, space)
    if base_layer.get("target_encoder") == "separate":
        dims, fixed = _per_domain_batches(dims, fixed)
    base_layer = deep_merge(base_layer, params_layer(fixed, base))
    resolve_config(file=base_layer)  # the fixed values must be valid settings too
    check_space_values(base_layer, dims, space)

    study_dir = Path(study_dir)
    _prepare_dir(study_dir)
    _check_one_study(study_dir, storage)
    lock = contextlib.ExitStack()
    lock.enter_context(_lock_study(study_dir, storage is None))
    console = None
    if not quiet:
        from rich.console import Console

        console = Console(stderr=True)

    def say(text: str) -> None:
        if console is not None:
            console.print(text, highlight=False)

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our own line
    try:
        store, embedded = _storage(optuna, study_dir, storage)
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
        _check_same_study(study, _settings(base, score, dims, fixed, stored_guard), study_dir)
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


# --------------------------------------------------------------------------------------------
# outputs


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
        spec = str(loaded.config["target"])
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

    from galmerge import __version__

    settings = study.user_attrs.get("settings") or {}
    return {"galmerge_version": __version__, "optuna_version": optuna.__version__,
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
        lines += [f"Written {prov['created_utc']} by galmerge {prov['galmerge_version']} "
                  f"(Optuna {prov['optuna_version']}, {prov['sampler']}, {prov['pruner']}, "
                  f"study seed {prov['seed']}).", ""]
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
