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
    target_encoder: str = "shared"  # "separate": the target has its own encoder (ADDA)


@dataclass
class StepInputs:
    """One training step: a source batch and a target batch through the same model.

    ``progress`` runs from 0 (first step) to 1 (last planned step); ramps use it.
    Target labels are never part of it: they are not for training. When no strategy of the run
    declares ``needs_target`` (see ``galmerge.plugin.records.Strategy``), the target batch is not
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


def canonical_strategies(expr: str) -> list[str]:
    """The registered names of an expression's strategies, aliases resolved (``"ada+fisher"``
    -> ``["dann", "fisher"]``); a strategy named twice under two spellings is a one-line
    PluginError, as the same name twice is: the recorded ``dann+dann`` could not be rerun."""
    from galmerge.plugin.manager import get_plugin_manager

    pm = get_plugin_manager()
    names = parse_strategy_expression(expr)
    canonical = [pm.get("strategies", n).name for n in names]
    for i, name in enumerate(canonical):
        if name in canonical[:i]:
            first, again = names[canonical.index(name)], names[i]
            alias = again if again != name else first
            raise PluginError(f"strategy expression '{expr}' names {name} twice ('{alias}' is "
                              f"an alias of '{name}'); keep one")
    return canonical


class StrategyOutputError(PluginError):
    """A strategy's ``forward`` returned something the trainer cannot add to the loss."""


def check_strategy_output(strategy: str, output: object) -> None:
    """Check once, at the first training step, that a strategy returned what the contract asks:
    a dict of term name -> finite 0-dim floating tensor (``_``-prefixed keys are diagnostics,
    same rules). Raises a one-line `StrategyOutputError` naming plugin, strategy and term."""
    problem, term = _output_problem(output)
    if problem is None:
        return
    from galmerge.plugin.manager import get_plugin_manager

    try:
        owner = get_plugin_manager().owner("strategies", strategy)
    except PluginError:
        owner = None
    plugin = f"plugin '{owner.name}'" if owner is not None else "its plugin"
    where = f"term '{term}' " if term is not None else ""
    raise StrategyOutputError(
        f"strategy '{strategy}' ({plugin}): {where}{problem}; a strategy's forward must return "
        f"a dict of term name -> 0-dim float tensor, e.g. {{'{term or strategy}': loss.mean()}}"
    )


def _output_problem(output: object) -> tuple[str | None, str | None]:
    if not isinstance(output, dict):
        return f"forward returned {type(output).__name__}, not a dict", None
    for key, value in output.items():
        if not isinstance(key, str) or not key.lstrip("_"):
            return f"has a key {key!r} that is not a term name", None
        if not isinstance(value, torch.Tensor):
            return (
                f"is a {type(value).__name__} ({_short(value)}), not a torch tensor "
                f"(a Python number carries no gradient)",
                key,
            )
        if value.dim() != 0:
            return f"is a tensor of shape {tuple(value.shape)}, not a scalar (reduce it)", key
        if not value.is_floating_point():
            return f"is a {value.dtype} tensor, not a floating-point one", key
        if not bool(torch.isfinite(value.detach()).item()):
            return f"is {float(value.detach())} at the first step (not finite)", key
    return None, None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."
