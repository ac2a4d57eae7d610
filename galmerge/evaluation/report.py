"""`report.html`: one self-contained page (figures embedded as base64 PNG) for a run."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galmerge.io import atomic
from galmerge.scores.metrics import METRIC_NAMES

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}
h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:.9em}
.oracle{color:#777;font-style:italic}
"""


@dataclass
class Figure:
    """One embedded PNG with a caption; ``file`` is the PNG's name in the report folder."""

    file: str
    title: str
    caption: str = ""


@dataclass
class Section:
    title: str
    html: str = ""
    figures: list[Figure] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Rows = metric names, columns = domains; each cell 'value [low, high]'."""
    domains = list(metrics)
    head = "".join(f"<th>{html.escape(d)}</th>" for d in domains)
    rows = []
    for name in METRIC_NAMES:
        cells = []
        for d in domains:
            m = metrics[d]
            cell = fmt(m["value"].get(name))
            interval = m.get("interval_68", {}).get(name)
            if interval and all(v is not None and math.isfinite(v) for v in interval):
                cell += f" <span class='note'>[{fmt(interval[0])}, {fmt(interval[1])}]</span>"
            cells.append(f"<td>{cell}</td>")
        rows.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f" class='{classes[i]}'" if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(path: Path, title: str, intro: str, sections: Sequence[Section]) -> Path:
    """Write the page; every figure is read from ``path.parent`` and embedded."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>{intro}",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>{section.html}")
        for figure in section.figures:
            data = base64.b64encode((path.parent / figure.file).read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(figure.title)}'"
                f" data-file='{html.escape(figure.file)}'><figcaption><b>"
                f"{html.escape(figure.title)}</b> ({html.escape(figure.file)}). "
                f"{html.escape(figure.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    atomic.write_text(path, "\n".join(parts))
    return path


# -- the evaluation report ----------------------------------------------------------------------
def _baseline_caption(payload: Mapping[str, Any]) -> str:
    """The embedding caption's words on the "before" panel: which run it is, how it was chosen
    and every setting in which it is not this run's source-only counterpart."""
    if not payload.get("baseline"):
        why = ("this run is source only itself" if payload.get("strategy") == "none" else
               "no `none` run of the same data and backbone was found beside this run")
        return (f" No before/after: {why}; pass --baseline RUN_DIR (a `none` run on the same "
                "data and backbone) to add the source-only panel.")
    name = payload.get("baseline_name") or payload["baseline"]
    strategy = payload.get("baseline_strategy") or "none"
    what = ("the source-only `none` baseline" if strategy == "none"
            else f"strategy {strategy}, not a source-only run")
    how = {"own source-only stage": "the source-only stage this run started from",
           "automatic": "found beside this run", "--baseline": "given by --baseline"}.get(
        payload.get("baseline_chosen_by") or "", "")
    diffs = payload.get("baseline_differences")
    differs = ("it differs from this run's source-only counterpart in " + "; ".join(diffs)
               if diffs else "it has this run's settings" if diffs is not None else "")
    parts = [p for p in (how, differs) if p]
    return (f" Left: before, {what}: run {name}" + (f" ({'; '.join(parts)})" if parts else "")
            + "; right: after, this run.")


def write_evaluation_report(path: Path, payload: Mapping[str, Any], gradcam_caption: str) -> Path:
    """`galmerge evaluate`'s report.html from its metrics.json payload (figures beside it)."""
    intro = (
        f"<p>Run <code>{fmt(str(payload['run_dir']))}</code>: strategy "
        f"<b>{fmt(payload.get('strategy'))}</b>, backbone <b>{fmt(payload.get('backbone'))}</b>,"
        f" source <code>{fmt(payload.get('source'))}</code> &rarr; target <code>"
        f"{fmt(payload.get('target'))}</code>, seed {fmt(payload.get('seed'))}; checkpoint "
        f"{payload['checkpoint']}.pt (epoch {payload['epoch']}).</p>"
    )
    sections = evaluation_sections(payload, gradcam_caption)
    return write_report(path, "galmerge evaluation report", intro, sections)


def evaluation_sections(payload: Mapping[str, Any], gradcam_caption: str) -> list[Section]:
    """The sections of `galmerge evaluate`'s report from its metrics.json payload."""
    files = payload["files"]
    m = payload["metrics"]
    cal = payload["calibration"]
    n_boot = next(iter(m.values()))["bootstrap"]
    out = [
        Section(
            "Test metrics",
            metrics_table(m) + f"<p class='note'>Merger is the positive class; threshold "
            f"p_merger = 0.5 at temperature {fmt(payload['temperature_used'])}. "
            + (
                f"Brackets: 68% bootstrap interval over {n_boot} resamples of the test images."
                if n_boot
                else "No bootstrap intervals (--bootstrap 0)."
            )
            + "</p>",
        )
    ]
    if "training_curves" in files:
        out.append(
            Section(
                "Training",
                figures=[
                    Figure(
                        files["training_curves"],
                        "Training curves",
                        "Loss terms per epoch, source validation loss, validation accuracy per "
                        "domain. The target accuracy uses target labels and is never used for "
                        "training or selection.",
                    )
                ],
            )
        )
    out.append(
        Section(
            "Discrimination",
            figures=[
                Figure(files["roc"], "ROC curves", "Source and target test splits."),
                Figure(
                    files["confusion"],
                    "Confusion matrices",
                    "Counts and fraction of each true class.",
                ),
            ],
        )
    )
    ece = cal["ece"]
    cal_rows = [
        [f"{d}", ece[d]["T=1"], ece[d]["fitted"], ece[d].get("importance_weighted")]
        for d in ece
    ]
    out.append(
        Section(
            "Calibration",
            f"<p>Temperature fitted on the source validation split: T = "
            f"{fmt(cal['fitted_temperature'])} (source val NLL {fmt(cal['source_val_nll']['T=1'])} "
            f"&rarr; {fmt(cal['source_val_nll']['fitted'])}); "
            f"{'written to the checkpoint' if cal['applied'] else 'not applied (use --calibrate)'}."
            f" Importance-weighted T (source validation rows weighted by a domain classifier's "
            f"p_target/p_source, Wang et al. 2020; no target labels): "
            f"{fmt(cal['importance_weighted_temperature'])}."
            f"</p>"
            + table(["split", "ECE at T=1", "ECE at fitted T", "ECE at weighted T"], cal_rows),
            [
                Figure(
                    files["reliability"],
                    "Reliability diagram",
                    "Solid: T = 1; dashed: temperature-scaled.",
                )
            ],
        )
    )
    out.append(
        Section(
            "Latent space",
            figures=[
                Figure(
                    files["embedding"],
                    f"{payload['embedding_method']} of test features",
                    "Top row coloured by domain (overlap is what adaptation aims for), bottom "
                    "row by class on the same points (target classes use target labels, for "
                    "display only; separated classes are what the classifier needs)."
                    + _baseline_caption(payload),
                )
            ],
        )
    )
    gal = [
        Figure(
            files["gallery"],
            "Target gallery",
            "Most and least confident target mergers and non-mergers.",
        )
    ]
    if "gradcam" in files:
        gal.append(
            Figure(
                files["gradcam"],
                "Grad-CAM",
                gradcam_caption,
            )
        )
    out.append(Section("Target examples", figures=gal))
    if payload["selection"]:
        rows = [
            [c["label"], c["direction"], c["epoch"], c["target_val_accuracy"], c["gap_to_oracle"]]
            for c in payload["selection"]
        ]
        classes = ["oracle" if c["oracle"] else "" for c in payload["selection"]]
        labelled = any(
            c["target_val_accuracy"] is not None and math.isfinite(c["target_val_accuracy"])
            for c in payload["selection"]
        )
        out.append(
            Section(
                "Model selection without target labels",
                "<p>Epoch each label-free score would pick (from metrics.csv) and the target "
                "validation accuracy there. The <span class='oracle'>oracle</span> uses target "
                "labels: research only, the best any rule could do.</p>"
                + table(
                    ["score", "better", "epoch", "target val accuracy", "gap to oracle"],
                    rows,
                    classes,
                ),
                [
                    Figure(
                        files["selection"],
                        "Selection comparison",
                        "Grey bars: oracle."
                        if labelled
                        else "No target labels: each score's curve and the epoch it picks.",
                    )
                ],
            )
        )
    return out
