"""`galmerge fraction`: merger fractions (optionally per bin of a column) of a classify output,
by the estimators of `galmerge.fractions.estimators`, with bootstrap intervals and a figure.

The output of ``--json`` (and of `survey_fraction`) is, without ``--by``::

    {"estimators": {"naive"|"acc"|"em"|"bbse": {"fraction": f, "ci68": [lo, hi],
                                                 "ci95": [lo, hi]}},
     "recommended": NAME, "n": rows used, "excluded": {reason: rows}, "validation": {...},
     "threshold": t, "bootstrap": B, "label_shift_check": {"ks", "p_value", ...} | null,
     "adaptation_check": {"strategies", "source_fraction", "estimate", "warning",
                          "message"} | null}

and with ``--by COLUMN``: ``{"by": COLUMN, "bins": [{"lo": a, "hi": b, "n": n, "estimators":
{...}, "recommended": NAME}, ...], "excluded": {...}, "validation": {...}, "threshold": t,
"bootstrap": B, "label_shift_check": ..., "adaptation_check": ...}`` (bins are ``[lo, hi)``, the last one ``[lo, hi]``). A fraction or interval is
null where its estimator is undefined (e.g. ACC when the classifier does not separate the
classes on the source). ``label_shift_check`` (`galmerge.fractions.estimators.label_shift_test`, over all
rows; null with ``--bootstrap 0``): a small ``p_value`` says the survey's p_merger distribution
is no mixture of the source classes', i.e. domain shift, and the corrected fractions are biased.
With ``--labels FILE`` (a labelled random sample of the survey rows,
`galmerge.fractions.labelled`) every ``estimators`` mapping gains ``"ppi"``, the recommended
estimator where it is defined (at least `galmerge.fractions.estimators.MIN_LABELLED` labelled
rows in the bin), each result or bin gains ``"labelled": {"n", "merger_fraction", "lambda"}``
and the payload ``"labels": {"file", "id_column", "label_column", "rows", "unmatched"}``.
``adaptation_check`` (`galmerge.fractions.adaptation`; null for a source-only model):
``{"strategies", "source_fraction", "estimate", "warning", "message"}`` for a model adapted to a
target in training, whose estimates are pulled toward the source's merger fraction.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import numbers as numbers_abc
import os
import re
import reprlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError, named
from galmerge.fractions.adaptation import adaptation_check
from galmerge.fractions.estimators import (
    ESTIMATORS,
    LABELLED,
    Validation,
    estimate,
    label_shift_test,
    recommend,
)
from galmerge.io import atomic
from galmerge.io.columns import find_column

P_NAME = re.compile(r"^p_merger(_\d+)?$")
STATUS_NAME = re.compile(r"^status(_\d+)?$")


@dataclass
class Results:
    """The usable rows of a classify output: p_merger (and the --by column) of ok rows."""

    p: np.ndarray
    by: np.ndarray | None
    rows: int
    excluded: Counter
    ids: np.ndarray | None = None  # the id column's values of the same rows (``id_col``)


def _result_column(columns: list[str], pattern: re.Pattern[str]) -> str | None:
    # classify appends its columns after the input's (suffixed _1, _2 if taken): the last wins
    found = [c for c in columns if pattern.match(c)]
    return found[-1] if found else None


def _by_column(columns: list[str], by: str | None, path: Path) -> str | None:
    if by is None:
        return None
    found = find_column(columns, by)
    if found is not None:
        return found
    raise GalmergeError(f"{path}: no column '{by}' for --by; columns are: {', '.join(columns)}")


def _floats(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "fiu":
        return arr.astype(np.float64)
    out = np.full(len(arr), np.nan)
    for i, v in enumerate(arr):
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        with contextlib.suppress(TypeError, ValueError):  # not a number: stays NaN
            out[i] = float(v)
    return out


def _status_text(values: Any) -> np.ndarray:
    return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                     for v in values], dtype=object)


def read_results(path: str | os.PathLike[str], by: str | None = None,
                 id_col: str | None = None) -> Results:
    """p_merger of the rows with status ``ok`` (others counted by reason) of a classify output
    (CSV, HDF5, FITS or Parquet), the ``by`` column as floats and the ``id_col`` column."""
    p = Path(path)
    if not p.is_file():
        raise GalmergeError(f"results file {p} does not exist; pass a classify output")
    columns, get = output_columns(p)
    p_col = _result_column(columns, P_NAME)
    if p_col is None:
        raise GalmergeError(f"{p} has no p_merger column; pass the output of galmerge classify "
                            f"(columns: {', '.join(columns[:20])})")
    s_col = _result_column(columns, STATUS_NAME)
    b_col = _by_column(columns, by, p)
    prob = _floats(get(p_col))
    status = _status_text(get(s_col)) if s_col else np.full(len(prob), "ok", dtype=object)
    excluded: Counter = Counter()
    ok = status == "ok"
    for reason in status[~ok]:
        excluded[str(reason).split(":", 1)[0] or "no-status"] += 1
    finite = np.isfinite(prob) & (prob >= 0) & (prob <= 1)
    excluded["ok-without-p_merger"] += int((ok & ~finite).sum())
    keep = ok & finite
    by_values = None
    if b_col is not None:
        raw = get(b_col)
        vals = _floats(raw)
        if (np.asarray(raw).dtype.kind not in "fiu" and keep.any()
                and not np.isfinite(vals[keep]).any()):
            text = _status_text(np.asarray(raw)[keep])
            example = next((v for v in text if v.strip() and v.lower() != "nan"), "")
            if example:  # values there, none of them a number
                raise GalmergeError(f"--by {b_col} is not a numeric column (e.g. "
                                    f"{example[:40]!r}); bin by a number such as redshift or "
                                    "stellar mass")
        bad = keep & ~np.isfinite(vals)
        excluded[f"no-{b_col}"] += int(bad.sum())
        keep &= np.isfinite(vals)
        by_values = vals[keep]
    ids = np.asarray(get(id_col, exact=True))[keep] if id_col is not None else None
    return Results(prob[keep], by_values, len(prob), Counter({k: v for k, v in excluded.items()
                                                              if v}), ids)


def output_columns(path: Path) -> tuple[list[str], Any]:
    """(column names, column getter) of a classify output in any of its formats (HDF5, FITS,
    Parquet by content or suffix, else CSV). ``get(column)`` gives numbers as floats (nulls
    NaN); ``get(column, exact=True)`` keeps integers as they are (identifiers such as SDSS's
    18-digit objid do not survive a float)."""
    import h5py

    if h5py.is_hdf5(path):
        return _hdf5_columns(path)
    if is_fits(path):
        return _fits_columns(path)
    if is_parquet(path):
        return _parquet_columns(path)
    return _csv_columns(path)


def is_fits(path: Path) -> bool:
    """A FITS file by its suffix (also gzipped: astropy reads those) or by its first card,
    whatever its suffix."""
    return (path.name.lower().endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz"))
            or _starts_with(path, b"SIMPLE  ="))


def is_parquet(path: Path) -> bool:
    """A Parquet file by its magic bytes, whatever its suffix (classify writes ``.parquet``,
    ``.pq`` and ``.parq``: `galmerge.classification.parquet`, a layer above this one)."""
    return _starts_with(path, b"PAR1")


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(magic)) == magic


def _hdf5_columns(path: Path) -> tuple[list[str], Any]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names = json.loads(f.attrs["columns"])
            dsets = json.loads(f.attrs["datasets"])
    except (OSError, KeyError, ValueError) as exc:
        raise GalmergeError(f"{path}: not a classify HDF5 output ({exc})".splitlines()[0]) \
            from None
    where = dict(zip(names, dsets, strict=True))

    def get(column: str, exact: bool = False) -> np.ndarray:
        from galmerge.io.hdf5 import check_stored_here

        with h5py.File(path, "r") as f:
            check_stored_here(f, where[column], path)
            d = f[where[column]]
            values = d[()]
            null = d.attrs.get("null")
        if null is not None and values.dtype.kind in "iu" and not exact:
            values = np.where(values == null, np.nan, values.astype(np.float64))
        return values

    return list(names), get


def _fits_columns(path: Path) -> tuple[list[str], Any]:
    from astropy.io import fits

    try:
        hdul = fits.open(path, memmap=True)
    except Exception as exc:  # astropy raises many types for bad files
        raise GalmergeError(f"{path}: cannot read as FITS ({exc})".splitlines()[0]) from None
    hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU | fits.TableHDU)), None)
    if hdu is None:
        hdul.close()
        raise GalmergeError(f"{path}: no table in this FITS file; pass a classify output")
    names = list(hdu.columns.names)

    def get(column: str, exact: bool = False) -> np.ndarray:
        values = np.asarray(hdu.data[column])
        if values.dtype.kind == "S":
            values = np.char.rstrip(values)
        null = hdu.columns[column].null
        if null is not None and values.dtype.kind in "iu" and not exact:
            values = np.where(values == null, np.nan, values.astype(np.float64))
        return values

    return names, get


def _parquet_columns(path: Path) -> tuple[list[str], Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = list(pq.ParquetFile(path).schema_arrow.names)
    except (OSError, pa.ArrowException) as exc:
        raise GalmergeError(f"{path}: cannot read as Parquet ({exc})".splitlines()[0]) from None

    def get(column: str, exact: bool = False) -> np.ndarray:
        # one column at a time: a survey-sized output is never read whole
        values = pq.read_table(path, columns=[column]).column(column)
        if exact and pa.types.is_integer(values.type):  # ids: 64-bit integers stay exact
            return np.array(["" if v is None else v for v in values.to_pylist()], dtype=object)
        if pa.types.is_floating(values.type) or pa.types.is_integer(values.type):
            return values.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls: NaN
        return np.array(["" if v is None else v for v in values.to_pylist()], dtype=object)

    return names, get


def _csv_columns(path: Path) -> tuple[list[str], Any]:
    enc = {"newline": "", "encoding": "utf-8", "errors": "surrogateescape"}

    def rows() -> Any:
        with open(path, **enc) as fh:  # type: ignore[call-overload]
            reader = csv.reader(fh)
            header = next(reader, None)
            while header is not None and (not header or header[0].startswith("#")):
                header = next(reader, None)  # SkyServer-style '#Table1' lines
            if header is None:
                raise GalmergeError(f"{path} is empty; pass the output of galmerge classify")
            yield header
            yield from (r for r in reader if r)

    header = next(rows())

    def get(column: str, exact: bool = False) -> np.ndarray:  # CSV fields are exact text
        # one pass per column, holding only that column: outputs can have 10^7+ rows
        i = header.index(column)
        it = rows()
        next(it)
        return np.array([r[i] if i < len(r) else "" for r in it], dtype=object)

    return header, get


# --------------------------------------------------------------------------------------------
# bins


def _bin_numbers(text: str) -> list[float]:
    """The numbers of a ``--bins`` text (none where one of them is no number)."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return [float(t) for t in parts]
    except ValueError:
        return []


def _is_count(numbers: list[float]) -> bool:
    """One whole number from 1 up: that many equal-count bins."""
    return len(numbers) == 1 and numbers[0].is_integer() and numbers[0] >= 1


def _are_edges(numbers: list[float]) -> bool:
    """At least two finite numbers, each above the one before."""
    return len(numbers) >= 2 and all(math.isfinite(v) for v in numbers) and all(
        b > a for a, b in zip(numbers, numbers[1:], strict=False))


def parse_bins(text: str, values: np.ndarray, column: str) -> np.ndarray:
    """``"0,0.5,1"`` (edges, increasing) or ``"4"`` (that many equal-count bins) -> edges."""
    numbers = _bin_numbers(text)
    if _is_count(numbers):
        if len(values) == 0:
            raise GalmergeError(f"no ok rows with a value of {column}; nothing to bin")
        k = int(numbers[0])
        if k > len(values):
            raise GalmergeError(f"{named('bins', text)}: {column} has {len(values)} ok rows, "
                                f"too few for {k} equal-count bins; give fewer bins or the "
                                f"edges, e.g. {named('bins', '0,0.5,1')}")
        edges = np.quantile(values, np.linspace(0, 1, k + 1))
        if len(np.unique(edges)) != len(edges):
            raise GalmergeError(f"{named('bins', text)}: {column} has too few distinct values "
                                f"for {k} equal-count bins; give the edges, e.g. "
                                f"{named('bins', '0,0.5,1')}")
        return edges
    if not _are_edges(numbers):
        raise GalmergeError(f"{named('bins', text)}: give increasing edges (e.g. "
                            f"{named('bins', '0,0.5,1')}) or a number of equal-count bins (e.g. "
                            f"{named('bins', '4')})")
    return np.array(numbers)


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[values == edges[-1]] = len(edges) - 2  # the last bin is closed
    idx[(values < edges[0]) | (values > edges[-1])] = -1
    return idx


# --------------------------------------------------------------------------------------------
# the command


#: the fewest resamples an interval is computed from (`estimators._intervals` needs 10 defined)
MIN_BOOTSTRAP = 10


def survey_fraction(results: str | os.PathLike[str], model: str | os.PathLike[str], *,
                    by: str | None = None, bins: str | None = None, threshold: float = 0.5,
                    bootstrap: int = 1000, seed: int = 0, source: str | None = None,
                    device: str = "cpu", plot: str | os.PathLike[str] | None = None,
                    validation: Validation | None = None, target: str | None = None,
                    labels: str | os.PathLike[str] | None = None, id_col: str | None = None,
                    label_col: str | None = None) -> dict[str, Any]:
    """The merger fraction(s) of a classify output with intervals; see the module docstring.
    ``labels``: a labelled random sample of the survey rows (`galmerge.fractions.labelled`),
    which adds the ``ppi`` estimator."""
    from galmerge.fractions import labelled
    from galmerge.fractions.validation_stats import load_validation
    from galmerge.io.provenance import code_identity

    code_identity()  # the code this job runs, read as it starts (a commit made meanwhile is not it)
    if (by is None) != (bins is None):
        raise GalmergeError(f"{named('by')} and {named('bins')} go together: e.g. "
                            f"{named('by', 'z')} {named('bins', '0,0.1,0.2')}")
    if not 0 <= seed < 2**63:  # numpy's generators take non-negative seeds
        raise GalmergeError(f"{named('seed', seed)}: give a whole number from 0 to 2**63 - 1")
    if bootstrap < 0 or 0 < bootstrap < MIN_BOOTSTRAP:
        raise GalmergeError(f"{named('bootstrap', bootstrap)}: use 0 (no intervals) or at least "
                            f"{MIN_BOOTSTRAP} resamples (fewer give no interval)")
    if not 0 < threshold < 1:
        raise GalmergeError(f"{named('threshold')} must be between 0 and 1, got {threshold}")
    from galmerge.fractions.prior import read_record, undo

    if plot is not None:  # before any work
        check_plot(Path(plot))
    sample = None
    if labels is None and (id_col is not None or label_col is not None):
        raise GalmergeError(f"{named('id_col')} and {named('label_col')} name columns of the "
                            f"{named('labels')} file; pass the labelled sample too")
    if labels is not None and Path(results).is_file():
        sample = labelled.read_labels(labels, output_columns(Path(results))[0], id_col=id_col,
                                      label_col=label_col or labelled.DEFAULT_LABEL_COLUMN)
    res = read_results(results, by, sample.result_id_column if sample is not None else None)
    rescaled = read_record(results)
    if rescaled is not None:  # the estimators need the model's own probabilities
        res.p = undo(res.p, rescaled)
    if len(res.p) == 0:
        raise GalmergeError(f"{results}: no rows with status ok and a p_merger "
                            f"({res.rows} rows: {_reasons(res.excluded)}); nothing to count")
    # before the validation split is scored (seconds, and a file written into the run)
    edges = parse_bins(bins, res.by, by) if by is not None and bins is not None else None
    val = (validation if validation is not None
           else load_validation(model, source, device, target=target))
    from galmerge.io.provenance import sha256_file

    run = Path(model)
    checkpoint = run / str(val.meta.get("checkpoint", "")) if run.is_dir() else run
    checkpoint_sha256 = sha256_file(checkpoint) if checkpoint.is_file() else None
    if checkpoint_sha256 is not None:
        _check_same_model(results, checkpoint, checkpoint_sha256)
    common: dict[str, Any] = {
        "excluded": dict(res.excluded),
        "validation": None,
        "threshold": threshold,
        "bootstrap": bootstrap,
    }
    has_label = y_all = None
    if sample is not None:
        assert res.ids is not None
        has_label, y_all, matched = labelled.match(sample, res.ids)
        if not has_label.any():
            raise GalmergeError(
                f"{sample.path}: none of its {len(sample.by_id)} labelled identifiers "
                f"({sample.id_column}) is an ok row of {results}; label galaxies of this survey")
        common["labels"] = {"file": sample.path, "id_column": sample.id_column,
                            "label_column": sample.label_column, "rows": int(has_label.sum()),
                            "unmatched": len(sample.by_id) - matched}  # fmt: skip
        common["labelled_threshold"] = labelled.decision_threshold(res.p[has_label], y_all)

    def lab(sel: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        if has_label is None or y_all is None:
            return None
        if sel is None:
            return res.p[has_label], y_all
        return res.p[sel & has_label], y_all[sel[has_label]]

    if rescaled is not None:
        common["prior_rescaling_undone"] = rescaled
    # over all rows: does the survey look like a mixture of the source classes at all?
    common["label_shift_check"] = (label_shift_test(res.p, val, seed=seed) if bootstrap > 0
                                   else None)
    if by is None:
        out = estimate(res.p, val, threshold, bootstrap, seed, labelled=lab())
        common["validation"] = out.pop("validation")
        label_free = recommend({k: v for k, v in out["estimators"].items() if k in ESTIMATORS})
        common["adaptation_check"] = adaptation_check(
            Path(model), val.train_prior, out["estimators"][label_free]["fraction"],
            labelled=sample is not None)
        payload = {**out, **common}
        panels = [("all ok rows", payload)]
    else:
        assert res.by is not None and edges is not None
        which = _bin_index(res.by, edges)
        outside = int((which < 0).sum())
        if outside:
            common["excluded"][f"outside-{by}-bins"] = outside
        entries = []
        for i in range(len(edges) - 1):
            sel = which == i
            if not sel.any():
                raise GalmergeError(
                    f"bin [{edges[i]:g}, {edges[i + 1]:g}) of {by} has no ok rows; choose "
                    "other --bins (e.g. --bins 4 for equal-count bins)")
            out = estimate(res.p[sel], val, threshold, bootstrap, seed + i, labelled=lab(sel))
            common["validation"] = out.pop("validation")
            entries.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), **out})
        common["adaptation_check"] = adaptation_check(Path(model), val.train_prior, None,
                                                      labelled=sample is not None)
        payload = {"by": by, "bins": entries, **common}
        panels = [(f"{by} in [{e['lo']:g}, {e['hi']:g}" + ("]" if k == len(entries) - 1
                   else ")"), e) for k, e in enumerate(entries)]
    if plot is not None:
        payload["plot"] = str(fraction_figure(panels, Path(plot)))
    payload["provenance"] = _provenance(results, model, checkpoint_sha256, seed, source,
                                        target, labels)
    return payload


# --------------------------------------------------------------------------------------------
# the Python API (galmerge.fraction)


def bins_text(bins: str | int | Sequence[float] | None) -> str | None:
    """``bins`` as Python gives it -> the ``--bins`` text `survey_fraction` reads: a string as
    it is, an int (that many equal-count bins) or increasing edges as a sequence or a 1-d array
    (numpy, pandas...), each edge written so that it reads back as the same float. Anything
    else (a bool, a float, a set), or a value that is no valid ``--bins``, is a one-line error
    in Python's terms, before any work."""
    if bins is None:
        return None
    if isinstance(bins, str):
        numbers = _bin_numbers(bins)
        if _is_count(numbers) or _are_edges(numbers):
            return bins
    elif isinstance(bins, numbers_abc.Integral) and not isinstance(bins, bool | np.bool_):
        if bins >= 1:
            return str(int(bins))
    elif (isinstance(bins, Sequence) and not isinstance(bins, bytes)) or hasattr(bins,
                                                                                "__array__"):
        try:  # a set has no order: it is neither
            values = list(bins if isinstance(bins, Sequence) else np.asarray(bins))
        except TypeError:  # a 0-d array
            values = []
        if all(isinstance(v, numbers_abc.Real) and not isinstance(v, bool | np.bool_)
               for v in values):
            edges = [float(v) for v in values]
            if _are_edges(edges):
                return ",".join(repr(v) for v in edges)
    shown = " ".join(reprlib.repr(bins).split())  # an array's repr spans lines
    raise GalmergeError(f"bins={shown}: give increasing edges (e.g. bins=[0, 0.5, 1]) or a "
                        "number of equal-count bins (e.g. bins=4)")


def fraction(results: str | os.PathLike[str], model: str | os.PathLike[str], *,
             by: str | None = None, bins: str | int | Sequence[float] | None = None,
             threshold: float = 0.5, bootstrap: int = 1000, seed: int = 0,
             source: Any = None, target: Any = None, device: str = "cpu",
             plot: str | os.PathLike[str] | None = None,
             labels: str | os.PathLike[str] | None = None, id_col: str | None = None,
             label_col: str | None = None) -> dict[str, Any]:
    """`galmerge.fraction`: `survey_fraction` as ``galmerge fraction --json`` runs it, with
    ``bins`` also as a Python int or sequence of edges (`bins_text`) and ``device`` checked
    before any work, as the command's option is."""
    from galmerge.plugin.options import plain_number
    from galmerge.runtime.devices import check_device_name

    # numpy numbers from a notebook are the numbers they hold (the payload stays JSON); other
    # types, one line naming the argument, as `evaluate` and `classify` take them
    threshold = plain_number("threshold", threshold)
    bootstrap = plain_number("bootstrap", bootstrap, whole=True)
    seed = plain_number("seed", seed, whole=True)
    check_device_name(device)
    return survey_fraction(results, model, by=by, bins=bins_text(bins), threshold=threshold,
                           bootstrap=bootstrap, seed=seed, source=source, target=target,
                           device=device, plot=plot, labels=labels, id_col=id_col,
                           label_col=label_col)


def recorded_checkpoint(results: str | os.PathLike[str]) -> tuple[str, set[str]] | None:
    """(checkpoint path, the SHA-256s of the models that wrote p_merger: one, or an ensemble's
    members) that classify recorded in the output's provenance (CSV: its sidecar; HDF5,
    Parquet, FITS: the file itself), or None where none is recorded."""
    import h5py

    from galmerge.io.provenance import FITS_KEYWORDS, SIDECAR_SUFFIX

    path = Path(results)
    prov: Any = None
    try:
        side = path.with_name(path.name + SIDECAR_SUFFIX)
        if side.is_file():
            prov = json.loads(side.read_text())
        elif h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                prov = json.loads(f.attrs.get("galmerge_provenance", "null"))
                if "galmerge_ensemble" in f.attrs and isinstance(prov, dict):
                    prov["ensemble"] = json.loads(f.attrs["galmerge_ensemble"]).get("ensemble")
        elif is_parquet(path):
            import pyarrow.parquet as pq

            meta = pq.read_schema(path).metadata or {}
            prov = json.loads(meta.get(b"galmerge_provenance", b"null"))
        elif is_fits(path):
            from astropy.io import fits

            sha_word = FITS_KEYWORDS["checkpoint_sha256"]
            with fits.open(path) as hdul:
                header = next((h.header for h in hdul if sha_word in h.header), None)
                if header is not None:
                    prov = {"checkpoint": header.get(FITS_KEYWORDS["checkpoint"], ""),
                            "checkpoint_sha256": header[sha_word]}
                    if "GMENSEMB" in header:  # ensemble.py's cards: a count, then the hashes
                        shas = [header.get(f"GMENS{k:03d}")
                                for k in range(1, int(header["GMENSEMB"]) + 1)]
                        prov["ensemble"] = ([{"checkpoint_sha256": v} for v in shas]
                                            if all(isinstance(v, str) for v in shas)
                                            else len(shas))  # older files: no hashes
    except (OSError, ValueError, KeyError):
        return None
    if not isinstance(prov, dict):
        return None
    sha, where = prov.get("checkpoint_sha256"), prov.get("checkpoint")
    members = prov.get("ensemble")
    if members is not None and not (isinstance(members, list)
                                    and all(isinstance(m, dict) for m in members)):
        return None  # an ensemble whose members' hashes are not recorded: nothing to compare
    if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) and isinstance(where, str):
        return where, {sha} | {str(m.get("checkpoint_sha256")) for m in members or []}
    return None


def _check_same_model(results: str | os.PathLike[str], checkpoint: Path,
                      checkpoint_sha256: str) -> None:
    """A one-line error when the output's p_merger came from another checkpoint than the one
    whose source validation split gives the error rates (an ONNX export is not compared)."""
    recorded = recorded_checkpoint(results)
    if recorded is None or not recorded[0].endswith(".pt"):
        return
    if checkpoint_sha256 not in recorded[1]:
        if Path(recorded[0]).name != checkpoint.name:  # e.g. classified with RUN/last.pt
            raise GalmergeError(
                f"{results} was classified with {recorded[0]}, while fraction scores the run's "
                f"{checkpoint.name}; pass --model {checkpoint.parent / Path(recorded[0]).name} "
                f"(the checkpoint that wrote p_merger), or classify again with --model "
                f"{checkpoint.parent}")
        raise GalmergeError(
            f"{results} was classified with {recorded[0]}, not with --model's {checkpoint} "
            f"(SHA-256 {checkpoint_sha256[:12]}... is not the one recorded); the error rates "
            "must come from the model that wrote p_merger: pass that run as --model")


def _shown_data(given: Any) -> str | None:
    """A data spec as the record holds it; an in-memory ImageSet by its survey name, as
    evaluate's metrics.json names one (its pixels stay out of the JSON)."""
    return given if given is None or isinstance(given, str) else f"ImageSet {given.survey}"


def _provenance(results: str | os.PathLike[str], model: str | os.PathLike[str],
                checkpoint_sha256: str | None, seed: int, source: Any,
                target: Any, labels: str | os.PathLike[str] | None) -> dict[str, Any]:
    """What this estimate was made from: the files (with SHA-256), the checkpoint whose source
    validation split gave the error rates, the bootstrap seed, and when and by which galmerge."""
    from galmerge.io.provenance import (
        code_identity,
        sha256_file,
        sha256_file_once,
        stamped,
    )

    out: dict[str, Any] = {
        **code_identity(), "results": str(results),
        "results_sha256": sha256_file_once(results), "model": str(model),
        "checkpoint_sha256": checkpoint_sha256,
        "seed": int(seed), "source": _shown_data(source), "target": _shown_data(target),
        "created_utc": ""}
    if labels is not None:
        out.update(labels=str(labels), labels_sha256=sha256_file(labels))
    return stamped(out)


def _reasons(excluded: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in excluded.most_common()) or "none"


def check_plot(path: Path) -> None:
    """One line for a ``--plot`` that is no figure name or may not be replaced
    (`galmerge.io.atomic.check_figure`)."""
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise GalmergeError(f"--plot {path}: use a .png, .pdf or .svg file name")
    atomic.check_figure(path, option="--plot")


def fraction_figure(panels: list[tuple[str, dict[str, Any]]], path: Path) -> Path:
    """One panel per bin: each estimator's fraction with its 68% (thick) and 95% (thin)
    interval."""
    from matplotlib.figure import Figure

    check_plot(path)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colours = {"naive": "#7f7f7f", "acc": "#1f77b4", "em": "#d62728", "bbse": "#2ca02c",
               LABELLED: "#9467bd"}
    for ax, (title, entry) in zip(axes, panels, strict=False):
        names = [k for k in (*ESTIMATORS, LABELLED) if k in entry["estimators"]]
        for y, name in enumerate(names):
            e = entry["estimators"][name]
            if e["fraction"] is None:
                ax.text(0.02, y, f"{name}: undefined", va="center", fontsize=8)
                continue
            for key, lw in (("ci95", 1.2), ("ci68", 4.0)):
                if e[key] is not None:
                    ax.plot(e[key], [y, y], color=colours[name], lw=lw, solid_capstyle="butt")
            marker = "*" if name == entry["recommended"] else "o"
            ax.plot([e["fraction"]], [y], marker, color="black", ms=8 if marker == "*" else 4)
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.invert_yaxis()
        ax.set_xlim(0, max(0.05, min(1.0, 1.15 * max(
            (e["ci95"][1] if e["ci95"] else e["fraction"] or 0)
            for e in entry["estimators"].values()))))
        ax.set_xlabel("merger fraction")
        ax.set_title(f"{title} (n={entry['n']})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Merger fraction: 68% (thick) and 95% (thin) bootstrap intervals; "
                 "* recommended", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.save_figure(fig, path, option="--plot", dpi=110, bbox_inches="tight",
                       facecolor="white")
    return path
