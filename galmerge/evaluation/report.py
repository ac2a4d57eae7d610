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
