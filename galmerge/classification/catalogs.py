"""Reading input catalogs in chunks: CSV (as SkyServer/CasJobs write it), FITS, VOTable and
Parquet (`galmerge.classification.parquet`).

A catalog is read as a stream of `CatalogChunk` blocks so a 10^7-row file never sits in memory.
CSV fields stay the exact text of the file (ids never pass through float); FITS tables are
memory-mapped; a VOTable's TABLEDATA rows are streamed (BINARY/BINARY2/FITS-serialised VOTables
are read whole). Every data row yields one chunk row, in file order: a row whose coordinates
cannot be read is flagged, never dropped. For CSV a "row" is every non-blank line after the
header (blank lines are skipped; a line of empty fields is a row).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io.columns import DEC_NAMES, ID_NAMES, RA_NAMES

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


def _pick_position(columns: Sequence[str], ra_col: str | None, dec_col: str | None,
                   path: Path) -> tuple[str, str]:
    """The RA and Dec columns; one column for both (``--ra-col dec``) is refused: every row
    would sit on the diagonal RA = Dec, unsaid."""
    ra = _pick(columns, ra_col, RA_NAMES, "RA", path, "--ra-col", True)
    dec = _pick(columns, dec_col, DEC_NAMES, "Dec", path, "--dec-col", True)
    assert ra is not None and dec is not None
    if ra == dec:
        raise GalmergeError(f"{path}: --ra-col and --dec-col both name column '{ra}'; give "
                            "the RA and the Dec columns, e.g. --ra-col ra --dec-col dec")
    return ra, dec


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
        self.ra_col, self.dec_col = _pick_position(self.columns, ra_col, dec_col, path)
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
            tap = _LineTap(fh)
            reader = csv.reader(tap, delimiter=self.delimiter)
            try:
                next(reader)  # header
            except (StopIteration, csv.Error):
                return
            start = 0
            rows: list[list[str]] = []
            notes: list[str] = []
            while True:
                first = reader.line_num + 1  # the row's first line after the header
                tap.quotes = 0
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
                last = reader.line_num
                if last > first and tap.quotes % 2 and not note:
                    # a quote that never closed swallowed the lines after it (a well-formed
                    # quoted field, line breaks and all, holds an even number of quotes)
                    note = (f"bad-row: unterminated quote, input lines {first + self._skip}-"
                            f"{last + self._skip}")
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


class _LineTap:
    """The file's lines, counting the quote characters the CSV reader has taken."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.quotes = 0

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self.fh)
        self.quotes += line.count('"')
        return line


def _unique_names(header: Sequence[str]) -> list[str]:
    """Column names, with empty or repeated names made unique (every column is kept): a
    generated name (``colN``, ``name_1``, ``name_2``...) is none of the header's names and none
    generated before it."""
    taken = {name for name in header if name}
    used: set[str] = set()
    out = []
    for i, name in enumerate(header):
        if name and name not in used:  # a name's first occurrence keeps it
            out.append(name)
            used.add(name)
            continue
        base = name or f"col{i + 1}"
        k = 0 if not name else 1
        new = f"{base}_{k}" if k else base
        while new in taken or new in used:
            k += 1
            new = f"{base}_{k}"
        out.append(new)
        used.add(new)
    return out


class FitsCatalog(Catalog):
    """The first binary/ASCII table of a FITS file, memory-mapped."""

    kind = "fits"

    def __init__(self, path: Path, ra_col: str | None, dec_col: str | None,
                 id_col: str | None) -> None:
        from astropy.io import fits

        self.path = path
        try:
            with warnings.catch_warnings():  # "may have been truncated": checked below, 1 line
                warnings.simplefilter("ignore")
                self._hdul = fits.open(path, memmap=True)
        except Exception as exc:  # astropy raises OSError/ValueError/TypeError for bad files
            raise GalmergeError(f"{path}: cannot read as FITS ({exc})".splitlines()[0]) from None
        with warnings.catch_warnings():  # HDUs load lazily: the truncation warning comes here
            warnings.simplefilter("ignore")
            self._hdu = next((h for h in self._hdul if isinstance(
                h, fits.BinTableHDU | fits.TableHDU)), None)
        if self._hdu is None:
            raise GalmergeError(f"{path}: no table HDU in this FITS file; give a FITS table")
        self.columns = list(self._hdu.columns.names)
        self.ra_col, self.dec_col = _pick_position(self.columns, ra_col, dec_col, path)
        self.id_col = _pick(self.columns, id_col, ID_NAMES, "id", path, "--id-col", False)
        self._nrows = int(self._hdu.header.get("NAXIS2", 0))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _ = self._hdu.data  # maps the rows: a file shorter than its header says fails
        except Exception as exc:  # noqa: BLE001 - astropy: TypeError/ValueError/OSError
            raise GalmergeError(
                f"{path}: the FITS table is shorter than its header says ({self._nrows} rows); "
                f"the file is truncated, copy it again ({type(exc).__name__})") from None

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


def _table_columns(table: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """An astropy Table's columns as plain arrays; masked cells become None."""
    columns = {}
    for name in names:
        col = table[name]
        mask = np.asarray(getattr(col, "mask", False))
        arr = _native(np.asarray(getattr(col, "data", col)))
        if mask.ndim == 1 and mask.any():  # masked cells become empty, not fill values
            arr = arr.astype(object)
            arr[mask] = None
        columns[name] = arr
    return columns


class TableCatalog(Catalog):
    """An astropy Table held in memory (VOTables that are not TABLEDATA)."""

    def __init__(self, path: Path, table: Any, kind: str, ra_col: str | None,
                 dec_col: str | None, id_col: str | None) -> None:
        self.path = path
        self.kind = kind
        self._table = table
        self.columns = list(table.colnames)
        self.ra_col, self.dec_col = _pick_position(self.columns, ra_col, dec_col, path)
        self.id_col = _pick(self.columns, id_col, ID_NAMES, "id", path, "--id-col", False)

    def estimated_rows(self) -> int:
        return len(self._table)

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:
        n = len(self._table)
        for start in range(0, n, chunk_rows):
            yield self._chunk(start, _table_columns(self._table[start : start + chunk_rows],
                                                    self.columns))


class _RowScanner:
    """Finds, with expat, the byte span of every ``<TR>`` of the first TABLE's TABLEDATA.

    Also records where the header ends (just past the ``<TABLEDATA>`` start tag) and the end
    tags that close it, so rows can be parsed by astropy a chunk at a time as a small document:
    header + rows + end tags. ``kind`` is the first table's serialisation once known
    (``TABLEDATA``, ``BINARY``, ``BINARY2``, ``FITS``, or ``EMPTY`` for no DATA).
    """

    BLOCK = 1 << 20

    def __init__(self, fh: Any) -> None:
        from xml.parsers import expat

        self._fh = fh
        self._parser = expat.ParserCreate()
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._stack: list[str] = []
        self._table_depth = -1
        self._row_start = -1
        self._depth = self._tr_depth = -1
        self._tr_name = "TR"
        self.state = "before"  # before -> table -> data -> rows -> after
        self.kind: str | None = None
        self.nrows: int | None = None
        self.header_start = -1  # offset of "<TABLEDATA"
        self.closing = b""
        self.rows: list[tuple[int, int]] = []  # (offset of "<TR", offset of its end tag)
        self.eof = False

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self._stack.append(name)
        depth, local = len(self._stack), name.rpartition(":")[2]
        if self.state == "before" and local == "TABLE":
            self.state, self._table_depth = "table", depth
            with contextlib.suppress(KeyError, ValueError):
                self.nrows = int(attrs["nrows"])
        elif self.state == "table" and depth == self._table_depth + 1 and local == "DATA":
            self.state = "data"
        elif self.state == "data" and depth == self._table_depth + 2:
            self.kind = local
            if local == "TABLEDATA":
                self.state = "rows"
                self.header_start = self._parser.CurrentByteIndex
                self.closing = "".join(f"</{n}>" for n in reversed(self._stack)).encode()
                # rows are most of the file: lean handlers from here on
                self._depth, self._tr_depth = depth, depth + 1
                self._tr_name = name[: len(name) - len("TABLEDATA")] + "TR"
                self._parser.StartElementHandler = self._row_start_tag
                self._parser.EndElementHandler = self._row_end_tag
            else:
                self.state = "after"

    def _end(self, name: str) -> None:
        depth = len(self._stack)
        self._stack.pop()
        if self.state in ("table", "data") and depth == self._table_depth:
            self.state, self.kind = "after", self.kind or "EMPTY"

    def _row_start_tag(self, name: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth == self._tr_depth and name == self._tr_name:
            self._row_start = self._parser.CurrentByteIndex

    def _row_end_tag(self, name: str) -> None:
        if self._depth == self._tr_depth and name == self._tr_name:
            self.rows.append((self._row_start, self._parser.CurrentByteIndex))
        elif self._depth < self._tr_depth:  # </TABLEDATA>: the first table's rows are all read
            self.state = "after"
            self._parser.StartElementHandler = self._parser.EndElementHandler = None
        self._depth -= 1

    def feed(self) -> None:
        """Parse the next block of the file (raises expat.ExpatError on malformed XML)."""
        block = self._fh.read(self.BLOCK)
        self.eof = not block
        self._parser.Parse(block, self.eof)

    @property
    def done(self) -> bool:
        return self.eof or self.state == "after"


def _votable_table(doc: bytes | str) -> Any:
    """astropy's table of a VOTable document (bytes) or file (path).

    astropy clamps an integer that overflows its FIELD's datatype to the type's limit and only
    warns (W51): an objid changed that way would be silent data loss, so W51 is an error here.
    Its other warnings say nothing the rows don't.
    """
    from astropy.io.votable import parse_single_table
    from astropy.io.votable.exceptions import W51

    _refuse_streams(doc)
    source = io.BytesIO(doc) if isinstance(doc, bytes) else doc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = parse_single_table(source, verify="warn").to_table()
    for w in caught:
        if isinstance(w.message, W51):
            raise ValueError(str(w.message).splitlines()[0])
    return table


def _refuse_streams(doc: bytes | str) -> None:
    """ValueError for a ``<STREAM href=...>``: astropy would fetch its URL (any scheme,
    ``file://`` included, with no timeout) while reading the catalog, so data outside the file
    is never read; inline TABLEDATA and BINARY/FITS rows are."""
    from xml.parsers import expat

    def start(name: str, attrs: dict[str, str]) -> None:
        if name.rpartition(":")[2] == "STREAM" and "href" in attrs:
            raise ValueError(f"a <STREAM href=\"{attrs['href'][:80]}\"> points at data outside "
                             "the file, which galmerge does not fetch; put the rows in the file "
                             "(TABLEDATA, or inline BINARY)")

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    try:  # malformed XML is astropy's to report (its messages name the row and the rule)
        if isinstance(doc, bytes):
            parser.Parse(doc, True)
            return
        with open(doc, "rb") as fh:
            while block := fh.read(1 << 20):
                parser.Parse(block, False)
            parser.Parse(b"", True)
    except expat.ExpatError:
        return


class VotableCatalog(Catalog):
    """The first table of a VOTable with TABLEDATA rows, streamed: expat finds the rows,
    astropy parses each chunk of them (so types, nulls and masks are exactly astropy's), and
    only one chunk of rows is in memory at a time."""

    kind = "votable"
    SAMPLE_ROWS = 1000

    def __init__(self, path: Path, scanner: _RowScanner, header: bytes, ra_col: str | None,
                 dec_col: str | None, id_col: str | None) -> None:
        self.path = path
        self._header = header
        self._closing = scanner.closing
        table = _votable_table(header + scanner.closing)
        self.columns = list(table.colnames)
        self.ra_col, self.dec_col = _pick_position(self.columns, ra_col, dec_col, path)
        self.id_col = _pick(self.columns, id_col, ID_NAMES, "id", path, "--id-col", False)
        rows = scanner.rows
        if scanner.done:
            self._estimate = len(rows)
        elif scanner.nrows is not None:
            self._estimate = scanner.nrows
        elif len(rows) > 1:  # the file size over the mean row size so far (progress only)
            per_row = (rows[-1][0] - rows[0][0]) / (len(rows) - 1)
            self._estimate = round((path.stat().st_size - rows[0][0]) / max(1.0, per_row))
        else:
            self._estimate = None

    def estimated_rows(self) -> int | None:
        return self._estimate

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:
        from xml.parsers import expat

        start = 0
        with open(self.path, "rb") as fh, open(self.path, "rb") as raw:
            scanner = _RowScanner(fh)
            while True:
                try:
                    scanner.feed()
                except expat.ExpatError as exc:
                    raise GalmergeError(
                        f"{self.path}: the VOTable breaks off after row {start + len(scanner.rows)}"
                        f" ({exc}); rows before it were read -- repair the file and run again"
                    ) from None
                done = scanner.done
                while len(scanner.rows) >= chunk_rows or (done and scanner.rows):
                    spans, scanner.rows = scanner.rows[:chunk_rows], scanner.rows[chunk_rows:]
                    yield self._parse_rows(raw, spans, start)
                    start += len(spans)
                if done:
                    return

    def _parse_rows(self, raw: Any, spans: list[tuple[int, int]], start: int) -> CatalogChunk:
        first, last_end_tag = spans[0][0], spans[-1][1]
        raw.seek(first)
        body = raw.read(last_end_tag - first + 256)
        close = body.find(b">", last_end_tag - first)
        try:
            table = _votable_table(self._header + body[: close + 1] + self._closing)
            if len(table) == len(spans):
                return self._chunk(start, _table_columns(table, self.columns))
        except Exception:  # astropy rejects a whole table for one bad row (E21 and the like)
            pass
        # one row at a time: a row astropy cannot read is kept, empty, with the reason
        values: dict[str, list[Any]] = {name: [] for name in self.columns}
        notes = []
        for row_start, end_tag in spans:
            row = body[row_start - first : body.find(b">", end_tag - first) + 1]
            note = ""
            try:
                one = _votable_table(self._header + row + self._closing)
                if len(one) != 1:
                    raise ValueError(f"{len(one)} rows")
                cells = _table_columns(one, self.columns)
            except Exception as exc:  # astropy says "<file>:<line>:<col>: E21: why"
                why = re.sub(r"^\S*:\d+:\d+: ", "", str(exc).splitlines()[0] if str(exc) else
                             type(exc).__name__)
                note = f"bad-row: {why}"[:80]
                cells = {name: [None] for name in self.columns}
            for name in self.columns:
                values[name].append(cells[name][0])
            notes.append(note)
        columns = {}
        for name, col in values.items():
            arr = np.empty(len(col), dtype=object)
            arr[:] = col
            columns[name] = arr
        return self._chunk(start, columns, np.array(notes, dtype=object))


def _open_votable(p: Path, ra_col: str | None, dec_col: str | None,
                  id_col: str | None) -> Catalog:
    """A streamed `VotableCatalog` for TABLEDATA; anything else is read whole by astropy."""
    from xml.parsers import expat

    stream_error = None
    with open(p, "rb") as fh:
        # byte offsets and appended end tags assume an ASCII-compatible encoding
        ascii_ok = fh.read(4)[:2] not in (b"\xff\xfe", b"\xfe\xff", b"\x00<", b"<\x00")
        fh.seek(0)
        scanner = _RowScanner(fh)
        try:
            while ascii_ok and not scanner.done and len(scanner.rows) < VotableCatalog.SAMPLE_ROWS:
                scanner.feed()
        except expat.ExpatError as exc:
            stream_error = exc
        if ascii_ok and stream_error is None and scanner.kind == "TABLEDATA":
            fh.seek(0)
            header = fh.read(scanner.header_start)
            tag = fh.read(256)  # the <TABLEDATA> start tag itself
            header += tag[: tag.find(b">") + 1]
            try:
                return VotableCatalog(p, scanner, header, ra_col, dec_col, id_col)
            except GalmergeError:
                raise
            except Exception as exc:
                stream_error = exc
    try:
        table = _votable_table(str(p))
    except Exception as exc:  # malformed XML comes in many exception types
        raise GalmergeError(f"{p}: cannot read as VOTable ({exc})".splitlines()[0]) from None
    return TableCatalog(p, table, "votable", ra_col, dec_col, id_col)


#: compressed files (magic bytes, kind, the command that unpacks them): refused in one line;
#: read as CSV, their bytes became column names and every row a bad-coordinates row
COMPRESSED = ((b"\x1f\x8b", "gzip", "gunzip"), (b"BZh", "bzip2", "bunzip2"),
              (b"\xfd7zXZ\x00", "xz", "unxz"), (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
              (b"PK\x03\x04", "zip", "unzip"))


def open_catalog(path: str | os.PathLike[str], *, ra_col: str | None = None,
                 dec_col: str | None = None, id_col: str | None = None) -> Catalog:
    """Open a CSV, FITS, VOTable or Parquet catalog (chosen by suffix, then by content)."""
    p = Path(path)
    if not p.is_file():
        raise GalmergeError(f"catalog {p} does not exist")
    name = p.name.lower()
    from galmerge.classification.parquet import MAGIC, PARQUET_SUFFIXES, ParquetCatalog

    if name.endswith(PARQUET_SUFFIXES) or _starts_with(p, MAGIC):
        return ParquetCatalog(p, ra_col, dec_col, id_col)
    if name.endswith(FITS_SUFFIXES) or _starts_with(p, b"SIMPLE  ="):
        return FitsCatalog(p, ra_col, dec_col, id_col)
    if name.endswith(VOTABLE_SUFFIXES) or _starts_with(p, b"<?xml"):
        return _open_votable(p, ra_col, dec_col, id_col)
    for magic, kind, tool in COMPRESSED:  # read as CSV, its bytes became the column names
        if _starts_with(p, magic):
            raise GalmergeError(f"{p} is {kind}-compressed; decompress it first (e.g. {tool} "
                                f"{p.name}) or save the catalog as Parquet or FITS")
    if _starts_with(p, b"\x89HDF\r\n\x1a\n"):  # an HDF5 file that is no image file
        raise GalmergeError(f"{p} is an HDF5 file without an 'images' dataset; classify takes "
                            "an HDF5 image file (images (N, C, H, W), ra, dec) or a catalog in "
                            "CSV, FITS, VOTable or Parquet")
    return CsvCatalog(p, ra_col, dec_col, id_col)


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return False
