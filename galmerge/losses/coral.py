"""CORAL: align source and target feature covariances (Sun & Saenko 2016, Deep CORAL).

loss = ‖C_s - C_t‖_F² / (4 d²) with unbiased covariances. For batches smaller than the feature
dimension (64 samples × 2592 DeepMerge features) the Frobenius norm is computed from n × n Gram
matrices, ‖XᵀX‖² = ‖XXᵀ‖², which costs O(n² d) instead of O(n d²); larger batches use the d × d
covariances directly. (DeepMerge II's ``loss.CORAL`` divides by d² instead of 4 d²; the factor
only rescales the weight.) ``align="target"`` detaches the source features, so the term moves
the target's only (``galmerge.losses.align``). ``warmup`` = γ multiplies the term by the ramp
2 / (1 + exp(-γ p)) - 1 (``galmerge.losses.options``).
"""

from __future__ import annotations

import torch
from torch import nn

from galmerge.losses.align import check_align, source_side
from galmerge.plugin.options import warmup_factor
from galmerge.plugin.strategy_api import StepInputs


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖cov(source) - cov(target)‖_F² / (4 d²); batch sizes may differ."""
    source, target = source.flatten(1), target.flatten(1)
    d = source.shape[1]
    xs = source - source.mean(dim=0, keepdim=True)
    xt = target - target.mean(dim=0, keepdim=True)
    ns = max(source.shape[0] - 1, 1)
    nt = max(target.shape[0] - 1, 1)
    if source.shape[0] + target.shape[0] < d:
        ss = (xs @ xs.T).pow(2).sum() / ns**2
        tt = (xt @ xt.T).pow(2).sum() / nt**2
        st = (xs @ xt.T).pow(2).sum() / (ns * nt)
        frob2 = (ss + tt - 2.0 * st).clamp_min(0.0)
    else:
        frob2 = (xs.T @ xs / ns - xt.T @ xt / nt).pow(2).sum()
    return frob2 / (4.0 * d * d)


class CORALLoss(nn.Module):
    """Strategy module: ``{"coral": warm-up factor · CORAL(source, target features)}``."""

    def __init__(self, warmup: float = 0.0, align: str = "both") -> None:
        super().__init__()
        self.warmup = float(warmup)
        self.align = check_align(align)

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        value = coral_loss(source_side(step.source_features, self.align), step.target_features)
        return {"coral": warmup_factor(step.progress, self.warmup) * value}
