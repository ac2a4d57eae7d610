"""Best checkpoint and early stopping: two settings, each a name from ``selection.DIRECTIONS``.

``select_by`` decides which epoch's weights become best.pt; ``stop_by`` (default: the same name)
feeds the early-stopping rule:

- ``"patience"`` (default): stop after ``patience`` epochs in a row without a new best stop_by
  value.
- ``"deepmerge"``: DeepMerge II's graded counter (``galaxy_utils.EarlyStopping`` in
  github.com/AleksCipri/DeepMergeDomainAdaptation): a value at least 0.4 / 0.3 / 0.2 / 0.1 worse
  than the best so far adds 1 / 0.5 / 0.25 / 0.1; a better one becomes the best; the counter
  never resets; stop once it exceeds ``patience``. There the value is the cross-entropy of one
  random 64-image source validation batch per epoch (``stop_by = "source_val_batch_loss"``).

``patience = 0`` turns early stopping off under both rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from galmerge.scores import selection
from galmerge.training.state import Best

RULES = ("patience", "deepmerge")
# (how much worse than the best, counter increment), largest first
GRADES = ((0.4, 1.0), (0.3, 0.5), (0.2, 0.25), (0.1, 0.1))


def graded_increment(value: float, best: float, direction: str) -> float:
    """DeepMerge II's counter increment for ``value`` against ``best`` (0 when not worse)."""
    worse = value - best if direction == "min" else best - value
    for threshold, step in GRADES:
        if worse >= threshold:
            return step
    return 0.0


def update_selection(best: Best, row: Mapping[str, Any], select_by: str) -> bool:
    """Take this epoch's row; True when its weights become the new best.pt."""
    value = selection.row_value(row, select_by)
    if not selection.better(select_by, value, best.value):
        return False
    best.value, best.epoch = value, int(row["epoch"])
    return True


def update_stopping(
    best: Best, row: Mapping[str, Any], stop_by: str, rule: str, patience: int
) -> bool:
    """Take this epoch's row; True when training should stop now."""
    value = selection.row_value(row, stop_by)
    improved = selection.better(stop_by, value, best.stop_value)
    if rule == "deepmerge":
        if improved:
            best.stop_value = value
        elif math.isfinite(value):
            best.counter += graded_increment(value, best.stop_value, selection.DIRECTIONS[stop_by])
        best.stopped = patience > 0 and best.counter > patience
    else:
        if improved:
            best.stop_value, best.bad_epochs = value, 0
        else:
            best.bad_epochs += 1
        best.stopped = patience > 0 and best.bad_epochs >= patience
    return best.stopped


def deepmerge_counter(values: list[float], patience: int, direction: str = "min") -> list[float]:
    """The graded counter after each value of a sequence (for reading and testing the rule)."""
    best, name = Best(), "source_val_batch_loss" if direction == "min" else "source_val_accuracy"
    out = []
    for epoch, v in enumerate(values, start=1):
        update_stopping(best, {"epoch": epoch, name: v}, name,
                        "deepmerge", patience)
        out.append(best.counter)
    return out
