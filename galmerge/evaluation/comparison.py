"""`galmerge compare`: the paper-style table over run directories (from their summary.json).

One row per (strategy, backbone, source -> target, planned epochs, preset); each metric as
mean ± sample standard deviation over the seeds of that group; the gain in mean target accuracy
over the `none` runs on the same data and backbone (with the same epochs and preset when there
are such runs). Runs of different length or preset are never averaged together.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.provenance import shown_spec
from galmerge.scores.metrics import METRIC_NAMES

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
    metrics = summary["metrics"]
    ok = isinstance(metrics, dict) and all(
        isinstance(split, dict) and all(v is None or (isinstance(v, int | float)
                                                      and not isinstance(v, bool))
                                        for v in split.values())
        for split in metrics.values())
    if not ok:
        raise GalmergeError(f"{run / 'summary.json'}: 'metrics' is not split -> metric -> number; "
                            "re-run training or leave the run out of the comparison")
    return summary


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std and count of the values that are finite numbers (None: not measured)."""
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan, 0
    # one seed has no spread to report: NaN, shown as the mean alone
    return (float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan,
            len(arr))


#: config.toml settings that differ between the seeds of one configuration (or are paths of
#: the run's own folders) and so do not tell configurations apart
PER_RUN = frozenset({"seed", "init_from", "device", "run_dir"})

#: [observe] settings that "auto" replaces in config.toml by the numbers each run measured on
#: its own seed's splits (so the seeds of one configuration differ in them); config.toml keeps
#: only the numbers, so runs are grouped by whether there are numbers, and a row whose runs
#: differ in them gets a note (`notes`)
MEASURED = ("observe.sky_sigma", "observe.field_rate", "observe.field_scale")
MEASURED_MARK = "numbers"


def _data_specs(run: Path, summary: Mapping[str, Any]) -> tuple[str, str]:
    """The run's source and target specs as the table shows and groups them: a path argument
    of a run from before paths were recorded absolute made absolute from its env.json (so its
    runs and later ones of the same files share a row), one under the current folder shown
    relative to it; URL user info, which runs from before it was hidden still hold, as
    `***@`."""
    from galmerge.config import paths

    specs = paths.with_recorded_files(
        {"source": str(summary["source"]), "target": str(summary["target"])}, run)
    return (shown_spec(paths.display_spec(specs["source"])),
            shown_spec(paths.display_spec(specs["target"])))


def _setup(run: Path) -> tuple[int | None, str, dict[str, str]]:
    """Planned epochs, preset and every other setting (flattened ``a.b`` -> its TOML text) from
    the run's config.toml (None, "", {} when it has none); settings the record predates at the
    values its run trained with (`galmerge.config.legacy`). `MEASURED` settings keep their
    numbers here; `_grouping` sets them aside."""
    from galmerge.config.legacy import with_legacy_values
    from galmerge.config.resolve import read_toml

    path = run / "config.toml"
    if not path.is_file():
        return None, "", {}
    try:
        config = with_legacy_values(read_toml(path))
    except GalmergeError:
        return None, "", {}
    epochs = config.get("epochs")
    return ((int(epochs) if isinstance(epochs, int) else None), str(config.get("preset") or ""),
            flatten_settings({k: v for k, v in config.items() if k not in PER_RUN}))


#: ``* = 1``, every parameter at lr: what a record from before lr_multipliers trained with
#: (`galmerge.config.legacy`), and what a run whose modules declare none records as no table
ALL_AT_LR = "lr_multipliers.*"


def _grouping(settings: Mapping[str, str]) -> dict[str, str]:
    """``settings`` as runs are grouped by: `MEASURED` numbers (a list or a number, not
    "none"/"auto") stand as `MEASURED_MARK`; ``lr_multipliers.* = 1`` (the default for any
    parameter no other multiplier names) is left out."""
    return {k: json.dumps(MEASURED_MARK) if k in MEASURED and not isinstance(json.loads(v), str)
            else v for k, v in settings.items()
            if not (k == ALL_AT_LR and json.loads(v) == 1.0)}


def flatten_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """A config's settings flattened: ``a.b`` -> the value's JSON text (tables become keys)."""
    settings: dict[str, str] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                flatten(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            settings[prefix] = json.dumps(value, sort_keys=True, default=str)

    flatten("", config)
    return settings


def _differing(settings: Sequence[dict[str, str]]) -> list[str]:
    """The settings whose values are not the same in all of ``settings``."""
    keys = sorted(set().union(*settings)) if settings else []
    return [k for k in keys if len({s.get(k) for s in settings}) > 1]


def compare(runs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Table rows (dicts) grouped by strategy, backbone, source, target, epochs, preset and the
    rest of config.toml: runs whose settings differ in anything but the seed (lr, batch size,
    strategy options...) are never averaged together. Rows that the first six do not tell apart
    carry ``settings``, the values that differ (e.g. ``lr=0.01``)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    found: dict[tuple[Any, ...], dict[str, str]] = {}
    measured: dict[tuple[Any, ...], list[dict[str, str]]] = {}
    for run in runs:
        s = read_summary(Path(run))
        epochs, preset, exact = _setup(Path(run))
        source, target = _data_specs(Path(run), s)
        settings = _grouping(exact)
        settings.update({k: json.dumps(v) for k, v in (("source", source), ("target", target))
                         if k in settings})
        visible = (str(s["strategy"]), str(s["backbone"]), source, target, epochs, preset)
        key = (*visible, json.dumps(settings, sort_keys=True))
        groups.setdefault(key, []).append({**s, "_run_dir": os.path.abspath(run)})
        found[key] = settings
        measured.setdefault(key, []).append({k: exact[k] for k in MEASURED if k in exact})
    # the settings that tell apart groups the table's own columns show alike
    by_visible: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for key in groups:
        by_visible.setdefault(key[:6], []).append(key)
    rows = []
    for key, members in groups.items():
        strategy, backbone, source, target, epochs, preset = key[:6]
        apart = _differing([found[k] for k in by_visible[key[:6]]])
        seeds = [m.get("seed") for m in members if m.get("seed") is not None]
        row: dict[str, Any] = {
            "strategy": strategy,
            "backbone": backbone,
            "source": source,
            "target": target,
            "runs": len(members),
            "epochs": epochs,
            "preset": preset,
            "seeds": sorted(set(seeds)),
            "settings": " ".join(f"{k}={json.loads(found[key][k]) if k in found[key] else '-'}"
                                 for k in apart),
            # a seed given twice: the spread is not over seeds alone
            "repeated_seeds": sorted({x for x in seeds if seeds.count(x) > 1}),
            # measured (or hand-given) [observe] numbers that differ between the row's runs
            "varying": _differing(measured[key]),
            # where each number comes from: the runs, and the best.pt each summary names (JSON
            # lists: a folder name may hold the ';' that joins other lists in the CSV)
            "run_dirs": json.dumps([m["_run_dir"] for m in members]),
            "best_sha256": json.dumps([str(m.get("best_sha256") or "") for m in members]),
        }
        for split in SPLITS:
            for name in METRIC_NAMES:
                mean, std, count = _stats([m["metrics"].get(split, {}).get(name)
                                           for m in members])
                row[f"{split}_{name}_mean"] = mean
                row[f"{split}_{name}_std"] = std
                # `runs` counts every run; a metric some lack is over fewer
                row[f"{split}_{name}_runs"] = count
        rows.append(row)
    for row in rows:
        base = _baseline(row, rows)
        row["target_accuracy_gain_over_none"] = (
            row["target_test_accuracy_mean"] - base["target_test_accuracy_mean"]
            if base is not None
            else math.nan
        )
        row["baseline"] = "" if base is None else _describe(base)
    rows.sort(
        key=lambda r: (
            r["source"],
            r["target"],
            r["backbone"],
            r["strategy"] != "none",
            r["strategy"],
            r["epochs"] or 0,
            r["preset"],
            r["settings"],
        )
    )
    return rows


def _baseline(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The `none` row a row's gain is measured against: same data and backbone; then the same
    epochs and preset if there is one, else the closest epochs (ties: the fewer, then preset
    and settings by name). A fixed rule, whatever order the run folders come in."""
    nones = [r for r in rows if r["strategy"] == "none" and r["backbone"] == row["backbone"]
             and r["source"] == row["source"] and r["target"] == row["target"]]
    if not nones:
        return None

    def rank(r: dict[str, Any]) -> tuple[Any, ...]:
        same = (r["epochs"], r["preset"]) == (row["epochs"], row["preset"])
        gap = abs((r["epochs"] or 0) - (row["epochs"] or 0))
        return (not same, gap, r["epochs"] or 0, r["preset"], r["settings"])

    return min(nones, key=rank)


def _epochs(row: dict[str, Any]) -> str:
    n = row.get("epochs")
    return "? epochs" if n is None else f"{n} epoch{'' if n == 1 else 's'}"


def _describe(row: dict[str, Any]) -> str:
    """A `none` row named by what tells it apart: epochs, preset and settings."""
    parts = [_epochs(row),
             f"preset {row['preset']}" if row.get("preset") else "", row.get("settings") or ""]
    return "none (" + ", ".join(p for p in parts if p) + ")"


def notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per thing a reader of the table must know: runs of one configuration that
    share a seed or differ in `MEASURED` numbers, and gains measured against a `none` of other epochs or preset."""
    out = []
    for r in rows:
        name = _name(r)
        if r.get("repeated_seeds"):
            out.append(f"note: {name}: {r['runs']} runs but seeds "
                       f"{', '.join(map(str, r['repeated_seeds']))} repeated; its ± is not a "
                       "spread over seeds alone")
        if r.get("varying"):
            out.append(f"note: {name}: its {r['runs']} runs differ in "
                       f"{', '.join(r['varying'])} (the numbers \"auto\" measured on each "
                       "seed's data, or values given by hand; config.toml keeps only numbers)")
        base = r.get("baseline") or ""
        if r["strategy"] != "none" and base and not base.startswith(
                f"none ({_epochs(r)}" + (f", preset {r['preset']}" if r["preset"] else "")):
            out.append(f"note: {name}, {_epochs(r)}: gain over {base}")
    return out


def _pm(row: dict[str, Any], split: str, name: str) -> str:
    mean, std = row[f"{split}_{name}_mean"], row[f"{split}_{name}_std"]
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"
    return text + _fewer(row, split, name, " ({} of {} runs)")


def _fewer(row: dict[str, Any], split: str, name: str, form: str) -> str:
    """``form`` filled with the metric's run count and the row's, when the metric is over
    fewer runs than the row has (some runs lack it), else ""."""
    count = row.get(f"{split}_{name}_runs", row["runs"])
    return form.format(count, row["runs"]) if count < row["runs"] else ""


def _gain(value: float) -> str:
    return f"{value:+.3f}" if math.isfinite(value) else "n/a"


TABLE_HEADER = [
    "strategy",
    "backbone",
    "source → target",
    "runs",
    "epochs",
    "preset",
    *[f"{split.split('_')[0]} {name}" for split in SPLITS for name in METRIC_NAMES],
    "target acc gain over none",
]


def _name(row: dict[str, Any]) -> str:
    """The strategy, and in brackets the settings that tell its row apart, if any."""
    return row["strategy"] + (f" [{row['settings']}]" if row.get("settings") else "")


def table_cells(row: dict[str, Any]) -> list[str]:
    return [
        _name(row),
        row["backbone"],
        f"{row['source']} → {row['target']}",
        str(row["runs"]),
        "?" if row.get("epochs") is None else str(row["epochs"]),
        row.get("preset") or "-",
        *[_pm(row, split, name) for split in SPLITS for name in METRIC_NAMES],
        _gain(row["target_accuracy_gain_over_none"]),
    ]


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(esc(c) for c in table_cells(r)) + " |" for r in rows]
    text = ("\n".join(lines)
            + "\n\nMean ± sample standard deviation over seeds (test splits; one seed: mean "
            "only).\n")
    return text + "".join(f"\n{line}\n" for line in [*notes(rows), made_by(rows)])


def made_by(rows: Sequence[dict[str, Any]]) -> str:
    """The table's provenance line: when, by which galmerge code, from how many runs (the
    CSV lists each run folder and its best.pt SHA-256)."""
    from galmerge.io.provenance import code_identity, describe_code

    n = sum(int(r["runs"]) for r in rows)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return (f"Made {when} by {describe_code(code_identity())} from {n} run"
            f"{'s' if n != 1 else ''} (the table as CSV lists their folders and best.pt "
            "SHA-256).")


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
    # an earlier table may be replaced (its first line is the header), another file never
    atomic.check_replaceable(path, atomic.starts_with(b"| strategy |", b"strategy,"),
                             "a galmerge compare table", option="--output")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)
    return path


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """One table per data pair and backbone (its title names them), sized for 80 columns:
    mean over ± std in each cell, the runs' planned epochs and preset in a column of their own.
    Markdown and CSV (--output) hold every metric."""
    import sys

    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = Console(file=sys.stdout)
    shown = [("source_test", "accuracy", "source\nacc"),
             ("target_test", "accuracy", "target\nacc"), ("target_test", "auc", "target\nAUC")]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["target"], r["backbone"]), []).append(r)
    for (source, target, backbone), members in groups.items():
        t = Table(
            # names read from summary.json files: plain text, folded rather than cut where a
            # long data spec has no space to wrap at
            title=Text(f"{source} → {target}, {backbone}: test metrics, mean ± std over seeds",
                       overflow="fold"),
            box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True,
        )
        t.add_column("strategy", overflow="fold")
        # no edge and shared padding leave the names room for "mmd+fisher+entropy" and
        # "synthetic-sim-real" in 80 columns; a longer name folds, never cut
        t.add_column("runs", justify="right")
        t.add_column("epochs,\npreset", overflow="fold")
        for _, _, header in shown:
            t.add_column(header, justify="right", min_width=6)
        t.add_column("target\ngain", justify="right", min_width=6)
        for r in members:
            n = r.get("epochs")
            setup = "? epochs" if n is None else f"{n} epoch{'' if n == 1 else 's'}"
            if r.get("preset"):
                setup += f"\n{r['preset']}"
            t.add_row(
                escape(_name(r)),
                str(r["runs"]),
                escape(setup),
                *[_stacked(r, split, name) for split, name, _ in shown],
                _gain(r["target_accuracy_gain_over_none"]),
            )
        console.print(t)
    setups = {(r.get("epochs"), r.get("preset")) for r in rows}
    if len(setups) > 1:
        console.print(
            "note: these runs differ in epochs or preset (see that column); each gain is "
            "over the `none` runs with the same setup where there are some",
            markup=False, highlight=False,
        )


def _stacked(row: dict[str, Any], split: str, name: str) -> str:
    """Mean above ± std: narrow enough for an 80-column table."""
    mean, std = row[f"{split}_{name}_mean"], row[f"{split}_{name}_std"]
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.3f}\n±{std:.3f}" if math.isfinite(std) else f"{mean:.3f}"
    return text + _fewer(row, split, name, "\n{}/{} runs")
