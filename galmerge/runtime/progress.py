"""What a person sees while training: a rich progress bar, epoch lines and a results table.

``quiet`` (and every rank but 0) shows nothing but errors; the bar refreshes at most a few times
a second so it never slows training. Everything fits an 80-column terminal: the bar line holds
only the whole-run progress and its ETA, the running loss terms get a line of their own under
it, and paths are printed on lines of their own that rich never wraps (a wrapped path pasted
into the next command would break it).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any

BAR_WIDTH = 24  # leaves room for "epoch 200/200", steps, elapsed and ETA within 80 columns


def _has_ipywidgets() -> bool:
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def print_path(console: Any, label: str, path: object) -> None:
    """``label`` and a path on one line that rich never wraps or crops (copy-paste safe)."""
    console.print(f"{label} {path}", soft_wrap=True, markup=False, highlight=False)


class Progress:
    def __init__(
        self, quiet: bool, total_epochs: int, steps_per_epoch: int, console: Any = None
    ) -> None:
        self.quiet = quiet
        self.total_epochs, self.steps_per_epoch = total_epochs, steps_per_epoch
        self._progress = None
        self._task = None
        self._last = 0.0
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class _WithTerms(RichProgress):
            """The bar line, then the running loss terms on a line of their own."""

            def get_renderables(self):  # type: ignore[no-untyped-def]
                yield from super().get_renderables()
                info = next((t.fields.get("info", "") for t in self.tasks), "")
                if info:
                    yield Text(info, overflow="fold")

        self.console = console if console is not None else Console(stderr=True)
        if self.console.is_jupyter and not _has_ipywidgets():
            # rich's live bar in Jupyter needs ipywidgets (not a dependency): without it every
            # refresh printed a UserWarning; epoch lines alone, printed as they come, instead
            return
        self._progress = _WithTerms(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )

    def info(self, message: str, path: object = None) -> None:
        """A message; ``path`` (a run directory) goes on the last line, never wrapped."""
        if self.quiet:
            return
        # soft_wrap: rich inserts no newlines (a log file keeps whole lines)
        self.console.print(message, soft_wrap=True, markup=False, highlight=False)
        if path is not None:
            print_path(self.console, "run directory:", path)

    def warn(self, message: str) -> None:
        """A one-line warning (collapse, ...): shown even above a running bar."""
        if self.quiet:
            return
        target = self._progress.console if self._progress is not None else self.console
        target.print(message, style="yellow", soft_wrap=True, markup=False, highlight=False)

    def start(self, done_steps: int, epoch: int) -> None:
        if self._progress is None:
            return
        self._progress.start()
        self._task = self._progress.add_task(
            "train",
            total=self.total_epochs * self.steps_per_epoch,
            completed=done_steps,
            epoch=epoch,
            epochs=self.total_epochs,
            info="",
        )

    def step(self, done_steps: int, epoch: int, losses: Mapping[str, float] | None = None) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._last < 0.25 and losses is None:
            return
        self._last = now
        fields: dict[str, Any] = {"completed": done_steps, "epoch": epoch}
        if losses is not None:
            fields["info"] = "  running mean: " + "  ".join(
                f"{k} {v:.4g}" for k, v in losses.items()
            )
        self._progress.update(self._task, **fields)

    def epoch_done(self, row: Mapping[str, Any], improved: bool) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task,
                                  completed=int(row["epoch"]) * self.steps_per_epoch)
        target = self._progress.console if self._progress is not None else self.console
        for line in epoch_lines(row, self.total_epochs, improved):
            target.print(line, soft_wrap=True, markup=False, highlight=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def epoch_lines(
    row: Mapping[str, Any], total_epochs: int, improved: bool, width: int = 80
) -> list[str]:
    """Lines of at most ``width`` columns: validation numbers, then the epoch's training means.

    ``*`` marks a new best checkpoint. The target accuracy is marked "oracle": it reads target
    labels, which training and model selection never use.
    """
    head = f"epoch {int(row['epoch'])}/{total_epochs}{' *' if improved else '  '}"
    first = (
        f"{head}  source val loss {_f(row, 'source_val_loss', '.3f')} "
        f"acc {_f(row, 'source_val_accuracy', '.3f')}  "
        f"target val acc {_f(row, 'target_val_accuracy', '.3f')} (oracle)"
    )
    items = [f"train loss {_f(row, 'loss_total', '.4f')}"]
    items += [f"{k[5:]} {_f(row, k, '.4g')}" for k in row if k.startswith("loss_")
              if k != "loss_total"]
    items += [f"lr {_f(row, 'lr', '.1e')}", f"{_f(row, 'images_per_s', '.0f')} img/s"]
    lines, indent = [first], "    "
    current = indent
    for item in items:
        if current.strip() and len(current) + 2 + len(item) > width:
            lines.append(current)
            current = indent
        current += ("  " if current.strip() else "") + item
    lines.append(current)
    return lines


def _f(row: Mapping[str, Any], key: str, spec: str) -> str:
    value = row.get(key, math.nan)
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return "-"


def results_table(summary: Mapping[str, Any], quiet: bool) -> None:
    """The final table: test metrics for source and target, the surveys named; collapse
    warnings; the run directory last, on its own unwrapped line. ``quiet``: the warnings only,
    on stderr (a collapsed run is never silent)."""
    if quiet:
        for warning in summary.get("warnings") or []:
            print(warning, file=sys.stderr)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{summary['strategy']} / {summary['backbone']}: test metrics "
        f"(best epoch {summary['best_epoch']} of {summary['epochs_run']})",
        caption=f"source: {summary.get('source', '?')}   target: {summary.get('target', '?')}",
    )
    table.add_column("split")
    names = ["accuracy", "precision", "recall", "f1", "brier", "auc"]
    for name in names:
        table.add_column(name, justify="right")
    for split in ("source_test", "target_test"):
        m = summary["metrics"][split]
        table.add_row(split.replace("_", " "), *[_cell(m.get(n)) for n in names])
    console = Console(file=sys.stdout)
    console.print(table)
    for warning in summary.get("warnings") or []:
        Console(stderr=True).print(
            warning, style="yellow", soft_wrap=True, markup=False, highlight=False
        )
    print_path(console, "run directory:", summary["run_dir"])


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3f}"
