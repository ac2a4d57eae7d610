"""Cells shared by the benchmark scripts' markdown tables (the scripts import it as a sibling:
``python benchmarks/SCRIPT.py`` puts this folder first on ``sys.path``)."""

from __future__ import annotations

import statistics


def mean_sd(values: list[float], digits: int = 3, signed: bool = False, empty: str = "-") -> str:
    """"mean ± sd" with ``digits`` decimals (sd 0 for one value, ``empty`` for none);
    ``signed`` puts a sign on the mean (gains in points)."""
    if not values:
        return empty
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{'+' if signed else ''}.{digits}f} ± {sd:.{digits}f}"
