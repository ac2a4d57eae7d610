"""Writing classification results: CSV (default), HDF5 (``.h5``) or FITS (``.fits``).

Results arrive as `ResultBlock`s in input order and stream into a temporary file next to the
output; `commit()` renames it into place, so a kill never leaves a truncated output. Columns:
every input column, then ``p_merger``, ``is_merger`` and ``status`` (suffixed ``_1``, ``_2``...
if the input already has such columns). Unavailable values are empty in CSV; in HDF5 and FITS
``p_merger`` is NaN and ``is_merger`` -1 (FITS: TNULL -1, so astropy shows it masked).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pickle
import socket
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


def result_names(columns: Sequence[str]) -> tuple[str, str, str]:
    """The names of the three result columns, made distinct from the input's."""
    taken = set(columns)
    out = []
    for name in RESULT_COLUMNS:
        candidate, i = name, 0
        while candidate in taken:
            i += 1
            candidate = f"{name}_{i}"
        taken.add(candidate)
        out.append(candidate)
    return out[0], out[1], out[2]


def _temp_path(path: Path, tag: str = "") -> Path:
    return path.with_name(f".{path.name}{tag}~{socket.gethostname()}~{os.getpid()}~.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputWriter:
    """Base: a temporary file renamed into place by `commit()`; counts rows for the summary."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self.names = result_names(self.columns)
        self.tally = Tally()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _temp_path(path)

    def write(self, block: ResultBlock) -> None:
        self.tally.add(block)
        self._write(block)

    def _write(self, block: ResultBlock) -> None:  # pragma: no cover
        raise NotImplementedError

    def _finish(self) -> None:
        """Close the temporary file (and convert it, for FITS)."""

    def commit(self) -> None:
        self._finish()
        _fsync(self.tmp)
        os.replace(self.tmp, self.path)

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
    return str(value)


def column_text(values: np.ndarray) -> list[str]:
    """A column as text: CSV fields stay verbatim, numbers as their shortest repr."""
    if values.dtype == object:
        return [v if isinstance(v, str) else _text(v) for v in values]
    if values.dtype.kind in "iu":
        return [str(v) for v in values.tolist()]
    return [_text(v) for v in values]


class CsvWriter(OutputWriter):
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path, columns)
        self._fh = open(  # noqa: SIM115 (kept open across writes; closed by commit/abort)
            self.tmp, "w", encoding=ENCODING, errors=ERRORS, newline=""
        )
        # RFC 4180 line ends: Python's writer then also quotes fields holding a bare CR
        self._csv = csv.writer(self._fh, lineterminator="\r\n")
        self._csv.writerow([*self.columns, *self.names])

    def _write(self, block: ResultBlock) -> None:
        cols = [column_text(block.columns[c]) for c in self.columns]
        p = ["" if not np.isfinite(v) else f"{v:.6g}" for v in block.p.tolist()]
        flag = ["" if v < 0 else str(v) for v in block.flag.tolist()]
        self._csv.writerows(zip(*cols, p, flag, block.status.tolist(), strict=True))

    def _finish(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()


def _h5_dataset_name(name: str, used: set[str]) -> str:
    base = name.replace("/", "_").replace(".", "_") or "column"
    out, i = base, 0
    while out in used:
        i += 1
        out = f"{base}_{i}"
    used.add(out)
    return out


class Hdf5Writer(OutputWriter):
    """One resizable dataset per column; text as UTF-8, numbers in their own dtype."""

    def __init__(self, path: Path, columns: Sequence[str], tmp: Path | None = None) -> None:
        super().__init__(path, columns)
        if tmp is not None:
            self.tmp = tmp
        self._f = h5py.File(self.tmp, "w")
        used: set[str] = set()
        self.all_names = [*self.columns, *self.names]
        self.datasets = [_h5_dataset_name(n, used) for n in self.all_names]
        self._f.attrs["columns"] = json.dumps(self.all_names)
        self._f.attrs["datasets"] = json.dumps(self.datasets)
        self._f.attrs["rows"] = 0
        self._n = 0

    def _arrays(self, block: ResultBlock) -> list[np.ndarray]:
        out = [_storable(block.columns[c]) for c in self.columns]
        status = np.array([s.encode(ENCODING, ERRORS) for s in block.status], dtype=object)
        return [*out, block.p.astype(np.float64), block.flag.astype(np.int8), status]

    def _write(self, block: ResultBlock) -> None:
        arrays = self._arrays(block)
        n = len(block)
        for name, arr in zip(self.datasets, arrays, strict=True):
            if name not in self._f:
                dtype = h5py.string_dtype("utf-8") if arr.dtype == object else arr.dtype
                self._f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                       chunks=(min(65536, max(n, 1024)),))
            dset = self._f[name]
            if arr.dtype != object and dset.dtype != arr.dtype:
                arr = arr.astype(dset.dtype) if np.can_cast(arr.dtype, dset.dtype) else arr
            dset.resize(self._n + n, axis=0)
            dset[self._n :] = arr
        self._n += n
        self._f.attrs["rows"] = self._n

    def _finish(self) -> None:
        if self._f.id.valid:
            if self._n == 0:  # still create every column, empty
                for name in self.datasets:
                    if name not in self._f:
                        self._f.create_dataset(name, shape=(0,), dtype=h5py.string_dtype())
            self._f.close()


def _storable(values: np.ndarray) -> np.ndarray:
    """A column in a dtype HDF5 can store: numbers stay, everything else becomes UTF-8 bytes."""
    if values.dtype.kind in "iufb" and values.ndim == 1:
        return values
    return np.array([_text(v).encode(ENCODING, ERRORS) for v in values], dtype=object)


class FitsWriter(OutputWriter):
    """Streams into a temporary HDF5 file, then writes the FITS table row block by row block.

    FITS needs the row count and string widths in the header, which a stream only knows at the
    end; the conversion reads the HDF5 file twice (widths, then rows) with bounded memory.
    """

    BLOCK = 65536

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path, columns)
        self._h5 = Hdf5Writer(path, columns, tmp=_temp_path(path, ".h5"))
        self._done = False

    def _write(self, block: ResultBlock) -> None:
        self._h5._write(block)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._h5._finish()
        try:
            _h5_to_fits(self._h5.tmp, self.tmp)
        finally:
            self._h5.tmp.unlink(missing_ok=True)


def _h5_to_fits(src: Path, dest: Path) -> None:
    from astropy.io import fits

    with h5py.File(src, "r") as f:
        names = json.loads(f.attrs["columns"])
        dsets = json.loads(f.attrs["datasets"])
        n = int(f.attrs["rows"])
        cols, dtypes = [], []
        for name, ds in zip(names, dsets, strict=True):
            d = f[ds]
            ascii_name = name.encode("ascii", "replace").decode()
            if d.dtype.kind == "O" or d.dtype.kind in "SU":
                width = 1
                for start in range(0, n, FitsWriter.BLOCK):
                    block = d[start : start + FitsWriter.BLOCK]
                    if len(block):
                        width = max(width, max(len(v) for v in block))
                cols.append(fits.Column(name=ascii_name, format=f"{width}A"))
                dtypes.append((f"S{width}", "str"))
            elif d.dtype.kind == "b":
                cols.append(fits.Column(name=ascii_name, format="L"))
                dtypes.append(("S1", "bool"))
            elif d.dtype.kind == "f":
                fmt = "E" if d.dtype.itemsize == 4 else "D"
                cols.append(fits.Column(name=ascii_name, format=fmt))
                dtypes.append((f">f{d.dtype.itemsize if fmt == 'E' else 8}", "num"))
            else:
                size = max(d.dtype.itemsize, 2)
                if d.dtype.kind == "u":
                    size = min(size * 2, 8)
                fmt = {2: "I", 4: "J", 8: "K"}[size]
                null = -1 if ds == dsets[-2] else None
                cols.append(fits.Column(name=ascii_name, format=fmt, null=null))
                dtypes.append((f">i{size}", "num"))
        header = fits.BinTableHDU.from_columns(cols, nrows=0).header
        header["NAXIS2"] = n
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
                    if kind == "bool":
                        rows[f"f{i}"] = np.where(values, b"T", b"F")
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


def open_writer(path: str | os.PathLike[str], columns: Sequence[str]) -> OutputWriter:
    """A writer chosen by suffix: ``.h5``/``.hdf5``, ``.fits``/``.fit``, else CSV."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return Hdf5Writer(p, columns)
    if suffix in (".fits", ".fit", ".fts"):
        return FitsWriter(p, columns)
    if suffix in (".gz", ".bz2", ".zip"):
        raise GalmergeError(f"output {p}: compressed outputs are not supported; use .csv, .h5 "
                            "or .fits")
    return CsvWriter(p, columns)


class ResultJournal:
    """One rank's finished result blocks, committed in segment files (temp + rename).

    A run killed at any point keeps every committed segment; started again, it skips the
    chunks those segments hold (``done``), so neither fetching nor inference is repeated.
    ``finish()`` writes a ``.done`` marker next to the folder: the rank's share is complete.
    """

    def __init__(self, folder: Path, segment_chunks: int = 8, segment_seconds: float = 30.0):
        self.folder = folder
        self.marker = folder.with_name(folder.name + ".done")
        self.segment_chunks = max(1, segment_chunks)
        self.segment_seconds = segment_seconds
        folder.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob(".*.tmp"):  # a segment being written when a run was killed
            tmp.unlink(missing_ok=True)
        self.done: set[int] = set()
        for seg in self.segments():
            try:
                indices = [index for index, _ in read_part(seg)]  # all or nothing
            except Exception as exc:  # damaged from outside: these rows are simply redone
                seg.unlink(missing_ok=True)
                print(f"galmerge: result segment {seg} was unreadable ({type(exc).__name__}); "
                      "its rows will be classified again", file=sys.stderr)
            else:
                self.done.update(indices)
        self._fh: Any = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._pending: list[int] = []
        self._last = time.monotonic()

    @property
    def finished(self) -> bool:
        return self.marker.exists()

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("seg-*.pkl"))

    def add(self, index: int, block: ResultBlock) -> None:
        """Append a block to the open segment (streamed, not held); commit it now and then."""
        if self._fh is None:
            self._final = self.folder / f"seg-{index:012d}.pkl"
            self._tmp = self.folder / f".{self._final.name}.{os.getpid()}.tmp"
            self._fh = open(self._tmp, "wb")  # noqa: SIM115 (closed by commit)
        pickle.dump((index, block), self._fh, protocol=pickle.HIGHEST_PROTOCOL)
        self._pending.append(index)
        if (len(self._pending) >= self.segment_chunks
                or time.monotonic() - self._last >= self.segment_seconds):
            self.commit()

    def commit(self) -> None:
        self._last = time.monotonic()
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        _fsync(self._tmp)
        os.replace(self._tmp, self._final)
        self.done.update(self._pending)
        self._pending = []

    def finish(self) -> None:
        self.commit()
        self.marker.write_text("done\n")

    def blocks(self) -> Iterator[tuple[int, ResultBlock]]:
        """Every committed block, in chunk order."""
        for seg in self.segments():
            yield from read_part(seg)

    def remove(self) -> None:
        for seg in self.segments():
            seg.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()
        self.marker.unlink(missing_ok=True)


def read_part(path: Path) -> Iterator[tuple[int, ResultBlock]]:
    """The blocks of a segment file, in order (our own files, written by `ResultJournal`)."""
    with open(path, "rb") as fh:
        while True:
            try:
                yield pickle.load(fh)
            except EOFError:
                return
