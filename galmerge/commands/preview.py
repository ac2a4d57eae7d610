"""`galmerge preview SURVEY`: a PNG grid of mergers and non-mergers, to look before training."""

from __future__ import annotations

import re
from pathlib import Path

import click


def _default_output(spec: str) -> Path:
    from galmerge.io.provenance import shown_spec

    # named after the spec as shown: no URL's user name or password in a file name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", shown_spec(spec)).strip("-") or "survey"
    return Path(f"preview-{slug}.png")


@click.command("preview")
@click.argument("survey")
@click.option("--n", "n", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Examples in the grid, split evenly between mergers and non-mergers (mergers first).")  # fmt: skip
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write (default: preview-<survey>.png).")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which examples are drawn.")  # fmt: skip
def preview(survey: str, n: int, output: Path | None, seed: int) -> None:
    """Write a PNG grid of SURVEY's images per class (arcsinh colour composites).

    SURVEY is any survey spec with labels, e.g. synthetic:sdss, synthetic:illustris?n=500,
    hdf5:data/my_set.h5, illustris, sdss.
    """
    from galmerge.data.datasets import load_imageset
    from galmerge.evaluation.preview import check_preview_output, write_preview

    out = output or _default_output(survey)
    check_preview_output(out)  # before the survey is read (it may be downloaded)
    imageset = load_imageset(survey)
    path = write_preview(imageset, out, n=n, seed=seed)
    click.echo(f"wrote {path} ({imageset.describe()})")
