"""Merger fractions of a classified survey, corrected for the classifier's errors and for the
difference between the training set's merger fraction and the survey's (prior shift).

Four estimators of the fraction ``pi`` of mergers among the target rows, side by side:

``naive``  classify and count: the fraction of rows with ``p_merger >= threshold``. Biased
           whenever the classifier makes errors: it estimates ``tpr * pi + fpr * (1 - pi)``.
``acc``    adjusted classify and count (Forman 2008): ``(q - fpr) / (tpr - fpr)`` with ``q``
           the naive fraction and the true/false positive rates measured on the *source*
           validation split. Assumes label shift: the classifier's error rates on the survey
           equal those on the source (p(x | class) unchanged); exact in expectation then.
``em``     the prior adjustment of Saerens, Latinne & Decaestecker (2002): EM on the survey's
           posteriors for the prior that maximises their likelihood. The posteriors are first
           recalibrated on the source validation split (Platt scaling of logit p_merger,
           i.e. bias-corrected temperature scaling; Alexandari et al. 2020), so the source
           prior they carry is that split's merger fraction. Assumes label shift and that the
           recalibrated posteriors are calibrated on the survey's galaxies too.
``bbse``   black-box shift estimation (Lipton, Wang & Smola 2018) with the soft confusion
           matrix: ``w = C^-1 mu`` with ``C[i, j] = E_source[p_i(x) 1{y = j}]`` and ``mu`` the
           survey's mean prediction. Same label-shift assumption as ``acc``; with hard
           predictions and two classes BBSE *is* ACC, so the soft form is the one shown.

With a labelled sample of the survey itself (``galmerge fraction --labels FILE``: e.g. a few
hundred galaxies classified by eye, drawn at random from the survey rows), a fifth:

``ppi``    prediction-powered inference (Angelopoulos et al. 2023), power-tuned as PPI++
           (Angelopoulos, Duchi & Zrnic 2023): ``ybar_n + lam * (pbar_N - pbar_n)``, the
           labelled sample's merger fraction corrected by the classifier's mean ``p_merger``
           over all N survey rows against its mean over the n labelled ones, with ``lam =
           cov_n(y, p) / ((1 + n / N) var_n(p))`` clipped to [0, 1] (0: the labelled fraction
           alone; 1: plain PPI). Unbiased whatever the domain shift, because the labels are the
           survey's own; it assumes only that the labelled rows are a random sample of the
           survey rows (of the bin, with ``--by``) and that their labels are right. The
           classifier narrows the interval by how well it ranks the survey's galaxies. A
           sample of one class only (no labelled merger) widens the interval to the exact
           binomial one of its fraction, which the bootstrap cannot see.

Every estimate is clipped to [0, 1]. Intervals are percentile bootstrap intervals (68%:
16th-84th, 95%: 2.5th-97.5th percentile) that resample the survey rows *and* the source
validation images, so the uncertainty of the error rates and of the calibration is inside.
None of them can correct for a domain shift that changes the error rates (or calibration)
between source and survey: that bias is not in any interval.

Pure numpy; the survey rows enter the bootstrap as counts per fine bin of logit(p) (multinomial
resampling of 4096 bins), so the cost does not grow with the survey's size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError

ESTIMATORS = ("naive", "acc", "em", "bbse")
CORRECTED = ("acc", "em", "bbse")
#: the estimator a labelled sample of the survey adds (``estimate(..., labelled=...)``)
LABELLED = "ppi"
MIN_LABELLED = 10  # fewer labelled rows (in a bin): ppi is undefined there
VAR_EPS = 1e-12  # p_merger varying less over the labelled rows: no information (lambda 0)
#: the estimator `recommended` names when it is defined (see `recommend`)
DEFAULT_RECOMMENDED = "em"
P_EPS = 1e-6  # p_merger is clipped to [eps, 1 - eps] before taking logits
LOGIT_BINS = 4096
LOGIT_RANGE = math.log((1 - P_EPS) / P_EPS)
MIN_SEPARATION = 0.05  # tpr - fpr (or e1 - e0) below this: acc/bbse are undefined
BOOT_CHUNK = 100  # bootstrap replicates computed at once (memory: chunk x validation size)


# --------------------------------------------------------------------------------------------
# point estimators (also the building blocks of the bootstrap)


def classify_and_count(p: np.ndarray, threshold: float = 0.5) -> float:
    """The naive estimate: fraction of rows with ``p >= threshold``."""
    p = np.asarray(p, dtype=np.float64)
    return float((p >= threshold).mean()) if len(p) else math.nan


def adjusted_count(q: Any, tpr: Any, fpr: Any) -> Any:
    """ACC: ``(q - fpr) / (tpr - fpr)`` clipped to [0, 1]; NaN where ``tpr - fpr`` is below
    `MIN_SEPARATION` (the classifier does not separate the classes on the source)."""
    q, tpr, fpr = (np.asarray(v, dtype=np.float64) for v in (q, tpr, fpr))
    sep = tpr - fpr
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(sep >= MIN_SEPARATION, np.clip((q - fpr) / sep, 0.0, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def power_tuning(p_lab: Any, y_lab: Any, n_all: int) -> Any:
    """The PPI++ weight ``lam = cov(y, p) / ((1 + n / N) var(p))``, clipped to [0, 1] (0 where p
    hardly varies over the labelled rows), for labelled rows (n,) or B replicates (B, n)."""
    p2 = np.atleast_2d(np.asarray(p_lab, dtype=np.float64))
    y2 = np.atleast_2d(np.asarray(y_lab, dtype=np.float64))
    n = p2.shape[1]
    if n < 2:
        lam = np.zeros(p2.shape[0])
    else:
        cov = ((p2 - p2.mean(1, keepdims=True)) * (y2 - y2.mean(1, keepdims=True))).sum(1) / (n - 1)
        var = p2.var(1, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            lam = np.clip(np.where(var > VAR_EPS, cov / ((1 + n / n_all) * var), 0.0), 0.0, 1.0)
    return float(lam[0]) if np.ndim(p_lab) == 1 else lam


def ppi_fraction(pbar_all: Any, p_lab: np.ndarray, y_lab: np.ndarray,
                 n_all: int) -> np.ndarray:
    """Power-tuned prediction-powered estimate (PPI++) of the merger fraction for B replicates
    at once: ``pbar_all`` (B,) the mean p over the N survey rows, ``p_lab``/``y_lab`` (B, n) the
    labelled rows' p and 0/1 labels. Clipped to [0, 1]."""
    p_lab = np.atleast_2d(np.asarray(p_lab, dtype=np.float64))
    y_lab = np.atleast_2d(np.asarray(y_lab, dtype=np.float64))
    lam = power_tuning(p_lab, y_lab, n_all)
    return np.clip(y_lab.mean(1) + lam * (np.asarray(pbar_all, np.float64) - p_lab.mean(1)),
                   0.0, 1.0)


def bbse(mu: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """Black-box shift estimation: the target class prior from the source *joint* confusion
    matrix ``joint[i, j] = P_source(prediction i, class j)`` (hard or soft predictions) and the
    target's mean prediction ``mu[i]``. Returns the target prior per class (clipped at 0 and
    renormalised); raises ValueError for a singular confusion matrix."""
    joint = np.asarray(joint, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    source_prior = joint.sum(axis=0)
    if np.linalg.cond(joint) > 1e12:
        raise ValueError("the confusion matrix is singular: the classifier does not separate "
                         "the classes")
    w = np.linalg.solve(joint, mu)
    prior = np.clip(w * source_prior, 0.0, None)
    total = prior.sum()
    return prior / total if total > 0 else np.full_like(prior, np.nan)


def soft_bbse(mean_p: Any, e1: Any, e0: Any) -> Any:
    """Binary soft BBSE in closed form: ``(mean_p - e0) / (e1 - e0)`` clipped to [0, 1], with
    ``e1``/``e0`` the mean p_merger of source mergers/non-mergers (equal to `bbse` with the
    soft joint confusion matrix); NaN where ``e1 - e0 < MIN_SEPARATION``."""
    return adjusted_count(mean_p, e1, e0)


def em_prior(p: np.ndarray, source_prior: float, weights: np.ndarray | None = None,
             tol: float = 1e-10, max_iter: int = 10_000) -> float:
    """Saerens et al. (2002): posteriors ``p`` calibrated under ``source_prior``; iterate
    ``p' = r p / (r p + s (1 - p))`` with ``r = pi / source_prior``, ``s = (1 - pi) / (1 -
    source_prior)``, and ``pi = mean(p')`` until it stops moving. Returns pi."""
    p = np.clip(np.asarray(p, dtype=np.float64), P_EPS, 1 - P_EPS)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    _check_prior(source_prior)
    pi = float(np.average(p, weights=w))
    for _ in range(max_iter):
        a = pi / source_prior * p
        b = (1 - pi) / (1 - source_prior) * (1 - p)
        new = float(np.average(a / (a + b), weights=w))
        if abs(new - pi) < tol:
            return new
        pi = new
    return pi


def ml_prior(p: np.ndarray, source_prior: Any, weights: np.ndarray | None = None,
             iterations: int = 60) -> np.ndarray:
    """The maximum-likelihood target prior, the fixed point `em_prior` converges to, found by
    bisection on the (monotone) score; vectorised: ``p`` and ``weights`` are (B, n) or (n,),
    ``source_prior`` scalar or (B,). Much faster than EM when the prior is near 0 (EM crawls)."""
    p = np.atleast_2d(np.clip(np.asarray(p, dtype=np.float64), P_EPS, 1 - P_EPS))
    w = np.ones_like(p) if weights is None else np.broadcast_to(np.atleast_2d(weights), p.shape)
    ps = np.broadcast_to(np.asarray(source_prior, dtype=np.float64), (p.shape[0],))[:, None]
    # likelihood ratio p(x | merger) / p(x | non-merger) up to a constant
    with np.errstate(invalid="ignore", divide="ignore"):
        lr = p / (1 - p) * (1 - ps) / ps
    d = lr - 1.0
    total = w.sum(axis=1)

    def score(pi: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):  # degenerate resamples: NaN
            return (w * d / (1.0 + pi[:, None] * d)).sum(axis=1) / total

    lo = np.zeros(p.shape[0])
    hi = np.ones(p.shape[0])
    out = np.empty(p.shape[0])
    at0 = score(lo) <= 0  # likelihood decreasing from pi = 0: the maximum is at 0
    at1 = score(hi) >= 0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        up = score(mid) > 0
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    out[:] = 0.5 * (lo + hi)
    out[at0] = 0.0
    out[at1 & ~at0] = 1.0
    return out


def platt_fit(s: np.ndarray, y: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Platt scaling ``p = sigmoid(a s + b)`` by Newton's method with step halving and Platt's
    smoothed targets (finite even for separable data); ``s`` and ``y`` (0/1) are (B, n) or
    (n,). Returns a, b of shape (B,)."""
    s = np.atleast_2d(np.asarray(s, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    n1 = y.sum(axis=1, keepdims=True)
    n0 = y.shape[1] - n1
    t = np.where(y > 0, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))

    def loss(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        z = a[:, None] * s + b[:, None]
        # cross-entropy with soft targets, in a form that never overflows
        return (np.logaddexp(0, z) - t * z).sum(1)

    a = np.ones(s.shape[0])  # identity: p_merger already calibrated
    b = np.zeros(s.shape[0])
    current = loss(a, b)
    for _ in range(iterations):
        q = sigmoid(a[:, None] * s + b[:, None])
        r = q - t
        v = q * (1 - q) + 1e-12
        ga, gb = (r * s).sum(1), r.sum(1)
        haa, hab, hbb = (v * s * s).sum(1) + 1e-9, (v * s).sum(1), v.sum(1) + 1e-9
        det = haa * hbb - hab * hab
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        active = (np.abs(da) > 1e-9) | (np.abs(db) > 1e-9)
        if not active.any():
            break
        scale = np.ones_like(a)
        todo = active.copy()
        for _ in range(30):  # halve the Newton step until the loss does not go up
            trial = loss(a - scale * da, b - scale * db)
            better = trial <= current + 1e-12 * np.abs(current)
            done = todo & better
            a = np.where(done, a - scale * da, a)
            b = np.where(done, b - scale * db, b)
            current = np.where(done, trial, current)
            todo &= ~better
            if not todo.any():
                break
            scale = np.where(todo, scale / 2, scale)
    return a, b


def _check_prior(prior: float) -> None:
    if not 0 < prior < 1:
        raise GalmergeError(f"the source merger fraction is {prior}; the estimators need "
                            "labelled mergers and non-mergers in the source validation split")


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), P_EPS, 1 - P_EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(z, -40, 40)))


# --------------------------------------------------------------------------------------------
# the validation statistics and the estimate with bootstrap intervals


@dataclass
class Validation:
    """The source validation split as the survey's classify output would have scored it:
    ``p`` = p_merger at the checkpoint's temperature, ``labels`` 0/1."""

    p: np.ndarray
    labels: np.ndarray
    train_prior: float = math.nan  # merger fraction of the source training split
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.p = np.asarray(self.p, dtype=np.float64)
        self.labels = np.asarray(self.labels).astype(np.int64)
        keep = (self.labels >= 0) & np.isfinite(self.p)
        self.p, self.labels = self.p[keep], self.labels[keep]
        n1 = int(self.labels.sum())
        if n1 == 0 or n1 == len(self.labels):
            raise GalmergeError(
                f"the source validation split has {n1} mergers among {len(self.labels)} "
                "labelled images; the error rates need both classes (train on more source data)"
            )


def _intervals(draws: np.ndarray) -> dict[str, list[float] | None]:
    d = draws[np.isfinite(draws)]
    if len(d) < max(10, 0.5 * len(draws)):  # undefined in most resamples: no honest interval
        return {"ci68": None, "ci95": None}
    lo68, hi68, lo95, hi95 = np.percentile(d, [16, 84, 2.5, 97.5])
    return {"ci68": [float(lo68), float(hi68)], "ci95": [float(lo95), float(hi95)]}


def _compress(p: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         np.ndarray]:
    """Survey rows as counts per (hard class, fine logit bin): counts, mean p, mean logit p and
    the hard class of each non-empty bin."""
    s = logit(p)
    hard = (p >= threshold).astype(np.int64)
    edges = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, LOGIT_BINS + 1)
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, LOGIT_BINS - 1)
    key = hard * LOGIT_BINS + which
    uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    mean_p = np.bincount(inv, weights=p) / counts
    mean_s = np.bincount(inv, weights=s) / counts
    return counts.astype(np.float64), mean_p, mean_s, (uniq >= LOGIT_BINS).astype(np.float64)


def _estimates(q: np.ndarray, mean_p: np.ndarray, tw_s: np.ndarray, tw: np.ndarray,
               vp: np.ndarray, vy: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """All four estimators for B replicates at once. ``q``/``mean_p``: (B,) survey hard-positive
    fraction and mean p; ``tw_s``/``tw``: survey logits (K,) and weights (B, K); ``vp``/``vy``:
    validation p and labels (B, m)."""
    vy = vy.astype(np.float64)
    n1 = vy.sum(1)
    n0 = vy.shape[1] - n1
    hard = (vp >= threshold).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (hard * vy).sum(1) / n1
        fpr = (hard * (1 - vy)).sum(1) / n0
        e1 = (vp * vy).sum(1) / n1
        e0 = (vp * (1 - vy)).sum(1) / n0
    a, b = platt_fit(logit(vp), vy)
    # Platt's smoothed targets make the fit calibrated for a softened label that is a merger
    # with probability c1 for a merger and c0 for a non-merger, whose prior is mean(t), not
    # n1/m: EM runs in that label's terms, then maps back (exact with no shift).
    c1, c0 = (n1 + 1) / (n1 + 2), 1 / (n0 + 2)
    cal = sigmoid(a[:, None] * tw_s[None, :] + b[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        soft = ml_prior(cal, (n1 * c1 + n0 * c0) / vy.shape[1], tw)
        em = np.clip((soft - c0) / (c1 - c0), 0.0, 1.0)
    degenerate = (n1 == 0) | (n0 == 0)  # a resample without one class: nothing to learn from
    em[degenerate] = np.nan
    with np.errstate(invalid="ignore"):  # a model that does not separate the classes: the
        # likelihood is flat and EM runs to a boundary (0 or 1), as undefined as acc and bbse
        em[~(e1 - e0 >= MIN_SEPARATION)] = np.nan
    return {
        "naive": q,
        "acc": adjusted_count(q, tpr, fpr),
        "em": em,
        "bbse": soft_bbse(mean_p, e1, e0),
    }


def estimate(p: np.ndarray, validation: Validation, threshold: float = 0.5,
             n_boot: int = 1000, seed: int = 0,
             labelled: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """The four estimates with 68%/95% bootstrap intervals for survey probabilities ``p``;
    with ``labelled`` = (p, 0/1 labels) of a random labelled sample of these survey rows, also
    ``ppi`` (the bootstrap then resamples the labelled rows too, and the recommended estimator
    is ``ppi`` where it is defined).

    Returns ``{"estimators": {name: {"fraction", "ci68", "ci95"}}, "recommended": name, "n",
    "validation": {...}}`` (and ``"labelled": {"n", "merger_fraction", "lambda"}``); a fraction
    or interval is None where the estimator is undefined.
    """
    p = np.asarray(p, dtype=np.float64)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        raise GalmergeError("no rows with a p_merger to estimate a fraction from")
    if not 0 < threshold < 1:
        raise GalmergeError(f"--threshold must be between 0 and 1, got {threshold}")
    counts, mean_p, mean_s, hard = _compress(p, threshold)
    n = int(counts.sum())
    vp, vy = validation.p, validation.labels
    # point estimates: the full survey and validation set (exact, not binned, where cheap)
    point = _estimates(
        np.array([float((p >= threshold).mean())]), np.array([float(p.mean())]), mean_s,
        counts[None, :], vp[None, :], vy[None, :], threshold)
    lab_p = lab_y = None
    if labelled is not None:
        lab_p = np.asarray(labelled[0], dtype=np.float64)
        lab_y = np.asarray(labelled[1], dtype=np.float64)
        keep = np.isfinite(lab_p)
        lab_p, lab_y = lab_p[keep], lab_y[keep]
        if len(lab_p) >= MIN_LABELLED:
            point[LABELLED] = ppi_fraction(np.array([float(p.mean())]), lab_p[None, :],
                                           lab_y[None, :], n)
        else:
            point[LABELLED] = np.array([np.nan])
    names = ESTIMATORS + ((LABELLED,) if labelled is not None else ())
    draws: dict[str, list[np.ndarray]] = {k: [] for k in names}
    rng = np.random.default_rng(seed)
    # the labelled rows' own stream: the other estimators' draws stay those of a run without
    rng_lab = np.random.default_rng([seed, 1])
    freq = counts / n
    m = len(vy)
    for start in range(0, n_boot, BOOT_CHUNK):
        b = min(BOOT_CHUNK, n_boot - start)
        tw = rng.multinomial(n, freq, size=b).astype(np.float64)
        q = (tw * hard).sum(1) / n
        mp = (tw * mean_p).sum(1) / n
        idx = rng.integers(0, m, size=(b, m))
        est = _estimates(q, mp, mean_s, tw, vp[idx], vy[idx], threshold)
        if lab_p is not None:
            nl = len(lab_p)
            if nl >= MIN_LABELLED:
                li = rng_lab.integers(0, nl, size=(b, nl))
                est[LABELLED] = ppi_fraction(mp, lab_p[li], lab_y[li], n)
            else:
                est[LABELLED] = np.full(b, np.nan)
        for k in names:
            draws[k].append(est[k])
    estimators: dict[str, dict[str, Any]] = {}
    for k in names:
        value = float(point[k][0])
        entry: dict[str, Any] = {"fraction": value if math.isfinite(value) else None}
        if n_boot > 0:
            entry.update(_intervals(np.concatenate(draws[k])))
        else:
            entry.update({"ci68": None, "ci95": None})
        if entry["fraction"] is None:
            entry.update({"ci68": None, "ci95": None})
        elif k == LABELLED and entry["ci95"] is not None and lab_y is not None:
            _widen_for_one_class(entry, lab_y)
        estimators[k] = entry
    hard_v = vp >= threshold
    out: dict[str, Any] = {
        "estimators": estimators,
        "recommended": recommend(estimators),
        "n": n,
        "validation": {
            "n": int(m),
            "merger_fraction": float(vy.mean()),
            "tpr": float(hard_v[vy == 1].mean()),
            "fpr": float(hard_v[vy == 0].mean()),
        },
    }
    if lab_p is not None and lab_y is not None:
        out["labelled"] = {
            "n": len(lab_p),
            "merger_fraction": float(lab_y.mean()) if len(lab_y) else None,
            "lambda": power_tuning(lab_p, lab_y, n) if len(lab_p) >= MIN_LABELLED else None,
        }
    return out


def _widen_for_one_class(entry: dict[str, Any], y: np.ndarray) -> None:
    """A labelled sample of one class only (no merger among n, or no non-merger) gives every
    bootstrap resample the same fraction, so the percentile interval shrinks to a point. Widen
    each interval to cover the exact binomial (Clopper-Pearson) interval of the sample's own
    fraction, which has a closed form there: [0, 1 - (a/2)^(1/n)] for no merger at level 1 - a
    (the "rule of three" for 95%), its mirror for no non-merger. Written out because that is all
    it takes (no beta quantiles needed). Found where the 50-galaxy labelled samples of 3 of 20
    renders at a 5% fraction held no merger and the bootstrap interval missed the truth for
    each of the 6 models read on them (benchmarks/results/fraction_ppi34_labels50.md)."""
    n, k = len(y), int(round(float(np.sum(y))))
    if n == 0 or 0 < k < n:
        return
    for key, alpha in (("ci68", 0.32), ("ci95", 0.05)):
        bound = 1.0 - (alpha / 2) ** (1.0 / n)
        lo, hi = entry[key]
        entry[key] = [lo, max(hi, bound)] if k == 0 else [min(lo, 1.0 - bound), hi]


def recommend(estimators: Mapping[str, Mapping[str, Any]]) -> str:
    """``ppi`` when a labelled sample gave it a value, else `DEFAULT_RECOMMENDED` when it has
    one, else the first defined of acc, bbse, naive."""
    for name in (LABELLED, DEFAULT_RECOMMENDED, "acc", "bbse"):
        if estimators.get(name, {}).get("fraction") is not None:
            return name
    return "naive"


def prior_shift(p: np.ndarray, new_prior: float, old_prior: float) -> np.ndarray:
    """Bayes' rule for a new class prior: posteriors ``p`` made under ``old_prior`` rescaled to
    ``new_prior`` (Saerens et al. 2002, eq. 2.4)."""
    p = np.asarray(p, dtype=np.float64)
    a = new_prior / old_prior * p
    b = (1 - new_prior) / (1 - old_prior) * (1 - p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return a / (a + b)


def matched_prior(p: np.ndarray, new_prior: float) -> float:
    """The prior ``q`` the probabilities ``p`` carry on this sample if the sample's merger
    fraction is ``new_prior``: the ``q`` for which ``mean(prior_shift(clip(p), new_prior, q))``
    equals ``new_prior``, ``clip`` to [P_EPS, 1 - P_EPS] (a classify CSV writes p_merger above
    1 - 5e-7 as exactly 1, which no offset would move). `prior_shift` from ``q`` is then one logit
    offset fitted on the sample, so it absorbs a model whose probabilities are off on the survey
    by more than the class prior (an adapted model calling too many galaxies mergers) where
    Bayes' rule from the training prior keeps that error. For a calibrated model under pure
    label shift ``q`` is the training prior up to sampling noise (the mean posterior equals the
    prior). ``p`` must be finite and non-empty. ``q`` lies in [P_EPS, 1 - P_EPS] (up to rounding):
    with every clipped logit within LOGIT_RANGE, so is the offset of ``logit(new_prior)``."""
    from scipy.optimize import brentq
    from scipy.special import expit

    z = logit(p).ravel()
    target = float(new_prior)
    if z.size == 0 or not np.isfinite(z).all() or not 0 < target < 1:
        raise ValueError("matched_prior needs finite probabilities and a prior in (0, 1)")
    prior_logit = math.log(target / (1 - target))

    # mean(sigmoid(z + b)) rises with the offset b, so the root is unique; with |z| <=
    # LOGIT_RANGE it lies within LOGIT_RANGE of prior_logit (one more either side so that
    # rounding at a bracket end, all rows saturated, cannot hide the sign change)
    def excess(b: float) -> float:
        return float(expit(z + b).mean()) - target

    reach = LOGIT_RANGE + 1
    b = brentq(excess, prior_logit - reach, prior_logit + reach, xtol=1e-12, rtol=1e-12,
               maxiter=500)
    # prior_shift(p, new, q) = sigmoid(logit(p) + logit(new) - logit(q)): logit(q) = logit(new) - b
    return float(expit(prior_logit - b))


# --------------------------------------------------------------------------------------------
# is label shift plausible at all?

GRID = np.linspace(0.0, 1.0, 401)  # merger fractions tried by the minimum-distance fit


def _ks_to_mixture(t_cdf: np.ndarray, f1: np.ndarray, f0: np.ndarray) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """min over pi of sup_x |F_t(x) - (pi F_1(x) + (1 - pi) F_0(x))|, and the pi; arrays of
    CDFs on a common grid of x, shape (B, X)."""
    mix = GRID[None, :, None] * f1[:, None, :] + (1 - GRID[None, :, None]) * f0[:, None, :]
    d = np.abs(t_cdf[:, None, :] - mix).max(axis=2)  # (B, pi)
    best = d.argmin(axis=1)
    return d[np.arange(len(d)), best], GRID[best]


def _cdf(values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Empirical CDFs of the rows of ``values`` (B, n) at ``points``."""
    v = np.sort(values, axis=1)
    return np.stack([np.searchsorted(row, points, side="right") for row in v]) / v.shape[1]


def label_shift_test(p: np.ndarray, validation: Validation, n_sim: int = 200,
                     seed: int = 0, max_rows: int = 20_000) -> dict[str, Any]:
    """Is the survey's p_merger distribution a mixture of the source classes' distributions, as
    label shift (the assumption of acc, em and bbse) requires? Kolmogorov-Smirnov distance to
    the closest mixture (its weight is a minimum-distance estimate of the fraction), with a
    p-value from a parametric bootstrap that redraws both the survey (from that mixture) and the
    validation split. A small p-value means domain shift: the corrected fractions are then
    biased by an amount no interval shows. Large surveys are subsampled to ``max_rows``."""
    rng = np.random.default_rng(seed)
    p = np.asarray(p, dtype=np.float64)
    p = p[np.isfinite(p)]
    if len(p) > max_rows:
        p = rng.choice(p, max_rows, replace=False)
    v1 = validation.p[validation.labels == 1]
    v0 = validation.p[validation.labels == 0]
    points = np.unique(np.quantile(np.concatenate([p, v1, v0]), np.linspace(0, 1, 257)))
    stat, pi = _ks_to_mixture(_cdf(p[None], points), _cdf(v1[None], points),
                              _cdf(v0[None], points))
    exceed = 0
    done = 0
    for start in range(0, n_sim, 50):
        b = min(50, n_sim - start)
        # the null: the survey is a pi-mixture of the source classes' (true) distributions,
        # stood in for by the validation images; both samples are drawn afresh
        n = len(p)
        k1 = rng.binomial(n, pi[0], size=b)
        sim_t = np.where(np.arange(n)[None, :] < k1[:, None],
                         v1[rng.integers(0, len(v1), (b, n))],
                         v0[rng.integers(0, len(v0), (b, n))])
        s1 = v1[rng.integers(0, len(v1), (b, len(v1)))]
        s0 = v0[rng.integers(0, len(v0), (b, len(v0)))]
        d, _ = _ks_to_mixture(_cdf(sim_t, points), _cdf(s1, points), _cdf(s0, points))
        exceed += int((d >= stat[0]).sum())
        done += b
    return {"ks": float(stat[0]), "p_value": (exceed + 1) / (done + 1),
            "fraction_min_distance": float(pi[0]), "n": int(len(p)), "simulations": done}
