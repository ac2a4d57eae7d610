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

from galmerge import _moved
from galmerge.errors import GalmergeError, PluginError
from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.options import RETRY_OPTIONS, Option, resolve_options
from galmerge.plugin.records import Backbone, Strategy, Survey

__version__ = "0.1.0"

# `galmerge.records` and the other paths plugins imported before the layout change
_moved.install()

if TYPE_CHECKING:
    from galmerge.data.preprocess import PreprocessSpec
    from galmerge.io.http import (
        CorruptResponse,
        FetchError,
        GuardedSession,
        HeadersDeadline,
        RedirectPolicy,
        RedirectRefused,
        RetryingClient,
        RetryPolicy,
        bounded_map,
        classify_exception,
        http_status_error,
        read_body,
        shown_host,
        shown_url,
    )
    from galmerge.plugin.cutouts import (
        ClientStatus,
        CutoutRequest,
        CutoutResult,
        CutoutService,
    )
    from galmerge.plugin.imageset import ImageSet, LazyImages
    from galmerge.plugin.strategy_api import StepInputs, StrategyContext
    from galmerge.surveys.sdss.cutouts import cut_stamp_with_edge

#: public name -> module that defines it, imported on first access (PEP 562)
_LAZY: dict[str, str] = {
    "StepInputs": "galmerge.plugin.strategy_api",
    "StrategyContext": "galmerge.plugin.strategy_api",
    "ImageSet": "galmerge.plugin.imageset",
    "LazyImages": "galmerge.plugin.imageset",
    "PreprocessSpec": "galmerge.data.preprocess",
    "CutoutService": "galmerge.plugin.cutouts",
    "CutoutRequest": "galmerge.plugin.cutouts",
    "CutoutResult": "galmerge.plugin.cutouts",
    "ClientStatus": "galmerge.plugin.cutouts",
    "RetryingClient": "galmerge.io.http",
    "RetryPolicy": "galmerge.io.http",
    "FetchError": "galmerge.io.http",
    "CorruptResponse": "galmerge.io.http",
    "RedirectPolicy": "galmerge.io.http",
    "RedirectRefused": "galmerge.io.http",
    "GuardedSession": "galmerge.io.http",
    # bounds the wait for an answer's headers of a GuardedSession request (a server dripping them)
    "HeadersDeadline": "galmerge.io.http",
    "bounded_map": "galmerge.io.http",
    "classify_exception": "galmerge.io.http",
    "http_status_error": "galmerge.io.http",
    "read_body": "galmerge.io.http",
    # host[:port] of a URL for a message: never its user name or password
    "shown_host": "galmerge.io.http",
    # a URL for a message: no user name, password or query
    "shown_url": "galmerge.io.http",
    # resample a survey image around (ra, dec) onto a model's pixel grid (north up, flux kept)
    "cut_stamp_with_edge": "galmerge.surveys.sdss.cutouts",
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
    "RETRY_OPTIONS",
    "register_plugin",
    "StepInputs",
    "StrategyContext",
    "ImageSet",
    "LazyImages",
    "PreprocessSpec",
    "CutoutService",
    "CutoutRequest",
    "CutoutResult",
    "ClientStatus",
    "RetryingClient",
    "RetryPolicy",
    "FetchError",
    "CorruptResponse",
    "RedirectPolicy",
    "RedirectRefused",
    "GuardedSession",
    "HeadersDeadline",
    "bounded_map",
    "classify_exception",
    "http_status_error",
    "read_body",
    "shown_host",
    "shown_url",
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
    """Classify a catalog or image file (see `galmerge.classification.pipeline.classify`)."""
    from galmerge.classification.pipeline import classify as _classify

    return _classify(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """Write metrics and plots for a run directory (see `galmerge.evaluation.pipeline.evaluate`)."""
    from galmerge.evaluation.pipeline import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object in this process (a notebook, a test), as if it were installed.

    ``plugin`` is a module, class instance or namespace with ``@hookimpl`` methods; its
    components are available at once (``galmerge.train(strategy=...)``, ``galmerge list``).
    """
    from galmerge.plugin.manager import get_plugin_manager

    get_plugin_manager().register(plugin, name=name)
