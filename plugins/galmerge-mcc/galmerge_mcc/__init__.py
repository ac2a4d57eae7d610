"""galmerge plugin: the ``mcc`` strategy (Minimum Class Confusion, Jin et al., ECCV 2020).

galmerge imports this module through the entry point in pyproject.toml and calls the hook
below. Keep the module light: torch is imported only when the strategy is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from galmerge import Option, Strategy, hookimpl

if TYPE_CHECKING:
    from torch import nn

    from galmerge import StrategyContext

__version__ = "0.1.0"

#: every option; galmerge checks names, types and bounds (finite, in range) before `build`
OPTIONS = {
    "weight": Option(1.0, "factor of the MCC term in the loss", min=0.0),
    "temperature": Option(2.5, "softmax temperature T (the paper's 2.5)", min=0.01, max=100.0),
}


def build(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    """Make the loss module for one run (``options``: complete and checked)."""
    from galmerge_mcc.loss import MCCLoss

    return MCCLoss(temperature=options["temperature"]).to(context.device)


@hookimpl
def register_strategies() -> list[Strategy]:
    return [
        Strategy(
            name="mcc",
            description="Minimum Class Confusion on target predictions (Jin et al. 2020)",
            build=build,
            options=OPTIONS,
        )
    ]
