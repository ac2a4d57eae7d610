"""Entropy minimisation on target predictions (Grandvalet & Bengio 2005), as in DeepMerge II.

DeepMerge II's ``loss.EntropyLoss`` takes softmax outputs of source and target together and masks
p < 1e-6 before the log. By default we use target logits only (source samples already have
labels; ``include_source=True`` reproduces the code), and log-softmax, which is exact and stable
without a mask.

``diversity`` > 0 subtracts that multiple of the entropy of the batch-mean prediction
(information maximisation, as in SHOT, Liang et al. 2020): minimising per-sample entropy alone
can push every target sample into one class; rewarding a spread mean prediction prevents it.
The strategy's default is 1 (``galmerge.losses.plugin``); 0, the class's own default and what
the paper presets pin, is DeepMerge II's plain entropy term. ``warmup`` = γ multiplies the term by the
ramp 2 / (1 + exp(-γ p)) - 1 (``galmerge.losses.options``): early target predictions are noise,
and minimising their entropy from the first step locks them in.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from galmerge.plugin.options import warmup_factor
from galmerge.plugin.strategy_api import StepInputs


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of softmax(logits) over the batch."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


class EntropyLoss(nn.Module):
    """Strategy module: ``{"entropy": mean entropy of the target (+ source) predictions}``."""

    def __init__(
        self, include_source: bool = False, diversity: float = 0.0, warmup: float = 0.0
    ) -> None:
        super().__init__()
        self.warmup = float(warmup)
        self.include_source = bool(include_source)
        self.diversity = float(diversity)

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        logits = step.target_logits
        if self.include_source:
            logits = torch.cat([step.source_logits, logits], dim=0)
        loss = prediction_entropy(logits)
        ramp = warmup_factor(step.progress, self.warmup)
        if self.diversity:
            mean_p = F.softmax(logits, dim=1).mean(dim=0)
            spread = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
            return {"entropy": ramp * (loss - self.diversity * spread),
                    "_mean_entropy": loss.detach()}
        return {"entropy": ramp * loss}
