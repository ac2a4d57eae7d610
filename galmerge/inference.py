"""Running a classifier over an image set in batches (validation, evaluation, classification)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from galmerge.imageset import ImageSet
from galmerge.model import GalaxyClassifier
from galmerge.preprocess import normalise


@torch.no_grad()
def forward_in_batches(
    model: GalaxyClassifier,
    imageset: ImageSet,
    indices: np.ndarray,
    spec: dict[str, Any],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits (on the CPU) for ``imageset[indices]``, normalised with ``spec``."""
    was_training = model.training
    model.eval()
    feats, logits = [], []
    idx = np.asarray(indices, dtype=np.int64)
    for start in range(0, len(idx), batch_size):
        x = imageset.batch(idx[start : start + batch_size]).to(device, non_blocking=True)
        f, z = model(normalise(x, spec))
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    model.train(was_training)
    if not feats:
        dim = model.out_features
        return torch.empty(0, dim), torch.empty(0, 2)
    return torch.cat(feats), torch.cat(logits)


def merger_probability(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """p(merger) = softmax(logits / T)[:, 1]."""
    return torch.softmax(logits.float() / temperature, dim=1)[:, 1].numpy()
