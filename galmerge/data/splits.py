"""Deterministic train/val/test splits: the same seed gives the same split in every script."""

from __future__ import annotations

import numpy as np

from galmerge.errors import GalmergeError

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def split_indices(
    n: int, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    what: str = "the data",
) -> dict[str, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into sorted train/val/test index arrays;
    fewer than 3 images is a one-line error naming ``what`` (a data spec)."""
    if n < 3:
        raise GalmergeError(
            f"{what} has {n} image{'' if n == 1 else 's'}; every set is split 70/10/20 into "
            f"train, val and test, which needs at least 3: give it at least 10 images")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    n_val = max(1, n_val) if fractions[1] > 0 else 0
    n_train = min(n_train, n - n_val - (1 if fractions[2] > 0 else 0))
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


def domain_splits(
    n_source: int, n_target: int, seed: int, names: tuple[str, str] = ("source", "target")
) -> dict[str, dict[str, np.ndarray]]:
    """The splits of a run: source with ``seed``, target with ``seed + 1`` (70/10/20 each);
    ``names`` (the data specs) name a set too small to split."""
    return {"source": split_indices(n_source, seed, what=names[0]),
            "target": split_indices(n_target, seed + 1, what=names[1])}
