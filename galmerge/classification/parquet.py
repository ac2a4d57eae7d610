"""Parquet catalogs in (row group by row group) and classification results out (pyarrow).

Reading streams record batches of ``chunk_rows`` rows, so memory stays flat in the file's size;
integer columns stay integers (64-bit ids exact), text stays text, a null cell becomes None (as
a VOTable null does), a list, struct or map cell the Python list, dict or list of (key, value)
tuples pyarrow gives. Writing keeps every input column in its Arrow type (a Parquet input's own,
lists, structs and maps included; else fixed by the first rows that hold a value), stores unavailable ``p_merger``/``is_merger`` as native nulls and
``status`` dictionary-encoded, and writes a row group every `ParquetWriter.ROW_GROUP` rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.classification.catalogs import (
    DEC_NAMES,
    ID_NAMES,
    RA_NAMES,
    Catalog,
    CatalogChunk,
    _pick,
)
from galmerge.classification.outputs import ENCODING, ERRORS, OutputWriter, ResultBlock, _text
from galmerge.classification.segments import is_nested
from galmerge.errors import GalmergeError
from galmerge.io.text import escape_undecodable

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
MAGIC = b"PAR1"


class ParquetCatalog(Catalog):
    """A Parquet file read one record batch (at most ``chunk_rows`` rows) at a time."""

    kind = "parquet"

    def __init__(self, path: Path, ra_col: str | None, dec_col: str | None,
                 id_col: str | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            # pre_buffer (pyarrow's default) keeps every row group read so far cached: memory
            # then grows with the file (measured: 19 MB at 3e5 rows, 41 MB at 1e6); without it
            # and with a bounded read buffer it stays at 13 MB
            self._file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        except (pa.ArrowException, OSError) as exc:
            raise GalmergeError(f"{path}: cannot read as Parquet ({exc})".splitlines()[0]) from None
        self.schema = self._file.schema_arrow
        self.columns = list(self.schema.names)
        if len(set(self.columns)) != len(self.columns):
            raise GalmergeError(f"{path}: repeated column names; rename them to classify it")
        self.ra_col = _pick(self.columns, ra_col, RA_NAMES, "RA", path, "--ra-col", True)
        self.dec_col = _pick(self.columns, dec_col, DEC_NAMES, "Dec", path, "--dec-col", True)
        self.id_col = _pick(self.columns, id_col, ID_NAMES, "id", path, "--id-col", False)

    def estimated_rows(self) -> int:
        return int(self._file.metadata.num_rows)

    @property
    def arrow_types(self) -> dict[str, Any]:
        """Each column's Arrow type, for a Parquet output that keeps them (`kept_type`)."""
        return {f.name: kept_type(f.type) for f in self.schema}

    @property
    def nested_types(self) -> dict[str, Any]:
        """The nested columns' Arrow types, which the result segments store as they are."""
        return {f.name: f.type for f in self.schema if is_nested(f.type)}

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:
        import pyarrow as pa

        start = 0
        batches = self._file.iter_batches(batch_size=chunk_rows, use_threads=False)
        pending: list[Any] = []  # batches stop at row-group ends: regroup into full chunks
        held = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:
                raise GalmergeError(
                    f"{self.path}: unreadable after row {start + held} ({exc})".splitlines()[0]
                    + "; rows before it were read -- repair the file and run again") from None
            pending.append(batch)
            held += batch.num_rows
            while held >= chunk_rows:
                table = pa.Table.from_batches(pending, schema=self.schema)
                yield self._table_chunk(start, table.slice(0, chunk_rows))
                rest = table.slice(chunk_rows)
                pending, held = rest.to_batches(), rest.num_rows
                start += chunk_rows
        if held:
            yield self._table_chunk(start, pa.Table.from_batches(pending, schema=self.schema))

    def _table_chunk(self, start: int, table: Any) -> CatalogChunk:
        return self._chunk(start, {name: arrow_to_numpy(table.column(i))
                                   for i, name in enumerate(self.columns)})


def arrow_to_numpy(arr: Any) -> np.ndarray:
    """An Arrow array as the arrays the other readers give: native numbers when nothing is
    null, else objects with None for a null (text as str, integers as int: never via float)."""
    import pyarrow as pa
    import pyarrow.types as t

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if t.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    typ = arr.type
    if arr.null_count == 0 and (t.is_integer(typ) or t.is_floating(typ) or t.is_boolean(typ)):
        return arr.to_numpy(zero_copy_only=False)
    if (t.is_timestamp(typ) or t.is_time64(typ)) and typ.unit == "ns":
        # Arrow's ISO text: Python's datetime and time have no nanoseconds (to_pylist drops
        # them, or needs pandas and then rounds)
        arr = arr.cast(pa.string())
    out = np.empty(len(arr), dtype=object)
    out[:] = arr.to_pylist()
    return out


# -- output ------------------------------------------------------------------------------------

class ParquetWriter(OutputWriter):
    """Streams result blocks into a Parquet file, a row group every `ROW_GROUP` rows."""

    ROW_GROUP = 65536
    UNTYPED_ROWS = 65536  # an input column with no value in this many rows is written as text

    def __init__(self, path: Path, columns: Sequence[str],
                 metadata: dict[str, str] | None = None,
                 arrow_types: dict[str, Any] | None = None, extra: Sequence[str] = ()) -> None:
        super().__init__(path, columns, extra=extra)
        self.metadata = dict(metadata or {})
        self._writer: Any = None
        self._schema: Any = None
        # a Parquet input's own types are kept; other inputs' columns are typed by their values
        self._types: list[Any] = [(arrow_types or {}).get(c) for c in self.columns]
        self._held: list[ResultBlock] = []  # blocks not yet written
        self._held_rows = 0
        self._closed = False

    def _write(self, block: ResultBlock) -> None:
        if self._writer is None:
            for j, name in enumerate(self.columns):
                if self._types[j] is None:
                    self._types[j] = _arrow_type(block.columns[name])
        self._held.append(block)
        self._held_rows += len(block)
        ready = self._writer is not None or all(ty is not None for ty in self._types)
        if self._held_rows >= self.ROW_GROUP and (ready or self._held_rows >= self.UNTYPED_ROWS):
            self._flush()

    def _open(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        p, flag, status = self.names
        # a name read with surrogateescape (a Latin-1 header) as HDF5 and FITS write it,
        # undecodable bytes as %XX: Arrow names must be UTF-8 (a traceback after all the work)
        fields = [pa.field(escape_undecodable(n), ty if ty is not None else pa.string())
                  for n, ty in zip(self.columns, self._types, strict=True)]
        fields += [pa.field(p, pa.float64()), pa.field(flag, pa.int8()),
                   pa.field(status, pa.dictionary(pa.int32(), pa.string()))]
        if self._held:  # result columns after status keep their type: float64 or int8
            fields += [pa.field(o, pa.from_numpy_dtype(self._held[0].extra[e].dtype))
                       for e, o in zip(self.extra, self.extra_out, strict=True)]
        else:
            fields += [pa.field(o, pa.float64()) for o in self.extra_out]
        metadata = dict(self.metadata)
        if self.provenance:
            from galmerge.io.provenance import stamped

            metadata["galmerge_provenance"] = json.dumps(stamped(self.provenance))
        self._schema = pa.schema(fields, metadata={k.encode(): v.encode()
                                                   for k, v in metadata.items()})
        self._writer = pq.ParquetWriter(str(self.tmp), self._schema, compression="zstd")

    def _flush(self) -> None:
        import pyarrow as pa

        if self._writer is None:
            self._open()
        if not self._held:
            return
        arrays = []
        for j, name in enumerate(self.columns):
            ty = self._schema.field(j).type
            arrays.append(pa.concat_arrays([_to_arrow(b.columns[name], ty, name)
                                            for b in self._held]))
        p = np.concatenate([b.p for b in self._held]).astype(np.float64)
        flag = np.concatenate([b.flag for b in self._held]).astype(np.int8)
        status = [s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                  for b in self._held for s in b.status.tolist()]
        arrays += [pa.array(p, mask=~np.isfinite(p)), pa.array(flag, mask=flag < 0),
                   pa.array(status, type=pa.string()).dictionary_encode()]
        for e in self.extra:
            v = np.concatenate([b.extra[e] for b in self._held])
            arrays.append(pa.array(v, mask=~np.isfinite(v) if v.dtype.kind == "f" else v < 0))
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        self._writer.write_table(table, row_group_size=self.ROW_GROUP)
        self._held, self._held_rows = [], 0

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._flush()
        finally:
            if self._writer is not None:
                self._writer.close()


def _arrow_type(values: np.ndarray) -> Any:
    """The Arrow type of an input column, from its first chunk; None if it holds no value."""
    import pyarrow as pa

    from galmerge.classification.outputs import _number_type

    arr = np.asarray(values)
    if arr.dtype != object:
        if arr.ndim > 1:
            inner = pa.from_numpy_dtype(arr.dtype) if arr.dtype.kind in "biuf" else pa.string()
            return pa.list_(inner, int(np.prod(arr.shape[1:])))
        if arr.dtype.kind in "biuf":
            return pa.from_numpy_dtype(arr.dtype)
        return pa.string()
    present = [v for v in arr if v is not None]
    if not present:
        return None
    kind = _number_type(present)
    if kind is None:
        return pa.string()
    if all(isinstance(v, bool | np.bool_) for v in present):
        return pa.bool_()
    return pa.from_numpy_dtype(kind)


def _parsed_from_text(ty: Any) -> bool:
    """Types whose cells come back from the result segments as text that Arrow parses exactly
    (ISO times and dates, decimal digits)."""
    import pyarrow.types as t

    return bool(t.is_timestamp(ty) or t.is_date(ty) or t.is_decimal(ty))


def kept_type(ty: Any) -> Any:
    """The Parquet output's type for an input column of type ``ty``: its own for numbers,
    booleans, text, binary (its bytes, trailing whitespace cut as in every output), timestamps,
    dates, decimals and nested types (lists, fixed-size lists, structs, maps: the result
    segments store them in that type, `galmerge.classification.segments.is_nested`); text
    (``string``, the cell as the CSV output writes it) for times, durations and the rest."""
    import pyarrow as pa
    import pyarrow.types as t

    if (t.is_integer(ty) or t.is_floating(ty) or t.is_boolean(ty) or t.is_string(ty)
            or t.is_large_string(ty) or is_nested(ty) or _parsed_from_text(ty)
            or t.is_binary(ty) or t.is_large_binary(ty)):
        return ty
    if t.is_dictionary(ty) and (t.is_string(ty.value_type) or t.is_large_string(ty.value_type)):
        return ty
    return pa.string()


def _to_arrow(values: np.ndarray, ty: Any, name: str) -> Any:
    """One chunk of an input column as ``ty``, or a one-line error naming the fix."""
    import pyarrow as pa
    import pyarrow.types as t

    arr = np.asarray(values)
    try:
        if t.is_fixed_size_list(ty) and arr.dtype != object:  # a FITS array column's rows
            flat = pa.array(arr.reshape(len(arr), -1).reshape(-1), type=ty.value_type)
            return pa.FixedSizeListArray.from_arrays(flat, ty.list_size)
        if t.is_string(ty) or t.is_large_string(ty):
            cells = [None if v is None else v if isinstance(v, str) else _text(v)
                     for v in (arr.tolist() if arr.dtype.kind in "SV" else arr)]
            bad = next((v for v in cells if v is not None and not _utf8(v)), None)
            if bad is not None:
                raise GalmergeError(
                    f"column '{name}' holds bytes that are not UTF-8 ({bad!r}); Parquet text "
                    "must be UTF-8: write the output as .csv, which keeps every byte")
            return pa.array(cells, type=ty)
        if arr.dtype != object:
            return pa.array(arr, type=ty, safe=True)
        if t.is_binary(ty) or t.is_large_binary(ty):  # text of the bytes (surrogateescape)
            return pa.array([None if v is None else v.encode(ENCODING, ERRORS)
                             if isinstance(v, str) else bytes(v) for v in arr], type=ty)
        if _parsed_from_text(ty):  # the cells are their text ("2020-01-01 12:30:00", "1.230")
            text = pa.array([None if v is None else str(v) for v in arr], type=pa.string())
            if t.is_timestamp(ty):  # parsed at the text's precision (microseconds from
                # Python, nanoseconds from pandas), then the column's own unit
                fine = "ns" if ty.unit == "ns" else "us"
                return text.cast(pa.timestamp(fine, tz=ty.tz)).cast(ty)
            return text.cast(ty)
        return pa.array([None if v is None else v.item() if isinstance(v, np.generic) else v
                         for v in arr], type=ty, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError,
            TypeError, ValueError):
        raise GalmergeError(
            f"input column '{name}' holds values that do not fit its Parquet type {ty}; write "
            "the output as .csv, which keeps every cell") from None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
