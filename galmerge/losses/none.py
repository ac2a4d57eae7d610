"""Source-only training: a strategy module that adds nothing."""

from __future__ import annotations

import torch
from torch import nn

from galmerge.plugin.strategy_api import StepInputs


class NoLoss(nn.Module):
    """Strategy module for ``none``: returns no terms."""

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        return {}
