"""Reading input catalogs in chunks: CSV (as SkyServer/CasJobs write it), FITS and VOTable.

A catalog is read as a stream of `CatalogChunk` blocks so a 10^7-row file never sits in memory.
CSV fields stay the exact text of the file (ids never pass through float); FITS tables are
memory-mapped. Every data row yields one chunk row, in file order: a row whose coordinates
cannot be read is flagged, never dropped. For CSV a "row" is every non-blank line after the
header (blank lines are skipped; a line of empty fields is a row).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError

#: accepted column names, lower case, best first
RA_NAMES = ("ra", "ra_deg", "radeg", "raj2000", "_raj2000", "ra_j2000", "ra2000", "ra_icrs",
            "ramean", "ra_obj", "alpha")
DEC_NAMES = ("dec", "dec_deg", "decdeg", "dej2000", "_dej2000", "decj2000", "dec_j2000",
             "dec2000", "de_icrs", "dec_icrs", "decmean", "dec_obj", "delta", "de")
ID_NAMES = ("objid", "obj_id", "specobjid", "dr7objid", "bestobjid", "id", "object_id",
            "objectid", "source_id", "sourceid", "name", "galaxy_id")

CSV_SUFFIXES = (".csv", ".txt", ".tsv")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
VOTABLE_SUFFIXES = (".xml", ".vot", ".votable")
# text in and out keeps undecodable bytes as they were
ENCODING = "utf-8"
ERRORS = "surrogateescape"


@dataclass
class CatalogChunk:
    """Rows ``start .. start+len`` of a catalog.

    ``columns`` holds every original column (strings for CSV, native arrays for FITS/VOTable);
    ``ra``/``dec`` are float64 with NaN where unreadable; ``ids`` strings; ``problems`` a
    per-row note ("" when the row is well formed) that becomes the row's status.
    """

    start: int
    columns: dict[str, np.ndarray]
    ra: np.ndarray
    dec: np.ndarray
    ids: np.ndarray
    problems: np.ndarray

    def __len__(self) -> int:
        return len(self.ra)


def _pick(columns: Sequence[str], wanted: str | None, names: Sequence[str], what: str,
          path: Path, flag: str, required: bool) -> str | None:
    lower = {c.strip().lower(): c for c in reversed(list(columns))}  # first spelling wins
    if wanted is not None:
        if wanted in columns:
            return wanted
        if wanted.strip().lower() in lower:
            return lower[wanted.strip().lower()]
        raise GalmergeError(
            f"{path}: no column '{wanted}' for {flag}; columns are: {', '.join(columns)}"
        )
    for name in names:
        if name in lower:
            return lower[name]
    if required:
        raise GalmergeError(
            f"{path}: cannot find the {what} column (tried {', '.join(names[:6])}, ...); "
            f"name it with {flag} (columns: {', '.join(columns[:20])})"
        )
    return None


def parse_coordinates(ra_text: Sequence[Any], dec_text: Sequence[Any]) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Floats for RA/Dec (degrees) and a mask of rows whose position is usable."""
    ra = _to_float(ra_text)
    dec = _to_float(dec_text)
    ok = np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra <= 360) & (np.abs(dec) <= 90)
    return ra, dec, ok


def _to_float(values: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "fiu" and arr.ndim == 1:
        return arr.astype(np.float64)
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None or v is np.ma.masked:
            continue
        try:
            f = float(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError, AttributeError):
            continue
        out[i] = f if math.isfinite(f) else np.nan
    return out


class Catalog:
    """An input table read in chunks; subclasses know one file format."""

    path: Path
    columns: list[str]
    ra_col: str
    dec_col: str
    id_col: str | None
    kind: str = "catalog"

    def estimated_rows(self) -> int | None:
        """Row count (exact or estimated from the file size) for progress; None if unknown."""
        return None

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:  # pragma: no cover
        raise NotImplementedError

    def _chunk(self, start: int, columns: dict[str, np.ndarray],
               problems: np.ndarray | None = None) -> CatalogChunk:
        n = len(next(iter(columns.values()))) if columns else 0
        ra, dec, ok = parse_coordinates(columns[self.ra_col], columns[self.dec_col])
        ids = (_id_strings(columns[self.id_col]) if self.id_col is not None
               else np.array([str(start + i) for i in range(n)], dtype=object))
        notes = np.full(n, "", dtype=object) if problems is None else problems
        notes = np.where((notes == "") & ~ok, "bad-coordinates", notes)
        return CatalogChunk(start, columns, ra, dec, ids, notes)


def _id_strings(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":  # exact integers; never through float
        return np.array([str(int(v)) for v in arr], dtype=object)
    out = np.empty(len(arr), dtype=object)
    for i, v in enumerate(arr):
        if isinstance(v, bytes):
            v = v.decode(ENCODING, ERRORS)
        out[i] = "" if v is None or v is np.ma.masked else str(v).strip()
    return out


class CsvCatalog(Catalog):
    """CSV as SkyServer/CasJobs write it: optional ``#Table1`` lines, then a header row."""

    kind = "csv"

    def __init__(self, path: Path, ra_col: str | None, dec_col: str | None,
                 id_col: str | None) -> None:
        self.path = path
        self.delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        self._skip, header = self._find_header()
        if header is None:
            raise GalmergeError(f"{path}: no header row found; a CSV catalog needs column names")
        self.columns = _unique_names(header)
        self.ra_col = _pick(self.columns, ra_col, RA_NAMES, "RA", path, "--ra-col", True)
        self.dec_col = _pick(self.columns, dec_col, DEC_NAMES, "Dec", path, "--dec-col", True)
        self.id_col = _pick(self.columns, id_col, ID_NAMES, "id", path, "--id-col", False)

    def _open(self):
        return open(self.path, encoding=ENCODING, errors=ERRORS, newline="")

    def _find_header(self) -> tuple[int, list[str] | None]:
        """Skip leading comment lines (``#Table1``) and blank lines; return the header."""
        with self._open() as fh:
            skipped = 0
            for raw in fh:
                line = raw.lstrip("\ufeff")
                if not line.strip() or line.lstrip().startswith("#"):
                    skipped += 1
                    continue
                row = next(csv.reader([line], delimiter=self.delimiter))
                return skipped, [c.strip() for c in row]
        return 0, None

    def estimated_rows(self) -> int | None:
        try:
            with open(self.path, "rb") as fh:
                lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 24), b""))
        except OSError:
            return None
        return max(0, lines - self._skip - 1)

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:
        ncol = len(self.columns)
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with self._open() as fh:
            for _ in range(self._skip):
                fh.readline()
            reader = csv.reader(fh, delimiter=self.delimiter)
            try:
                next(reader)  # header
            except (StopIteration, csv.Error):
                return
            start = 0
            rows: list[list[str]] = []
            notes: list[str] = []
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # e.g. NUL byte: keep the row, say why
                    row, note = [], f"bad-row: {exc}".splitlines()[0][:80]
                else:
                    note = ""
                    if not row or (len(row) == 1 and not row[0].strip() and ncol > 1):
                        continue  # a blank line is no row
                if len(row) != ncol and not note:
                    note = f"bad-row: {len(row)} fields, header has {ncol}"
                if len(row) > ncol:  # keep the extra text in the last column, losing nothing
                    row = row[: ncol - 1] + [self.delimiter.join(row[ncol - 1 :])]
                elif len(row) < ncol:
                    row = row + [""] * (ncol - len(row))
                rows.append(row)
                notes.append(note)
                if len(rows) >= chunk_rows:
                    yield self._rows_chunk(start, rows, notes)
                    start += len(rows)
                    rows, notes = [], []
            if rows:
                yield self._rows_chunk(start, rows, notes)

    def _rows_chunk(self, start: int, rows: list[list[str]], notes: list[str]) -> CatalogChunk:
        cols = list(zip(*rows, strict=True))
        columns = {name: np.array(col, dtype=object) for name, col in zip(self.columns, cols,
                                                                          strict=True)}
        problems = np.array(notes, dtype=object)
        return self._chunk(start, columns, problems)


def _unique_names(header: Sequence[str]) -> list[str]:
    """Column names, with empty or repeated names made unique (every column is kept)."""
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(header):
        name = name or f"col{i + 1}"
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


class FitsCatalog(Catalog):
    """The first binary/ASCII table of a FITS file, memory-mapped."""

    kind = "fits"

    def __init__(self, path: Path, ra_col: str | None, dec_col: str | None,
                 id_col: str | None) -> None:
        from astropy.io import fits

        self.path = path
        try:
            self._hdul = fits.open(path, memmap=True)
        except Exception as exc:  # astropy raises OSError/ValueError/TypeError for bad files
            raise GalmergeError(f"{path}: cannot read as FITS ({exc})".splitlines()[0]) from None
        self._hdu = next((h for h in self._hdul if isinstance(
            h, fits.BinTableHDU | fits.TableHDU)), None)
        if self._hdu is None:
            raise GalmergeError(f"{path}: no table HDU in this FITS file; give a FITS table")
        self.columns = list(self._hdu.columns.names)
        self.ra_col = _pick(self.columns, ra_col, RA_NAMES, "RA", path, "--ra-col", True)
        self.dec_col = _pick(self.columns, dec_col, DEC_NAMES, "Dec", path, "--dec-col", True)
        self.id_col = _pick(self.columns, id_col, ID_NAMES, "id", path, "--id-col", False)
        self._nrows = int(self._hdu.header.get("NAXIS2", 0))

    def estimated_rows(self) -> int:
        return self._nrows

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:
        data = self._hdu.data
        for start in range(0, self._nrows, chunk_rows):
            block = data[start : start + chunk_rows]
            columns = {name: _native(block[name]) for name in self.columns}
            yield self._chunk(start, columns)

    def close(self) -> None:
        self._hdul.close()


def _native(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.byteorder not in ("=", "|", "<" if sys.byteorder == "little" else ">"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.kind == "S":
        arr = np.array([v.decode(ENCODING, ERRORS).rstrip() for v in arr], dtype=object)
    elif arr.dtype.kind == "U":
        arr = arr.astype(object)
    return arr


class TableCatalog(Catalog):
    """An astropy Table held in memory (VOTable: XML has no random access)."""

    def __init__(self, path: Path, table: Any, kind: str, ra_col: str | None,
                 dec_col: str | None, id_col: str | None) -> None:
        self.path = path
        self.kind = kind
        self._table = table
        self.columns = list(table.colnames)
        self.ra_col = _pick(self.columns, ra_col, RA_NAMES, "RA", path, "--ra-col", True)
        self.dec_col = _pick(self.columns, dec_col, DEC_NAMES, "Dec", path, "--dec-col", True)
        self.id_col = _pick(self.columns, id_col, ID_NAMES, "id", path, "--id-col", False)

    def estimated_rows(self) -> int:
        return len(self._table)

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:
        n = len(self._table)
        for start in range(0, n, chunk_rows):
            block = self._table[start : start + chunk_rows]
            columns = {}
            for name in self.columns:
                col = block[name]
                mask = np.asarray(getattr(col, "mask", False))
                arr = _native(np.asarray(getattr(col, "data", col)))
                if mask.ndim == 1 and mask.any():  # masked cells become empty, not fill values
                    arr = arr.astype(object)
                    arr[mask] = None
                columns[name] = arr
            yield self._chunk(start, columns)


def open_catalog(path: str | os.PathLike[str], *, ra_col: str | None = None,
                 dec_col: str | None = None, id_col: str | None = None) -> Catalog:
    """Open a CSV, FITS or VOTable catalog (chosen by suffix, then by content)."""
    p = Path(path)
    if not p.is_file():
        raise GalmergeError(f"catalog {p} does not exist")
    name = p.name.lower()
    if name.endswith(FITS_SUFFIXES) or _starts_with(p, b"SIMPLE  ="):
        return FitsCatalog(p, ra_col, dec_col, id_col)
    if name.endswith(VOTABLE_SUFFIXES) or _starts_with(p, b"<?xml"):
        try:
            from astropy.io.votable import parse_single_table

            table = parse_single_table(str(p)).to_table()
        except Exception as exc:  # malformed XML comes in many exception types
            raise GalmergeError(f"{p}: cannot read as VOTable ({exc})".splitlines()[0]) from None
        return TableCatalog(p, table, "votable", ra_col, dec_col, id_col)
    return CsvCatalog(p, ra_col, dec_col, id_col)


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return False
