"""Writing classification results: CSV (default), HDF5 (``.h5``), FITS (``.fits``) or Parquet
(``.parquet``, `galmerge.classification.parquet`).

Results arrive as `ResultBlock`s in input order and stream into a temporary file next to the
output; `commit()` renames it into place, so a kill never leaves a truncated output. Columns:
every input column, then ``p_merger``, ``is_merger`` and ``status`` (suffixed ``_1``, ``_2``...
if the input already has such columns). Unavailable values are empty in CSV; in HDF5 and FITS
``p_merger`` is NaN and ``is_merger`` -1 (FITS: TNULL -1, so astropy shows it masked).
Missing cells of numeric input columns (VOTable/FITS nulls) are NaN in float columns and, in
integer ones, the type's extreme value, named by the dataset attribute ``null`` (FITS: TNULL);
boolean columns are stored as int8 0/1, so that they can have one too.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.text import escape_undecodable

RESULT_COLUMNS = ("p_merger", "is_merger", "status")
ENCODING = "utf-8"
ERRORS = "surrogateescape"


@dataclass
class ResultBlock:
    """Consecutive output rows: the input columns plus the three result arrays."""

    columns: dict[str, np.ndarray]
    p: np.ndarray  # float64, NaN when unavailable
    flag: np.ndarray  # int8, -1 when unavailable
    status: np.ndarray  # object (str)
    # result columns after status, by name: float64 (NaN when unavailable) or int8 (-1), e.g.
    # shift_score / shift_flag (`galmerge.models.shift`), p_merger_std (MC-dropout)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.status)


@dataclass
class Tally:
    """Counts for the closing summary."""

    rows: int = 0
    mergers: int = 0
    statuses: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # first full status per reason

    def add(self, block: ResultBlock) -> None:
        self.rows += len(block)
        self.mergers += int((block.flag == 1).sum())
        for status in block.status:
            reason = _reason(status)
            self.statuses[reason] += 1
            if reason not in self.examples:
                self.examples[reason] = str(status)

    @property
    def ok(self) -> int:
        return self.statuses.get("ok", 0)

    @property
    def failed(self) -> int:
        return self.rows - self.ok


def _reason(status: str) -> str:
    """Group statuses by reason: ``fetch-failed: HTTP 500`` counts as ``fetch-failed``."""
    return str(status).split(":", 1)[0]


def _distinct(names: Sequence[str], taken: set[str]) -> list[str]:
    """``names``, each given a ``_1``, ``_2``... suffix where it is in ``taken`` (updated)."""
    out = []
    for name in names:
        candidate, i = name, 0
        while candidate in taken:
            i += 1
            candidate = f"{name}_{i}"
        taken.add(candidate)
        out.append(candidate)
    return out


def result_names(columns: Sequence[str]) -> tuple[str, str, str]:
    """The names of the three result columns, made distinct from the input's."""
    p, flag, status = _distinct(RESULT_COLUMNS, set(columns))
    return p, flag, status


def extra_names(columns: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The names of the columns after ``status``, made distinct from the input's and the
    three result columns'."""
    return _distinct(extra, {*columns, *result_names(columns)})


def _extra_text(values: np.ndarray) -> list[str]:
    if values.dtype.kind == "f":
        return ["" if not np.isfinite(v) else f"{v:.6g}" for v in values.tolist()]
    return ["" if v < 0 else str(v) for v in values.tolist()]


def _temp_path(path: Path, tag: str = "") -> Path:
    # created now (O_EXCL, unpredictable name): a link planted in the folder is never followed
    return atomic.temp_beside(path, tag)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputWriter:
    """Base: a temporary file renamed into place by `commit()`; counts rows for the summary.

    ``provenance`` (`galmerge.io.provenance`), when set before the first write, is recorded in the
    output in the format's own way.
    """

    provenance: dict[str, Any] | None = None

    def __init__(self, path: Path, columns: Sequence[str], tmp: Path | None = None,
                 extra: Sequence[str] = ()) -> None:
        self.path = path
        self.columns = list(columns)
        self.names = result_names(self.columns)
        self.extra = list(extra)  # ResultBlock.extra keys, in output order
        self.extra_out = extra_names(self.columns, self.extra)
        self.tally = Tally()
        path.parent.mkdir(parents=True, exist_ok=True)
        for dead in atomic.dead_temporaries(path.parent, f".{glob.escape(path.name)}*.tmp"):
            dead.unlink(missing_ok=True)  # left by a killed run of this host
        self.tmp = _temp_path(path) if tmp is None else tmp

    def write(self, block: ResultBlock) -> None:
        self.tally.add(block)
        self._write(block)

    def _write(self, block: ResultBlock) -> None:  # pragma: no cover
        raise NotImplementedError

    def _finish(self) -> None:
        """Close the temporary file (and convert it, for FITS)."""

    def commit(self) -> None:
        self._finish()
        atomic.publish(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._finish()
        self.tmp.unlink(missing_ok=True)


def _text(value: Any) -> str:
    if value is None or value is np.ma.masked:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(ENCODING, ERRORS).rstrip()
    if isinstance(value, np.ndarray):
        return " ".join(_text(v) for v in value.ravel())
    if isinstance(value, list | tuple | dict):
        return nested_text(value)
    return str(value)


def nested_text(value: list[Any] | tuple[Any, ...] | dict[str, Any]) -> str:
    """A list, struct or map cell (as the Parquet reader gives it) as JSON text: lists and map
    entries as arrays, structs as objects, a nested null as ``null``, non-finite floats as
    ``NaN``/``Infinity``/``-Infinity``; other values (times, decimals, bytes) as JSON strings of
    the text their own column would be written as (bytes whole, undecodable bytes kept)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=True, default=_json_leaf)


def _json_leaf(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(ENCODING, ERRORS)
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def column_text(values: np.ndarray) -> list[str]:
    """A column as text: CSV fields stay verbatim, numbers as their shortest repr."""
    if values.dtype == object:
        return [v if isinstance(v, str) else _text(v) for v in values]
    if values.dtype.kind in "iu":
        return [str(v) for v in values.tolist()]
    return [_text(v) for v in values]


class CsvWriter(OutputWriter):
    def __init__(self, path: Path, columns: Sequence[str], extra: Sequence[str] = ()) -> None:
        super().__init__(path, columns, extra=extra)
        self._fh = open(  # noqa: SIM115 (kept open across writes; closed by commit/abort)
            self.tmp, "w", encoding=ENCODING, errors=ERRORS, newline=""
        )
        # RFC 4180 line ends: Python's writer then also quotes fields holding a bare CR
        self._csv = csv.writer(self._fh, lineterminator="\r\n")
        self._csv.writerow([*self.columns, *self.names, *self.extra_out])

    def _write(self, block: ResultBlock) -> None:
        cols = [column_text(block.columns[c]) for c in self.columns]
        p = ["" if not np.isfinite(v) else f"{v:.6g}" for v in block.p.tolist()]
        flag = ["" if v < 0 else str(v) for v in block.flag.tolist()]
        more = [_extra_text(block.extra[e]) for e in self.extra]
        self._csv.writerows(zip(*cols, p, flag, block.status.tolist(), *more, strict=True))

    def _finish(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()

    def commit(self) -> None:
        if self.provenance:  # CSV has no place for it: a sidecar, in place before the output
            from galmerge.io.provenance import SIDECAR_SUFFIX, stamped

            side = self.path.with_name(self.path.name + SIDECAR_SUFFIX)
            atomic.write_text(side, json.dumps(stamped(self.provenance), indent=1) + "\n")
        super().commit()


def _h5_dataset_name(name: str, used: set[str]) -> str:
    base = escape_undecodable(name).replace("/", "_").replace(".", "_") or "column"
    out, i = base, 0
    while out in used:
        i += 1
        out = f"{base}_{i}"
    used.add(out)
    return out


class Hdf5Writer(OutputWriter):
    """One resizable dataset per column; text as UTF-8, numbers in their own dtype."""

    def __init__(self, path: Path, columns: Sequence[str], tmp: Path | None = None,
                 extra: Sequence[str] = ()) -> None:
        super().__init__(path, columns, tmp, extra)
        self._f = h5py.File(self.tmp, "w")
        used: set[str] = set()
        self.all_names = [*self.columns, *self.names, *self.extra_out]
        self.datasets = [_h5_dataset_name(n, used) for n in self.all_names]
        self._f.attrs["columns"] = json.dumps(self.all_names)
        self._f.attrs["datasets"] = json.dumps(self.datasets)
        self._f.attrs["rows"] = 0
        self._n = 0

    def _write(self, block: ResultBlock) -> None:
        n = len(block)
        status = np.array([s.encode(ENCODING, ERRORS) for s in block.status], dtype=object)
        fixed = [block.p.astype(np.float64), block.flag.astype(np.int8), status]
        inputs = [block.columns[c] for c in self.columns]
        fixed += [block.extra[e] for e in self.extra]
        for name, values in zip(self.datasets, [*inputs, *fixed], strict=True):
            dset = self._f.get(name)
            if dset is None and values.dtype == object and all(v is None for v in values):
                continue  # no value yet to type the column by: created at its first value
            # a column's type can change from chunk to chunk (a VOTable int column is an object
            # array with None in the chunks that hold a null): the first chunk with a value sets
            # the dataset's type, later ones are converted to it
            arr, null = _storable(values, None if dset is None else dset.dtype)
            if dset is None:
                dset = self._create(name, arr.dtype, n)
                if self._n and arr.dtype != object:  # the rows before were all missing
                    null = _null_value(arr.dtype)
                    dset[: self._n] = null
            if null is None and name in self.datasets[len(self.columns) + 3:] \
                    and arr.dtype.kind == "i":
                null = -1  # an int8 result column after status: -1 when unavailable
            if null is not None and "null" not in dset.attrs:
                dset.attrs["null"] = null
            dset.resize(self._n + n, axis=0)
            dset[self._n :] = arr
        self._n += n
        self._f.attrs["rows"] = self._n

    def _create(self, name: str, dtype: np.dtype, n: int) -> h5py.Dataset:
        """A column's dataset, ``self._n`` rows long (empty text, or zeros the caller fills)."""
        dtype = h5py.string_dtype("utf-8") if np.dtype(dtype).kind == "O" else dtype
        return self._f.create_dataset(name, shape=(self._n,), maxshape=(None,), dtype=dtype,
                                      chunks=(min(65536, max(n, 1024)),))

    def _finish(self) -> None:
        if self._f.id.valid:
            for name in self.datasets:  # columns without a single value: empty text
                if name not in self._f:
                    self._create(name, np.dtype(object), 1)
            if self.provenance:
                from galmerge.io.provenance import stamped

                prov = stamped(self.provenance)
                self._f.attrs["galmerge_provenance"] = json.dumps(prov)
                for key, value in prov.items():
                    if value is not None:  # HDF5 has no null: absent, as in the JSON's null
                        self._f.attrs[key] = value
            self._f.close()


def _null_value(dtype: np.dtype) -> Any:
    """What a numeric column holds for a missing cell: NaN, or the integer type's extreme."""
    if dtype.kind == "f":
        return np.nan
    info = np.iinfo(dtype)
    return info.max if dtype.kind == "u" else info.min


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


def _storable(values: np.ndarray, dtype: np.dtype | None = None) -> tuple[np.ndarray, Any]:
    """(column HDF5 can store, its null value or None): numbers stay numbers, missing cells
    (None) of a numeric column become its null value, everything else UTF-8 bytes.

    ``dtype`` is the dataset's type when an earlier chunk created it; the chunk is made to fit
    it, or a one-line error says that the output needs to be CSV.
    """
    if values.ndim == 1 and values.dtype.kind == "b":
        values = values.astype(np.int8)  # 0/1, so that a missing cell can be -128
    numeric = values.ndim == 1 and values.dtype.kind in "iuf"
    if dtype is None:
        if numeric:
            return values, None
        if values.dtype == object:
            kind = _number_type([v for v in values if v is not None])
            if kind is not None:
                return _storable(values, kind)
    elif dtype.kind in "iuf":
        if numeric and np.can_cast(values.dtype, dtype, "safe"):
            return values.astype(dtype, copy=False), None
        if not numeric and values.dtype == object:
            fitted = _fit_numbers(values, dtype)
            if fitted is not None:
                return fitted
        raise GalmergeError(
            f"an input column holds {values.dtype} values in a later chunk that do not fit the "
            f"{dtype} of its first chunk; write the output as .csv, which keeps every cell"
        )
    # text cells are UTF-8 datasets: undecodable input bytes as %XX (a CSV output keeps them)
    return np.array([escape_undecodable(_text(v)).encode(ENCODING) for v in values],
                    dtype=object), None


def _number_type(present: list[Any]) -> np.dtype | None:
    """The numpy type that holds all of ``present`` (numbers) exactly, or None.

    Booleans alone are int8 0/1, as boolean arrays are stored.
    """
    if present and all(isinstance(v, bool | np.bool_) for v in present):
        return np.dtype(np.int8)
    if not present or not all(_is_number(v) for v in present):
        return None
    if all(isinstance(v, int | np.integer) for v in present):
        ints = [int(v) for v in present]
        lo, hi = min(ints), max(ints)
        if lo >= -(2**63) and hi < 2**63:
            return np.dtype(np.int64)
        return np.dtype(np.uint64) if lo >= 0 and hi < 2**64 else None
    return np.dtype(np.float64)


def _fit_numbers(values: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, Any] | None:
    """Numbers and None as ``dtype`` (None -> its null value), if every number fits exactly."""
    null = _null_value(dtype)
    if not all(v is None or _is_number(v) or isinstance(v, bool | np.bool_) for v in values):
        return None
    try:
        out = np.array([null if v is None else v for v in values], dtype=dtype)
    except (OverflowError, ValueError):
        return None
    for got, v in zip(out.tolist(), values, strict=True):
        if v is not None and got != v and not (got != got and v != v):  # NaN stays NaN
            return None
    return out, null if any(v is None for v in values) else None


class FitsWriter(OutputWriter):
    """Streams into a temporary HDF5 file, then writes the FITS table row block by row block.

    FITS needs the row count and string widths in the header, which a stream only knows at the
    end; the conversion reads the HDF5 file twice (widths, then rows) with bounded memory.
    """

    BLOCK = 65536

    def __init__(self, path: Path, columns: Sequence[str], extra: Sequence[str] = ()) -> None:
        super().__init__(path, columns, extra=extra)
        self._h5 = Hdf5Writer(path, columns, tmp=_temp_path(path, ".h5"), extra=extra)
        self._done = False

    def _write(self, block: ResultBlock) -> None:
        self._h5._write(block)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._h5.provenance = self.provenance  # the conversion turns it into header keywords
        self._h5._finish()
        try:
            _h5_to_fits(self._h5.tmp, self.tmp)
        finally:
            self._h5.tmp.unlink(missing_ok=True)


#: the longest TTYPE value one FITS card holds (a quote inside counts twice)
FITS_NAME_MAX = 68


def fits_names(names: Sequence[str]) -> list[str]:
    """FITS column names for ``names``: printable ASCII (other characters and undecodable
    bytes as ``%XX`` of their UTF-8 bytes: ``α`` -> ``%CE%B1``), at most one card long, and
    unique (``_1``, ``_2``... where two would be the same). The HDF5 output keeps exact names."""

    def fits_length(text: str) -> int:
        return len(text) + text.count("'")

    def cut(text: str, room: int) -> str:
        while fits_length(text) > room:
            text = text[:-1]
        return text

    out: list[str] = []
    used: set[str] = set()
    for name in names:
        text = "".join(c if " " <= c <= "~" else "".join(f"%{b:02X}" for b in c.encode())
                       for c in escape_undecodable(name))
        base = cut(text, FITS_NAME_MAX) or "column"
        candidate, i = base, 0
        while candidate in used:
            i += 1
            candidate = cut(base, FITS_NAME_MAX - len(f"_{i}")) + f"_{i}"
        used.add(candidate)
        out.append(candidate)
    return out


def _h5_to_fits(src: Path, dest: Path) -> None:
    from astropy.io import fits

    with h5py.File(src, "r") as f:
        names = json.loads(f.attrs["columns"])
        dsets = json.loads(f.attrs["datasets"])
        n = int(f.attrs["rows"])
        flag_ds = _flag_dataset(names, dsets)
        cols, dtypes = [], []
        for ascii_name, ds in zip(fits_names(names), dsets, strict=True):
            d = f[ds]
            if d.dtype.kind == "O" or d.dtype.kind in "SU":
                width = 1
                for start in range(0, n, FitsWriter.BLOCK):
                    block = d[start : start + FitsWriter.BLOCK]
                    if len(block):
                        width = max(width, max(len(v) for v in block))
                cols.append(fits.Column(name=ascii_name, format=f"{width}A"))
                dtypes.append((f"S{width}", "str"))
            elif d.dtype.kind == "f":
                fmt = "E" if d.dtype.itemsize == 4 else "D"
                cols.append(fits.Column(name=ascii_name, format=fmt))
                dtypes.append((f">f{d.dtype.itemsize if fmt == 'E' else 8}", "num"))
            elif d.dtype.kind == "u" and d.dtype.itemsize == 8:
                # FITS's unsigned 64-bit: K stored as value - 2**63, with TZERO = 2**63
                null = d.attrs.get("null")
                null = None if null is None else int(null) - 2**63
                cols.append(fits.Column(name=ascii_name, format="K", null=null, bzero=2**63))
                dtypes.append((">i8", "u64"))
            else:
                size = max(d.dtype.itemsize, 2)
                if d.dtype.kind == "u":
                    size = min(size * 2, 8)
                fmt = {2: "I", 4: "J", 8: "K"}[size]
                null = -1 if ds == flag_ds else d.attrs.get("null")
                null = None if null is None else int(null)
                cols.append(fits.Column(name=ascii_name, format=fmt, null=null))
                dtypes.append((f">i{size}", "num"))
        header = fits.BinTableHDU.from_columns(cols, nrows=0).header
        header["NAXIS2"] = n
        if "galmerge_provenance" in f.attrs:
            from galmerge.io.provenance import fits_cards

            for word, value, comment in fits_cards(json.loads(f.attrs["galmerge_provenance"])):
                header[word] = (value, comment)
        record = np.dtype([(f"f{i}", t) for i, (t, _) in enumerate(dtypes)])
        with open(dest, "wb") as out:
            out.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
            out.write(header.tostring().encode("ascii"))
            written = 0
            for start in range(0, n, FitsWriter.BLOCK):
                stop = min(n, start + FitsWriter.BLOCK)
                rows = np.zeros(stop - start, dtype=record)
                for i, (ds, (_, kind)) in enumerate(zip(dsets, dtypes, strict=True)):
                    values = f[ds][start:stop]
                    if kind == "u64":
                        rows[f"f{i}"] = (values.astype(np.uint64) ^ np.uint64(2**63)).view(np.int64)
                    elif kind == "str":
                        rows[f"f{i}"] = [v if isinstance(v, bytes) else str(v).encode() for v in
                                         values]
                    else:
                        rows[f"f{i}"] = values
                data = rows.tobytes()
                out.write(data)
                written += len(data)
            pad = (-written) % 2880
            out.write(b"\0" * pad)


def _flag_dataset(names: list[str], dsets: list[str]) -> str:
    """The dataset of ``is_merger``: the second of the three result columns after the input's
    (result columns after ``status`` may follow)."""
    for i in range(len(names) - 3, -1, -1):
        if (names[i : i + 3] == list(result_names(names[:i]))):
            return dsets[i + 1]
    return dsets[-2]


def open_writer(path: str | os.PathLike[str], columns: Sequence[str], *,
                arrow_types: dict[str, Any] | None = None,
                provenance: dict[str, Any] | None = None,
                extra: Sequence[str] = ()) -> OutputWriter:
    """A writer chosen by suffix: ``.h5``/``.hdf5``, ``.fits``/``.fit``, ``.parquet``, else CSV.

    ``arrow_types`` (Parquet): input column types to keep; ``provenance``: recorded in the output;
    ``extra``: the `ResultBlock.extra` columns written after ``status``.
    """
    writer = _open_writer(path, columns, arrow_types, tuple(extra))
    writer.provenance = provenance
    return writer


def _open_writer(path: str | os.PathLike[str], columns: Sequence[str],
                 arrow_types: dict[str, Any] | None, extra: tuple[str, ...]) -> OutputWriter:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return Hdf5Writer(p, columns, extra=extra)
    if suffix in (".fits", ".fit", ".fts"):
        return FitsWriter(p, columns, extra)
    if suffix in (".parquet", ".pq", ".parq"):
        from galmerge.classification.parquet import ParquetWriter

        return ParquetWriter(p, columns, arrow_types=arrow_types, extra=extra)
    if suffix in (".gz", ".bz2", ".zip"):
        raise GalmergeError(f"output {p}: compressed outputs are not supported; use .csv, .h5 "
                            "or .fits")
    return CsvWriter(p, columns, extra)


class ResultJournal:
    """One rank's finished result blocks, committed in segment files (temp + rename).

    A run killed at any point keeps every committed segment; started again, it skips the
    chunks those segments hold (``done``), so neither fetching nor inference is repeated
    (except for the chunks holding a `fetch-failed` row: with ``reopen_failed``, see
    `_reopen_failed`).
    ``finish()`` writes a ``.done`` marker next to the folder: the rank's share is complete. The
    marker records how many chunks the share holds and the catalog has; one that disagrees with
    the segments (a kill while they were removed or rewritten) is not trusted (`finished`).
    Segments are checksummed Arrow IPC files (`galmerge.classification.segments`), never pickles; the folder
    and the parts folder above it must be the user's own and not writable by others.
    """

    def __init__(self, folder: Path, segment_chunks: int = 8, segment_seconds: float = 30.0,
                 *, nested: dict[str, Any] | None = None, reopen_failed: bool = False) -> None:
        from galmerge.classification.segments import check_private_folder, refuse_pickled_segments

        self.folder = folder
        self.nested = dict(nested or {})  # input columns kept in their nested Arrow type
        self.marker = folder.with_name(folder.name + ".done")
        self.segment_chunks = max(1, segment_chunks)
        self.segment_seconds = segment_seconds
        check_private_folder(folder.parent)
        check_private_folder(folder)
        refuse_pickled_segments(folder)
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        for tmp in folder.glob(".*.tmp"):  # a segment being written when a run was killed
            tmp.unlink(missing_ok=True)
        self.done: set[int] = set()
        self._writer: Any = None
        self._tmp: Path | None = None
        self._first = -1
        self._pending: list[int] = []
        self._last = time.monotonic()
        #: chunks taken out of the committed segments to be classified again (`_reopen_failed`)
        self.reopened = 0
        for seg in self.segments():  # (the list as it was: rewritten segments are not read)
            try:
                blocks = list(read_part(seg))
            except Exception as exc:  # damaged from outside: these rows are simply redone
                seg.unlink(missing_ok=True)
                print(f"galmerge: result segment {seg} was unreadable ({exc}); "
                      "its rows will be classified again", file=sys.stderr)
                continue
            failed = {index for index, block in blocks if _fetch_failed(block)}
            if reopen_failed and failed:  # rewritten from the blocks decoded here, once
                self._reopen_failed(seg, blocks, failed)
            else:
                self.done.update(index for index, _ in blocks)
            del blocks  # one segment's rows held at a time
        if self.reopened:
            self.marker.unlink(missing_ok=True)

    @property
    def finished(self) -> bool:
        """Whether the marker says the share is complete and the segments hold all its chunks
        (a marker without counts, from an older galmerge, is not trusted: the share is redone
        from the segments, which costs reading the catalog again)."""
        return self.marker_counts() is not None

    def marker_counts(self) -> tuple[int, int] | None:
        """(the share's chunks, the catalog's chunks) as ``finish`` recorded them, when they
        agree with the committed segments; else None."""
        counts = read_marker(self.marker)
        return counts if counts is not None and counts[0] == len(self.done) else None

    def segments(self) -> list[Path]:
        from galmerge.classification.segments import segment_files

        return segment_files(self.folder)

    def add(self, index: int, block: ResultBlock) -> None:
        """Append a block to the open segment (streamed, not held); commit it now and then."""
        from galmerge.classification.segments import SegmentWriter

        if self._pending and any(i in self.done
                                 for i in range(self._pending[-1] + 1, index)):
            # chunks between are in other segments (kept from an earlier run): a segment holds
            # no gap, so the merge, reading segments in name order, gets chunks in order
            self.commit()
        if self._writer is None:
            self._first = index
            self._tmp = self.folder / f".seg-{index:012d}.{os.getpid()}.tmp"
            self._writer = SegmentWriter(self._tmp, list(block.columns), list(block.extra),
                                         self.nested)
        self._writer.write(index, block)
        self._pending.append(index)
        if (len(self._pending) >= self.segment_chunks
                or time.monotonic() - self._last >= self.segment_seconds):
            self.commit()

    def commit(self) -> None:
        from galmerge.classification.segments import file_digest, segment_name

        self._last = time.monotonic()
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        _fsync(self._tmp)
        os.replace(self._tmp, self.folder / segment_name(self._first, file_digest(self._tmp)))
        self.done.update(self._pending)
        self._pending = []

    def finish(self, catalog_chunks: int) -> None:
        """Commit, then mark the share complete: it holds ``len(done)`` of the catalog's
        ``catalog_chunks`` chunks (written whole, so a rank merging never reads half of it)."""
        self.commit()
        atomic.write_text(self.marker, f"done {len(self.done)} of {catalog_chunks} chunks\n")

    def _reopen_failed(self, seg: Path, blocks: list[tuple[int, ResultBlock]],
                       failed: set[int]) -> None:
        """Take the chunks holding a `fetch-failed` row (``failed``) out of the committed
        segment ``seg`` (its decoded ``blocks``), so this run classifies them again (a transient
        failure is retried, as a new run would); the segment's other chunks are kept, rewritten
        into segments of their own and counted ``done``.

        The segment is moved to a temporary name first: a kill midway leaves no chunk twice (the
        temporary file is removed on the next open and its chunks not yet rewritten are redone).
        """
        # first: a marker must never outlive a chunk it counts
        self.marker.unlink(missing_ok=True)
        held = seg.with_name(f".{seg.name}.retry.tmp")
        os.replace(seg, held)
        for index, block in blocks:
            if index in failed:  # a segment holds no gap: the kept chunks after it start one
                self.commit()
                self.reopened += 1
            else:
                self.add(index, block)
        self.commit()
        held.unlink()

    def blocks(self) -> Iterator[tuple[int, ResultBlock]]:
        """Every committed block, in chunk order."""
        for seg in self.segments():
            yield from read_part(seg)

    def remove(self) -> None:
        self.marker.unlink(missing_ok=True)  # first: a kill midway leaves an unfinished share
        for seg in self.segments():
            seg.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


#: a `ResultJournal` marker's text: its share's chunks and the catalog's
_MARKER = re.compile(r"done (\d+) of (\d+) chunks")


def read_marker(marker: Path) -> tuple[int, int] | None:
    """(the share's chunks, the catalog's chunks) a rank's ``.done`` marker states (`finish`),
    read as text; None when it is absent or states none."""
    try:
        found = _MARKER.fullmatch(marker.read_text(encoding="utf-8", errors="replace").strip())
    except OSError:
        return None
    return (int(found[1]), int(found[2])) if found else None


def _fetch_failed(block: ResultBlock) -> bool:
    """Whether a block has a row whose stamp could not be fetched, or came broken from the
    survey's plugin (never cached: retried)."""
    return any(_reason(status) in ("fetch-failed", "plugin-error") for status in block.status)


def read_part(path: Path) -> Iterator[tuple[int, ResultBlock]]:
    """The blocks of a segment file, in order; ValueError if it fails its checksum or format."""
    from galmerge.classification.segments import read_segment

    return read_segment(path)
