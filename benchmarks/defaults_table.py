"""One table of every built-in strategy's default against source-only ``none``, from the JSON
lines that ``study_defaults.py`` wrote for the same runs (same renders, seeds and ``none``).

Issue 14's rule for defaults: never below ``none`` on target test accuracy, source test accuracy
within 3 points of it. The table counts the runs below ``none`` and the pairs whose mean over
seeds is below it, and the mean source change. Target labels are read only here, to report.

    python benchmarks/defaults_table.py --out benchmarks/results/defaults30_heldout.md \\
        benchmarks/results/study_adda28_heldout.jsonl:adda=dann \\
        benchmarks/results/study_onesided29_heldout.jsonl:"mmd separate"=mmd ...

Each argument is ``FILE:NAME=LABEL``: the rows of configuration NAME in FILE, shown as LABEL.
The ``none`` rows are taken from every file and must agree where they overlap.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_defaults import run_dir  # noqa: E402


def _rows(path: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "target" in r]


def _auc(r: dict[str, Any], work: list[Path]) -> float | None:
    """Target test AUC from the row, or from the run's summary.json under one of ``work``
    (the run's own target spec must match: several folders may hold the same pair and seed)."""
    if r.get("target_auc") is not None:
        return float(r["target_auc"])
    for folder in work:
        summary = run_dir(folder, r["name"], r["pair"], r["seed"]) / "summary.json"
        if summary.is_file():
            data = json.loads(summary.read_text())
            if data.get("target") == r.get("target_spec"):
                return float(data["metrics"]["target_test"]["auc"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("entries", nargs="+", help="FILE:NAME=LABEL")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="Every built-in default against source-only none")
    ap.add_argument("--work-dir", action="append", default=[],
                    help="a folder of the runs, for AUCs not in the rows (repeatable)")
    args = ap.parse_args()
    work = [Path(w) for w in args.work_dir]

    none: dict[tuple[int, int], dict[str, Any]] = {}
    picked: list[tuple[str, dict[str, Any]]] = []
    for entry in args.entries:
        file, _, rest = entry.partition(":")
        name, _, label = rest.partition("=")
        for r in _rows(Path(file)):
            key = (r["pair"], r["seed"])
            if r["name"] == "none":
                if key in none and (none[key]["target"], none[key]["source"]) != (
                        r["target"], r["source"]):
                    raise SystemExit(f"{file}: none of pair {key[0]} seed {key[1]} differs "
                                     "from another file's: not the same runs")
                none[key] = r
            elif r["name"] == name:
                picked.append((label or name, r))

    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for label, r in picked:
        by[label].append(r)
    lines = [f"# {args.title}", "",
             "Target and source test accuracy (mean ± std over runs); gains in points against "
             "`none` on the same pair and seed; a pair is below `none` when its mean gain over "
             "seeds is negative. Rule for defaults (issue 14): no run below `none`, source "
             "change within -3 points.", "",
             "| default | runs | target | source | target gain | source change | runs below none "
             "(worst) | pairs below none | target AUC |",
             "| --- " * 9 + "|"]
    base = list(none.values())
    lines.append(f"| none (source only) | {len(base)} | "
                 f"{statistics.fmean(r['target'] for r in base):.3f} | "
                 f"{statistics.fmean(r['source'] for r in base):.3f} | 0 | 0 | - | - | "
                 + _mean_auc(base, work) + " |")
    for label, rs in by.items():
        rs = [r for r in rs if (r["pair"], r["seed"]) in none]
        gains = [100 * (r["target"] - none[(r["pair"], r["seed"])]["target"]) for r in rs]
        sgain = [100 * (r["source"] - none[(r["pair"], r["seed"])]["source"]) for r in rs]
        per_pair: dict[int, list[float]] = defaultdict(list)
        for r, g in zip(rs, gains, strict=True):
            per_pair[r["pair"]].append(g)
        bad_pairs = sorted(p for p, g in per_pair.items() if statistics.fmean(g) < 0)
        below = [g for g in gains if g < 0]
        lines.append(
            f"| {label} | {len(rs)} | {statistics.fmean(r['target'] for r in rs):.3f} | "
            f"{statistics.fmean(r['source'] for r in rs):.3f} | "
            f"{statistics.fmean(gains):+.1f} ± {statistics.stdev(gains):.1f} | "
            f"{statistics.fmean(sgain):+.1f} | {len(below)}"
            + (f" ({min(below):+.1f})" if below else "")
            + f" | {', '.join(map(str, bad_pairs)) or 'none'} | {_mean_auc(rs, work)} |")
    files = dict.fromkeys(Path(e.partition(":")[0]).name for e in args.entries)
    lines += ["", "Sources: " + ", ".join(f"`{f}`" for f in files) + ".", "",
              f"Command: `python benchmarks/defaults_table.py {shlex.join(sys.argv[1:])}`"]
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _mean_auc(rs: list[dict[str, Any]], work: list[Path]) -> str:
    aucs = [a for a in (_auc(r, work) for r in rs) if a is not None]
    return f"{statistics.fmean(aucs):.2f}" if aucs else "-"


if __name__ == "__main__":
    main()
