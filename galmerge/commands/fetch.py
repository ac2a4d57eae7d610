"""`galmerge fetch`: download the real DeepMerge data into $GALMERGE_DATA/deepmerge."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("fetch")
@click.argument("survey", type=click.Choice(["illustris", "sdss", "all", "deepmerge1"]))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data folder (default: $GALMERGE_DATA or ./data); files go to DIR/deepmerge/.",
)
@click.option("--force", is_flag=True, help="Download again even if a verified copy exists.")
@click.option("--retries", type=click.IntRange(0, 100), default=5, show_default=True,
              help="Retries per file after a server error, timeout or dropped connection.")  # fmt: skip
@click.option("--no-progress", is_flag=True, help="No progress bar (e.g. in logs).")
def fetch(survey: str, data_dir: Path | None, force: bool, retries: int, no_progress: bool) -> None:
    """Download the real DeepMerge data with resume, size and MD5 checks (deepmerge1: size
    and FITS structure; MAST publishes no checksum).

    SURVEY is one of: illustris, sdss, all, deepmerge1. Servers: GALMERGE_ZENODO_URL and
    GALMERGE_MAST_URL (default zenodo.org and archive.stsci.edu).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from galmerge.surveys.deepmerge.download import Downloader
    from galmerge.surveys.deepmerge.download import fetch as fetch_files

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=no_progress,
    )
    with progress:
        results = fetch_files(
            survey,
            data_dir=data_dir,
            force=force,
            downloader=Downloader(retries=retries, progress=progress),
        )
    for r in results:
        what = "downloaded" if r.status == "downloaded" else "already present"
        click.echo(f"{r.name}: {what}, {r.size / 1e6:.1f} MB, {r.verified} verified ({r.path})")
