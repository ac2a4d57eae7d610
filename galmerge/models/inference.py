"""Running a classifier over an image set in batches (validation, evaluation, classification)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from galmerge.data.preprocess import normalise
from galmerge.models.domain_norm import statistics
from galmerge.models.model import GalaxyClassifier
from galmerge.plugin.imageset import ImageSet


@torch.no_grad()
def forward_in_batches(
    model: GalaxyClassifier,
    imageset: ImageSet,
    indices: np.ndarray,
    spec: dict[str, Any],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    domain: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits (on the CPU) for ``imageset[indices]``, normalised with ``spec``;
    ``domain``: whose BatchNorm statistics to use (`galmerge.models.domain_norm`)."""

    def fetch(idx: np.ndarray) -> torch.Tensor:
        return normalise(imageset.batch(idx).to(device, non_blocking=True), spec)

    return forward_batches(model, fetch, indices, batch_size, domain=domain)


@torch.no_grad()
def forward_batches(
    model: GalaxyClassifier,
    fetch: Callable[[np.ndarray], torch.Tensor],
    indices: np.ndarray,
    batch_size: int = 256,
    channels_last: bool = False,
    domain: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits (float32, on the CPU) of the model inputs ``fetch(chunk)`` for
    ``indices`` in chunks of ``batch_size``, in eval mode (the model's mode is restored), in
    float32 (never autocast: every recorded number is computed the same way on every device).

    ``channels_last``: that memory format
    for the inputs (CUDA); ``domain``: "source" or "target", whose BatchNorm running statistics
    to use when the model keeps one set per domain (else ignored)."""
    was_training = model.training
    model.eval()
    feats, logits = [], []
    idx = np.asarray(indices, dtype=np.int64)
    with statistics(model, domain):
        for start in range(0, len(idx), batch_size):
            x = fetch(idx[start : start + batch_size])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            f, z = model(x)
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
