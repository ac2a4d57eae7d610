"""Check a strategy's options against its declared defaults (no torch import)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge.errors import GalmergeError


def resolve_options(
    strategy: str, defaults: Mapping[str, Any], options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Defaults overlaid with ``options``; unknown keys and values of the wrong type are errors.

    Values are coerced to the type of their default, so ``"0.5"`` from a command line works
    for a float option; an int is accepted where a float is expected.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise GalmergeError(
            f"unknown option(s) {', '.join(unknown)} for strategy '{strategy}'; "
            f"known: {', '.join(sorted(defaults)) or 'none'}"
        )
    resolved = dict(defaults)
    for key, value in options.items():
        resolved[key] = _coerce(strategy, key, value, defaults[key])
    weight = resolved.get("weight")
    if weight is not None and not float(weight) >= 0:
        raise GalmergeError(
            f"weight of strategy '{strategy}' must be a number >= 0, got {weight!r}"
        )
    return resolved


def _coerce(strategy: str, key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if (
        default is None
        or isinstance(value, kind)
        and not (isinstance(value, bool) and kind is not bool)
    ):
        return value
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise ValueError
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError
            if kind is int and isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return kind(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    raise GalmergeError(
        f"option '{key}' of strategy '{strategy}' must be {kind.__name__}, got {value!r}"
    )


def warmup_factor(progress: float, warmup: float) -> float:
    """DANN-style ramp 2 / (1 + exp(-γ p)) - 1 of training progress p ∈ [0, 1], γ = ``warmup``.

    ``warmup`` = 0 switches the ramp off (factor 1 from the first step). A term multiplied by it
    starts at 0, while the classifier's features are still random, and reaches ~1 once
    p ≳ 3/γ (γ = 10: 0.46 at p = 0.1, 0.96 at p = 0.4), so one weight suits backbones whose
    early features differ in scale (Ganin et al. 2016 ramp the gradient reversal this way).
    """
    if warmup <= 0:
        return 1.0
    import math

    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-float(warmup) * p)) - 1.0
