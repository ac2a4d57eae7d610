"""Label-free model selection scores for domain adaptation, computed on validation splits.

Every score here sees target *predictions and features only*; target labels never enter them.
``oracle_scores`` is the one exception: it needs target labels, exists for research (how far a
label-free choice is from the best possible one) and is named "oracle" wherever it appears.

Conventions (``SCORES`` gives the direction of "better" for each name):

- ``source_val_loss``: mean cross-entropy on the source validation split (min; DeepMerge II
  stops early on a 64-image batch of it and keeps the best source validation accuracy).
- ``entropy``: mean Shannon entropy (nats) of target predictions (min).
- ``im``: information-maximisation *loss* = mean entropy of target predictions minus the entropy
  of their mean prediction, i.e. minus the mutual information between inputs and predicted
  class (min; confident *and* class-diverse predictions score low).
- ``snd``: soft neighbourhood density (Saito et al. 2021): L2-normalised target softmax
  outputs, cosine similarities to every other sample, softmax with temperature 0.05, mean row
  entropy (max).
- ``dev``: deep embedded validation (You et al. 2019): source validation losses weighted by the
  density ratio p_target(x)/p_source(x) from a logistic-regression domain classifier on the
  features, with the control variate that reduces its variance (min).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ORACLE = "oracle_target_accuracy"
SND_TEMPERATURE = 0.05
# DEV's domain classifier works on at most this many principal components: validation splits
# hold hundreds of images but features have thousands of dimensions, where an unregularised
# classifier separates the domains perfectly and the density ratio degenerates.
DEV_MAX_COMPONENTS = 32
DEV_FOLDS = 5

SCORES: dict[str, str] = {
    "source_val_loss": "min",
    "entropy": "min",
    "im": "min",
    "snd": "max",
    "dev": "min",
    "im_src": "min",
}

# Every name the trainer can select the best checkpoint or stop early by: the label-free scores,
# the source validation accuracy (DeepMerge II's checkpoint rule), the cross-entropy of one random
# 64-image source validation batch (DeepMerge II's early-stopping signal) and the research-only
# oracle (never a label-free score).
SOURCE_VAL_ACCURACY = "source_val_accuracy"
SOURCE_VAL_BATCH_LOSS = "source_val_batch_loss"
DIRECTIONS: dict[str, str] = {
    **SCORES, SOURCE_VAL_ACCURACY: "max", SOURCE_VAL_BATCH_LOSS: "min", ORACLE: "max"
}
# Metrics rows hold these under their own names; every other score is in ``score_NAME``.
_ROW_COLUMNS = {
    "source_val_loss": "source_val_loss",
    SOURCE_VAL_ACCURACY: SOURCE_VAL_ACCURACY,
    SOURCE_VAL_BATCH_LOSS: SOURCE_VAL_BATCH_LOSS,
    ORACLE: "target_val_accuracy",
}


@dataclass
class SplitOutputs:
    """Model outputs on one validation split (CPU tensors)."""

    features: torch.Tensor  # (N, D)
    logits: torch.Tensor  # (N, K)
    labels: torch.Tensor  # (N,), -1 where unknown (target labels are hidden from selection)
    losses: torch.Tensor | None = None  # per-sample cross-entropy (source only)


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=1)


def _entropy_rows(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)


def prediction_entropy(logits: torch.Tensor) -> float:
    """Mean entropy (nats) of softmax predictions."""
    if len(logits) == 0:
        return math.nan
    return float(_entropy_rows(_probs(logits)).mean())


def information_maximisation(logits: torch.Tensor) -> float:
    """Mean prediction entropy minus entropy of the mean prediction (minus mutual information)."""
    if len(logits) == 0:
        return math.nan
    p = _probs(logits)
    return float(_entropy_rows(p).mean() - _entropy_rows(p.mean(dim=0, keepdim=True))[0])


def soft_neighbourhood_density(logits: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """SND of Saito et al. (2021) on softmax predictions; higher is better."""
    n = len(logits)
    if n < 2:
        return math.nan
    p = F.normalize(_probs(logits), dim=1)
    sim = p @ p.T
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    sim = sim[off_diagonal].view(n, n - 1)
    return float(_entropy_rows(torch.softmax(sim / temperature, dim=1)).mean())


def _source_losses(source: SplitOutputs) -> torch.Tensor:
    if source.losses is not None and bool(torch.isfinite(source.losses).all()):
        return source.losses.double()
    return F.cross_entropy(source.logits.double(), source.labels, reduction="none")


def _principal_components(x: torch.Tensor, seed: int) -> np.ndarray:
    """Standardised features projected on their leading principal components (unsupervised)."""
    x = x.double()
    x = (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(1e-8)
    # about 20 samples per component keeps the classifier from separating noise
    q = max(1, min(DEV_MAX_COMPONENTS, x.shape[0] // 20, x.shape[1]))
    # pca_lowrank draws random numbers (x is on the CPU): keep the caller's (the trainer's) RNG
    # stream untouched. Only the CPU generator is seeded: torch.manual_seed would also seed every
    # CUDA/MPS generator, which fork_rng(devices=[]) does not restore (every GPU run's dropout
    # would restart from seed 0 at each validation, on every DDP rank alike)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        u, s, _ = torch.pca_lowrank(x, q=q, center=False)
    scores = u * s
    return (scores / scores.std(dim=0).clamp_min(1e-8)).numpy()


def density_ratio_weights(
    source_features: torch.Tensor, target_features: torch.Tensor, seed: int = 0
) -> np.ndarray:
    """p_target(x)/p_source(x) at each source sample, from a cross-fitted domain classifier.

    Features are standardised and reduced by PCA, then a logistic regression separates source
    (0) from target (1); each source sample's probability comes from a fold that did not see it.
    The ratio is rescaled by n_source/n_target so that equal distributions give weights near 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    ns, nt = len(source_features), len(target_features)
    x = _principal_components(torch.cat([source_features, target_features]), seed)
    y = np.concatenate([np.zeros(ns, dtype=np.int64), np.ones(nt, dtype=np.int64)])
    folds = min(DEV_FOLDS, ns, nt)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    clf = LogisticRegression(C=1.0, max_iter=1000)
    p_target = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:ns, 1]
    p_target = np.clip(p_target, 1e-6, 1 - 1e-6)
    return (ns / nt) * p_target / (1.0 - p_target)


def deep_embedded_validation(source: SplitOutputs, target: SplitOutputs, seed: int = 0) -> float:
    """DEV risk (You et al. 2019): weighted source loss with a control variate; lower is better."""
    ns, nt = len(source.features), len(target.features)
    if ns < 2 or nt < 2:
        return math.nan
    if not (
        bool(torch.isfinite(source.features).all()) and bool(torch.isfinite(target.features).all())
    ):
        return math.nan  # a diverged model: the domain classifier cannot be fitted
    weights = density_ratio_weights(source.features, target.features, seed)
    losses = _source_losses(source).numpy()
    weighted = weights * losses
    var_w = float(np.var(weights, ddof=1))
    # eta = -Cov(L, w)/Var(w); with constant weights the control variate has nothing to fix
    eta = 0.0 if var_w <= 1e-12 else -float(np.cov(weighted, weights, ddof=1)[0, 1]) / var_w
    return float(weighted.mean() + eta * weights.mean() - eta)


def label_free_scores(source_val: SplitOutputs, target_val: SplitOutputs) -> dict[str, float]:
    """Every score in ``SCORES`` for one model; target labels are not read."""
    source_loss = float(_source_losses(source_val).mean()) if len(source_val.logits) else math.nan
    im = information_maximisation(target_val.logits)
    return {
        "source_val_loss": source_loss,
        "entropy": prediction_entropy(target_val.logits),
        "im": im,
        "snd": soft_neighbourhood_density(target_val.logits),
        "dev": deep_embedded_validation(source_val, target_val),
        "im_src": im + source_loss,
    }


# Scores of one model *among others*: they need the target predictions of several models (the
# trials of a `galmerge tune` study), so the trainer cannot compute them per epoch.
CROSS_MODEL_SCORES: dict[str, str] = {"agreement": "max"}


def ensemble_agreement(probabilities: list[torch.Tensor]) -> list[float]:
    """Per model: the share of target images on which its predicted class equals the vote of
    the *other* models (their mean softmax probability); higher is better.

    A label-free stand-in for target accuracy in the spirit of reverse validation and ensemble
    checks: models that adapted well tend to agree with each other, while each bad one tends to
    fail in its own way. It misleads when most models share one failure (e.g. all predicting one
    class on the target): agreeing with the majority then rewards that failure. NaN with fewer
    than two models.
    """
    k = len(probabilities)
    if k < 2:
        return [math.nan] * k
    stacked = torch.stack([p.double() for p in probabilities])  # (k, N, C)
    total = stacked.sum(dim=0)
    out = []
    for i in range(k):
        others = (total - stacked[i]) / (k - 1)
        out.append(float((stacked[i].argmax(dim=1) == others.argmax(dim=1)).double().mean()))
    return out


def oracle_scores(target_val: SplitOutputs, target_labels: torch.Tensor) -> dict[str, float]:
    """Research only: target validation accuracy, which needs target labels ("oracle")."""
    labels = torch.as_tensor(target_labels)
    keep = labels >= 0
    if not bool(keep.any()):
        return {ORACLE: math.nan}
    acc = (target_val.logits[keep].argmax(dim=1) == labels[keep]).double().mean()
    return {ORACLE: float(acc)}


def better(name: str, a: float, b: float) -> bool:
    """True when score ``a`` is strictly better than ``b`` (a NaN is never better)."""
    try:
        direction = DIRECTIONS[name]
    except KeyError:
        raise ValueError(f"unknown selection score {name!r}; known: {sorted(DIRECTIONS)}") from None
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a < b if direction == "min" else a > b


def row_value(row: Mapping[str, Any], name: str) -> float:
    """The value of selection name ``name`` in a trainer metrics row (NaN when absent)."""
    return float(row.get(_ROW_COLUMNS.get(name, f"score_{name}"), math.nan))


def select_epoch(values: list[float] | np.ndarray, name: str) -> int | None:
    """Index of the best value under ``name``'s direction (first on ties); None if all NaN."""
    best: int | None = None
    for i, v in enumerate(values):
        if best is None:
            if math.isfinite(float(v)):
                best = i
        elif better(name, float(v), float(values[best])):
            best = i
    return best
