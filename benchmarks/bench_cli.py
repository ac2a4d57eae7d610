"""Wall time of `galmerge --help` and `galmerge list strategies` (plugin loading cost), JSON."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time


def timed(args: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    py = sys.executable
    baseline = timed([py, "-c", "import click"])
    figures = {
        "python_import_click_s": round(baseline, 3),
        "galmerge_help_s": round(timed([py, "-m", "galmerge", "--help"]), 3),
        "galmerge_version_s": round(timed([py, "-m", "galmerge", "--version"]), 3),
        "galmerge_list_strategies_s": round(
            timed([py, "-m", "galmerge", "list", "strategies", "--json"]), 3
        ),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
