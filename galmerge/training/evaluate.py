"""Validation rows and test metrics of the model being trained (through ``galmerge.models.inference``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from galmerge.models.inference import forward_batches
from galmerge.models.model import GalaxyClassifier
from galmerge.scores import selection
from galmerge.scores.collapse import prediction_shares
from galmerge.scores.metrics import binary_metrics
from galmerge.training.data import Domain

EVAL_BATCH = 512
# DeepMerge II's early-stopping signal: the cross-entropy of one random source validation batch
STOP_BATCH = 64


def predict(
    model: GalaxyClassifier, domain: Domain, idx: np.ndarray, device: torch.device, cuda: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits in float32 on every device: only the training step uses bf16
    autocast on CUDA, so the validation scores, best.pt's choice, summary.json's test metrics
    and the shift statistics are the numbers `galmerge evaluate` and `classify` compute."""
    return forward_batches(
        model, lambda chunk: domain.features_input(chunk, device), idx, EVAL_BATCH,
        channels_last=cuda, domain=domain.role,
    )


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    keep = labels >= 0
    if not bool(keep.any()):
        return math.nan
    return float((logits[keep].argmax(1) == labels[keep]).float().mean())


def validate(
    model: GalaxyClassifier, source: Domain, target: Domain, device: torch.device, cuda: bool,
    batch_loss_seed: int | None = None,
) -> dict[str, float]:
    """Source val loss and accuracy, target val accuracy (reported only), label-free scores;
    with ``batch_loss_seed``, also ``source_val_batch_loss`` (a seeded random 64-image batch,
    drawn without touching the training RNG)."""
    s_idx, t_idx = source.splits["val"], target.splits["val"]
    fs, zs = predict(model, source, s_idx, device, cuda)
    ft, zt = predict(model, target, t_idx, device, cuda)
    ys = source.imageset.labels[torch.as_tensor(s_idx)]
    yt = target.imageset.labels[torch.as_tensor(t_idx)]
    losses_s = F.cross_entropy(zs, ys, reduction="none") if len(ys) else torch.empty(0)
    row: dict[str, float] = {
        "source_val_loss": float(losses_s.mean()) if len(ys) else math.nan,
        "source_val_accuracy": _accuracy(zs, ys),
        # reported only; never used for selection unless --select-by oracle_target_accuracy
        "target_val_accuracy": _accuracy(zt, yt),
        **prediction_shares(zs, ys, zt),  # label-free: what collapse warnings read
    }
    hidden = torch.full_like(yt, -1)  # target labels stay out of every label-free score
    scores = selection.label_free_scores(
        selection.SplitOutputs(fs, zs, ys, losses_s),
        selection.SplitOutputs(ft, zt, hidden, None),
    )
    for name, value in scores.items():
        row[f"score_{name}"] = float(value)
    if batch_loss_seed is not None:
        row[selection.SOURCE_VAL_BATCH_LOSS] = _batch_loss(losses_s, batch_loss_seed)
    return row


def _batch_loss(losses: torch.Tensor, seed: int) -> float:
    if len(losses) == 0:
        return math.nan
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(losses), generator=gen)[:STOP_BATCH]
    return float(losses[pick].mean())


def split_metrics(
    model: GalaxyClassifier, domain: Domain, device: torch.device, cuda: bool
) -> dict[str, Any]:
    idx = domain.splits["test"]
    _, logits = predict(model, domain, idx, device, cuda)
    labels = domain.imageset.labels.numpy()[idx]
    p = torch.softmax(logits, dim=1)[:, 1].numpy()
    return binary_metrics(labels, p)
