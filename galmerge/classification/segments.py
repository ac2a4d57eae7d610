"""Result segments of `classify`'s journal as Arrow IPC files: data only, checksummed.

A segment holds consecutive `ResultBlock`s of one rank, one Arrow record batch per block. Its
file name carries the SHA-256 of its bytes (``seg-<first chunk>-<sha256[:32]>.arrow``), checked
before anything is decoded; decoding only ever builds numbers, bytes, strings and lists and dicts
of them (no pickle), so a segment planted by someone else can at worst hold wrong numbers -- and
`check_private_folder` refuses a parts folder that anyone but the current user could have written
to.

Input columns are stored so that the output writers see exactly the values they would have seen
without the journal: a plain numpy column as its raw bytes (dtype and shape in the batch's
metadata), an object column cell by cell with a type tag (None, str, int, float, bool, numpy
scalar); any other cell is stored as the text every writer would make of it. A column whose
Arrow type is nested (`is_nested`: a Parquet input's lists, structs and maps) is stored in that
type, so a Parquet output gets it back as it was read (extension types are refused on reading).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io.private import check_private
from galmerge.io.provenance import sha256_file

SEGMENT_FORMAT = "galmerge-result-segment/1"
SUFFIX = ".arrow"
NAME = re.compile(r"^seg-(\d{12})-([0-9a-f]{32})\.arrow$")
ENCODING = "utf-8"
ERRORS = "surrogateescape"

# cell tags of object columns
_NONE, _STR, _INT, _FLOAT, _BOOL, _NUMPY = range(6)
# numpy kinds a segment may name: never object ('O') or raw void ('V')
_KINDS = "biufcmMSU"


def check_private_folder(path: Path) -> None:
    """Refuse a folder (if it exists) that another user owns or that anyone else may write to
    (`galmerge.io.private.check_private`).

    Result segments are loaded as data only, but results planted by someone else would still be
    merged into the output as if computed: only the user's own, private folders are trusted.
    """
    check_private(path, "pass another --output")


def refuse_pickled_segments(folder: Path) -> None:
    """Segments of galmerge versions that pickled them are never loaded (pickle runs code)."""
    old = next(iter(sorted(folder.glob("seg-*.pkl"))), None) if folder.is_dir() else None
    if old is not None:
        raise GalmergeError(
            f"{old.parent} holds result segments in the old pickle format, which are never "
            f"loaded (a pickle can run code); delete {old.parent.parent} and run the same "
            "command again (stamps already cached are not fetched again)")


def is_nested(ty: Any) -> bool:
    """Lists (variable or fixed size), structs and maps: the Arrow types a segment keeps as they
    are, whose cells the readers give as Python lists, dicts and (key, value) tuples. One that
    holds an extension type (``list<uuid>``) is not: segments never store those (their reader
    could be any code), so such a column is text, as any other type galmerge does not keep."""
    import pyarrow.types as t

    return bool(t.is_list(ty) or t.is_large_list(ty) or t.is_fixed_size_list(ty)
                or t.is_struct(ty) or t.is_map(ty)) and not _has_extension(ty)


def _has_extension(ty: Any) -> bool:
    """Whether an Arrow type is, or holds, an extension type (whose reader could be any code)."""
    import pyarrow as pa

    if isinstance(ty, pa.BaseExtensionType):
        return True
    return any(_has_extension(ty.field(i).type) for i in range(ty.num_fields))


def segment_files(folder: Path) -> list[Path]:
    """A journal folder's committed segments, in chunk order (their names sort so)."""
    return sorted(folder.glob(f"seg-*{SUFFIX}"))


def segment_name(first_chunk: int, digest: str) -> str:
    return f"seg-{first_chunk:012d}-{digest[:32]}{SUFFIX}"


def file_digest(path: Path) -> str:
    """A segment's SHA-256 (hex), which its name carries."""
    return sha256_file(path)


class SegmentWriter:
    """Blocks appended one record batch at a time to an Arrow IPC file."""

    def __init__(self, path: Path, columns: list[str], extra: list[str] | None = None,
                 nested: dict[str, Any] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        self.columns = list(columns)
        self.extra = list(extra or [])  # ResultBlock.extra, stored after the input columns
        # input columns stored in their own nested Arrow type (`is_nested`), by name
        self.nested = {c: ty for c, ty in (nested or {}).items() if c in self.columns}
        fields = [pa.field("p", pa.float64()), pa.field("flag", pa.int8()),
                  pa.field("status", pa.large_binary())]
        for j, name in enumerate([*self.columns, *self.extra]):
            ty = self.nested.get(name) if j < len(self.columns) else None
            fields += [pa.field(f"c{j}", pa.large_binary() if ty is None else ty),
                       pa.field(f"t{j}", pa.int8())]
        self.schema = pa.schema(fields, metadata={
            "format": SEGMENT_FORMAT, "columns": json.dumps(self.columns),
            "extra": json.dumps(self.extra)})
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = ipc.new_file(self._sink, self.schema)

    def write(self, index: int, block: Any) -> None:
        import pyarrow as pa

        n = len(block)
        arrays = [pa.array(np.asarray(block.p, dtype=np.float64)),
                  pa.array(np.asarray(block.flag, dtype=np.int8)),
                  pa.array([str(s).encode(ENCODING, ERRORS) for s in block.status],
                           type=pa.large_binary())]
        encodings = []
        for c in self.columns:
            if c in self.nested:
                values, tags, enc = _encode_nested(block.columns[c], self.nested[c], n)
            else:
                values, tags, enc = _encode_column(block.columns[c], n)
            arrays += [values, pa.array(tags, type=pa.int8())]
            encodings.append(enc)
        for e in self.extra:
            values, tags, enc = _encode_column(block.extra[e], n)
            arrays += [values, pa.array(tags, type=pa.int8())]
            encodings.append(enc)
        batch = pa.record_batch(arrays, schema=self.schema)
        self._writer.write_batch(batch, custom_metadata={
            "chunk": str(int(index)), "encodings": json.dumps(encodings)})

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


def _encode_column(values: np.ndarray, n: int) -> tuple[Any, np.ndarray, list[Any]]:
    import pyarrow as pa

    arr = np.asarray(values)
    if len(arr) != n:
        raise ValueError(f"column of {len(arr)} rows in a block of {n}")
    if arr.dtype.kind in _KINDS and arr.dtype.kind != "O":
        arr = np.ascontiguousarray(arr)
        width = arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
        offsets = np.arange(n + 1, dtype=np.int64) * width
        data = pa.Array.from_buffers(pa.large_binary(), n, [
            None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(arr.tobytes())])
        return data, np.zeros(n, np.int8), ["numpy", arr.dtype.str, list(arr.shape[1:])]
    cells = []
    tags = np.empty(n, dtype=np.int8)
    for i, v in enumerate(arr.tolist() if arr.dtype != object else arr):
        tag, raw = _encode_cell(v)
        tags[i] = tag
        cells.append(raw)
    return pa.array(cells, type=pa.large_binary()), tags, ["cells"]


def _encode_nested(values: np.ndarray, ty: Any, n: int) -> tuple[Any, np.ndarray, list[Any]]:
    """A nested column (cells as the Parquet reader gives them) as an Arrow array of ``ty``."""
    import pyarrow as pa

    if len(values) != n:
        raise ValueError(f"column of {len(values)} rows in a block of {n}")
    return pa.array(list(values), type=ty), np.zeros(n, np.int8), ["arrow"]


def _encode_cell(v: Any) -> tuple[int, bytes | None]:
    if v is None:
        return _NONE, None
    if isinstance(v, np.generic) and v.dtype.kind in "biufcmM":  # before float: np.float64 is one
        return _NUMPY, v.dtype.str.encode() + b"\0" + v.tobytes()
    if isinstance(v, str):
        return _STR, v.encode(ENCODING, ERRORS)
    if isinstance(v, bool):
        return _BOOL, b"\x01" if v else b"\x00"
    if isinstance(v, int):
        return _INT, str(v).encode()
    if isinstance(v, float):
        return _FLOAT, struct.pack("<d", v)
    from galmerge.classification.outputs import (
        _text,  # bytes, arrays, masked: the text writers make of them
    )

    return _STR, _text(v).encode(ENCODING, ERRORS)


def read_segment(path: Path) -> Iterator[tuple[int, Any]]:
    """(chunk index, ResultBlock) of a segment, after checking its SHA-256 against its name.

    Raises ValueError (damaged or foreign file) before yielding anything.
    """
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from galmerge.classification.outputs import ResultBlock

    m = NAME.match(path.name)
    if m is None:
        raise ValueError(f"not a segment name: {path.name}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest()[:32] != m.group(2):
        raise ValueError("checksum mismatch")
    try:
        reader = ipc.open_file(pa.py_buffer(data))
        meta = reader.schema.metadata or {}
        if meta.get(b"format") != SEGMENT_FORMAT.encode():
            raise ValueError("not a galmerge result segment")
        columns = json.loads(meta[b"columns"])
        extra = json.loads(meta.get(b"extra", b"[]"))
        if any(_has_extension(f.type) for f in reader.schema):
            raise ValueError("a segment column of an extension type")
        out = []
        for b in range(reader.num_record_batches):
            batch, custom = reader.get_batch_with_custom_metadata(b)
            index = int(custom[b"chunk"])
            encodings = json.loads(custom[b"encodings"])
            n = batch.num_rows
            p = batch.column(0).to_numpy(zero_copy_only=False).astype(np.float64)
            flag = batch.column(1).to_numpy(zero_copy_only=False).astype(np.int8)
            status = np.array([s.decode(ENCODING, ERRORS) for s in batch.column(2).to_pylist()],
                              dtype=object)
            cols = {}
            for j, name in enumerate(columns):
                cols[name] = _decode_column(batch.column(2 + 2 * j + 1),
                                            batch.column(2 + 2 * j + 2), encodings[j], n)
            more = {}
            for k, name in enumerate(extra, start=len(columns)):
                more[name] = _decode_column(batch.column(2 + 2 * k + 1),
                                            batch.column(2 + 2 * k + 2), encodings[k], n)
            out.append((index, ResultBlock(cols, p, flag, status, more)))
    except (pa.ArrowException, KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable segment ({type(exc).__name__}: {exc})") from None
    yield from out


def _decode_column(values: Any, tags: Any, enc: list[Any], n: int) -> np.ndarray:
    import pyarrow as pa

    if enc[0] == "arrow":  # a nested column: its cells as the Parquet reader gives them
        out = np.empty(n, dtype=object)
        for i, cell in enumerate(values.to_pylist()):
            out[i] = cell
        return out
    if not pa.types.is_large_binary(values.type):
        raise ValueError(f"a {enc[0]} column stored as {values.type}")
    if enc[0] == "numpy":
        dtype = _safe_dtype(enc[1])
        shape = tuple(int(s) for s in enc[2])
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[
            values.offset : values.offset + n + 1]
        raw = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        width = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if len(raw) != n * width:
            raise ValueError("column size does not match its type")
        return raw.view(dtype).reshape((n, *shape)).copy() if n else np.zeros((0, *shape), dtype)
    if enc[0] != "cells":
        raise ValueError(f"unknown column encoding {enc[0]!r}")
    kinds = tags.to_numpy(zero_copy_only=False)
    cells = values.to_pylist()
    out = np.empty(n, dtype=object)
    for i, (tag, raw) in enumerate(zip(kinds.tolist(), cells, strict=True)):
        out[i] = _decode_cell(int(tag), raw)
    return out


def _decode_cell(tag: int, raw: bytes | None) -> Any:
    if tag == _NONE:
        return None
    if raw is None:
        raise ValueError("a null cell with a value tag")
    if tag == _STR:
        return raw.decode(ENCODING, ERRORS)
    if tag == _INT:
        return int(raw.decode("ascii"))
    if tag == _FLOAT:
        return struct.unpack("<d", raw)[0]
    if tag == _BOOL:
        return raw == b"\x01"
    if tag == _NUMPY:
        name, _, body = raw.partition(b"\0")
        dtype = _safe_dtype(name.decode("ascii"))
        if len(body) != dtype.itemsize:
            raise ValueError("numpy scalar of the wrong size")
        return np.frombuffer(body, dtype=dtype)[0]
    raise ValueError(f"unknown cell tag {tag}")


def _safe_dtype(name: str) -> np.dtype:
    """A plain numpy dtype from its string; object and structured types are refused."""
    if not re.fullmatch(r"[<>|=]?[a-zA-Z]\d*(\[\w+\])?", name):
        raise ValueError(f"dtype {name!r} not allowed")
    dtype = np.dtype(name)
    if dtype.kind not in _KINDS or dtype.kind == "O" or dtype.names is not None:
        raise ValueError(f"dtype {name!r} not allowed")
    return dtype
