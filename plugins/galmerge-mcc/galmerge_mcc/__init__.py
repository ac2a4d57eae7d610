"""galmerge plugin: the ``mcc`` strategy (Minimum Class Confusion, Jin et al., ECCV 2020).

galmerge imports this module through the entry point in pyproject.toml and calls the hook
below. Keep the module light: torch is imported only when the strategy is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from galmerge import GalmergeError, Strategy, hookimpl, resolve_options

if TYPE_CHECKING:
    from torch import nn

    from galmerge import StrategyContext

__version__ = "0.1.0"

DEFAULTS = {"weight": 1.0, "temperature": 2.5}


def build(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    """Make the loss module for one run."""
    from galmerge_mcc.loss import MCCLoss

    opts = resolve_options("mcc", DEFAULTS, options)
    if opts["temperature"] <= 0:
        raise GalmergeError(f"mcc option temperature must be > 0, got {opts['temperature']}")
    return MCCLoss(temperature=opts["temperature"]).to(context.device)


@hookimpl
def register_strategies() -> list[Strategy]:
    return [
        Strategy(
            name="mcc",
            description="Minimum Class Confusion on target predictions (Jin et al. 2020)",
            build=build,
            defaults=DEFAULTS,
        )
    ]
