"""galmerge: find merging galaxies with domain-adapted deep learning.

This module is also the whole public API for plugin authors: a plugin imports what it needs from
``galmerge`` itself (``from galmerge import hookimpl, Strategy, resolve_options``), never from a
submodule, whose path may change between releases. Names that pull in torch, numpy or requests
load on first use, so a plugin module that imports only ``hookimpl`` and the records stays cheap
(galmerge imports every plugin to list components).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# This package itself, by its own name: the public functions' annotations name the classes that
# cost torch to import as ``galmerge.ImageSet`` and ``galmerge.ClassifySummary``, so that
# `typing.get_type_hints` resolves them. It evaluates each annotation in this module's globals
# dict, where a lazy name is absent until first use (and the PEP 562 `__getattr__` below is
# not consulted for a bare name), while ``galmerge.ImageSet`` is an attribute lookup on the
# module, which goes through `__getattr__` and imports the class then, not at `import galmerge`.
# The other names the annotations use are stdlib imports above, cheap and present at run time.
import galmerge
from galmerge import _moved
from galmerge.errors import GalmergeError, PluginBug, PluginError
from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.options import RETRY_OPTIONS, Option, resolve_options
from galmerge.plugin.records import Backbone, Strategy, Survey

__version__ = "0.1.0"

# `galmerge.records` and the other paths plugins imported before the layout change
_moved.install()

if TYPE_CHECKING:
    from galmerge.classification.pipeline import ClassifySummary
    from galmerge.data.datasets import load_imageset
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
        check_service_url,
        classify_exception,
        http_status_error,
        read_body,
        shown_host,
        shown_url,
    )
    from galmerge.models.export import export_model
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
    # any survey spec as an ImageSet (e.g. to pass to train, or to write an HDF5 file)
    "load_imageset": "galmerge.data.datasets",
    # a run or checkpoint as an ONNX or TorchScript file, as `galmerge export`
    "export_model": "galmerge.models.export",
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
    # a URL for a message: user info as ***, no query
    "shown_url": "galmerge.io.http",
    # a service's base URL checked (http(s), host, port) in one line naming its option or variable
    "check_service_url": "galmerge.io.http",
    # resample a survey image around (ra, dec) onto a model's pixel grid (north up, flux kept)
    "cut_stamp_with_edge": "galmerge.surveys.sdss.cutouts",
    # what `classify` returns
    "ClassifySummary": "galmerge.classification.pipeline",
}

#: names the annotations use that are not galmerge's own, loaded on first use like `_LAZY`'s:
#: `predict` returns astropy's Table, written ``galmerge.Table`` so that `typing.get_type_hints`
#: resolves it without importing astropy at `import galmerge` (not public: it is astropy's)
_HINT_ONLY: dict[str, str] = {"Table": "astropy.table"}

__all__ = [
    "__version__",
    # running the pipeline from Python
    "train",
    "classify",
    "predict",
    "ClassifySummary",
    "evaluate",
    "fraction",
    "load_imageset",
    "export_model",
    # the plugin contract
    "hookimpl",
    "Backbone",
    "Strategy",
    "Survey",
    "GalmergeError",
    "PluginError",
    "PluginBug",
    "resolve_options",
    "Option",
    "RETRY_OPTIONS",
    "register_plugin",
    "reset_plugin_manager",
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
    "check_service_url",
    "cut_stamp_with_edge",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name) or _HINT_ONLY.get(name)
    if module is None:
        # not ours: lets `from galmerge import hdf5io` fall back to importing the submodule
        raise AttributeError(f"module 'galmerge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # what tab completion offers: the public names, the module's own dunders and the
    # subpackages loaded so far, not the helpers the annotations need (os, Path, this package
    # by its own name, ...)
    subpackages = (name for name, value in globals().items()
                   if getattr(value, "__name__", "").startswith(f"{__name__}.")
                   and type(value).__name__ == "module")
    return sorted({*__all__, *(name for name in globals() if name.startswith("__")),
                   *subpackages})



# The four jobs' signatures are written out again here, not forwarded by functools.wraps:
# `import galmerge` must not import torch (the jobs' modules do), and the API pages read the
# signature from this source (mkdocstrings, statically). tests/test_public_api.py checks that
# each matches its job's, parameter by parameter.
def train(
    source: str | galmerge.ImageSet | None = None,
    target: str | galmerge.ImageSet | None = None,
    *,
    strategy: str | None = None,
    backbone: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    run_dir: str | Path | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    preset: str | None = None,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    patience: int | None = None,
    weight_decay: float | None = None,
    select_by: str | None = None,
    strategy_options: Mapping[str, Mapping[str, Any]] | None = None,
    sets: list[str] | tuple[str, ...] = (),
    backbone_options: Mapping[str, Any] | None = None,
    compile: bool | None = None,
    quiet: bool = False,
    max_steps_per_epoch: int | None = None,
    checkpoint_every: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train a merger classifier with domain adaptation, as ``galmerge train`` does.

    Writes a run directory (``config.toml``, ``best.pt``, ``last.pt``, ``metrics.csv``,
    ``summary.json``) and returns the run summary (the contents of ``summary.json``).
    Settings resolve as defaults < ``preset`` < ``config`` < these arguments; an argument left
    at ``None`` takes the value of the layer below it (the ``galmerge train --help`` defaults).

    :param source: labelled source survey spec (``"synthetic:illustris"``, ``"hdf5:PATH"``,
        ``"illustris"``) or an `ImageSet`.
    :param target: target survey spec or `ImageSet`; its labels are used only for reporting.
    :param strategy: domain-adaptation strategy expression, e.g. ``"none"``, ``"adabn"``,
        ``"mmd+fisher+entropy"``, ``"dann+fisher"`` (default ``"none"``).
    :param backbone: backbone name, ``"deepmerge"`` (default) or ``"resnet18"``, or a plugin's.
    :param epochs: maximum number of epochs (default 200, or the preset's).
    :param batch_size: images per domain per step (default 128).
    :param lr: peak learning rate of the one-cycle schedule (default 1e-3).
    :param seed: seed for splits, initialisation and batch order (default 0).
    :param device: ``"auto"`` (default: CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or ``"mps"``.
    :param run_dir: output run directory (default ``runs/<time>-<source>-<target>-<strategy>-s<seed>``).
    :param config: a TOML file (e.g. a run's ``config.toml`` or a tune study's ``best.toml``)
        or a mapping of settings.
    :param preset: hyperparameter preset: ``"synthetic-sim-real"``, ``"deepmerge2-sim-sim"``,
        ``"deepmerge2-sim-real"`` or ``"deepmerge2-sim-real-tl"``.
    :param resume: continue this run directory from its ``last.pt`` with its saved config.
    :param init_from: start from the weights of a run directory or checkpoint.
    :param patience: early-stopping patience in epochs, 0 for none (default 20).
    :param weight_decay: Adam weight decay (default 1e-3).
    :param select_by: which epoch's checkpoint becomes ``best.pt``: ``"auto"`` (default),
        ``"source_val_loss"``, ``"source_val_accuracy"``, ``"source_val_batch_loss"`` or a
        label-free score (``"im"``, ``"im_src"``, ``"snd"``, ``"dev"``, ``"entropy"``).
    :param strategy_options: options per strategy, e.g. ``{"mmd": {"weight": 0.5}}``
        (each strategy's options: ``galmerge list strategies``).
    :param sets: ``--set`` strings, ``"[SECTION.]OPTION=VALUE"``: a top-level setting
        (``"domain_batchnorm=joint"``) or a strategy, optimizer or schedule option
        (``"fisher.intra_weight=0.01"``); see the guide's table of settings.
    :param backbone_options: backbone options, e.g. ``{"dropout": 0.3}``.
    :param compile: ``torch.compile`` the model.
    :param quiet: no progress display and no results table (a closing collapse warning still
        goes to stderr).
    :param max_steps_per_epoch: cap on steps per epoch, 0 for a full pass (a quick look).
    :param checkpoint_every: also write ``last.pt`` every N steps (0: at each epoch's end).
    :param on_epoch: called as ``on_epoch(row)`` on rank 0 after each epoch's metrics row is
        written; an exception it raises ends the run (files closed, ``last.pt`` resumable) and
        propagates.
    :returns: the run summary (``summary.json``): metrics, best epoch, run directory, warnings.
    """
    arguments = dict(locals())  # before the import below adds a name
    from galmerge.training import train as _train

    return _train(**arguments)


def classify(
    catalog: str | os.PathLike[str],
    model: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    survey: str = "sdss",
    output: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    ra_col: str | None = None,
    dec_col: str | None = None,
    id_col: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 4,
    threshold: float = 0.5,
    domain: str = "target",
    quiet: bool = False,
    chunk_rows: int = 4096,
    flush_rows: int = 256,
    survey_options: Mapping[str, Any] | None = None,
    shard_timeout: float | None = None,
    heartbeat_timeout: float | None = None,
    cache_keepbits: int | None = None,
    scheduler: str | None = None,
    columns: list[str] | None = None,
    prior: str | float | None = None,
    mc_dropout: int | None = None,
    prior_rule: str | None = None,
) -> galmerge.ClassifySummary:
    """Classify every row of a catalog, as ``galmerge classify`` does.

    Writes ``output`` with every input column plus ``p_merger``, ``is_merger`` and ``status``
    (and ``shift_score``/``shift_flag`` for a run with shift statistics); returns a summary
    (``.output``, ``.rows``, ``.ok``, ``.mergers``, ``.merger_fraction``, ``.statuses``...).

    :param catalog: a CSV, FITS, VOTable or Parquet catalog with RA/Dec columns, an HDF5 image
        file (classified as it is, no cutouts), or a folder holding a HATS catalog (classified
        partition by partition on Dask).
    :param model: a run directory (its ``best.pt``), a checkpoint file or an exported
        ``.onnx`` file; a list of several: an ensemble (mean ``p_merger`` and ``p_merger_std``).
    :param survey: survey whose cutout service cuts the stamps (default ``"sdss"``).
    :param output: output file, ``.csv``, ``.h5``, ``.fits`` or ``.parquet`` (a HATS catalog:
        a folder); default ``<catalog stem>_galmerge.csv`` in the working directory.
    :param cache: cutout cache (HDF5); default ``$GALMERGE_DATA/cache/<survey>-<kind>.h5``.
    :param ra_col: RA column (default: the first of ``ra``, ``RA``, ``ra_deg``, ``raj2000``...).
    :param dec_col: Dec column (default: ``dec``, ``DEC``, ``dec_deg``, ``dej2000``...).
    :param id_col: identifier column (default: ``objID``, ``objid``, ``specobjid``, ``id``...).
    :param batch_size: images per forward pass.
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    :param workers: concurrent downloads.
    :param threshold: ``is_merger`` is 1 where ``p_merger >= threshold``.
    :param domain: ``"target"`` or ``"source"``: whose preprocessing (and, for a model with
        per-domain BatchNorm statistics, whose statistics) to apply.
    :param quiet: no progress display or closing summary.
    :param chunk_rows: rows read, fetched and written per step (memory stays flat).
    :param flush_rows: new stamps held in memory before they are written to the cache.
    :param survey_options: the survey's options, e.g. ``{"layer": "ls-dr10"}``
        (``galmerge list surveys``).
    :param shard_timeout: torchrun: seconds rank 0 waits for the other ranks (default
        ``$GALMERGE_SHARD_TIMEOUT`` or 86400).
    :param heartbeat_timeout: torchrun: a rank silent this many seconds is taken as dead
        (default ``$GALMERGE_SHARD_HEARTBEAT_TIMEOUT`` or 300).
    :param cache_keepbits: store new stamps rounded to this many float32 mantissa bits, 1 to 23
        (lossy; 12 halves the cache); default exact.
    :param scheduler: HATS catalogs: address of a running Dask scheduler (default: a local
        cluster).
    :param columns: HATS catalogs: input columns to keep (default all).
    :param prior: rescale ``p_merger`` to the survey's merger fraction: a value (e.g. 0.05) or
        ``"auto"`` (EM estimate); default the training set's prior, unchanged.
    :param mc_dropout: N >= 2: ``p_merger`` is the mean of N passes with the dropout layers
        active, ``p_merger_std`` their spread (not with several models).
    :param prior_rule: how ``prior=VALUE`` rescales: ``"match"`` (default: one logit offset so
        the mean ``p_merger`` equals VALUE) or ``"bayes"`` (Bayes' rule from the training
        set's merger fraction).
    :returns: a ``ClassifySummary``.
    """
    arguments = dict(locals())  # before the import below adds a name
    from galmerge.classification.pipeline import classify as _classify

    return _classify(**arguments)


def predict(
    images: galmerge.ImageSet | Any,
    model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    ids: Iterable[Any] | None = None,
    domain: str = "target",
    device: str = "auto",
    batch_size: int = 256,
    threshold: float = 0.5,
    prior: str | float | None = None,
    prior_rule: str | None = None,
    mc_dropout: int | None = None,
) -> galmerge.Table:
    """Classify images held in memory (a notebook's cutouts) with a trained model; no file is
    written. The same model code, ensemble rule and prior rescaling as `classify` of an HDF5
    image file, so the values are the ones ``galmerge classify`` gives for the same images.

    :param images: a `galmerge.ImageSet` (its bands, pixel scale and ``image_source`` are
        checked against the model's, as for an image file), or a numpy array or torch tensor
        (any float type, any device) of shape (N, C, H, W) of raw fluxes, preprocessed by the
        model's own spec as in training. 8-bit pixels for a model of calibrated fluxes, and
        boolean, complex or text pixels, are refused.
    :param model: a run directory (its ``best.pt``), a checkpoint file or an exported ``.onnx``
        file; a list of several: an ensemble (mean ``p_merger`` and ``p_merger_std``), whose
        members must take the same stamps (checked before any classifies).
    :param ids: one identifier per image for the ``id`` column (default: the ImageSet's ids,
        else 0..N-1).
    :param domain: ``"target"`` or ``"source"``: whose preprocessing (and, for a model with
        per-domain BatchNorm statistics, whose statistics) to apply.
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    :param batch_size: images per forward pass.
    :param threshold: ``is_merger`` is 1 where ``p_merger >= threshold``.
    :param prior: rescale ``p_merger`` to the survey's merger fraction: a value (e.g. 0.05) or
        ``"auto"`` (the EM estimate on these images); default unchanged.
    :param prior_rule: how ``prior=VALUE`` rescales: ``"match"`` (default: one logit offset so
        the mean ``p_merger`` of these images equals VALUE) or ``"bayes"`` (Bayes' rule from
        the training set's merger fraction).
    :param mc_dropout: N from 2 to 1000: ``p_merger`` is the mean of N passes with the dropout
        layers active, ``p_merger_std`` their spread (not with several models).
    :returns: an astropy ``Table``, one row per image in input order: ``id`` (and an
        ImageSet's ``ra``, ``dec``, ``label``), ``p_merger``, ``is_merger`` (-1 where there is no
        value), ``status`` (``ok``, ``bad-image: non-finite pixels`` or ``model-failed: ...``),
        and, as classify writes them, ``shift_score``/``shift_flag`` and ``p_merger_std``.
        ``table.meta["galmerge"]`` holds classify's provenance record; its ``input_sha256`` is
        the SHA-256 of the images as float32 C-order bytes, its ``notes`` what was printed on
        stderr (e.g. a run without shift statistics). ECSV, Parquet and HDF5 (with
        ``serialize_meta=True``) keep that record; FITS drops it with a warning.
    """
    arguments = dict(locals())  # before the import below adds a name
    from galmerge.classification.predict import predict as _predict

    return _predict(**arguments)


def evaluate(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "auto",
    bootstrap: int = 200,
    baseline: str | Path | None = None,
    calibrate: bool = False,
    source: galmerge.ImageSet | str | None = None,
    target: galmerge.ImageSet | str | None = None,
    embedding_points: int = 400,
    quiet: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Write metrics, plots and ``report.html`` for a run directory, as ``galmerge evaluate``.

    Writes ``RUN_DIR/report/`` and returns the ``metrics.json`` payload (accuracy, AUC,
    precision, recall, F1 and Brier score per domain, with 68% bootstrap intervals).

    :param run_dir: a run directory written by `train`.
    :param checkpoint: ``"best"`` or ``"last"``: which checkpoint of the run to evaluate.
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    :param bootstrap: bootstrap resamples for the 68% intervals (0: none).
    :param baseline: the embedding plot's "before" run (same data and backbone); default the
        run's ``source_only/`` stage, else the sibling ``none`` run whose config matches best.
    :param calibrate: write the temperature fitted on the source validation split into the
        checkpoint, so `classify` outputs calibrated ``p_merger``.
    :param source: source data spec or `ImageSet`, if the run's config cannot be reloaded here.
    :param target: target data spec or `ImageSet`, likewise.
    :param embedding_points: test images per domain in the t-SNE/UMAP plot.
    :param quiet: do not print the summary tables.
    :param seed: seed of the bootstrap, the embedding's sample and the domain classifier.
    :returns: the ``metrics.json`` payload.
    """
    arguments = dict(locals())  # before the import below adds a name
    from galmerge.evaluation.pipeline import evaluate as _evaluate

    return _evaluate(**arguments)


def fraction(
    results: str | os.PathLike[str],
    model: str | os.PathLike[str],
    *,
    by: str | None = None,
    bins: str | int | Sequence[float] | None = None,
    threshold: float = 0.5,
    bootstrap: int = 1000,
    seed: int = 0,
    source: str | galmerge.ImageSet | None = None,
    target: str | galmerge.ImageSet | None = None,
    device: str = "cpu",
    plot: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
) -> dict[str, Any]:
    """The merger fraction of a `classify` output with 68% and 95% bootstrap intervals, as
    ``galmerge fraction --json``.

    Four estimators side by side: ``naive`` (classify and count), ``acc`` (adjusted count,
    error rates from the run's source validation split), ``em`` (EM prior adjustment) and
    ``bbse`` (black-box shift estimation); with ``labels``, a fifth, ``ppi``. The corrections
    assume label shift (see the "Merger fractions" page). The first call scores the run's
    source validation split and caches it in the run directory.

    :param results: a `classify` output (CSV, HDF5, FITS or Parquet); rows whose status is not
        ``ok`` are left out and counted by reason.
    :param model: the run directory of the model that classified ``results`` (its
        ``best.pt``), or ``RUN_DIR/last.pt`` if `classify` was given that.
    :param by: a column to bin by (e.g. redshift or stellar mass); needs ``bins``.
    :param bins: with ``by``: increasing edges (a list, tuple or array, e.g. ``[0, 0.1, 0.2]``,
        or the text ``"0,0.1,0.2"``) or a number of equal-count bins (``4`` or ``"4"``); the
        bins are ``[lo, hi)``, the last one ``[lo, hi]``.
    :param threshold: ``p_merger >= threshold`` counts as a merger (``naive`` and ``acc``).
    :param bootstrap: bootstrap resamples of the survey rows and the validation images: 0 for
        no intervals, else at least 10.
    :param seed: bootstrap seed.
    :param source: source data spec or `ImageSet` (a run trained on in-memory sets), if the
        one the run's ``config.toml`` names cannot be loaded here (needed once, to score its
        validation split).
    :param target: target data spec or `ImageSet`, likewise (read only by runs whose source
        was observed with the target's field sources).
    :param device: device for scoring the validation split (once; cached in the run):
        ``"cpu"``, ``"auto"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    :param plot: also write a figure (``.png``, ``.pdf`` or ``.svg``), one panel per bin.
    :param labels: a labelled random sample of the survey (CSV, FITS or Parquet: an
        identifier and a 0/1 merger column): adds the ``ppi`` estimator, unbiased under
        domain shift.
    :param id_col: with ``labels``: the identifier column both files have (default: the first
        common catalog id name, e.g. ``objid``).
    :param label_col: with ``labels``: its 0/1 column (default ``merger``).
    :returns: the ``galmerge fraction --json`` payload: ``{"estimators": {name: {"fraction",
        "ci68", "ci95"}}, "recommended": name, "n", "excluded", "validation", ...}``, or with
        ``by`` ``{"by": column, "bins": [{"lo", "hi", "n", "estimators", "recommended"}, ...],
        ...}``; a fraction or interval is None where its estimator is undefined.
    """
    arguments = dict(locals())  # before the import below adds a name
    from galmerge.fractions.report import fraction as _fraction

    return _fraction(**arguments)


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object in this process (a notebook, a test), as if it were installed.

    ``plugin`` is a module, class instance or namespace with ``@hookimpl`` methods; its
    components are available at once (``galmerge.train(strategy=...)``, ``galmerge list``).
    """
    from galmerge.plugin.manager import get_plugin_manager

    get_plugin_manager().register(plugin, name=name)


def reset_plugin_manager() -> None:
    """Forget the loaded plugins, so the next use loads them again from the environment
    (``GALMERGE_LOAD_PLUGINS``, ``GALMERGE_DISABLE_PLUGINS``): for a plugin's tests, e.g. a
    fixture that sets ``GALMERGE_LOAD_PLUGINS=myplugin``, calls it, and calls it again after
    the test. Plugins registered with `register_plugin` are forgotten too."""
    from galmerge.plugin.manager import reset_plugin_manager as reset

    reset()
