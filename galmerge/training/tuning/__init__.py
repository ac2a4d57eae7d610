"""`galmerge tune`: hyperparameter search on Optuna with a label-free objective.

Each trial is one `galmerge.train` run in ``DIR/trials/NNNN`` with options drawn from the search
space (declared by the strategy and backbone records, ``core_space`` for lr, weight decay and
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

Modules: ``study`` (the study and its objective), ``space`` (search spaces), ``label_free`` (the
objective's view of a run's metrics), ``storage`` (the study folder and its database),
``outputs`` (trials.csv, best.toml, plots, report).
"""

from galmerge.training.tuning.label_free import best_index, label_free_view, score_value
from galmerge.training.tuning.outputs import spearman, trial_rows, write_outputs
from galmerge.training.tuning.space import (
    check_space_values,
    core_space,
    declared_space,
    default_params,
    params_layer,
    resolve_space,
    suggest,
)
from galmerge.training.tuning.storage import (
    BEST_TOML,
    CONFIG_ATTR,
    REPORT,
    STORAGE_FILE,
    STORAGE_RECORD,
    STUDY_NAME,
    TRIALS_CSV,
)
from galmerge.training.tuning.study import PRUNERS, SAMPLERS, queue_again, sampler_seed, tune

__all__ = [
    "BEST_TOML", "CONFIG_ATTR", "PRUNERS", "REPORT", "SAMPLERS", "STORAGE_FILE", "STORAGE_RECORD",
    "STUDY_NAME", "TRIALS_CSV", "best_index", "check_space_values", "core_space", "declared_space",
    "default_params", "label_free_view", "params_layer", "queue_again", "resolve_space",
    "sampler_seed", "score_value", "spearman", "suggest", "trial_rows", "tune", "write_outputs",
]
