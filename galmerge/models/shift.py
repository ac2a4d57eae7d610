"""Per-galaxy shift score: how far a stamp's backbone features lie from the source training set.

Fitted by ``galmerge train`` at the end of training (one feature pass over the source *training*
split with the selected checkpoint, in eval mode), stored as ``RUN_DIR/shift_stats.npz`` (plain
arrays plus a JSON ``meta`` string, read with ``allow_pickle=False``) whose SHA-256 is recorded
in summary.json (``shift_stats_sha256``) and checked on every load.

The score is a class-conditional Mahalanobis distance (Lee et al. 2018) with one covariance
shared by the classes (the pooled within-class scatter of the training features), regularised
as in probabilistic PCA: its ``k`` (<= 32) leading eigen-directions are kept and every other
eigenvalue is replaced by their mean ``sigma2`` — a shrinkage of the tail of the spectrum
towards its mean that keeps the whole feature space (what lies outside the leading directions
still counts) and needs no inverse of a rank-deficient matrix. For features ``f``::

    d2_c = sum_i ((f - mu_c) . v_i)^2 / lambda_i + (|f - mu_c|^2 - sum_i ((f - mu_c) . v_i)^2)
           / sigma2
    shift_score = sqrt(min_c d2_c / D)          (D = feature dimension)

so a typical training stamp scores about 1. ``threshold`` is the 99th percentile of the scores
of the source *validation* split (so about 1% of in-distribution stamps are flagged, as
closely as that split's size allows: with n validation stamps the flagged share of new ones
scatters around 1% by roughly sqrt(0.01 / n));
``shift_flag`` is ``shift_score > threshold``. No target data (and no label) enters the fit.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io import atomic

STATS_FILE = "shift_stats.npz"
FORMAT = "galmerge-shift-stats/1"
SCORE_COLUMN = "shift_score"
FLAG_COLUMN = "shift_flag"
SUMMARY_KEY = "shift_stats_sha256"
MAX_COMPONENTS = 32
THRESHOLD_QUANTILE = 0.99
_ARRAYS = ("means", "components", "eigenvalues", "sigma2", "threshold", "val_scores")


class FeatureMoments:
    """Streaming per-class counts, sums and one pooled second moment, about the first chunk's
    mean (``shift``: so that float32 products lose no digits to a large common mean)."""

    def __init__(self) -> None:
        self.dim = -1
        self.counts: dict[int, int] = {}
        self.sums: dict[int, np.ndarray] = {}
        self.outer: np.ndarray | None = None
        self.shift: np.ndarray | None = None

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float32)
        if self.outer is None:
            self.dim = f.shape[1]
            self.outer = np.zeros((self.dim, self.dim))
            self.shift = f.mean(axis=0)
        f = f - self.shift
        self.outer += (f.T @ f).astype(np.float64)  # a chunk's product in float32: 2x faster
        f = f.astype(np.float64)
        for c in np.unique(labels):
            rows = f[labels == c]
            key = int(c)
            self.counts[key] = self.counts.get(key, 0) + len(rows)
            self.sums[key] = self.sums.get(key, 0.0) + rows.sum(axis=0)


def fit(moments: FeatureMoments, components: int = MAX_COMPONENTS) -> dict[str, np.ndarray]:
    """Class means, leading eigen-pairs of the pooled within-class covariance and ``sigma2``."""
    if moments.outer is None or sum(moments.counts.values()) < 3:
        raise GalmergeError("the shift score needs at least 3 source training images")
    classes = sorted(moments.counts)
    n = sum(moments.counts.values())
    centred = np.stack([moments.sums[c] / moments.counts[c] for c in classes])
    scatter = moments.outer.copy()
    for c, mu in zip(classes, centred, strict=True):
        scatter -= moments.counts[c] * np.outer(mu, mu)
    cov = scatter / max(1, n - len(classes))
    cov = (cov + cov.T) / 2
    dim = cov.shape[0]
    total = max(float(np.trace(cov)), 0.0)
    floor = max(total / dim, 1e-12) * 1e-6  # a direction with no spread still gets a scale
    k = int(min(components, dim, max(1, n - len(classes))))
    evals, evecs = _leading_eigen(cov, k)
    lam = np.maximum(evals, floor)
    sigma2 = max((total - float(evals.sum())) / (dim - k) if k < dim else floor, floor)
    means = centred + moments.shift
    return {"means": means.astype(np.float32), "components": evecs.astype(np.float32),
            "eigenvalues": lam.astype(np.float32), "sigma2": np.array(sigma2, np.float64)}


def _leading_eigen(cov: np.ndarray, k: int, iterations: int = 10) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """The ``k`` largest eigenvalues (descending) and their eigenvectors of a symmetric PSD
    matrix: a full ``eigh`` for small matrices, else subspace iteration (Halko et al. 2011;
    ``k`` + 16 vectors, fixed seed) -- O(D^2 k) instead of O(D^3): a 2592-wide DeepMerge
    feature covariance in about a second instead of minutes on a busy CPU."""
    dim = cov.shape[0]
    if dim <= 4 * (k + 16):
        w, v = np.linalg.eigh(cov)
        return np.clip(w[::-1][:k], 0.0, None), v[:, ::-1][:, :k]
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((dim, k + 16)))
    for _ in range(iterations):
        q, _ = np.linalg.qr(cov @ q)
    w, u = np.linalg.eigh(q.T @ cov @ q)
    order = np.argsort(w)[::-1][:k]
    return np.clip(w[order], 0.0, None), q @ u[:, order]


def score_features(stats: dict[str, Any], features: Any) -> Any:
    """``shift_score`` of a (B, D) float tensor of features (torch, any device)."""
    import torch

    f = features.float()
    return score_tensors(f, *(torch.as_tensor(stats[k], device=f.device)
                              for k in ("means", "components", "eigenvalues")),
                         float(stats["sigma2"]))


def score_tensors(f: Any, means: Any, comps: Any, lam: Any, sigma2: float) -> Any:
    """The score from tensors (traceable: `galmerge export` puts it into the ONNX graph)."""
    import torch

    proj_f = f @ comps
    proj_mu = means @ comps
    best = None
    for c in range(means.shape[0]):
        diff = f - means[c]
        proj = proj_f - proj_mu[c]
        p2 = proj.square()
        # the part of diff outside the leading components, formed before squaring: the
        # difference |diff|^2 - |proj|^2 of two nearly equal float32 sums loses every digit when
        # the leading eigenvalues dwarf sigma2 (scores off by up to 80%)
        resid = (diff - proj @ comps.T).square().sum(1)
        d2 = (p2 / lam).sum(1) + resid / sigma2
        best = d2 if best is None else torch.minimum(best, d2)
    assert best is not None
    return (best / f.shape[1]).sqrt()


def flags(score: np.ndarray, threshold: float) -> np.ndarray:
    """``shift_flag`` of each score: 1 above ``threshold``, 0 at or below, -1 without a score."""
    return np.where(np.isfinite(score), score > float(threshold), -1).astype(np.int8)


def score_numpy(stats: dict[str, Any], features: np.ndarray) -> np.ndarray:
    import torch

    return score_features(stats, torch.from_numpy(np.asarray(features, np.float32))).numpy()


def fit_run(
    features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    train_idx: np.ndarray, val_idx: np.ndarray, out_dir: Path, checkpoint_sha256: str | None,
    chunk: int = 4096,
) -> str:
    """Fit on ``train_idx``, threshold on ``val_idx``, write ``out_dir/shift_stats.npz``;
    ``features(idx)`` gives (features, labels). Returns the file's SHA-256."""
    moments = FeatureMoments()
    for start in range(0, len(train_idx), chunk):
        f, y = features(train_idx[start : start + chunk])
        moments.add(f, y)
    stats = fit(moments)
    val = [score_numpy(stats, features(val_idx[s : s + chunk])[0])
           for s in range(0, len(val_idx), chunk)]
    val_scores = np.concatenate(val) if val else np.zeros(0, np.float32)
    if len(val_scores):
        threshold = float(np.quantile(val_scores, THRESHOLD_QUANTILE))
        how = f"{THRESHOLD_QUANTILE:g} quantile of the source validation scores"
    else:  # no validation split: the training scores are the only reference
        threshold = float(np.quantile(score_numpy(stats, features(train_idx[:chunk])[0]),
                                      THRESHOLD_QUANTILE))
        how = f"{THRESHOLD_QUANTILE:g} quantile of source training scores (no validation split)"
    meta = {"format": FORMAT, "checkpoint_sha256": checkpoint_sha256,
            "n_train": int(sum(moments.counts.values())), "n_val": int(len(val_scores)),
            "classes": sorted(moments.counts), "feature_dim": int(moments.dim),
            "components": int(stats["components"].shape[1]), "threshold_from": how}
    # nothing timed in the file: the same model gives the same bytes, so the same SHA-256
    return save(out_dir / STATS_FILE, {**stats, "threshold": np.array(threshold),
                                       "val_scores": val_scores.astype(np.float32)}, meta)


def save(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    data = buf.getvalue()
    with atomic.atomic_open(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def stats_path(model: str | Path) -> Path:
    """``shift_stats.npz`` of a run directory, or beside a checkpoint file."""
    p = Path(model)
    return (p if p.is_dir() else p.parent) / STATS_FILE


def load(model: str | Path, checkpoint_sha256: str | None,
         command: str = "classify") -> tuple[dict[str, Any] | None, str]:
    """(statistics, '') or (None, why there is no shift score) for a run directory or
    checkpoint; a file that fails its recorded SHA-256 is refused in one line (whose advice
    names ``command``: classify, or export)."""
    path = stats_path(model)
    if not path.is_file():
        why = ("its run has not finished: the statistics are fitted when training ends; "
               "resume it with galmerge train --resume"
               if (path.parent / "config.toml").is_file()
               and not (path.parent / "summary.json").is_file() else
               "trained before shift scores existed")
        return None, (f"model {model} has no {STATS_FILE} ({why}): the output has no "
                      "shift_score column")
    data = path.read_bytes()
    summary = path.parent / "summary.json"
    recorded = best_sha = None
    if summary.is_file():
        try:
            fields = json.loads(summary.read_text())
            recorded, best_sha = fields.get(SUMMARY_KEY), fields.get("best_sha256")
        except (OSError, ValueError, AttributeError):
            recorded = best_sha = None
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise GalmergeError(f"{path} is damaged: its SHA-256 does not match {SUMMARY_KEY} in "
                            f"{summary}; delete it to {command} without a shift score, or retrain")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            stats = {k: z[k] for k in z.files}
        meta = json.loads(str(stats.pop("meta")))
        missing = [k for k in _ARRAYS if k not in stats]
        if meta.get("format") != FORMAT or missing:
            raise ValueError(f"not {FORMAT}" + (f" (no {', '.join(missing)})" if missing else ""))
    except Exception as exc:  # a damaged zip (BadZipFile), a wrong array, bad JSON: one line
        raise GalmergeError(f"cannot read {path}: {exc}".splitlines()[0] + f"; delete it to "
                            f"{command} without a shift score, or retrain") from None
    if checkpoint_sha256 and meta.get("checkpoint_sha256") not in (None, checkpoint_sha256):
        if (best_sha is not None and meta.get("checkpoint_sha256") == best_sha
                and Path(model).is_file() and Path(model).name != "best.pt"):
            # fitted for the run's best.pt, and another checkpoint of it (last.pt) was passed
            return None, (f"{path} was fitted for the run's best.pt, not {model}: the output "
                          "has no shift_score column")
        return None, (f"{path} was fitted for another checkpoint than {model} (retrained or "
                      "resumed since?): the output has no shift_score column")
    stats["meta"] = {**meta, "sha256": hashlib.sha256(data).hexdigest()}
    return stats, ""


def load_with_checkpoint(model: str | Path) -> tuple[dict[str, Any] | None, str]:
    """`load` for a run directory or checkpoint, its content SHA-256 read from the checkpoint
    (what classify's inference checks against; for callers that have not loaded the model)."""
    from galmerge.models.model import read_checkpoint

    recorded = read_checkpoint(model).get("sha256")
    return load(model, recorded if isinstance(recorded, str) else None)
