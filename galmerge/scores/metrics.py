"""Binary classification metrics with merger (label 1) as the positive class."""

from __future__ import annotations

import math

import numpy as np

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "brier", "auc")


def binary_metrics(labels: np.ndarray, p_merger: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """accuracy, precision, recall, F1, Brier score and ROC AUC (NaN where undefined)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(p_merger, dtype=np.float64)
    keep = y >= 0
    y, p = y[keep], p[keep]
    if len(y) == 0:
        return {name: math.nan for name in METRIC_NAMES}
    pred = (p >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan
    return {
        "accuracy": float((pred == y).mean()),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "brier": float(np.mean((p - y) ** 2)),
        "auc": auc,
    }
