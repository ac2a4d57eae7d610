"""What a DA strategy sees: one call signature for every method (the skada pattern)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from galmerge.errors import PluginError


@dataclass(frozen=True)
class StrategyContext:
    """Facts fixed for a whole run, given to ``Strategy.build``."""

    feature_dim: int
    num_classes: int
    total_steps: int
    device: torch.device


@dataclass
class StepInputs:
    """One training step: a source batch and a target batch through the same model.

    ``progress`` runs from 0 (first step) to 1 (last planned step); ramps use it.
    Target labels are never part of it: they are not for training. When no strategy of the run
    declares ``needs_target`` (see ``galmerge.records.Strategy``), the target batch is not
    forwarded and ``target_features``/``target_logits`` are empty (0 rows). A strategy module
    may set ``lr_multipliers = {"param_prefix": factor}`` to train its parameters at another
    learning rate (e.g. ``FisherLoss``: ``{"centers": 10.0}``).
    """

    source_features: torch.Tensor
    source_logits: torch.Tensor
    source_labels: torch.Tensor
    target_features: torch.Tensor
    target_logits: torch.Tensor
    progress: float


def parse_strategy_expression(expr: str) -> list[str]:
    """``"mmd+fisher+entropy"`` -> ``["mmd", "fisher", "entropy"]``; ``none`` alone is allowed."""
    parts = [p.strip().lower() for p in expr.split("+")]
    if not expr.strip() or any(not p for p in parts):
        raise PluginError(
            f"bad strategy expression '{expr}'; write names joined by '+', e.g. dann+fisher"
        )
    if len(set(parts)) != len(parts):
        raise PluginError(f"strategy expression '{expr}' names a strategy twice")
    if "none" in parts and len(parts) > 1:
        parts = [p for p in parts if p != "none"]
    return parts
