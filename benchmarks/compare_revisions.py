"""Run one benchmark script from two checkouts of galmerge, alternating, and compare its figures.

For "no slowdown beyond noise" claims about a change (issue 15's move into sub-packages, say):
each round runs the benchmark once from ``--before`` and once from ``--after`` (order swapped
every round, so load drift hits both sides alike), each in its own process with ``PYTHONPATH``
set to its checkout, and reads the JSON object the script prints last. ``--metric`` names the
figures to compare by dotted path (a list value counts as its median). Writes JSON + markdown.

    python benchmarks/compare_revisions.py --before ../old-checkout --after . --rounds 3 \\
        --metric results.none.galmerge_images_per_s --metric results.none.ratio_median \\
        --output benchmarks/results/layout_train -- benchmarks/bench_train.py --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def last_json(stdout: str) -> dict[str, Any]:
    """The last top-level JSON object of a script's output (one line or pretty-printed)."""
    start = stdout.rfind("\n{")
    text = stdout[start + 1 :] if start >= 0 else stdout
    return json.loads(text.strip())


def pick(report: dict[str, Any], path: str) -> float:
    value: Any = report
    for part in path.split("."):
        value = value[part]
    if isinstance(value, list):
        value = statistics.median(value)
    return float(value)


def run_once(checkout: Path, script: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, *script], cwd=checkout, env=env, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {' '.join(script)} failed:\n{done.stderr[-2000:]}")
    return last_json(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--metric", action="append", required=True)
    ap.add_argument("--output", required=True, help="path without suffix: .json and .md written")
    ap.add_argument("script", nargs="+", help="benchmark script and its arguments (after --)")
    args = ap.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    revs = {k: subprocess.run(["git", "-C", str(v), "rev-parse", "--short", "HEAD"], text=True,
                              capture_output=True, check=False).stdout.strip()
            for k, v in sides.items()}
    values: dict[str, dict[str, list[float]]] = {k: {m: [] for m in args.metric} for k in sides}
    load = [os.getloadavg()]
    t0 = time.time()
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            report = run_once(sides[side], args.script)
            for m in args.metric:
                values[side][m].append(pick(report, m))
        load.append(os.getloadavg())
    summary = {
        m: {
            "before_median": statistics.median(values["before"][m]),
            "after_median": statistics.median(values["after"][m]),
            "after_over_before": statistics.median(values["after"][m])
            / statistics.median(values["before"][m]),
        }
        for m in args.metric
    }
    out = {
        "benchmark": "compare_revisions", "script": args.script, "rounds": args.rounds,
        "revisions": revs, "values": values, "summary": summary,
        "load_average_per_round": [[round(x, 2) for x in la] for la in load],
        "seconds": round(time.time() - t0, 1), "cpu_count": os.cpu_count(),
    }
    base = Path(args.output)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# {' '.join(args.script)}: {revs['before']} (before) vs {revs['after']} (after)",
             "", f"{args.rounds} alternating rounds; load average (1, 5, 15 min) per round: "
             + "; ".join(", ".join(f"{x:.2f}" for x in la) for la in load), "",
             "| metric | before (median) | after (median) | after / before |",
             "| --- | --- | --- | --- |"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['before_median']:.4g} | {s['after_median']:.4g} | "
                     f"{s['after_over_before']:.3f} |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
