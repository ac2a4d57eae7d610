"""`galmerge.predict`: classify images held in memory (a notebook's arrays), no files written.

The same code as `galmerge classify` of an HDF5 image file: the model as classify opens it
(`pipeline.open_inference`: the run's preprocessing, BatchNorm statistics of the chosen domain,
temperature, shift score, MC-dropout; an exported ``.onnx`` file through ONNX Runtime), the
stamps' checks (`inputs.check_stamps_fit`), the rows' statuses (`pipeline.classify_stamps`,
`pipeline.finish_stamps`), the ensemble rule (`galmerge.classification.ensemble`: mean
``p_merger``, ``p_merger_std``, the shift score relative to each member's threshold) and the
prior rescaling (`galmerge.fractions.prior`). A set classified here, and written to HDF5 and
classified by ``classify``, gets the same values. The result is an astropy
`~astropy.table.Table` with classify's columns and its provenance record in
``table.meta["galmerge"]``; what classify prints as notes (a stale export, missing shift
statistics) goes to stderr and to the record's ``notes``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError

#: images read, checked and classified per step (a lazy ImageSet's memory stays flat)
CHUNK_ROWS = 4096


def predict(
    images: Any,
    model: Any,
    *,
    ids: Iterable[Any] | None = None,
    domain: str = "target",
    device: str = "auto",
    batch_size: int = 256,
    threshold: float = 0.5,
    prior: str | float | None = None,
    prior_rule: str | None = None,
    mc_dropout: int | None = None,
) -> Any:
    """``p_merger`` of every image; see `galmerge.predict` for the arguments."""
    from galmerge.classification.pipeline import (
        _parse_prior_options,
        _refuse_torchscript,
        check_passes,
        check_threshold_domain,
        open_inference,
    )
    from galmerge.io.provenance import code_identity
    from galmerge.plugin.options import plain_number
    from galmerge.runtime.devices import check_device_name

    code_identity()  # the code this job runs, read as it starts (a commit made meanwhile is not it)
    batch_size = plain_number("batch_size", batch_size, whole=True)
    threshold = plain_number("threshold", threshold)
    mc = plain_number("mc_dropout", mc_dropout, whole=True, optional=True) or 0
    if batch_size < 1:
        raise GalmergeError(f"batch_size must be at least 1, got {batch_size}")
    check_threshold_domain(threshold, domain)
    prior, rule = _parse_prior_options(prior, prior_rule)
    check_device_name(device)
    models = _models(model)
    check_passes(mc or None, len(models) > 1)  # mc_dropout=0: off, as None
    _refuse_torchscript(models)
    columns, n = _input_columns(images, ids)
    _check_pixels(images)
    # an ensemble's members are all checked before the first classifies (a second read of each
    # checkpoint); one model is checked as it is opened, before it classifies
    specs = [_member_spec(m, domain) for m in models] if len(models) > 1 else [None]
    for member, spec in zip(models, specs, strict=True):
        _check_images(images, spec, member)
    _check_members(models, specs)

    members: list[dict[str, Any]] = []
    notes: list[str] = []
    inputs_sha = ""
    for i, member in enumerate(models):  # one model in memory at a time
        infer, device_note = open_inference(member, domain, device, batch_size, 0, mc)
        if specs[i] is None:  # not read up front: checked now, before it classifies
            _check_images(images, infer.spec, member)
        for note in (device_note, getattr(infer, "stale_note", ""),
                     getattr(infer, "shift_note", "") if i == 0 else ""):
            if note and note not in notes:  # as classify prints them (an ensemble: once)
                notes.append(note)
                print(f"galmerge: {note}", file=sys.stderr)
        p, extra, status, digest = _classify_all(images, n, infer, threshold, hashed=i == 0)
        inputs_sha = inputs_sha or digest
        members.append({"p": p, "extra": extra, "status": status,
                        "record": _member_record(infer, member, domain, threshold, mc)})
        del infer
    return _table(columns, members, models, threshold, prior, rule, inputs_sha, notes)


def _models(model: Any) -> list[str]:
    """``model`` as a list of paths: one run, checkpoint or export, or several (an ensemble)."""
    fix = ("model: give a run directory, a checkpoint or an .onnx file (or a list of them for an "
           "ensemble)")
    if isinstance(model, str | os.PathLike):
        models = [model]
    elif isinstance(model, Mapping) or not isinstance(model, Iterable):
        raise GalmergeError(f"{fix}, got {type(model).__name__} {model!r}"[:300])
    else:
        models = list(model)
    if not models or not all(isinstance(m, str | os.PathLike) for m in models):
        raise GalmergeError(f"{fix}, got {model!r}"[:300])
    names = [str(m) for m in models]
    if len(set(names)) != len(names):
        raise GalmergeError("model: the same run given twice; an ensemble needs distinct models")
    return names


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _input_columns(images: Any, ids: Any) -> tuple[dict[str, np.ndarray], int]:
    """The output's leading columns (``id``, and an ImageSet's ``ra``/``dec``/``label``, as
    classify writes them for an HDF5 image file) and the number of images; one-line errors
    for what is not a stack of images."""
    from galmerge.plugin.imageset import ImageSet

    if isinstance(images, ImageSet):
        n = len(images)
        columns: dict[str, np.ndarray] = {"id": np.asarray(images.ids)}
        if images.ra is not None and images.dec is not None:
            columns["ra"], columns["dec"] = np.asarray(images.ra), np.asarray(images.dec)
        labels = images.labels.numpy()
        if (labels >= 0).any():
            columns["label"] = labels
    else:
        shape = getattr(images, "shape", None)
        if shape is None or not hasattr(images, "__getitem__"):
            hint = (" (a list of stamps: numpy.stack(images))"
                    if isinstance(images, list | tuple) else "")
            raise GalmergeError(f"images: give a galmerge.ImageSet or an array of shape (N, C, "
                                f"H, W), got {type(images).__name__}{hint}")
        if len(shape) != 4:
            hint = " (one image: images[None])" if len(shape) == 3 else ""
            raise GalmergeError(f"images: an array of shape (N, C, H, W) is needed, got shape "
                                f"{tuple(int(s) for s in shape)}{hint}")
        n = int(shape[0])
        columns = {"id": np.arange(n)}
    if ids is not None:
        given = np.asarray(ids if hasattr(ids, "__len__") and not isinstance(ids, Mapping)
                           else list(ids))
        if given.ndim != 1 or len(given) != n:
            raise GalmergeError(f"ids: one identifier per image is needed ({n}), got "
                                f"{len(given) if given.ndim == 1 else given.shape}")
        columns["id"] = given
    if n == 0:
        raise GalmergeError("images: no images to classify")
    return columns, n


def _pixel_dtype(images: Any) -> Any:
    """The dtype of the pixels (an ImageSet's images, or the array or tensor itself)."""
    from galmerge.plugin.imageset import ImageSet

    return getattr(images.images if isinstance(images, ImageSet) else images, "dtype", None)


def _dtype(images: Any) -> str:
    """The pixels' dtype name as numpy writes it ("float32", "uint8", "bfloat16"...)."""
    return str(_pixel_dtype(images) or "").removeprefix("torch.")


def _check_pixels(images: Any) -> None:
    """Pixels that are numbers: booleans, complex numbers, text and objects are refused in one
    line (a cast would drop the imaginary part or read True as a flux of 1)."""
    dtype = _pixel_dtype(images)
    if hasattr(dtype, "is_complex"):  # a torch dtype
        bad = dtype.is_complex or str(dtype) == "torch.bool"
    else:
        bad = getattr(dtype, "kind", "f") in "bcOUSVMm"
    if bad:
        raise GalmergeError(f"images: pixels of dtype {_dtype(images)}; give fluxes as floats "
                            "(e.g. images.astype(numpy.float32))")


def _member_spec(model: str, domain: str) -> Any:
    """The preprocessing spec a model applies to ``domain`` images, read without building it
    (a checkpoint's payload, an export's metadata), so every member is checked before any
    classifies."""
    from galmerge.data.preprocess import PreprocessSpec

    if model.lower().endswith(".onnx"):
        from galmerge.models.export import export_metadata

        try:
            meta = export_metadata(model, "onnx")
        except GalmergeError:  # no onnx package to read it: checked once ONNX Runtime has it
            return None
        if meta is None:  # OnnxInference says what is wrong with the file, in one line
            return None
        return PreprocessSpec.from_dict(meta.get("preprocess") or {}, f"{model}: preprocessing")
    from galmerge.models.model import read_checkpoint

    payload = read_checkpoint(model)
    spec = dict((payload.get("preprocess") or {}).get(domain) or {})
    if not spec:  # _Inference names the domains the model has
        return None
    spec.setdefault("image_size", int(payload.get("image_size", 75)))
    return PreprocessSpec.from_dict(spec, f"{model}: preprocessing")


def _stamp_shape(spec: Any) -> tuple[int, int, int]:
    size = int(spec.image_size or 75)
    return (int(spec.n_channels), size, size)


def _check_images(images: Any, spec: Any, model: str) -> None:
    """Stamps of the model's shape; an ImageSet's declared bands, pixel scale and image source
    checked as for an HDF5 image file (`check_stamps_fit`); 8-bit pixels refused for a model of
    calibrated fluxes, as there."""
    from galmerge.classification.inputs import check_stamps_fit
    from galmerge.plugin.imageset import ImageSet

    if spec is None:
        return
    want = _stamp_shape(spec)
    if isinstance(images, ImageSet):
        got = (images.channels, int(images.images.shape[-2]), images.image_size)
    else:
        got = tuple(int(s) for s in images.shape[1:])
    if got != want:
        hint = (" (channels last? numpy.moveaxis(images, -1, 1))"
                if got[-1] == want[0] and got[0] != want[0] else "")
        raise GalmergeError(f"images are {_shape(got)} (C x H x W) but the model {model} takes "
                            f"{_shape(want)}{hint}; cut stamps the way the model was trained")
    if isinstance(images, ImageSet):
        check_stamps_fit(Path("images"), images, spec, images.image_source)
    if _dtype(images) == "uint8" and spec.stretch == "arcsinh":
        raise GalmergeError("images: 8-bit pixels, but the model takes calibrated fluxes "
                            "(arcsinh-stretched); cut stamps the way the model was trained")


def _check_members(models: list[str], specs: list[Any]) -> None:
    """An ensemble's members take the same stamps (bands, size, pixel scale), as classify's
    ensemble requires."""
    seen = [(m, s) for m, s in zip(models, specs, strict=True) if s is not None]

    def stamps(spec: Any) -> tuple[Any, ...]:
        return (*_stamp_shape(spec), tuple(spec.bands), spec.pixel_scale_arcsec)

    if len({stamps(s) for _, s in seen}) > 1:
        raise GalmergeError(
            "model: the runs take different stamps (bands, size or pixel scale: "
            + "; ".join(f"{m}: {_shape(_stamp_shape(s))}px {','.join(map(str, s.bands)) or '?'}"
                        for m, s in seen)
            + "); an ensemble needs models trained on the same kind of images")


def _block(images: Any, start: int, stop: int) -> np.ndarray:
    """Images ``start:stop`` as float32 C-order numpy (a tensor on any device, with or without
    autograd, in any float type; an ImageSet lazy or not)."""
    from galmerge.plugin.imageset import ImageSet

    block = images.batch(np.arange(start, stop)) if isinstance(images, ImageSet) \
        else images[start:stop]
    if hasattr(block, "detach"):  # torch: bfloat16 has no numpy type, so float32 first
        import torch

        block = block.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.ascontiguousarray(block, dtype=np.float32)


def _classify_all(images: Any, n: int, infer: Any, threshold: float, hashed: bool
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, str]:
    """p_merger, the extra columns and the status of every image, and (``hashed``) the
    SHA-256 of the images as float32 C-order bytes (the provenance's ``input_sha256``)."""
    from galmerge.classification.pipeline import classify_stamps, finish_stamps

    p = np.full(n, np.nan)
    extra = {name: np.full(n, np.nan) for name in getattr(infer, "extra", [])}
    status = np.full(n, "", dtype=object)
    digest = hashlib.sha256()
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        block = _block(images, start, stop)
        if hashed:
            digest.update(block.tobytes())
        rows = slice(start, stop)
        part = {name: values[rows] for name, values in extra.items()}  # views: filled in place
        classify_stamps(block, infer, status[rows], p[rows], part)
    finish_stamps(p, extra, status, threshold)  # is_merger is made again after any prior
    return p, extra, status, digest.hexdigest() if hashed else ""


def _member_record(infer: Any, model: str, domain: str, threshold: float, mc: int
                   ) -> dict[str, Any]:
    """classify's provenance record for one model, and its shift threshold."""
    from galmerge.classification.pipeline import add_inference_record
    from galmerge.io.provenance import record

    prov = record(checkpoint=Path(infer.loaded.path), config=infer.loaded.config,
                  survey="in-memory images", data_release="", cutout_kind="", domain=domain,
                  preprocessing=dict(infer.spec), temperature=infer.loaded.temperature,
                  threshold=threshold)
    add_inference_record(prov, infer, mc)
    shift = getattr(infer, "shift", None)
    return {"provenance": prov, "model": model,
            "shift": None if shift is None else float(shift["threshold"])}


def _table(columns: dict[str, np.ndarray], members: list[dict[str, Any]], models: list[str],
           threshold: float, prior: Any, rule: str, inputs_sha: str, notes: list[str]) -> Any:
    """The astropy Table: ``columns``, p_merger, is_merger, status and the extra columns
    (one model: its own; an ensemble: `galmerge.classification.ensemble`'s rule)."""
    from astropy.table import Table

    from galmerge.classification.ensemble import STD_COLUMN, mean_and_spread, shift_of_members
    from galmerge.io.provenance import stamped
    from galmerge.models import shift as shift_score

    first = members[0]
    prov = dict(first["record"]["provenance"], input_sha256=inputs_sha)
    status = first["status"]
    extra = dict(first["extra"])
    p = first["p"]
    if len(members) > 1:
        p, std, ok = mean_and_spread(np.stack([m["p"] for m in members]))
        extra = {}
        for key in ("shift_threshold", "shift_stats_sha256"):
            prov.pop(key, None)
        shift = shift_of_members(
            [m["extra"].get(shift_score.SCORE_COLUMN) for m in members],
            [{"model": m["record"]["model"], "threshold": m["record"]["shift"],
              "stats_sha256": m["record"]["provenance"].get("shift_stats_sha256", "")}
             for m in members], ok)
        if shift is not None:
            extra[shift_score.SCORE_COLUMN], extra[shift_score.FLAG_COLUMN] = shift[:2]
            prov.update(shift[2])
        extra[STD_COLUMN] = std
        prov["ensemble"] = [{"model": m["record"]["model"],
                             "checkpoint_sha256": m["record"]["provenance"]["checkpoint_sha256"]}
                            for m in members]
    if prior is not None:
        from galmerge.fractions.prior import prior_record, rescale, training_prior

        ok = np.isfinite(p)
        rec = prior_record(p[ok], models[0], prior, threshold, training_prior(models[0]), rule,
                           where="the set of images")
        p = p.copy()
        p[ok] = rescale(p[ok], rec["prior"], rec["training_prior"],
                        clip=rec["prior_rule"] == "match")
        prov["prior"] = rec
    if notes:
        prov["notes"] = list(notes)
    flag = np.where(np.isfinite(p), (p >= threshold).astype(np.int8), -1).astype(np.int8)
    table = Table()
    for name, values in columns.items():
        table[name] = values
    table["p_merger"] = p
    table["is_merger"] = flag
    table["status"] = np.asarray(status, dtype=str)
    for name, values in extra.items():
        table[name] = values
    table.meta["galmerge"] = stamped(prov)
    return table
