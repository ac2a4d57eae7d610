"""Minimum Class Confusion loss (Jin, Wang, Long & Wang, ECCV 2020, arXiv:1912.03699).

For target logits Z (B × K): Ŷ = softmax(Z / T); each sample is weighted by its certainty,
W_i = B (1 + exp(-H(Ŷ_i))) / Σ_j (1 + exp(-H(Ŷ_j))) (entropy H, weights not differentiated);
the class correlation C = Ŷᵀ diag(W) Ŷ is normalised column-wise (C̃_jk = C_jk / Σ_i C_ik) and
the loss is the total off-diagonal mass Σ_{j≠k} C̃_jk / K.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from galmerge import StepInputs


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """Class confusion of a batch of target logits (0 = no two classes predicted together)."""
    batch, classes = logits.shape
    log_p = F.log_softmax(logits / temperature, dim=1)
    p = log_p.exp()
    with torch.no_grad():
        entropy = -(p * log_p).sum(dim=1)
        certainty = 1.0 + torch.exp(-entropy)
        weights = batch * certainty / certainty.sum()
    confusion = (p * weights[:, None]).T @ p
    # a class nobody predicts has an all-zero column: 0 / tiny = 0 instead of NaN
    column = confusion.sum(dim=0, keepdim=True).clamp_min(torch.finfo(confusion.dtype).tiny)
    confusion = confusion / column
    return (confusion.sum() - confusion.trace()) / classes


class MCCLoss(nn.Module):
    """Strategy module: ``{"mcc": class confusion of the target predictions}``."""

    def __init__(self, temperature: float = 2.5) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        return {"mcc": mcc_loss(step.target_logits, self.temperature)}
