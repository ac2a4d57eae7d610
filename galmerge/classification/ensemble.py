"""`classify --model RUN_A --model RUN_B ...`: an ensemble (e.g. the seeds of one config).

Each model classifies the catalog in turn (the cutout cache makes every pass after the first
free of downloads) into a hidden temporary output next to the final one; the final output is
the first model's, with ``p_merger`` replaced by the mean over the models that gave a value,
``is_merger`` recomputed from it, and one column appended after ``status``:
``p_merger_std``, the standard deviation over the models (ddof 0; 0 for one model). Every
model must take the same stamps (bands, size, pixel scale): the cutouts are cut once.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io import atomic

STD_COLUMN = "p_merger_std"


def classify_ensemble(catalog: str | os.PathLike[str], models: list[str], **kwargs: Any) -> Any:
    """Run `galmerge.classification.pipeline.classify` once per model and combine the outputs."""
    from galmerge.classification.pipeline import classify, default_output
    from galmerge.fractions.report import read_results
    from galmerge.runtime.distributed import from_environment

    if len(set(map(str, models))) != len(models):
        raise GalmergeError("--model given twice with the same run; an ensemble needs distinct "
                            "models")
    output = kwargs.pop("output", None)
    prior = kwargs.pop("prior", None)
    quiet = kwargs.pop("quiet", False)
    threshold = float(kwargs.get("threshold", 0.5))
    out = Path(output) if output is not None else default_output(Path(catalog))
    _check_shapes(models)
    temps = [out.with_name(f".{out.stem}.member{i}{out.suffix}") for i in range(len(models))]
    summaries = []
    try:
        for i, (model, tmp) in enumerate(zip(models, temps, strict=True)):
            summaries.append(classify(catalog, model, output=tmp, quiet=quiet or i > 0,
                                      **kwargs))
        if not from_environment().is_main:
            return summaries[0]
        probs = np.stack([_all_p(t) for t in temps])
        with np.errstate(invalid="ignore"), _quiet_nan():
            mean = np.nanmean(probs, axis=0)
            std = np.nanstd(probs, axis=0)
        # the rows keep the first model's status: values only where it has one
        first = np.isfinite(probs[0])
        mean, std = np.where(first, mean, np.nan), np.where(first, std, np.nan)
        _write_combined(temps[0], out, mean, std, threshold,
                        {"ensemble": [str(m) for m in models]})
        _combine_sidecars(temps, out, models)
    finally:
        from galmerge.io.provenance import SIDECAR_SUFFIX

        for t in temps:
            t.unlink(missing_ok=True)
            t.with_name(t.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
    summary = summaries[0]
    summary.output = str(out)
    out.with_name(out.name + ".prior.json").unlink(missing_ok=True)
    if prior is not None:
        from galmerge.classification.pipeline import _apply_prior
        from galmerge.fractions.prior import parse_prior, training_prior

        summary.mergers, note = _apply_prior(out, parse_prior(prior), threshold,
                                             training_prior(models[0]))
        if not quiet:
            print(note, file=__import__("sys").stderr)
    else:
        summary.mergers = int((read_results(out).p >= threshold).sum())
    return summary


def _combine_sidecars(temps: list[Path], out: Path, models: list[str]) -> None:
    """A CSV ensemble's provenance sidecar: the first member's record plus every member's
    checkpoint and its SHA-256 (HDF5/FITS outputs carry the first member's record inside)."""
    from galmerge.io.provenance import SIDECAR_SUFFIX

    sidecars = [t.with_name(t.name + SIDECAR_SUFFIX) for t in temps]
    if not sidecars[0].is_file():
        return
    records = [json.loads(s.read_text()) if s.is_file() else {} for s in sidecars]
    combined = dict(records[0])
    combined["ensemble"] = [
        {"model": str(m), "checkpoint_sha256": r.get("checkpoint_sha256", "")}
        for m, r in zip(models, records, strict=True)
    ]
    atomic.write_text(out.with_name(out.name + SIDECAR_SUFFIX),
                      json.dumps(combined, indent=1) + "\n")


class _quiet_nan:
    """All-NaN rows (no model gave a value) are expected: silence numpy's warning."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def _check_shapes(models: list[str]) -> None:
    from galmerge.models.model import read_checkpoint

    shapes = []
    for m in models:
        payload = read_checkpoint(m)
        spec = dict((payload.get("preprocess") or {}).get("target") or {})
        shapes.append((int(payload["in_channels"]), int(payload["image_size"]),
                       tuple(spec.get("bands", ())), spec.get("pixel_scale_arcsec")))
    if len(set(shapes)) > 1:
        raise GalmergeError(
            "the --model runs take different stamps (bands, size or pixel scale: "
            + "; ".join(f"{m}: {s[0]}x{s[1]}px {','.join(map(str, s[2])) or '?'}"
                        for m, s in zip(models, shapes, strict=True))
            + "); an ensemble needs models trained on the same kind of images")


def _names(path: Path) -> tuple[list[str], Any]:
    import h5py

    from galmerge.fractions.report import _csv_columns, _fits_columns, _hdf5_columns

    if h5py.is_hdf5(path):
        return _hdf5_columns(path)
    if path.suffix.lower() in (".fits", ".fit", ".fts"):
        return _fits_columns(path)
    return _csv_columns(path)


def _all_p(path: Path) -> np.ndarray:
    """p_merger of every row (NaN where there is none), in row order."""
    from galmerge.fractions.report import P_NAME, _floats, _result_column

    names, get = _names(path)
    col = _result_column(names, P_NAME)
    if col is None:  # pragma: no cover - classify always writes it
        raise GalmergeError(f"{path} has no p_merger column")
    return _floats(get(col))


def _unique(name: str, taken: list[str]) -> str:
    out, i = name, 0
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    return out


def _write_combined(src: Path, dest: Path, mean: np.ndarray, std: np.ndarray,
                    threshold: float, record: dict[str, Any]) -> None:
    import h5py

    from galmerge.fractions.prior import _columns

    tmp = atomic.temp_beside(dest, ".ensemble")
    try:
        if h5py.is_hdf5(src):
            shutil.copyfile(src, tmp)
            with h5py.File(tmp, "r+") as f:
                names = json.loads(f.attrs["columns"])
                dsets = json.loads(f.attrs["datasets"])
                where = dict(zip(names, dsets, strict=True))
                p_col, flag_col = _columns(names)
                f[where[p_col]][...] = mean
                flag = np.where(np.isfinite(mean), (mean >= threshold), -1).astype(np.int8)
                f[where[flag_col]][...] = flag
                std_name = _unique(STD_COLUMN, names)
                ds_name = _unique(STD_COLUMN, list(f.keys()))
                f.create_dataset(ds_name, data=std.astype(np.float64))
                f.attrs["columns"] = json.dumps([*names, std_name])
                f.attrs["datasets"] = json.dumps([*dsets, ds_name])
                f.attrs["galmerge_ensemble"] = json.dumps(record)
        elif src.suffix.lower() in (".fits", ".fit", ".fts"):
            from astropy.io import fits

            with fits.open(src) as hdul:
                hdu = next(h for h in hdul if isinstance(h, fits.BinTableHDU))
                p_col, flag_col = _columns(list(hdu.columns.names))
                hdu.data[p_col] = mean
                hdu.data[flag_col] = np.where(np.isfinite(mean), mean >= threshold, -1)
                cols = fits.ColDefs([*hdu.columns, fits.Column(
                    name=_unique(STD_COLUMN, list(hdu.columns.names)), format="D", array=std)])
                new = fits.BinTableHDU.from_columns(cols, header=hdu.header)
                new.header["GMENSEMB"] = (len(record["ensemble"]), "models averaged")
                fits.HDUList([fits.PrimaryHDU(), new]).writeto(tmp, overwrite=True)
        else:
            enc = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
            with open(src, **enc) as fin, open(tmp, "w", **enc) as fout:  # type: ignore[call-overload]
                reader = csv.reader(fin)
                writer = csv.writer(fout, lineterminator="\r\n")
                header = next(reader)
                p_col, flag_col = _columns(header)
                ip, iflag = header.index(p_col), header.index(flag_col)
                writer.writerow([*header, _unique(STD_COLUMN, header)])
                for i, row in enumerate(reader):
                    m, s = float(mean[i]), float(std[i])
                    if math.isfinite(m):
                        row[ip], row[iflag] = f"{m:.6g}", str(int(m >= threshold))
                    writer.writerow([*row, f"{s:.6g}" if math.isfinite(s) else ""])
        atomic.publish(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
