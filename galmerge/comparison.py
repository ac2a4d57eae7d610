"""`galmerge compare`: the paper-style table over run directories (from their summary.json).

One row per (strategy, backbone, source -> target); each metric as mean ± sample standard
deviation over the seeds of that group; the gain in mean target accuracy over the `none` runs
on the same data and backbone.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galmerge import atomic
from galmerge.errors import GalmergeError
from galmerge.metrics import METRIC_NAMES

SPLITS = ("source_test", "target_test")


def expand_runs(patterns: Iterable[str]) -> list[Path]:
    """Run directories from paths or glob patterns (a folder of runs counts as its runs)."""
    runs: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else [])
        if not matches:
            raise GalmergeError(
                f"no run directory matches '{pattern}'; pass run directories "
                "or a glob such as 'runs/*'"
            )
        for match in matches:
            path = Path(match)
            if (path / "summary.json").is_file():
                runs.append(path)
            elif path.is_dir():
                runs += sorted(p.parent for p in path.glob("*/summary.json"))
    unique = list(dict.fromkeys(runs))
    if not unique:
        raise GalmergeError("no finished run (summary.json) among the given paths; train first")
    return unique


def read_summary(run: Path) -> dict[str, Any]:
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise GalmergeError(f"cannot read {run / 'summary.json'}: {exc}") from exc
    missing = [
        k for k in ("source", "target", "strategy", "backbone", "metrics") if k not in summary
    ]
    if missing:
        raise GalmergeError(f"{run / 'summary.json'} lacks {', '.join(missing)}; re-run training")
    return summary


def _stats(values: Sequence[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan
    # one seed has no spread to report: NaN, shown as the mean alone
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def compare(runs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Table rows (dicts) grouped by strategy, backbone, source and target."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        s = read_summary(Path(run))
        key = (str(s["strategy"]), str(s["backbone"]), str(s["source"]), str(s["target"]))
        groups.setdefault(key, []).append(s)
    rows = []
    for (strategy, backbone, source, target), members in groups.items():
        row: dict[str, Any] = {
            "strategy": strategy,
            "backbone": backbone,
            "source": source,
            "target": target,
            "runs": len(members),
            "seeds": sorted({m.get("seed") for m in members if m.get("seed") is not None}),
        }
        for split in SPLITS:
            for name in METRIC_NAMES:
                mean, std = _stats([m["metrics"].get(split, {}).get(name) for m in members])
                row[f"{split}_{name}_mean"] = mean
                row[f"{split}_{name}_std"] = std
        rows.append(row)
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["strategy"] == "none"
                and r["backbone"] == row["backbone"]
                and r["source"] == row["source"]
                and r["target"] == row["target"]
            ),
            None,
        )
        row["target_accuracy_gain_over_none"] = (
            row["target_test_accuracy_mean"] - base["target_test_accuracy_mean"]
            if base is not None
            else math.nan
        )
    rows.sort(
        key=lambda r: (
            r["source"],
            r["target"],
            r["backbone"],
            r["strategy"] != "none",
            r["strategy"],
        )
    )
    return rows


def _pm(row: dict[str, Any], split: str, name: str) -> str:
    mean, std = row[f"{split}_{name}_mean"], row[f"{split}_{name}_std"]
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"


def _gain(value: float) -> str:
    return f"{value:+.3f}" if math.isfinite(value) else "n/a"


TABLE_HEADER = [
    "strategy",
    "backbone",
    "source → target",
    "runs",
    *[f"{split.split('_')[0]} {name}" for split in SPLITS for name in METRIC_NAMES],
    "target acc gain over none",
]


def table_cells(row: dict[str, Any]) -> list[str]:
    return [
        row["strategy"],
        row["backbone"],
        f"{row['source']} → {row['target']}",
        str(row["runs"]),
        *[_pm(row, split, name) for split in SPLITS for name in METRIC_NAMES],
        _gain(row["target_accuracy_gain_over_none"]),
    ]


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(esc(c) for c in table_cells(r)) + " |" for r in rows]
    return (
        "\n".join(lines)
        + "\n\nMean ± sample standard deviation over seeds (test splits; one seed: mean only).\n"
    )


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Machine-readable: separate mean and std columns, seeds joined by ';'."""
    buf = io.StringIO()
    if not rows:
        return ""
    columns = list(rows[0])
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: ";".join(map(str, v))
                if isinstance(v, list)
                else (repr(v) if isinstance(v, float) else v)
                for k, v in row.items()
            }
        )
    return buf.getvalue()


def write_table(rows: Sequence[dict[str, Any]], output: str | Path) -> Path:
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix not in (".md", ".csv"):
        raise GalmergeError(f"--output {path}: use a .md or .csv file name")
    text = to_markdown(rows) if suffix == ".md" else to_csv(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)
    return path


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="test metrics, mean ± std over seeds")
    short = ["accuracy", "f1", "auc", "brier"]
    for col in ("strategy", "backbone", "source → target", "runs"):
        t.add_column(col)
    for split in SPLITS:
        for name in short:
            t.add_column(f"{split.split('_')[0]} {name}", justify="right")
    t.add_column("target acc gain over none", justify="right")
    for r in rows:
        t.add_row(
            escape(str(r["strategy"])),  # names read from summary.json files: not markup
            escape(str(r["backbone"])),
            escape(f"{r['source']} → {r['target']}"),
            str(r["runs"]),
            *[_pm(r, split, name) for split in SPLITS for name in short],
            _gain(r["target_accuracy_gain_over_none"]),
        )
    # a pipe or file would otherwise get 80 columns and a squashed table
    width = None if sys.stdout.isatty() else 220
    Console(file=sys.stdout, width=width).print(t)
