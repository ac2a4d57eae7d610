"""Temperature scaling (Guo et al. 2017) fitted on the source validation split, and ECE."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15
# A model whose source logits carry no information drives the optimum T to infinity; a
# bounded range keeps the stored temperature meaningful (T = 100 already means p ~ 0.5).
T_MIN, T_MAX = 0.01, 100.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200,
                    weights: np.ndarray | torch.Tensor | None = None) -> float:
    """The T in [0.01, 100] minimising the NLL of ``softmax(logits / T)`` (LBFGS on log T),
    weighted per row by ``weights`` if given (importance-weighted calibration, Wang et al.
    2020); 1.0 when there are no labels or nothing beats T = 1."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    keep = labels >= 0
    z, y = logits[keep].double(), labels[keep]
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)[keep]
    if len(y) == 0 or (w is not None and not float(w.sum()) > 0):
        return 1.0
    # optimising log T keeps T positive without constraints
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _weighted_ce(z / log_t.exp(), y, w)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if math.isfinite(t):
        t = min(max(t, T_MIN), T_MAX)
    if not math.isfinite(t) or nll(z, y, t, w) > nll(z, y, 1.0, w):
        return 1.0  # never return a temperature worse than none at all
    return t


def _weighted_ce(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    if w is None:
        return F.cross_entropy(z, y)
    return (F.cross_entropy(z, y, reduction="none") * w).sum() / w.sum()


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
        weights: np.ndarray | torch.Tensor | None = None) -> float:
    """Mean (optionally ``weights``-weighted) negative log-likelihood of the labelled rows at
    temperature ``temperature``."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    keep = labels >= 0
    if not bool(keep.any()):
        return math.nan
    w = None
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        w = w[keep] if len(w) == len(keep) else w
    return float(_weighted_ce(logits[keep].double() / temperature, labels[keep], w))


def reliability(
    p_merger: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Per-bin confidence, accuracy and count for the predicted class (top-label calibration)."""
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(p_merger, dtype=np.float64)
    keep = y >= 0
    y, p = y[keep], p[keep]
    pred = (p >= 0.5).astype(np.int64)
    conf = np.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def expected_calibration_error(
    p_merger: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: count-weighted mean |accuracy - confidence| over confidence bins (NaN if no labels)."""
    r = reliability(p_merger, labels, bins)
    total = r["count"].sum()
    if total == 0:
        return math.nan
    used = r["count"] > 0
    gap = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float((gap * r["count"][used]).sum() / total)
