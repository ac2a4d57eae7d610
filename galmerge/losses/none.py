"""Source-only training: a strategy module that adds nothing."""

from __future__ import annotations

import torch
from torch import nn

from galmerge.plugin.strategy_api import StepInputs


class NoLoss(nn.Module):
    """Strategy module for ``none`` and ``adabn``: returns no terms."""

    # read by the trainer: nothing of the target's own path (adabn with domain_batchnorm =
    # "specific" or target_encoder = "separate") is trained
    adds_terms = False

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        return {}
