"""The only view of a run's metrics that a `galmerge tune` objective may read: epoch, source
validation columns and label-free scores. Target columns and the oracle are not in it, so
target labels cannot reach the sampler or the pruner."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from galmerge.scores import selection

# The only metrics columns the objective may read (target columns and the oracle are not here).
LABEL_FREE_COLUMNS = ("epoch", "source_val_loss", "source_val_accuracy")


LABEL_FREE_PREFIXES = ("score_", "loss_")


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
