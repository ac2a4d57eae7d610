"""`classify --model RUN_A --model RUN_B ...`: an ensemble (e.g. the seeds of one config).

Each model classifies the catalog in turn (the cutout cache makes every pass after the first
free of downloads) into a hidden temporary output next to the final one; the final output is
the first model's, with ``p_merger`` replaced by the mean over the models that gave a value,
``is_merger`` recomputed from it, and one column appended after ``status``:
``p_merger_std``, the standard deviation over the models (ddof 0; 0 for one model). Every
model must take the same stamps (bands, size, pixel scale): the cutouts are cut once.

Shift scores (`galmerge.models.shift`): each member's ``shift_score`` is on its own scale (its
own feature space), but each member's threshold is the same kind of mark on it, the 99th
percentile of that member's source validation scores. The ensemble's ``shift_score`` is
therefore the mean, over the members with shift statistics, of ``shift_score / threshold``
(1 = a member's threshold), and ``shift_flag`` is that mean > 1: the provenance's
``shift_threshold`` is 1.0, ``shift_ensemble_rule`` states the rule and ``shift_members``
lists each member's threshold and statistics. A stamp the mean flags is flagged by at least one
member, so of in-distribution stamps at most the members' 1% tails together are flagged (about
1% when the members agree, fewer when they do not).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io import atomic

STD_COLUMN = "p_merger_std"
SHIFT_RULE = ("mean over the members with shift statistics of shift_score / that member's "
              "threshold; shift_flag = mean > 1")
_SHIFT_NAME = re.compile(r"^shift_score(_\d+)?$")


def classify_ensemble(catalog: str | os.PathLike[str], models: list[str], **kwargs: Any) -> Any:
    """Run `galmerge.classification.pipeline.classify` once per model and combine the outputs."""
    from galmerge.classification.pipeline import (
        _print_summary,
        check_cache,
        check_output,
        classify,
        default_output,
        rank_cache,
    )
    from galmerge.classification.sharding import output_lock, output_lock_path
    from galmerge.runtime.distributed import from_environment

    t0 = time.monotonic()
    if len(set(map(str, models))) != len(models):
        raise GalmergeError("--model given twice with the same run; an ensemble needs distinct "
                            "models")
    output = kwargs.pop("output", None)
    prior = kwargs.pop("prior", None)
    prior_rule = kwargs.pop("prior_rule", None)
    quiet = kwargs.pop("quiet", False)
    kwargs.pop("_member", None)
    threshold = float(kwargs.get("threshold", 0.5))
    out = Path(output) if output is not None else default_output(Path(catalog))
    dist = from_environment()
    if kwargs.get("cache") is not None:
        check_cache(rank_cache(kwargs["cache"], dist.rank), out, Path(catalog))
    check_output(out, Path(catalog))
    _check_shapes(models)
    temps = [out.with_name(f".{out.stem}.member{i}{out.suffix}") for i in range(len(models))]
    for tmp in temps:  # before the try whose cleanup removes them: a file of the user's stays
        check_output(tmp, Path(catalog))
    summaries = []
    is_main = dist.is_main
    # one run per output, as for one model (its lock file stays, as theirs does); the members'
    # own lock files are removed once they are done
    with output_lock(out, dist.rank, dist.world):
        try:
            for i, (model, tmp) in enumerate(zip(models, temps, strict=True)):
                summaries.append(classify(catalog, model, output=tmp, quiet=quiet,
                                          _member=(i, len(models)), **kwargs))
            if not is_main:
                return summaries[0]
            mean, std, first = mean_and_spread(np.stack([_all_p(t) for t in temps]))
            shift = _ensemble_shift(temps, models, first, summaries)
            _write_combined(temps[0], out, mean, std, threshold,
                            {"ensemble": _members(models)}, shift)
            _combine_sidecars(temps, out, models, None if shift is None else shift[2])
        finally:
            from galmerge.io.provenance import SIDECAR_SUFFIX

            for t in temps:
                output_lock_path(t, dist.rank, dist.world).unlink(missing_ok=True)
            # under torchrun only the main process reads the members' outputs, and the others
            # return without waiting for it: only it may remove them
            for t in temps if is_main else ():
                t.unlink(missing_ok=True)
                t.with_name(t.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
    summary = _ensemble_summary(summaries, out, t0)
    out.with_name(out.name + ".prior.json").unlink(missing_ok=True)
    note = None
    if prior is not None:
        from galmerge.classification.pipeline import _apply_prior
        from galmerge.fractions.prior import parse_prior, parse_rule, training_prior

        summary.mergers, note = _apply_prior(out, parse_prior(prior), threshold,
                                             training_prior(models[0]), models[0],
                                             rule=parse_rule(prior_rule))
    else:  # p_merger is finite only where the first member's row has status ok
        summary.mergers = int(np.sum(np.nan_to_num(mean, nan=-1.0) >= threshold))
    if not quiet:
        _print_summary(summary)
        if note is not None:
            print(note, file=sys.stderr)
    return summary


def _ensemble_summary(summaries: list[Any], out: Path, t0: float) -> Any:
    """The ensemble's closing counts: rows and statuses of the first member (the output keeps
    its statuses), the stamps every member asked for, the whole command's time."""
    summary = replace(summaries[0], output=str(out), seconds=time.monotonic() - t0)
    summary.attempted = sum(s.attempted for s in summaries)
    summary.fetched = sum(s.fetched for s in summaries)
    summary.fetch_failed = sum(s.fetch_failed for s in summaries)
    summary.services = dict(summaries[0].services)
    for i, member in enumerate(summaries[1:], start=2):
        if member.attempted:  # a member that asked for stamps (not all in the cache)
            summary.services.update({f"{name} (model {i})": line
                                     for name, line in member.services.items()})
    return summary


def _shift_column(path: Path) -> np.ndarray | None:
    """A member output's shift_score (NaN where none): the column right after ``status``."""
    from galmerge.fractions.report import STATUS_NAME, _floats, _result_column, output_columns

    names, get = output_columns(path)
    status = _result_column(names, STATUS_NAME)
    at = names.index(status) + 1 if status is not None else len(names)
    if at >= len(names) or not _SHIFT_NAME.match(names[at]):
        return None
    return _floats(get(names[at]))


def mean_and_spread(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ensemble's p_merger and p_merger_std from its members' (rows of ``probs``): mean and
    standard deviation (ddof 0) over the members that gave a value, where the first member
    has one (the rows keep its status), NaN elsewhere; and that mask."""
    with np.errstate(invalid="ignore"), _quiet_nan():
        mean, std = np.nanmean(probs, axis=0), np.nanstd(probs, axis=0)
    first = np.isfinite(probs[0])
    return np.where(first, mean, np.nan), np.where(first, std, np.nan), first


def _ensemble_shift(temps: list[Path], models: list[str], rows: np.ndarray,
                    summaries: list[Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """`shift_of_members` of the members' outputs. Each member's threshold is the one its own
    classify scored with (its summary), not a second read of the statistics file."""
    scores = [_shift_column(path) if summary.shift_threshold is not None else None
              for path, summary in zip(temps, summaries, strict=True)]
    members = [{"model": str(model), "threshold": summary.shift_threshold,
                "stats_sha256": str(summary.shift_stats_sha256 or "")}
               for model, summary in zip(models, summaries, strict=True)]
    return shift_of_members(scores, members, rows)


def shift_of_members(scores: list[np.ndarray | None], members: list[dict[str, Any]],
                     rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(shift_score, shift_flag, provenance) of the ensemble (`SHIFT_RULE`) from each member's
    ``shift_score`` (None: no shift statistics) and ``{"model", "threshold", "stats_sha256"}``,
    or None when no member has statistics; values only in ``rows``."""
    from galmerge.models import shift as shift_score

    scored = [(score / float(m["threshold"]), {**m, "threshold": float(m["threshold"])})
              for score, m in zip(scores, members, strict=True) if score is not None]
    if not scored:
        return None
    members = [m for _, m in scored]
    with np.errstate(invalid="ignore"), _quiet_nan():
        mean = np.nanmean(np.stack([relative for relative, _ in scored]), axis=0)
    mean = np.where(rows, mean, np.nan)
    record = {"shift_threshold": 1.0, "shift_ensemble_rule": SHIFT_RULE,
              "shift_members": members,
              "shift_stats_sha256": ",".join(m["stats_sha256"] for m in members)}
    return mean, shift_score.flags(mean, 1.0), record


def _combine_sidecars(temps: list[Path], out: Path, models: list[str],
                      shift: dict[str, Any] | None = None) -> None:
    """A CSV ensemble's provenance sidecar: the first member's record plus every member's
    checkpoint and its SHA-256, and the ensemble's shift record (HDF5/FITS/Parquet outputs
    carry the same inside)."""
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
    if shift is not None:
        combined.update(shift)
    atomic.write_text(out.with_name(out.name + SIDECAR_SUFFIX),
                      json.dumps(combined, indent=1) + "\n")


def _members(models: list[str]) -> list[dict[str, str]]:
    """[{model, checkpoint_sha256}] of every member, as the CSV sidecar records them."""
    from galmerge.io.provenance import sha256_file
    from galmerge.models.model import resolve_checkpoint

    return [{"model": str(m), "checkpoint_sha256": sha256_file(resolve_checkpoint(m))}
            for m in models]


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


def _all_p(path: Path) -> np.ndarray:
    """p_merger of every row (NaN where there is none), in row order."""
    from galmerge.fractions.report import P_NAME, _floats, _result_column, output_columns

    names, get = output_columns(path)
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


def _shift_slots(names: list[str], taken: list[str]) -> tuple[str, str, bool]:
    """The output's shift_score/shift_flag columns: the first member's (True: they exist, right
    after status), or new names to append (False)."""
    from galmerge.fractions.report import STATUS_NAME, _result_column

    status = _result_column(names, STATUS_NAME)
    at = names.index(status) + 1 if status is not None else len(names)
    if at + 1 < len(names) and _SHIFT_NAME.match(names[at]):
        return names[at], names[at + 1], True
    score = _unique("shift_score", taken)
    return score, _unique("shift_flag", [*taken, score]), False


def _write_combined(src: Path, dest: Path, mean: np.ndarray, std: np.ndarray,
                    threshold: float, record: dict[str, Any],
                    shift: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None) -> None:
    import h5py

    from galmerge.classification import parquet
    from galmerge.fractions.prior import _columns

    tmp = atomic.temp_beside(dest, ".ensemble")
    flag = np.where(np.isfinite(mean), (mean >= threshold), -1).astype(np.int8)
    try:
        if h5py.is_hdf5(src):
            shutil.copyfile(src, tmp)
            with h5py.File(tmp, "r+") as f:
                names = json.loads(f.attrs["columns"])
                dsets = json.loads(f.attrs["datasets"])
                where = dict(zip(names, dsets, strict=True))
                p_col, flag_col = _columns(names)
                f[where[p_col]][...] = mean
                f[where[flag_col]][...] = flag
                if shift is not None:
                    s_name, f_name, exists = _shift_slots(names, names)
                    if exists:
                        f[where[s_name]][...] = shift[0]
                        f[where[f_name]][...] = shift[1]
                    else:
                        s_ds = _unique(s_name, list(f.keys()))
                        f.create_dataset(s_ds, data=shift[0])
                        f_ds = _unique(f_name, [*f.keys(), s_ds])
                        f.create_dataset(f_ds, data=shift[1]).attrs["null"] = -1
                        names, dsets = [*names, s_name, f_name], [*dsets, s_ds, f_ds]
                    _hdf5_provenance(f, shift[2])
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
                names = list(hdu.columns.names)
                p_col, flag_col = _columns(names)
                hdu.data[p_col] = mean
                hdu.data[flag_col] = flag
                added = []
                if shift is not None:
                    s_name, f_name, exists = _shift_slots(names, names)
                    if exists:
                        hdu.data[s_name] = shift[0]
                        hdu.data[f_name] = shift[1]
                    else:
                        added = [fits.Column(name=s_name, format="D", array=shift[0]),
                                 fits.Column(name=f_name, format="I", null=-1,
                                             array=shift[1].astype(np.int16))]
                        names = [*names, s_name, f_name]
                cols = fits.ColDefs([*hdu.columns, *added, fits.Column(
                    name=_unique(STD_COLUMN, names), format="D", array=std)])
                new = fits.BinTableHDU.from_columns(cols, header=hdu.header)
                new.header["GMENSEMB"] = (len(record["ensemble"]), "models averaged")
                for k, member in enumerate(record["ensemble"][:999], 1):
                    new.header[f"GMENS{k:03d}"] = (member["checkpoint_sha256"],
                                                   f"SHA-256 of ensemble member {k}")
                if shift is not None:
                    new.header["SHIFTTHR"] = (1.0, "ensemble: mean of score / threshold")
                    new.header["SHIFTSHA"] = shift[2]["shift_stats_sha256"]
                    new.header["SHIFTENS"] = (len(shift[2]["shift_members"]),
                                              "members in the ensemble shift score")
                fits.HDUList([fits.PrimaryHDU(), new]).writeto(tmp, overwrite=True)
        elif src.suffix.lower() in parquet.PARQUET_SUFFIXES:
            _write_parquet(src, tmp, mean, flag, std, record, shift)
        else:
            enc = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
            with open(src, **enc) as fin, open(tmp, "w", **enc) as fout:  # type: ignore[call-overload]
                reader = csv.reader(fin)
                writer = csv.writer(fout, lineterminator="\r\n")
                header = next(reader)
                p_col, flag_col = _columns(header)
                ip, iflag = header.index(p_col), header.index(flag_col)
                new_header = list(header)
                exists, i_s = True, -1
                if shift is not None:
                    s_name, f_name, exists = _shift_slots(header, header)
                    if not exists:
                        new_header += [s_name, f_name]
                    i_s = new_header.index(s_name)
                writer.writerow([*new_header, _unique(STD_COLUMN, new_header)])
                for i, row in enumerate(reader):
                    m, s = float(mean[i]), float(std[i])
                    if math.isfinite(m):
                        row[ip], row[iflag] = f"{m:.6g}", str(int(m >= threshold))
                    if shift is not None:
                        if not exists:
                            row += ["", ""]
                        score = float(shift[0][i])
                        row[i_s] = f"{score:.6g}" if math.isfinite(score) else ""
                        row[i_s + 1] = str(int(shift[1][i])) if math.isfinite(score) else ""
                    writer.writerow([*row, f"{s:.6g}" if math.isfinite(s) else ""])
        atomic.publish(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _hdf5_provenance(f: Any, shift: dict[str, Any]) -> None:
    """The ensemble's shift record in an HDF5 output's provenance (attributes and JSON)."""
    prov = json.loads(f.attrs.get("galmerge_provenance", "{}"))
    prov.update(shift)
    f.attrs["galmerge_provenance"] = json.dumps(prov)
    for key, value in shift.items():
        f.attrs[key] = value if isinstance(value, str | float) else json.dumps(value)


def _write_parquet(src: Path, tmp: Path, mean: np.ndarray, flag: np.ndarray, std: np.ndarray,
                   record: dict[str, Any],
                   shift: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from galmerge.fractions.prior import _columns

    def floats(v: np.ndarray) -> Any:
        return pa.array(v.astype(np.float64), mask=~np.isfinite(v))

    def int8(v: np.ndarray) -> Any:
        return pa.array(v.astype(np.int8), mask=v < 0, type=pa.int8())

    table = pq.read_table(src)
    names = list(table.column_names)
    p_col, flag_col = _columns(names)
    table = table.set_column(names.index(p_col), p_col, floats(mean))
    table = table.set_column(names.index(flag_col), flag_col, int8(flag))
    meta = dict(table.schema.metadata or {})
    prov = json.loads(meta.get(b"galmerge_provenance", b"{}"))
    prov.update(record)
    if shift is not None:
        s_name, f_name, exists = _shift_slots(names, names)
        if exists:
            table = table.set_column(names.index(s_name), s_name, floats(shift[0]))
            table = table.set_column(names.index(f_name), f_name, int8(shift[1]))
        else:
            table = table.append_column(s_name, floats(shift[0]))
            table = table.append_column(f_name, int8(shift[1]))
        prov.update(shift[2])
    table = table.append_column(_unique(STD_COLUMN, list(table.column_names)), floats(std))
    meta[b"galmerge_provenance"] = json.dumps(prov).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp)
