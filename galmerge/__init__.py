"""galmerge: find merging galaxies with domain-adapted deep learning."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "train", "classify", "evaluate"]


def train(**kwargs: Any) -> dict[str, Any]:
    """Train a classifier (see `galmerge.training.train`); returns the run summary."""
    from galmerge.training import train as _train

    return _train(**kwargs)


def classify(*args: Any, **kwargs: Any) -> Any:
    """Classify a catalog or image file (see `galmerge.classification.classify`)."""
    from galmerge.classification import classify as _classify

    return _classify(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """Write metrics and plots for a run directory (see `galmerge.evaluation.evaluate`)."""
    from galmerge.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


from galmerge.hookspecs import hookimpl  # noqa: E402  (re-exported for plugin authors)

__all__ += ["hookimpl"]
