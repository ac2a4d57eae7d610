"""A run's source validation split as classify would score it, cached in the run directory.

``RUN_DIR/validation_predictions.npz`` (``np.load(allow_pickle=False)``; no pickle) holds
``labels`` (int8, 0/1), ``logit`` (float64, logit(merger) - logit(non-merger) at temperature 1)
and ``meta``, a JSON string: format, checkpoint name, size and mtime (a changed checkpoint makes
the file stale), the checkpoint's temperature, the seed, the source spec (and, where its survey
reads one file, that file and its SHA-256: ``source_file``, ``source_sha256``), the source
training split's merger fraction (``train_prior``) and its size. The split is the trainer's
(`galmerge.data.splits.domain_splits` with the run's seed: the source part depends only on the
source size and the seed), with the source preprocessing, exactly as `evaluate` does.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.config import paths, rundir
from galmerge.errors import GalmergeError
from galmerge.fractions.estimators import Validation
from galmerge.io import atomic

FILE = "validation_predictions.npz"
FORMAT = "galmerge-validation/1"


def _locate(model: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) of ``--model``: a run directory means its best.pt, as for
    classify (`galmerge.models.model.resolve_checkpoint`), never last.pt in its place unasked;
    a checkpoint file inside a run directory (``RUN_DIR/last.pt``) is taken as it is."""
    run = model.parent if model.is_file() and model.suffix == ".pt" else model
    if not (run / rundir.CONFIG).is_file():
        raise GalmergeError(
            f"--model {model} is not a run directory (no {rundir.CONFIG}); the error rates come "
            "from the run's source validation split, so pass the run directory of galmerge train"
        )
    if run is not model:
        return run, model
    if (run / rundir.BEST).is_file():
        return run, run / rundir.BEST
    if (run / rundir.LAST).is_file():
        raise GalmergeError(
            f"run directory {run} has no best.pt (its training stopped before it kept one); "
            f"finish it with galmerge train --resume {run}, or pass {run / rundir.LAST} to use "
            "its latest weights (the ones classify used with it)")
    raise GalmergeError(f"run directory {run} has no best.pt or last.pt; train it first")


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"checkpoint": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_cached(model: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    """(meta, labels, logit) from the cache file if it is there, readable and current (written
    for ``model``'s checkpoint as it is now)."""
    try:
        run, ckpt = _locate(model)
    except GalmergeError:
        return None
    path = run / FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            labels = np.asarray(data["labels"], dtype=np.int64)
            logit = np.asarray(data["logit"], dtype=np.float64)
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("format") != FORMAT or len(labels) != len(logit):
        return None
    current = _stamp(ckpt)
    if any(meta.get(k) != v for k, v in current.items()):
        return None
    return meta, labels, logit


def compute(model: Path, source: str | None = None, device: str = "cpu",
            target: str | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Run the checkpoint over the source validation split; write and return the cache.
    ``target``: the run's target spec, read only where its source was observed with the
    target's field sources (``[observe] field = "target"``) and config.toml's spec cannot be
    reloaded here."""
    import torch

    from galmerge.data.splits import split_indices
    from galmerge.evaluation.pipeline import _load_set
    from galmerge.models.inference import forward_in_batches
    from galmerge.models.model import load_model
    from galmerge.runtime.devices import resolve_device

    run, ckpt = _locate(model)
    config = rundir.read_config(run)
    dev = resolve_device(device)
    loaded = load_model(ckpt, dev)
    run_check = (run, "fraction")  # data changed since training: a warning
    src = _load_set(source, config, "source",
                    None if target is None else _load_set(target, config, "target",
                                                          run=run_check), run=run_check)
    spec = loaded.preprocess.get("source")
    if spec is None or src.channels != int(spec["channels"]):
        raise GalmergeError(
            f"source data has {src.channels} bands but the model was trained on "
            f"{None if spec is None else spec['channels']}; pass the run's --source data"
        )
    seed = int(config.get("seed", 0))
    splits = split_indices(len(src), seed)
    all_labels = src.labels.numpy()
    val = splits["val"][all_labels[splits["val"]] >= 0]
    train_labels = all_labels[splits["train"]]
    train_labels = train_labels[train_labels >= 0]
    if len(val) == 0:
        raise GalmergeError(f"the source validation split of {run} has no labelled images; "
                            "the error rates cannot be measured")
    with torch.no_grad():
        _, logits = forward_in_batches(loaded.model, src, val, spec, dev, domain="source")
    logit = (logits[:, 1] - logits[:, 0]).double().numpy()
    labels = all_labels[val].astype(np.int8)
    meta = {
        "format": FORMAT,
        **_stamp(ckpt),
        "temperature": float(loaded.temperature),
        "seed": seed,
        "source": str(source or config.get("source")),
        "source_file": src.meta.get("file"),
        "source_sha256": src.meta.get("file_sha256"),  # the file these were computed from
        "domain": "source",
        "split": "val",
        "n": int(len(val)),
        "train_prior": float(train_labels.mean()) if len(train_labels) else math.nan,
        "n_train": int(len(train_labels)),
    }
    # a fresh temporary per writer: torchrun ranks may compute it at once
    with atomic.atomic_open(run / FILE, "wb") as fh:
        np.savez(fh, labels=labels, logit=logit, meta=np.array(json.dumps(meta)))
    return meta, labels.astype(np.int64), logit


def load_validation(run: str | os.PathLike[str], source: str | None = None,
                    device: str = "cpu", refresh: bool = False,
                    target: str | None = None) -> Validation:
    """The run's source validation predictions as `fraction.Validation` (p at the checkpoint's
    temperature, as classify writes it); computed once, then read from the cache. ``source``
    and ``target`` replace config.toml's specs where those cannot be reloaded here. ``run``: a
    run directory (its best.pt; one without is refused, as by classify) or a checkpoint in
    one (``RUN_DIR/last.pt``)."""
    model = Path(run)
    run_dir, _ = _locate(model)
    cached = None if refresh else read_cached(model)
    if cached is not None:
        sha = cached[0].get("source_sha256")
        if paths.changed_sha256(run_dir, "source", sha):  # cached from the changed file
            print(paths.data_changed_warning("fraction", run_dir, "source", str(
                cached[0].get("source_file") or cached[0].get("source"))), file=sys.stderr)
    meta, labels, logit = (cached if cached is not None
                           else compute(model, source, device, target))
    t = float(meta.get("temperature", 1.0)) or 1.0
    p = 1.0 / (1.0 + np.exp(-np.clip(logit / t, -40, 40)))
    return Validation(p, labels, float(meta.get("train_prior", math.nan)), meta)
