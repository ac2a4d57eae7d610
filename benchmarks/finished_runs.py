"""Finished runs as the benchmark scripts read them back (the scripts import it as a sibling:
``python benchmarks/SCRIPT.py`` puts this folder first on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
