"""`classify --prior auto|VALUE`: p_merger rescaled to the survey's merger fraction by one
logit offset (Bayes' rule for a new class prior; Saerens et al. 2002, eq. 2.4).

``VALUE`` is the survey's merger fraction if known. With the default rule ``match`` the offset
is fitted on the output itself, so that the mean rescaled p_merger of its rows equals VALUE:
Bayes' rule from the prior the model's probabilities carry on *this survey* (found by
`galmerge.fractions.estimators.matched_prior`), which absorbs an adapted model calling too
many survey galaxies mergers (measured: `benchmarks/results/prior_rule37_*.md`). With rule
``bayes`` it is Bayes' rule from the training set's merger fraction: the merger fraction of the
run's source training split (read from the run's cached validation statistics,
`galmerge.fractions.validation_stats`), or 0.5 (the balanced DeepMerge sets) for a bare
checkpoint file; it needs no sample, so prefer it for a handful of rows from a calibrated
model. ``auto`` estimates the prior as the one the EM iterations of Saerens et al. converge to
on the output's own probabilities from the training prior (so the mean rescaled p_merger
equals it, as with ``match``). The output is rewritten in place (atomically: temporary file,
then rename): ``p_merger`` and ``is_merger`` change, every other cell stays. The priors are
recorded in ``<output>.prior.json`` (``training_prior`` is the prior the rule shifted from,
``run_training_prior`` the training set's) and, for HDF5/FITS, in the file's attributes /
header (``GMPRIOR``, ``GMTRPRI``). Assumes that one offset fixes the probabilities (label shift
for ``bayes`` and ``auto``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError, named
from galmerge.fractions.estimators import P_EPS, matched_prior, ml_prior, prior_shift
from galmerge.io import atomic

DEFAULT_TRAINING_PRIOR = 0.5
RULES = ("match", "bayes")  # how --prior VALUE sets the offset; the first is the default
# below this many rows a matched offset is mostly the sample's noise: classify says so (an
# order of magnitude, not a tuned number: the mean of 100 rows moves by ~0.05 at p ~ 0.5)
FEW_ROWS = 100


def parse_prior(value: str | float | None) -> str | float | None:
    """None, ``"auto"`` or a fraction strictly between 0 and 1 (one-line error otherwise)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0 < number < 1:
        raise GalmergeError(f"{named('prior', value)}: give auto or the survey's merger "
                            f"fraction, a number between 0 and 1 (e.g. {named('prior', 0.05)})")
    return number


def training_prior(model: str | os.PathLike[str]) -> tuple[float, str]:
    """The prior the model's probabilities carry, and where it came from."""
    from galmerge.config import rundir

    path = Path(model)
    run = path.parent if path.is_file() and path.suffix == ".pt" else path
    if (run / rundir.CONFIG).is_file():
        from galmerge.fractions.validation_stats import load_validation

        try:  # the checkpoint classify used: RUN_DIR/last.pt of a run without best.pt too
            val = load_validation(path)
        except GalmergeError as exc:  # e.g. the source data is not on this machine
            return DEFAULT_TRAINING_PRIOR, f"default 0.5 (the run's statistics: {exc})"
        if math.isfinite(val.train_prior) and 0 < val.train_prior < 1:
            return val.train_prior, "source training split of the run"
    return DEFAULT_TRAINING_PRIOR, "default 0.5 (balanced training set; no run directory)"


def parse_rule(value: str | None) -> str:
    """``match`` (the default, also for None) or ``bayes`` (one-line error otherwise)."""
    rule = RULES[0] if value is None else str(value).strip().lower()
    if rule not in RULES:
        raise GalmergeError(f"{named('prior_rule', value)}: give match (fit the offset so the "
                            f"mean p_merger equals {named('prior')}) or bayes (Bayes' rule from "
                            "the training prior)")
    return rule


def apply_prior(output: str | os.PathLike[str], model: str | os.PathLike[str],
                prior: str | float, threshold: float,
                training: tuple[float, str] | None = None, rule: str = RULES[0]
                ) -> dict[str, Any]:
    """Rescale the output's p_merger to ``prior`` (or the EM estimate for ``"auto"``): from the
    prior matched on the output (``rule="match"``) or from ``training`` (``rule="bayes"``;
    default: `training_prior` of ``model``); returns the provenance record also written to
    ``<output>.prior.json``."""
    return apply_prior_counted(output, model, prior, threshold, training, rule)[0]


def apply_prior_counted(output: str | os.PathLike[str], model: str | os.PathLike[str],
                        prior: str | float, threshold: float,
                        training: tuple[float, str] | None = None, rule: str = RULES[0]
                        ) -> tuple[dict[str, Any], int]:
    """`apply_prior`, and the number of ``ok`` rows whose rescaled p_merger is at least
    ``threshold`` (the rows ``is_merger`` now flags), counted from the one read of the output
    that the rule fits on (not by reading it back)."""
    from galmerge.fractions.report import read_results

    out = Path(output)
    p = read_results(out).p
    record = prior_record(p, model, prior, threshold, training, rule, where=str(out))
    new, old, clip = record["prior"], record["training_prior"], record["prior_rule"] == "match"
    _rewrite(out, new, old, threshold, record, clip=clip)
    from galmerge.io.provenance import sha256_file

    # binds the sidecar to this version of the output: `fraction` refuses a stale one
    side = dict(record, output_sha256=sha256_file(out))
    atomic.write_text(out.with_name(out.name + ".prior.json"), json.dumps(side, indent=2) + "\n")
    mergers = int((rescale(p, new, old, clip=clip) >= threshold).sum())
    return record, mergers


def prior_record(p: np.ndarray, model: str | os.PathLike[str], prior: str | float,
                 threshold: float, training: tuple[float, str] | None = None,
                 rule: str = RULES[0], where: str = "the output") -> dict[str, Any]:
    """The record of rescaling the probabilities ``p`` (a survey's ok rows) to ``prior``
    (or the EM estimate for ``"auto"``): ``prior`` is the new prior, ``training_prior`` the one
    the rule shifts from (matched on ``p`` for ``rule="match"``, else ``training``, by default
    `training_prior` of ``model``), ``prior_rule`` the rule applied (``em`` for auto).
    `rescale` (``clip`` for the match rule) applies it; ``where`` names ``p`` in errors."""
    rule = parse_rule(rule)
    run_prior, run_where = training if training is not None else training_prior(model)
    old, where_from = run_prior, run_where
    if prior == "auto":
        if len(p) == 0:
            raise GalmergeError(f"{named('prior', 'auto')}: {where} has no rows with a p_merger "
                                "to estimate the survey's merger fraction from; give "
                                f"{named('prior', 'VALUE', literal=True)}")
        new = float(ml_prior(p, old)[0])
        new = min(max(new, 1e-6), 1 - 1e-6)  # keep Bayes' rule finite
        how, rule = "auto: EM (Saerens et al. 2002) on this output's probabilities", "em"
    else:
        new, how = float(prior), "given"
        if rule == "match":
            if len(p) == 0:
                raise GalmergeError(f"{named('prior', new)}: {where} has no rows with a "
                                    "p_merger to match the merger fraction on; give "
                                    f"{named('prior_rule', 'bayes')}")
            old = matched_prior(p, new)  # in [P_EPS, 1 - P_EPS]: Bayes' rule stays finite
            where_from = (f"matched: the mean rescaled p_merger of the output's {len(p)} rows "
                          "equals the given prior")
    rows = {"matched_rows": int(len(p))} if rule == "match" else {}
    record = {"prior": new, "prior_from": how, "prior_rule": rule, **rows, "training_prior": old,
              "training_prior_from": where_from, "run_training_prior": run_prior,
              "run_training_prior_from": run_where, "threshold": threshold,
              "rule": "p' = r p / (r p + s (1 - p)), r = prior / training_prior, "
                      "s = (1 - prior) / (1 - training_prior)"}
    if prior == "auto" and str(model):
        from galmerge.fractions.adaptation import adaptation_check

        run = Path(model)
        check = adaptation_check(run.parent if run.suffix == ".pt" else run, old, new)
        if check is not None:  # EM inherits the pull of an adapted model toward `old`
            record["adaptation_check"] = check
    return record


def _columns(names: list[str]) -> tuple[str, str]:
    from galmerge.fractions.report import P_NAME, _result_column

    p_col = _result_column(names, P_NAME)
    import re

    flag_col = _result_column(names, re.compile(r"^is_merger(_\d+)?$"))
    if p_col is None or flag_col is None:
        raise GalmergeError("the output has no p_merger/is_merger columns to rescale")
    return p_col, flag_col


def rescale(p: np.ndarray, new: float, old: float, clip: bool) -> np.ndarray:
    """``p`` shifted from prior ``old`` to ``new`` (`prior_shift`); ``clip`` (the match rule):
    first to [P_EPS, 1 - P_EPS], as `matched_prior` fitted them, so saturated rows move too."""
    p = np.asarray(p, dtype=np.float64)
    return prior_shift(np.clip(p, P_EPS, 1 - P_EPS) if clip else p, new, old)


def _rewrite(path: Path, new: float, old: float, threshold: float,
             record: dict[str, Any], clip: bool = False) -> None:
    """Rescale every finite p_merger of the output (`rescale`)."""
    import h5py

    from galmerge.fractions.report import is_fits, is_parquet

    def shift(p: np.ndarray) -> np.ndarray:
        return rescale(p, new, old, clip)

    def write(tmp: Path) -> None:
        if h5py.is_hdf5(path):
            _rewrite_hdf5(path, tmp, shift, threshold, record)
        elif is_fits(path):
            _rewrite_fits(path, tmp, shift, threshold, record)
        elif is_parquet(path):
            _rewrite_parquet(path, tmp, shift, threshold, record)
        else:
            _rewrite_csv(path, tmp, shift, threshold)

    atomic.write_with(path, write, ".prior")


def _rewrite_csv(path: Path, tmp: Path, shift: Any, threshold: float) -> None:
    """Row blocks of the CSV through ``shift`` (the same `rescale` as the other formats); a cell
    that is empty or not a finite number after the shift stays as it is."""
    from itertools import islice

    enc = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
    with open(path, **enc) as src, open(tmp, "w", **enc) as dst:  # type: ignore[call-overload]
        reader = csv.reader(src)
        writer = csv.writer(dst, lineterminator="\r\n")
        header = next(reader)
        writer.writerow(header)
        p_col, flag_col = _columns(header)
        ip, iflag = header.index(p_col), header.index(flag_col)
        while block := list(islice(reader, 65536)):
            new = shift(np.array([_number(row[ip]) if max(ip, iflag) < len(row) else math.nan
                                  for row in block]))
            for row, value in zip(block, new.tolist(), strict=True):
                if math.isfinite(value):
                    # every digit (not classify's 6): near 0 or 1 a rescaled p rounds to 0 or 1
                    # at 6 digits, and `fraction` could not undo the shift
                    row[ip] = repr(value)
                    row[iflag] = str(int(value >= threshold))
            writer.writerows(block)


def _number(cell: str) -> float:
    try:
        return float(cell) if cell != "" else math.nan
    except ValueError:
        return math.nan


def _rewrite_hdf5(path: Path, tmp: Path, shift: Any, threshold: float,
                  record: dict[str, Any]) -> None:
    import shutil

    import h5py

    shutil.copyfile(path, tmp)
    with h5py.File(tmp, "r+") as f:
        names = json.loads(f.attrs["columns"])
        where = dict(zip(names, json.loads(f.attrs["datasets"]), strict=True))
        p_col, flag_col = _columns(names)
        p = f[where[p_col]][()]
        new = shift(p)
        ok = np.isfinite(new)
        p[ok] = new[ok]
        flag = f[where[flag_col]][()]
        flag[ok] = (new[ok] >= threshold).astype(flag.dtype)
        f[where[p_col]][...] = p
        f[where[flag_col]][...] = flag
        f.attrs["galmerge_prior"] = json.dumps(record)


def _rewrite_parquet(path: Path, tmp: Path, shift: Any, threshold: float,
                     record: dict[str, Any]) -> None:
    """Batch by batch (a survey-sized output never sits in memory); the schema, its metadata
    (the classify provenance) and every other column are kept, ``galmerge_prior`` is added."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    p_col, flag_col = _columns(list(schema.names))
    meta = dict(schema.metadata or {})
    meta[b"galmerge_prior"] = json.dumps(record).encode()
    schema = schema.with_metadata(meta)
    ip, iflag = schema.get_field_index(p_col), schema.get_field_index(flag_col)
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in source.iter_batches():
            columns = list(batch.columns)
            new = shift(columns[ip].cast(pa.float64()).to_numpy(zero_copy_only=False))
            ok = pa.array(np.isfinite(new))  # elsewhere (a null p_merger) the row stays as it is
            columns[ip] = pc.if_else(ok, pa.array(new).cast(schema.field(ip).type), columns[ip])
            columns[iflag] = pc.if_else(ok, pa.array(new >= threshold).cast(
                schema.field(iflag).type), columns[iflag])
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def _rewrite_fits(path: Path, tmp: Path, shift: Any, threshold: float,
                  record: dict[str, Any]) -> None:
    from astropy.io import fits

    with fits.open(path) as hdul:
        hdu = next(h for h in hdul if isinstance(h, fits.BinTableHDU))
        p_col, flag_col = _columns(list(hdu.columns.names))
        p = np.asarray(hdu.data[p_col], dtype=np.float64)
        new = shift(p)
        ok = np.isfinite(new)
        p[ok] = new[ok]
        hdu.data[p_col] = p
        flag = np.asarray(hdu.data[flag_col]).copy()
        flag[ok] = (new[ok] >= threshold).astype(flag.dtype)
        hdu.data[flag_col] = flag
        hdu.header["GMPRIOR"] = (record["prior"], "p_merger rescaled to this merger fraction")
        hdu.header["GMTRPRI"] = (record["training_prior"], "p_merger rescaled from this prior")
        hdul.writeto(tmp, overwrite=True)


def read_record(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance of a ``--prior`` rescaling of ``output``, or None if it was not
    rescaled: the record inside the file (HDF5 attribute, Parquet metadata, FITS
    ``GMPRIOR``/``GMTRPRI``; it travels with a copied file), else ``<output>.prior.json``, which
    must describe this version of the file (its ``output_sha256``) and agree with the inner
    record."""
    path = Path(output)
    side = path.with_name(path.name + ".prior.json")
    try:
        record = json.loads(side.read_text()) if side.is_file() else None
    except (OSError, ValueError) as exc:
        raise GalmergeError(f"{side}: unreadable ({exc}); delete it or classify again") from None
    inner = _in_file_record(path)
    if record is not None and not isinstance(record, dict):
        raise GalmergeError(f"{side}: not a --prior record; delete it or classify again")
    if record is not None:
        sha = record.get("output_sha256")
        if sha is not None:
            from galmerge.io.provenance import sha256_file_once

            # once per process: fraction's provenance hashes the same file
            if sha != sha256_file_once(path):
                raise GalmergeError(
                    f"{side} describes another version of {path.name} (the file changed after "
                    "classify --prior wrote it); delete the .prior.json if the file holds the "
                    "model's own probabilities, or classify again")
    if inner is not None and record is not None and any(
            not math.isclose(float(inner[k]), float(record.get(k, math.nan)), rel_tol=1e-9)
            for k in ("prior", "training_prior")):
        raise GalmergeError(f"{side} and the record inside {path.name} name other priors; "
                            "delete the .prior.json or classify again")
    record = inner if inner is not None else record
    if record is None:
        return None
    if not all(0 < float(record.get(k, math.nan)) < 1 for k in ("prior", "training_prior")):
        raise GalmergeError(f"{path}: its --prior record has no valid prior/training_prior; "
                            "classify again")
    return record


def _in_file_record(path: Path) -> dict[str, Any] | None:
    """The ``--prior`` record a rescaled HDF5, Parquet or FITS output carries itself."""
    import h5py

    from galmerge.fractions.report import is_fits, is_parquet

    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("galmerge_prior")
            return None if raw is None else json.loads(raw)
        if is_parquet(path):
            import pyarrow.parquet as pq

            raw = (pq.read_schema(path).metadata or {}).get(b"galmerge_prior")
            return None if raw is None else json.loads(raw)
        if is_fits(path):
            from astropy.io import fits

            with fits.open(path) as hdul:
                for hdu in hdul:
                    if isinstance(hdu, fits.BinTableHDU) and "GMPRIOR" in hdu.header:
                        return {"prior": float(hdu.header["GMPRIOR"]),
                                "training_prior": float(hdu.header.get("GMTRPRI", math.nan))}
    except (OSError, ValueError, TypeError) as exc:
        raise GalmergeError(f"{path}: its --prior record is unreadable ({exc})".splitlines()[0]
                            ) from None
    return None


def undo(p: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """The probabilities before a ``--prior`` rescaling (Bayes' rule run backwards)."""
    return prior_shift(p, float(record["training_prior"]), float(record["prior"]))
