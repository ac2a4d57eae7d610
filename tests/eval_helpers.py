"""Tiny real runs for the evaluate/compare tests: HDF5 image files (the built-in `hdf5:` survey),
the real deepmerge backbone on 16x16 stamps, real strategies, two epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train_toys import toy_sets

import galmerge
from galmerge.io.hdf5 import write_imageset


def write_pair(folder: Path, n: int = 80, seed: int = 0) -> tuple[str, str]:
    """Source and target HDF5 files with a domain shift; returns their `hdf5:` specs."""
    folder.mkdir(parents=True, exist_ok=True)
    source, target = toy_sets(n_source=n, n_target=n, channels=3, size=16, seed=seed)
    write_imageset(folder / "source.h5", source)
    write_imageset(folder / "target.h5", target)
    return f"hdf5:{folder / 'source.h5'}", f"hdf5:{folder / 'target.h5'}"


def tiny_run(
    run_dir: Path, source: str, target: str, strategy: str = "none", seed: int = 0, **kw: Any
) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        backbone="deepmerge",
        epochs=2,
        batch_size=8,
        device="cpu",
        quiet=True,
        patience=0,
    )
    args.update(kw)
    return galmerge.train(
        source=source, target=target, strategy=strategy, seed=seed, run_dir=run_dir, **args
    )
