"""galmerge: find merging galaxies with domain-adapted deep learning.

This module is also the whole public API for plugin authors: a plugin imports what it needs from
``galmerge`` itself (``from galmerge import hookimpl, Strategy, resolve_options``), never from a
submodule, whose path may change between releases. Names that pull in torch, numpy or requests
load on first use, so a plugin module that imports only ``hookimpl`` and the records stays cheap
(galmerge imports every plugin to list components).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from galmerge.errors import GalmergeError, PluginError
from galmerge.hookspecs import hookimpl
from galmerge.losses.options import Option, resolve_options
from galmerge.records import Backbone, Strategy, Survey

__version__ = "0.1.0"

if TYPE_CHECKING:
    from galmerge.cutouts import CutoutRequest, CutoutResult, CutoutService
    from galmerge.http_retry import (
        CorruptResponse,
        FetchError,
        RetryingClient,
        RetryPolicy,
        bounded_map,
        classify_exception,
        http_status_error,
    )
    from galmerge.imageset import ImageSet, LazyImages
    from galmerge.preprocess import PreprocessSpec
    from galmerge.sdss_cutouts import cut_stamp_with_edge
    from galmerge.strategy_api import StepInputs, StrategyContext

#: public name -> module that defines it, imported on first access (PEP 562)
_LAZY: dict[str, str] = {
    "StepInputs": "galmerge.strategy_api",
    "StrategyContext": "galmerge.strategy_api",
    "ImageSet": "galmerge.imageset",
    "LazyImages": "galmerge.imageset",
    "PreprocessSpec": "galmerge.preprocess",
    "CutoutService": "galmerge.cutouts",
    "CutoutRequest": "galmerge.cutouts",
    "CutoutResult": "galmerge.cutouts",
    "RetryingClient": "galmerge.http_retry",
    "RetryPolicy": "galmerge.http_retry",
    "FetchError": "galmerge.http_retry",
    "CorruptResponse": "galmerge.http_retry",
    "bounded_map": "galmerge.http_retry",
    "classify_exception": "galmerge.http_retry",
    "http_status_error": "galmerge.http_retry",
    # resample a survey image around (ra, dec) onto a model's pixel grid (north up, flux kept)
    "cut_stamp_with_edge": "galmerge.sdss_cutouts",
}

__all__ = [
    "__version__",
    # running the pipeline from Python
    "train",
    "classify",
    "evaluate",
    # the plugin contract
    "hookimpl",
    "Backbone",
    "Strategy",
    "Survey",
    "GalmergeError",
    "PluginError",
    "resolve_options",
    "Option",
    "register_plugin",
    "StepInputs",
    "StrategyContext",
    "ImageSet",
    "LazyImages",
    "PreprocessSpec",
    "CutoutService",
    "CutoutRequest",
    "CutoutResult",
    "RetryingClient",
    "RetryPolicy",
    "FetchError",
    "CorruptResponse",
    "bounded_map",
    "classify_exception",
    "http_status_error",
    "cut_stamp_with_edge",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # not ours: lets `from galmerge import hdf5io` fall back to importing the submodule
        raise AttributeError(f"module 'galmerge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object in this process (a notebook, a test), as if it were installed.

    ``plugin`` is a module, class instance or namespace with ``@hookimpl`` methods; its
    components are available at once (``galmerge.train(strategy=...)``, ``galmerge list``).
    """
    from galmerge.plugins import get_plugin_manager

    get_plugin_manager().register(plugin, name=name)
