"""Finished runs as the benchmark scripts read them back (the scripts import it as a sibling:
``python benchmarks/SCRIPT.py`` puts this folder first on ``sys.path``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
Scores = tuple[np.ndarray, np.ndarray, float]


def add_arguments(ap: argparse.ArgumentParser, name: str) -> None:
    """The options every script over a ``pairP-seedS/NAME`` folder of runs takes."""
    ap.add_argument("--root", required=True, help="folder of pairP-seedS/NAME run directories")
    ap.add_argument("--names", nargs="+", required=True, help="run names besides none")
    ap.add_argument("--pairs", nargs="+", type=int, required=True)
    ap.add_argument("--seeds", nargs="+", type=int, required=True)
    ap.add_argument("--label", default="", help="what the runs are (for the markdown title)")
    ap.add_argument("--name", default=name)
    ap.add_argument("--out-dir", default=str(HERE / "results"))


def scored_runs(root: Path, pairs: list[int], seeds: list[int], names: list[str]
                ) -> Iterator[tuple[int, int, str, Scores, Scores]]:
    """(pair, seed, name, its `target_scores`, those of the pair and seed's `none`) for `none`
    and each of ``names`` that has a best.pt, in that order; a pair and seed without a `none`
    run is skipped (it has no baseline)."""
    for pair in pairs:
        for seed in seeds:
            folder = root / f"pair{pair}-seed{seed}"
            if not (folder / "none" / "best.pt").is_file():
                continue
            base = target_scores(folder / "none")
            for name in ["none", *names]:
                if (folder / name / "best.pt").is_file():
                    yield pair, seed, name, (base if name == "none" else
                                             target_scores(folder / name)), base


def target_scores(run: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(logit(merger) - logit(non-merger), labels) on the run's target test split, and the
    source training split's merger fraction (the prior the model's probabilities carry)."""
    import torch

    from galmerge.data.datasets import load_imageset
    from galmerge.data.splits import domain_splits
    from galmerge.models.inference import forward_in_batches
    from galmerge.models.model import load_model

    loaded = load_model(run / "best.pt")
    cfg = loaded.config
    source, target = load_imageset(cfg["source"]), load_imageset(cfg["target"])
    splits = domain_splits(len(source), len(target), int(cfg["seed"]))
    idx = splits["target"]["test"]
    with torch.no_grad():
        _, logits = forward_in_batches(loaded.model, target, idx, loaded.preprocess["target"],
                                       domain="target")
    margin = (logits[:, 1] - logits[:, 0]).double().numpy() / float(loaded.temperature or 1.0)
    src_labels = source.labels.numpy()[splits["source"]["train"]]
    return margin, target.labels.numpy()[idx], float(src_labels.mean())
