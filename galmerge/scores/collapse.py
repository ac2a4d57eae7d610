"""Notice a collapsed training run and say so in one line.

A run has collapsed when its classifier no longer separates the classes: source validation
accuracy at chance, one class predicted for (almost) every image, often with a domain
discriminator that tells the domains apart perfectly although the adversarial weight is at full
strength (the reversed-BCE DANN failure the README's benchmark section describes). The checks
read one metrics row (metrics.csv); `prediction_shares` adds the label-free prediction shares
they need. Target labels are never read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

# Accuracy within this of the majority-class rate counts as chance.
CHANCE_MARGIN = 0.03
# A share of predictions in one class above this counts as "one class everywhere"...
ONE_CLASS_SHARE = 0.99
# ...unless the labels themselves are that lopsided (then predicting one class is no collapse).
LOPSIDED_LABELS = 0.9
# Discriminator accuracy (mean over the epoch's steps) that counts as saturated, once the
# adversarial coefficient has ramped up this far (early on a saturated discriminator is normal).
SATURATED_DOMAIN_ACC = 0.99
RAMPED_GRL = 0.9
FIRST_CHECKED_EPOCH = 2  # epoch 1 of a slow start may still sit at chance


def prediction_shares(
    source_logits: torch.Tensor, source_labels: torch.Tensor, target_logits: torch.Tensor
) -> dict[str, float]:
    """Share of source/target validation images predicted 'merger' (class 1), and the share of
    the commonest class among the labelled source validation images (the chance accuracy)."""
    out: dict[str, float] = {}
    for name, logits in (("source", source_logits), ("target", target_logits)):
        out[f"{name}_val_pred_merger"] = (
            float((logits.argmax(1) == 1).float().mean()) if len(logits) else math.nan
        )
    known = source_labels[source_labels >= 0]
    out["source_val_majority"] = (
        float(max((known == 1).float().mean(), (known == 0).float().mean()))
        if len(known)
        else math.nan
    )
    return out


def collapse_signs(row: Mapping[str, Any]) -> list[str]:
    """The collapse symptoms one metrics row shows, as short phrases (empty: none)."""
    return [text for _, text in _signs(row)]


def _signs(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    signs: list[tuple[str, str]] = []
    acc, majority = _num(row, "source_val_accuracy"), _num(row, "source_val_majority")
    if not math.isfinite(majority):
        majority = 0.5
    chance = math.isfinite(acc) and acc <= majority + CHANCE_MARGIN
    if chance:
        signs.append(
            ("chance", f"source val accuracy {acc:.3f} is at chance (majority {majority:.3f})")
        )
    for domain in ("source", "target"):
        share = _num(row, f"{domain}_val_pred_merger")
        if not math.isfinite(share):
            continue
        lopsided = domain == "source" and math.isfinite(majority) and majority >= LOPSIDED_LABELS
        if lopsided and not chance:
            continue
        if share >= ONE_CLASS_SHARE:
            signs.append((domain, f"'merger' predicted for {share:.0%} of {domain} val images"))
        elif share <= 1 - ONE_CLASS_SHARE:
            signs.append(
                (domain, f"'non-merger' predicted for {1 - share:.0%} of {domain} val images")
            )
    dacc, coeff = _num(row, "diag_domain_acc"), _num(row, "diag_grl_coeff")
    if math.isfinite(dacc) and dacc >= SATURATED_DOMAIN_ACC and (
        signs or (math.isfinite(coeff) and coeff >= RAMPED_GRL)
    ):
        signs.append(("domain", f"domain discriminator saturated (accuracy {dacc:.3f})"))
    return signs


def collapse_warning(rows: Sequence[Mapping[str, Any]], adapts: bool = False) -> str | None:
    """One line when the newest epoch of ``rows`` and the one before it share collapse symptoms
    that had not yet persisted (a lasting collapse is reported once, when it sets in; a one-epoch
    dip, as at the peak of the one-cycle learning rate, is not); else None. ``adapts``: a
    strategy of the run reads target images (the advice differs)."""
    persistent = _persistent(rows, len(rows) - 1)
    if not persistent or persistent <= _persistent(rows, len(rows) - 2):
        return None
    row = rows[-1]
    text = "; ".join(t for k, t in _signs(row) if k in persistent)
    return f"warning: epoch {int(row['epoch'])} looks collapsed: {text}; {_advice(row, persistent, adapts)}"


def run_warnings(rows: Sequence[Mapping[str, Any]], best_epoch: int,
                 adapts: bool = False) -> list[str]:
    """The run's collapse warnings for summary.json: one line when the selected checkpoint
    (``best_epoch``) shows collapse symptoms or they persisted over two epochs or more;
    ``adapts`` as for `collapse_warning`."""
    bad = [i for i in range(len(rows)) if _persistent(rows, i)]
    best = next((r for r in rows if int(r.get("epoch", 0)) == best_epoch), None)
    best_signs = collapse_signs(best) if best is not None else []
    if best_signs:
        return [
            f"collapse: the selected checkpoint best.pt (epoch {best_epoch}) shows "
            f"{'; '.join(best_signs)}; "
            f"{_advice(best, {k for k, _ in _signs(best)}, adapts)}"  # type: ignore[arg-type]
        ]
    if not bad:
        return []
    epochs = _ranges(sorted({int(rows[j]["epoch"]) for i in bad for j in (i - 1, i)}))
    return [
        f"collapse symptoms at epochs {epochs} ({'; '.join(collapse_signs(rows[bad[-1]]))} at "
        f"epoch {int(rows[bad[-1]]['epoch'])}); the selected checkpoint best.pt (epoch "
        f"{best_epoch}) does not show them"
    ]


def _persistent(rows: Sequence[Mapping[str, Any]], i: int) -> set[str]:
    """Symptom kinds shared by rows ``i`` and ``i - 1``, both past the first epoch."""
    if i < 1 or i >= len(rows):
        return set()
    a, b = rows[i - 1], rows[i]
    if int(a.get("epoch", 0)) < FIRST_CHECKED_EPOCH:
        return set()
    return {k for k, _ in _signs(a)} & {k for k, _ in _signs(b)}


def _advice(row: Mapping[str, Any], kinds: set[str], adapts: bool = False) -> str:
    if kinds == {"target"} and adapts:  # the alignment itself put the target in one class
        return (
            "the source is learned and the run adapts, but the alignment put the target in one "
            "class (seen with small training sets and with a target merger fraction far from "
            "the source's); keep a checkpoint by a target score (--select-by im), lower the "
            "strategy's weight, train on more images, or where the survey's fraction is known "
            "give it with classify --prior VALUE"
        )
    if kinds == {"target"}:  # the source is learned: one class on the target is the domain gap
        return (
            "the source is learned but the target gets one class: the domain gap; adapt with "
            "a strategy (e.g. --strategy mmd+fisher+entropy --preset synthetic-sim-real on the "
            "built-in pair) or check the target's preprocessing"
        )
    if "diag_grl_coeff" in row:
        return (
            "the classifier is not learning; with dann try --set dann.feature_loss=inverted "
            "(or --preset synthetic-sim-real on the built-in pair), a lower --lr or a smaller "
            "dann.weight"
        )
    return "the classifier is not learning; try a lower --lr or smaller strategy weights"


def _num(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    try:
        return float(value) if value is not None and value != "" else math.nan
    except (TypeError, ValueError):
        return math.nan


def _ranges(epochs: list[int]) -> str:
    parts: list[str] = []
    start = prev = epochs[0]
    for e in epochs[1:] + [None]:  # type: ignore[list-item]
        if e is not None and e == prev + 1:
            prev = e
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if e is not None:
            start = prev = e
    return ", ".join(parts)
