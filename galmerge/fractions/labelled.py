"""A labelled sample of the survey for `galmerge fraction --labels`: read it, match it to the
classify output's rows by an identifier column, and return each matched row's 0/1 label.

The file (CSV, FITS or Parquet) needs an identifier column also present in the classify output
(``--id-col``, else the first of `galmerge.io.columns.ID_NAMES` both have) and a
label column (``--label-col``, default ``merger``) of 0/1 values (``true``/``false``, ``yes``/
``no`` too; blank: not labelled). The labelled rows must be a random sample of the survey rows
for the ``ppi`` estimator (`galmerge.fractions.estimators`) to be unbiased; nothing here can
check that.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io.columns import ID_NAMES, find_column

DEFAULT_LABEL_COLUMN = "merger"
_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n"}


@dataclass
class Labels:
    """The labelled sample: identifier (as text) -> 0/1, and where it came from."""

    path: str
    id_column: str  # in the labels file
    label_column: str
    by_id: dict[str, int]
    result_id_column: str  # the same identifier in the classify output


def id_text(value: Any) -> str:
    """An identifier as text, equal across formats: 1587, 1587.0 and b"1587" all read "1587"."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float | np.floating):
        if math.isfinite(value) and float(value).is_integer():
            return str(int(value))
        return "" if not math.isfinite(value) else repr(float(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    return str(value).strip()


def _label(value: Any, path: Path, column: str) -> int | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    text = str(value).strip().lower()
    if text in ("", "nan", "none", "null"):
        return None
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise GalmergeError(f"{path}: label column '{column}' has the value {value!r}; labels must "
                        "be 0/1 (or true/false), blank for an unlabelled row")


def pick_id_column(label_columns: list[str], result_columns: list[str], id_col: str | None,
                   path: Path) -> tuple[str, str]:
    """The identifier column of each file (names compared case-insensitively): ``id_col`` or
    the first catalog id name both have."""
    if id_col is not None:
        found = []
        for where, columns in ((path, label_columns), ("the results", result_columns)):
            name = find_column(columns, id_col)
            if name is None:
                raise GalmergeError(f"--id-col {id_col}: no such column in {where} (columns: "
                                    f"{', '.join(columns[:20])})")
            found.append(name)
        return found[0], found[1]
    for name in ID_NAMES:
        a, b = find_column(label_columns, name), find_column(result_columns, name)
        if a is not None and b is not None:
            return a, b
    raise GalmergeError(f"{path} and the results share no identifier column ({', '.join(ID_NAMES)}); "
                        "name it with --id-col")


def read_labels(path: str | os.PathLike[str], result_columns: list[str], *,
                id_col: str | None = None,
                label_col: str = DEFAULT_LABEL_COLUMN) -> Labels:  # fmt: skip
    """The labelled sample of ``path``; one-line errors for every problem of the file."""
    from galmerge.fractions.report import output_columns

    p = Path(path)
    if not p.is_file():
        raise GalmergeError(f"--labels {p}: no such file; pass a CSV, FITS or Parquet table "
                            "of identifiers and 0/1 merger labels")
    columns, get = output_columns(p)
    found = find_column(columns, label_col)
    if found is None:
        raise GalmergeError(f"{p} has no label column '{label_col}' (columns: "
                            f"{', '.join(columns[:20])}); name it with --label-col")
    label_col = found
    id_column, result_id_column = pick_id_column(columns, result_columns, id_col, p)
    by_id: dict[str, int] = {}
    for raw_id, raw_label in zip(get(id_column, exact=True), get(label_col), strict=True):
        key = id_text(raw_id)
        label = _label(raw_label, p, label_col)
        if label is None or key == "":
            continue
        if by_id.setdefault(key, label) != label:
            raise GalmergeError(f"{p}: identifier {key} is labelled both 0 and 1; keep one "
                                "label per galaxy")
    if not by_id:
        raise GalmergeError(f"{p}: no row has both an identifier and a 0/1 label in "
                            f"'{label_col}'")
    return Labels(str(p), id_column, label_col, by_id, result_id_column)


def match(labels: Labels, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(mask of the rows with a label, their 0/1 labels, how many distinct labelled identifiers
    matched) for the rows' identifiers ``ids``."""
    keys = [id_text(v) for v in ids]
    mask = np.array([k in labels.by_id for k in keys], dtype=bool)
    found = [k for k, m in zip(keys, mask, strict=True) if m]
    y = np.array([labels.by_id[k] for k in found], dtype=np.int64)
    return mask, y, len(set(found))


MIN_THRESHOLD_ROWS = 10


def decision_threshold(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The ``p_merger`` threshold at which a Platt fit on the labelled rows (``p`` the model's
    own probabilities, ``y`` their 0/1 labels) gives 0.5: ``classify --threshold`` with it calls
    a merger where the survey-calibrated probability is at least 0.5. A model adapted to a
    balanced source calls too many mergers on a survey with few of them, and Bayes' rule with
    the survey's prior does not fix that (its probabilities are miscalibrated there beyond the
    prior; benchmarks/results/threshold_ceiling36_*.md); without labels, `classify --prior F`
    with the match rule does (`galmerge.fractions.prior`). ``threshold`` is None, with a ``reason``,
    for fewer than `MIN_THRESHOLD_ROWS` rows, one class only, or a fit that does not rise."""
    from galmerge.fractions.estimators import logit, platt_fit, sigmoid

    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    out: dict[str, Any] = {"n": int(len(y)), "mergers": int(y.sum()), "a": None, "b": None,
                           "threshold": None, "reason": None}
    if len(y) < MIN_THRESHOLD_ROWS or y.min() == y.max():
        out["reason"] = (f"needs at least {MIN_THRESHOLD_ROWS} labelled rows with both classes "
                         f"({out['n']} rows, {out['mergers']} mergers)")
        return out
    a, b = (float(v[0]) for v in platt_fit(logit(p), y))
    out.update(a=a, b=b)
    if not a > 0:
        out["reason"] = ("on the labelled rows p_merger does not rise with the label (Platt "
                         f"slope {a:.3g}): no threshold of this model's p_merger separates them")
        return out
    out["threshold"] = float(sigmoid(-b / a))
    return out
