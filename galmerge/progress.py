"""What a person sees while training: a rich progress bar, epoch lines and a results table.

``quiet`` (and every rank but 0) shows nothing but errors; the bar refreshes at most a few times
a second so it never slows training.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any


class Progress:
    def __init__(self, quiet: bool, total_epochs: int, steps_per_epoch: int) -> None:
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

        self.console = Console(stderr=True)
        self._progress = RichProgress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)  # may hold paths: user text

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
            fields["info"] = "  ".join(f"{k} {v:.4g}" for k, v in losses.items())
        self._progress.update(self._task, **fields)

    def epoch_done(self, row: Mapping[str, Any], improved: bool) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=int(row["epoch"]) * self.steps_per_epoch)
        mark = " *" if improved else ""
        self._progress.console.print(
            f"epoch {int(row['epoch'])}: loss {row.get('loss_total', math.nan):.4f}  "
            f"source val loss {row.get('source_val_loss', math.nan):.4f}  "
            f"source val acc {row.get('source_val_accuracy', math.nan):.3f}  "
            f"target val acc {row.get('target_val_accuracy', math.nan):.3f}  "
            f"lr {row.get('lr', math.nan):.2e}  {row.get('images_per_s', math.nan):.0f} img/s{mark}"
        )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def results_table(summary: Mapping[str, Any], quiet: bool) -> None:
    """The final table: test metrics for source and target."""
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['strategy']} / {summary['backbone']}: test metrics "
                  f"(best epoch {summary['best_epoch']} of {summary['epochs_run']})")
    table.add_column("split")
    names = ["accuracy", "precision", "recall", "f1", "brier", "auc"]
    for name in names:
        table.add_column(name, justify="right")
    for split in ("source_test", "target_test"):
        m = summary["metrics"][split]
        table.add_row(split, *[_cell(m.get(n)) for n in names])
    console = Console(file=sys.stdout)
    console.print(table)
    console.print(f"run directory: {summary['run_dir']}", markup=False)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4f}"
