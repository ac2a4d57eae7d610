"""`galmerge.predict`: classify images held in memory (a notebook's arrays), no files written.

The same model code as `galmerge classify` of an HDF5 image file (`_Inference`: the run's
preprocessing, BatchNorm statistics of the chosen domain, temperature, shift score, MC-dropout;
an exported ``.onnx`` file through ONNX Runtime), the same ensemble rule
(`galmerge.classification.ensemble`: mean ``p_merger``, ``p_merger_std``, the shift score
relative to each member's threshold) and the same prior rescaling (`galmerge.fractions.prior`),
so a set classified here and written to HDF5 and classified by ``classify`` gets the same
values. The result is an astropy `~astropy.table.Table` with classify's columns and its
provenance record in ``table.meta["galmerge"]``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError

#: images read, checked and classified per step (a lazy ImageSet's memory stays flat)
CHUNK_ROWS = 4096
BAD_IMAGE = "bad-image: non-finite pixels"
MODEL_FAILED = "model-failed: non-finite output"


def predict(
    images: Any,
    model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    ids: Sequence[Any] | np.ndarray | None = None,
    domain: str = "target",
    device: str = "auto",
    batch_size: int = 256,
    threshold: float = 0.5,
    prior: str | float | None = None,
    prior_rule: str | None = None,
    mc_dropout: int | None = None,
) -> Any:
    """``p_merger`` of every image; see `galmerge.predict` for the arguments."""
    from galmerge.classification.pipeline import _parse_prior_options, _refuse_torchscript
    from galmerge.plugin.options import plain
    from galmerge.runtime.devices import check_device_name

    batch_size = _whole(plain(batch_size), "batch_size", 1)
    threshold = _number(plain(threshold), "threshold")
    if not 0.0 <= threshold <= 1.0:
        raise GalmergeError(f"threshold must be in [0, 1], got {threshold}")
    if domain not in ("source", "target"):
        raise GalmergeError(f"domain must be 'source' or 'target', got {domain!r}")
    mc = 0 if mc_dropout is None else _whole(plain(mc_dropout), "mc_dropout", 2)
    if mc > 1000:
        raise GalmergeError(f"mc_dropout must be a whole number of passes from 2 to 1000 "
                            f"(10 to 100 is usual), got {mc}")
    prior, rule = _parse_prior_options(plain(prior), prior_rule)
    check_device_name(device)
    models = [model] if isinstance(model, str | os.PathLike) else list(model)
    if not models or not all(isinstance(m, str | os.PathLike) for m in models):
        raise GalmergeError("model: give a run directory, a checkpoint or an .onnx file (or a "
                            f"list of them for an ensemble), got {model!r}")
    models = [str(m) for m in models]
    if len(set(models)) != len(models):
        raise GalmergeError("model: the same run given twice; an ensemble needs distinct models")
    if mc and len(models) > 1:
        raise GalmergeError("mc_dropout with several models: not supported (both would fill "
                            "p_merger_std); use an ensemble or MC-dropout, not both")
    _refuse_torchscript(models)
    columns, n = _input_columns(images, ids)

    members: list[dict[str, Any]] = []
    inputs_sha, first_shape = "", None
    for member in models:  # one model in memory at a time
        infer = _inference(member, domain, device, batch_size, mc)
        if first_shape is not None and infer.shape != first_shape:
            raise GalmergeError(
                f"model: {models[0]} takes {_shape(first_shape)} stamps but {member} takes "
                f"{_shape(infer.shape)}; an ensemble needs models trained on the same kind of "
                "images")
        first_shape = infer.shape
        _check_images(images, infer)
        p, extra, status, inputs_sha = _classify_all(images, n, infer)
        members.append({"p": p, "extra": extra, "status": status,
                        "record": _member_record(infer, member, domain, threshold)})
        del infer
    return _table(columns, members, models, threshold, prior, rule, inputs_sha)


def _whole(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise GalmergeError(f"{name} must be a whole number of at least {least}, got {value!r}")
    return int(value)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GalmergeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _shape(shape: tuple[int, int, int]) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]}"


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
            raise GalmergeError(f"images: give a galmerge.ImageSet or an array of shape (N, C, "
                                f"H, W), got {type(images).__name__}")
        if len(shape) != 4:
            hint = (" (one image: images[None])" if len(shape) == 3 else "")
            raise GalmergeError(f"images: an array of shape (N, C, H, W) is needed, got shape "
                                f"{tuple(shape)}{hint}")
        n = int(shape[0])
        columns = {"id": np.arange(n)}
    if ids is not None:
        given = np.asarray(ids)
        if given.ndim != 1 or len(given) != n:
            raise GalmergeError(f"ids: one identifier per image is needed ({n}), got "
                                f"{given.shape[0] if given.ndim == 1 else given.shape}")
        columns["id"] = given
    if n == 0:
        raise GalmergeError("images: no images to classify")
    return columns, n


def _inference(model: str, domain: str, device: str, batch_size: int, mc: int) -> Any:
    if model.lower().endswith(".onnx"):  # `galmerge export` output: ONNX Runtime, CPU
        from galmerge.models.export import OnnxInference

        if mc:
            raise GalmergeError(f"mc_dropout: {model} is an exported ONNX model, whose dropout "
                                "is folded away; pass the run directory instead")
        return OnnxInference(model, domain, batch_size)
    from galmerge.classification.pipeline import _Inference

    return _Inference(model, domain, device, batch_size, 0, mc)


def _check_images(images: Any, infer: Any) -> None:
    """Stamps of the model's shape; an ImageSet's declared bands and pixel scale checked as
    for an HDF5 image file (`check_stamps_fit`)."""
    from galmerge.classification.inputs import check_stamps_fit
    from galmerge.plugin.imageset import ImageSet

    got = tuple(int(s) for s in images.shape[1:]) if not isinstance(images, ImageSet) else (
        images.channels, int(images.images.shape[-2]), images.image_size)
    if got != infer.shape:
        raise GalmergeError(f"images are {_shape(got)} (C x H x W) but the model takes "
                            f"{_shape(infer.shape)}; cut stamps the way the model was trained")
    if isinstance(images, ImageSet):
        check_stamps_fit("images", images, infer.spec)


def _classify_all(images: Any, n: int, infer: Any
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, str]:
    """p_merger, the extra columns and the status of every image, and the SHA-256 of the
    images as float32 C-order bytes (the provenance's ``input_sha256``)."""
    from galmerge.classification.cutout_cache import STATUS_OK
    from galmerge.models import shift as shift_score
    from galmerge.plugin.imageset import ImageSet

    p = np.full(n, np.nan)
    names = list(getattr(infer, "extra", []))
    extra = {name: np.full(n, np.nan) for name in names}
    status = np.full(n, STATUS_OK, dtype=object)
    digest = hashlib.sha256()
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        if isinstance(images, ImageSet):
            block = images.batch(np.arange(start, stop)).numpy()
        else:
            block = images[start:stop]
            block = block.detach().cpu().numpy() if hasattr(block, "detach") else block
            block = np.asarray(block, dtype=np.float32)
        block = np.ascontiguousarray(block, dtype=np.float32)
        digest.update(block.tobytes())
        finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        good = np.flatnonzero(finite)
        status[start + np.flatnonzero(~finite)] = BAD_IMAGE
        if len(good):
            values, more = infer.predict(block[good])
            p[start + good] = values
            for name in names:
                extra[name][start + good] = more[name]
    # 'ok' promises a probability in [0, 1], as classify's does
    status[(status == STATUS_OK) & ~np.isfinite(p)] = MODEL_FAILED
    bad = ~np.isfinite(p)
    for name in names:
        if name == shift_score.FLAG_COLUMN:  # int8: -1 where there is no score
            extra[name] = np.where(bad | ~np.isfinite(extra[name]), -1,
                                   extra[name]).astype(np.int8)
        else:
            extra[name][bad] = np.nan
    return p, extra, status, digest.hexdigest()


def _member_record(infer: Any, model: str, domain: str, threshold: float) -> dict[str, Any]:
    """classify's provenance record for one model, and its shift threshold."""
    from galmerge.io.provenance import record

    prov = record(checkpoint=Path(infer.loaded.path), config=infer.loaded.config,
                  survey="in-memory images", data_release="", cutout_kind="", domain=domain,
                  preprocessing=dict(infer.spec), temperature=infer.loaded.temperature,
                  threshold=threshold)
    exported_from = getattr(infer, "exported_from", None)
    if exported_from is not None:
        prov["exported_from_checkpoint_sha256"] = exported_from
    shift = getattr(infer, "shift", None)
    if shift is not None:
        prov["shift_threshold"] = float(shift["threshold"])
        prov["shift_stats_sha256"] = shift["meta"].get("sha256", "")
    if getattr(infer, "mc_dropout", 0):
        prov["mc_dropout"] = int(infer.mc_dropout)
    return {"provenance": prov, "model": model,
            "shift": None if shift is None else float(shift["threshold"])}


def _table(columns: dict[str, np.ndarray], members: list[dict[str, Any]], models: list[str],
           threshold: float, prior: Any, rule: str, inputs_sha: str) -> Any:
    """The astropy Table: ``columns``, p_merger, is_merger, status and the extra columns
    (one model: its own; an ensemble: `galmerge.classification.ensemble`'s rule)."""
    from astropy.table import Table

    from galmerge.classification.ensemble import SHIFT_RULE, STD_COLUMN, _quiet_nan
    from galmerge.io.provenance import stamped
    from galmerge.models import shift as shift_score

    first = members[0]
    prov = dict(first["record"]["provenance"], input_sha256=inputs_sha)
    status = first["status"]
    extra = dict(first["extra"])
    p = first["p"]
    if len(members) > 1:
        probs = np.stack([m["p"] for m in members])
        with np.errstate(invalid="ignore"), _quiet_nan():
            mean, std = np.nanmean(probs, axis=0), np.nanstd(probs, axis=0)
        ok = np.isfinite(probs[0])  # the rows keep the first model's status
        p, std = np.where(ok, mean, np.nan), np.where(ok, std, np.nan)
        extra = {}
        scored = [m for m in members if m["record"]["shift"] is not None]
        if scored:
            with np.errstate(invalid="ignore"), _quiet_nan():
                relative = np.nanmean(np.stack([m["extra"][shift_score.SCORE_COLUMN]
                                                / m["record"]["shift"] for m in scored]), axis=0)
            relative = np.where(ok, relative, np.nan)
            extra[shift_score.SCORE_COLUMN] = relative
            extra[shift_score.FLAG_COLUMN] = shift_score.flags(relative, 1.0)
            prov.update({"shift_threshold": 1.0, "shift_ensemble_rule": SHIFT_RULE,
                         "shift_members": [
                             {"model": m["record"]["model"], "threshold": m["record"]["shift"],
                              "stats_sha256": m["record"]["provenance"].get(
                                  "shift_stats_sha256", "")} for m in scored],
                         "shift_stats_sha256": ",".join(
                             m["record"]["provenance"].get("shift_stats_sha256", "")
                             for m in scored)})
        else:
            for key in ("shift_threshold", "shift_stats_sha256"):
                prov.pop(key, None)
        extra[STD_COLUMN] = std
        prov["ensemble"] = [{"model": m["record"]["model"],
                             "checkpoint_sha256": m["record"]["provenance"]["checkpoint_sha256"]}
                            for m in members]
    if prior is not None:
        from galmerge.fractions.prior import prior_record, rescale, training_prior

        ok = np.isfinite(p)
        rec = prior_record(p[ok], models[0], prior, threshold, training_prior(models[0]), rule,
                           where="the images")
        p = p.copy()
        p[ok] = rescale(p[ok], rec["prior"], rec["training_prior"],
                        clip=rec["prior_rule"] == "match")
        prov["prior"] = rec
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
