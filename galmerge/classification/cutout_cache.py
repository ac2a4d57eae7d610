"""A crash-safe HDF5 cache of cutouts, keyed by (id, RA, Dec) and the cutout service's key.

Layout for ``--cache cache.h5``:

- ``cache.h5`` — the consolidated file, in the DESIGN image schema (``images``, ``labels``,
  ``id``, ``ra``, ``dec`` + attributes) plus the index datasets ``key``/``key_hash`` and the
  negative entries ``missing_key``/``missing_key_hash``/``missing_status`` (rows the survey
  does not cover, so they are not asked for again).
- ``cache.h5.journal/`` — chunk files in the same format, one per flush, each written to a
  temporary name and renamed when complete; nothing is ever modified in place.
- ``cache.h5.journal/.arrivals~HOST~PID~*.tmp`` — each stamp as it arrives, appended (one
  checksummed record, one ``write``) until the next flush puts it into a chunk and empties the
  file. A SIGKILL therefore loses no stamp that `put` returned for: the next process that opens
  the cache finds the log of the dead process (same host), turns its complete records into a
  chunk and removes it. Records are data only (a JSON header and float32 pixels) under a
  BLAKE2b checksum; a torn last record is dropped.

`close()` merges the journal into the consolidated file (again temp + rename) when the journal
has grown to half the consolidated file's size, so the copying costs O(1) per stamp amortised.
Stamps are stored gzip-compressed after byte shuffling (bit exact; older uncompressed files are
read as they are and compressed when merged); with ``keepbits`` they are first rounded to that
many float32 mantissa bits (lossy, relative error <= 2**-(keepbits+1), recorded in the files'
attributes and in the cache key, so exact and rounded stamps never mix).
Every file is checked on open (HDF5 readable, format, datasets of consistent length) and image
chunks carry Fletcher-32 checksums checked on read; a bad file is renamed
``*.corrupt-<timestamp>``, reported in one line and its stamps fetched again — never used.

Each stamp is also bound to its key: ``stamp_check[i]`` is a 128-bit BLAKE2b of the key's hash
and the stamp's pixels, checked on every read against the key asked for, so an index whose
rows were swapped (two galaxies given each other's stamps) is caught like a flipped bit. A
stamp with non-finite pixels is refused on read the same way (the fetch path never stores one).
Files written before ``stamp_check`` existed are read without the binding check.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import resource
import shutil
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.hdf5 import check_stored_here
from galmerge.io.text import escape_undecodable

CACHE_FORMAT = "galmerge-cutout-cache/1"
# stamps are stored gzip-compressed after byte shuffling: bit exact, read by any HDF5 reader
# (files written before this are uncompressed and read as they are). Level 1: on 512 synthetic
# sdss stamps (one chunk each) it stores 58,476 B/stamp against level 4's 58,134 at 846 vs 710
# stamps/s written; lzf stores 62,789 B at 1,548/s; uncompressed 67,574 B at 8,630/s.
IMAGE_FILTERS: dict[str, Any] = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
MAX_KEEPBITS = 23  # float32 mantissa bits
COORD_DECIMALS = 6  # 1e-6 deg = 3.6 mas: far below a pixel, above float noise
COPY_BLOCK = 256
STATUS_OK = "ok"
# arrival log records: magic, header length, pixel bytes, JSON header, pixels, BLAKE2b-128
ARRIVAL_MAGIC = b"GMA1"
ARRIVAL_HEAD = struct.Struct("<4sIQ")
ARRIVAL_MAX_HEADER = 1 << 16


def make_key(obj_id: str, ra: float, dec: float) -> str:
    """The cache key of one catalog row: id plus position rounded to 1e-6 degrees."""
    return f"{str(obj_id).strip()}|{round(float(ra), COORD_DECIMALS) + 0.0:.6f}|" \
           f"{round(float(dec), COORD_DECIMALS) + 0.0:.6f}"


def keepbits_key(cache_key: str, keepbits: int | None) -> str:
    """The cache key of stamps stored with ``keepbits`` mantissa bits (lossy stamps never mix
    with exact ones)."""
    return cache_key if keepbits is None else f"{cache_key}:keepbits{int(keepbits)}"


def round_mantissa(image: np.ndarray, keepbits: int) -> np.ndarray:
    """float32 values rounded (to nearest, ties to even) to ``keepbits`` mantissa bits.

    Relative error at most 2**-(keepbits + 1) (for subnormals, below 1.2e-38: that much of
    1.2e-38); zeros, infinities and NaNs stay as they are. The
    dropped low bits are zeros, which is what lets gzip shrink the stamp.
    """
    x = np.ascontiguousarray(image, dtype=np.float32)
    if keepbits >= MAX_KEEPBITS:
        return x
    u = x.view(np.uint32).astype(np.uint64)
    drop = MAX_KEEPBITS - keepbits
    rounded = (u + ((1 << (drop - 1)) - 1) + ((u >> drop) & 1)) >> drop << drop
    finite = np.isfinite(x)
    out = np.where(finite, rounded, u).astype(np.uint32).view(np.float32)
    # rounding up at the top of the range overflows to inf: keep the value truncated instead
    over = finite & ~np.isfinite(out)
    if over.any():
        out[over] = (u[over] >> drop << drop).astype(np.uint32).view(np.float32)
    return out


def hash_keys(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit halves of a 128-bit BLAKE2b of each key (sorted on the first, checked on both)."""
    hi = np.empty(len(keys), dtype=np.uint64)
    lo = np.empty(len(keys), dtype=np.uint64)
    for i, key in enumerate(keys):
        d = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()
        hi[i] = int.from_bytes(d[:8], "little")
        lo[i] = int.from_bytes(d[8:], "little")
    return hi, lo


def stamp_checks(hi: np.ndarray, lo: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(n, 2) uint64: BLAKE2b-128 of each key hash with its stamp's float32 pixels."""
    out = np.empty((len(images), 2), dtype=np.uint64)
    data = np.ascontiguousarray(images, dtype="<f4")
    for i in range(len(data)):
        h = hashlib.blake2b(digest_size=16)
        h.update(np.array([hi[i], lo[i]], dtype="<u8").tobytes())
        h.update(data[i].tobytes())
        d = h.digest()
        out[i] = (int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little"))
    return out


@dataclass
class _Segment:
    """A sorted piece of the in-memory index: hash -> (file number, row); row < 0 = missing."""

    hi: np.ndarray
    lo: np.ndarray
    file: np.ndarray
    row: np.ndarray

    @classmethod
    def build(cls, hi, lo, file, row) -> _Segment:
        order = np.argsort(hi, kind="stable")
        return cls(hi[order], lo[order], file[order], row[order])

    def __len__(self) -> int:
        return len(self.hi)


class CorruptCacheFile(Exception):
    """One cache file failed a check; it is set aside and rebuilt."""


def _refuse_foreign(path: Path) -> None:
    """A one-line error for a cache path that holds something other than an HDF5 file (a
    catalog or an output given as --cache by mistake): it is the user's, so it is neither set
    aside like a damaged cache nor overwritten. Damage keeps the HDF5 signature (the cache is
    only ever written whole, by rename), so a file without one was never a cache."""
    if path.is_file() and path.stat().st_size > 0 and not h5py.is_hdf5(path):
        raise GalmergeError(f"cutout cache {path} is not an HDF5 file (another file given as "
                            "--cache?); give a new path or an existing cache")


def _stderr(message: str) -> None:
    print(f"galmerge: {message}", file=sys.stderr)


class CutoutCache:
    """Stamps of one kind (``cache_key``, shape (C, H, W)) with a crash-safe append journal."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        cache_key: str,
        shape: tuple[int, int, int],
        *,
        attrs: dict[str, Any] | None = None,
        flush_rows: int = 256,
        flush_seconds: float = 10.0,
        warn: Callable[[str], None] = _stderr,
        keepbits: int | None = None,
    ) -> None:
        if keepbits is not None and not 1 <= int(keepbits) <= MAX_KEEPBITS:
            raise GalmergeError(f"cache keepbits must be 1..{MAX_KEEPBITS} (float32 mantissa "
                                f"bits), got {keepbits}; omit it for exact stamps")
        self.keepbits = None if keepbits is None else int(keepbits)
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.name + ".journal")
        self.cache_key = keepbits_key(cache_key, self.keepbits)
        self.shape = tuple(int(s) for s in shape)
        self.attrs = dict(attrs or {})
        self.flush_rows = max(1, int(flush_rows))
        self.flush_seconds = float(flush_seconds)
        self.warn = warn
        self.statuses: list[str] = [STATUS_OK]
        self.files: list[Path | None] = []
        self._handles: dict[int, h5py.File] = {}
        self._checks: dict[int, np.ndarray | None] = {}  # file number -> its stamp_check
        self._segments: list[_Segment] = []
        self._pending: dict[tuple[int, int], tuple[str, str, float, float, np.ndarray | None,
                                                   str]] = {}
        self._last_flush = time.monotonic()
        self._seq = 0
        self._arrivals: int | None = None  # fd of this process's arrival log, opened lazily
        self._arrivals_path: Path | None = None
        self.added = 0
        _refuse_foreign(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.journal.mkdir(exist_ok=True)
        self._remove_dead_temporaries()
        if self.path.exists():
            self._load_file(self.path, main=True)
        for chunk in sorted(self.journal.glob("c-*.h5")):
            self._load_file(chunk, main=False)
        self._replay_arrivals()

    # -- loading ---------------------------------------------------------------------------
    def _status_code(self, status: str) -> int:
        if status not in self.statuses:
            self.statuses.append(status)
        return self.statuses.index(status)

    def _load_file(self, path: Path, main: bool) -> None:
        try:
            hi, lo, rows, mhi, mlo, mstatus = self._read_index(path)
        except CorruptCacheFile as exc:
            self._set_aside(path, str(exc))
            return
        except FileNotFoundError:  # compacted away by another process meanwhile
            return
        file_no = len(self.files)
        self.files.append(path)
        codes = np.array([-1 - self._status_code(s) for s in mstatus], dtype=np.int64)
        self._add_segment(
            np.concatenate([hi, mhi]),
            np.concatenate([lo, mlo]),
            np.full(len(hi) + len(mhi), file_no, dtype=np.int32),
            np.concatenate([rows, codes]),
        )

    def _read_index(self, path: Path) -> tuple[np.ndarray, ...]:
        try:
            f = h5py.File(path, "r")
        except FileNotFoundError:
            raise
        except OSError as exc:
            if not path.exists():
                raise FileNotFoundError(path) from None
            raise CorruptCacheFile(f"not a readable HDF5 file ({exc})".splitlines()[0]) from None
        try:
            with f:
                fmt = f.attrs.get("galmerge_cache_format")
                if isinstance(fmt, bytes):
                    fmt = fmt.decode()
                if fmt != CACHE_FORMAT:
                    raise GalmergeError(
                        f"{path} is not a galmerge cutout cache; pass another --cache file"
                    )
                key = f.attrs.get("galmerge_cache_key")
                key = key.decode() if isinstance(key, bytes) else key
                if key != self.cache_key:
                    raise GalmergeError(
                        f"cutout cache {path} holds stamps of another kind ({key}); this model "
                        f"needs {self.cache_key}: pass another --cache file"
                    )
                for name in f:  # link names: a dangling external link is listed too
                    check_stored_here(f, name, path)
                n = int(f.attrs.get("n_images", -1))
                images = f.get("images")
                if images is None or images.shape != (n, *self.shape):
                    got = None if images is None else images.shape
                    raise CorruptCacheFile(f"images {got} do not match n_images={n}")
                for name in ("id", "ra", "dec", "key_hash", "labels"):
                    if name not in f or f[name].shape[0] != n:
                        raise CorruptCacheFile(f"dataset '{name}' missing or not {n} long")
                kh = f["key_hash"][()]
                if "stamp_check" in f and f["stamp_check"].shape != (n, 2):
                    raise CorruptCacheFile("dataset 'stamp_check' has the wrong shape")
                m = int(f.attrs.get("n_missing", -1))
                mk = f.get("missing_key_hash")
                ms = f.get("missing_status")
                if mk is None or ms is None or mk.shape[0] != m or ms.shape[0] != m:
                    raise CorruptCacheFile("missing-entry datasets inconsistent")
                mkh = mk[()]
                mstatus = [s for s in ms.asstr()[()]]
                if kh.shape != (n, 2) or mkh.shape != (m, 2):
                    raise CorruptCacheFile("key hashes have the wrong shape")
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CorruptCacheFile(f"unreadable ({exc})".splitlines()[0]) from None
        return (kh[:, 0].astype(np.uint64), kh[:, 1].astype(np.uint64),
                np.arange(n, dtype=np.int64), mkh[:, 0].astype(np.uint64),
                mkh[:, 1].astype(np.uint64), mstatus)

    def _set_aside(self, path: Path, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
            reason = reason if len(reason) <= 100 else reason[:97] + "..."
            self.warn(f"cutout cache file {path} is corrupt ({reason}); moved to {target.name} "
                      "and its stamps will be fetched again")

    def _remove_dead_temporaries(self) -> None:
        for tmp in atomic.dead_temporaries(self.journal, ".c-*.tmp"):
            tmp.unlink(missing_ok=True)
        # a compaction killed half way leaves a partial copy of the whole cache beside it
        for tmp in atomic.dead_temporaries(self.path.parent,
                                           f".{glob.escape(self.path.name)}~*.tmp"):
            tmp.unlink(missing_ok=True)

    def _add_segment(self, hi, lo, file, row) -> None:
        if len(hi) == 0:
            return
        self._segments.append(_Segment.build(hi, lo, file, row))
        # keep segment sizes geometric so lookups touch O(log n) of them
        while len(self._segments) > 1 and 2 * len(self._segments[-1]) >= len(self._segments[-2]):
            b, a = self._segments.pop(), self._segments.pop()
            self._segments.append(_Segment.build(
                np.concatenate([a.hi, b.hi]), np.concatenate([a.lo, b.lo]),
                np.concatenate([a.file, b.file]), np.concatenate([a.row, b.row])))

    # -- lookups ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(s) for s in self._segments) + len(self._pending)

    def _locate(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                    np.ndarray]:
        hi, lo = hash_keys(keys)
        file = np.full(len(keys), -2, dtype=np.int64)  # -2: not found
        row = np.zeros(len(keys), dtype=np.int64)
        for seg in self._segments:
            todo = file == -2
            if not todo.any():
                break
            if not len(seg):
                continue
            pos = np.searchsorted(seg.hi, hi[todo])
            pos_c = np.minimum(pos, len(seg) - 1)
            hit = (pos < len(seg)) & (seg.hi[pos_c] == hi[todo]) & (seg.lo[pos_c] == lo[todo])
            idx = np.flatnonzero(todo)[hit]
            file[idx] = seg.file[pos_c[hit]]
            row[idx] = seg.row[pos_c[hit]]
        return hi, lo, file, row

    def lookup(self, keys: Sequence[str]) -> list[str | None]:
        """Per key: ``"ok"`` (a stamp is cached), a cached failure such as ``"no-coverage"``,
        or None (not cached)."""
        hi, lo, file, row = self._locate(keys)
        out: list[str | None] = []
        for i in range(len(keys)):
            pending = self._pending.get((int(hi[i]), int(lo[i])))
            if pending is not None:
                out.append(pending[5])
            elif file[i] == -2:
                out.append(None)
            elif row[i] >= 0:
                out.append(STATUS_OK)
            else:
                out.append(self.statuses[-1 - int(row[i])])
        return out

    def images(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Stamps for keys whose lookup said ``ok``, and a mask of those actually read.

        A file that fails its checksum on read is set aside; its keys come back unread (and are
        no longer in the index), so the caller fetches them again.
        """
        hi, lo, file, row = self._locate(keys)
        out = np.zeros((len(keys), *self.shape), dtype=np.float32)
        got = np.zeros(len(keys), dtype=bool)
        for i in range(len(keys)):
            pending = self._pending.get((int(hi[i]), int(lo[i])))
            if pending is not None and pending[4] is not None:
                out[i] = pending[4]
                got[i] = True
        need = ~got & (file >= 0) & (row >= 0)
        files = np.unique(file[need])
        if len(files) == 1 and need.all():  # the usual warm case: no extra copy
            try:
                return self._read_rows(int(files[0]), row, hi, lo), need
            except (OSError, ValueError, KeyError) as exc:
                self._drop_file(int(files[0]), f"bad data on read ({exc})".splitlines()[0])
                return out, got
        for f_no in files:
            sel = np.flatnonzero(need & (file == f_no))
            rows = row[sel]
            try:
                out[sel] = self._read_rows(int(f_no), rows, hi[sel], lo[sel])
                got[sel] = True
            except (OSError, ValueError, KeyError) as exc:
                self._drop_file(int(f_no), f"bad data on read ({exc})".splitlines()[0])
        return out, got

    def _read_rows(self, f_no: int, rows: np.ndarray, hi: np.ndarray,
                   lo: np.ndarray) -> np.ndarray:
        """The stamps at ``rows`` of file ``f_no``, checked against the keys (hi, lo) asked for;
        ValueError when one is not the stamp stored for its key or not finite."""
        data = self._read_rows_unchecked(f_no, rows)
        checks = self._checks.get(f_no)
        if checks is not None and not np.array_equal(stamp_checks(hi, lo, data), checks[rows]):
            raise ValueError("a stamp does not match its key (index rows swapped or edited)")
        if not np.isfinite(data).all():
            raise ValueError("a stamp has non-finite pixel values")
        return data

    def _read_rows_unchecked(self, f_no: int, rows: np.ndarray) -> np.ndarray:
        handle = self._handles.get(f_no)
        if handle is None:
            if len(self._handles) >= 32:
                old = next(iter(self._handles))
                self._handles.pop(old).close()
            path = self.files[f_no]
            if path is None:
                raise KeyError("file was set aside")
            handle = self._handles[f_no] = h5py.File(path, "r")
            if f_no not in self._checks:
                check = handle.get("stamp_check")
                self._checks[f_no] = None if check is None else check[()]
        dset = handle["images"]
        order = np.argsort(rows, kind="stable")
        srows = rows[order]
        data = np.empty((len(rows), *self.shape), dtype=np.float32)
        # contiguous runs as slices: far faster than point selections
        breaks = np.flatnonzero(np.diff(srows) != 1) + 1
        pos = 0
        for run in np.split(srows, breaks):
            dset.read_direct(data, np.s_[int(run[0]) : int(run[-1]) + 1],
                             np.s_[pos : pos + len(run)])
            pos += len(run)
        if np.array_equal(order, np.arange(len(order))):  # already in file order: no copy
            return data
        out = np.empty_like(data)
        out[order] = data
        return out

    def _drop_file(self, f_no: int, reason: str) -> None:
        path = self.files[f_no]
        handle = self._handles.pop(f_no, None)
        if handle is not None:
            handle.close()
        self.files[f_no] = None
        for seg in self._segments:
            keep = seg.file != f_no
            seg.hi, seg.lo, seg.file, seg.row = seg.hi[keep], seg.lo[keep], seg.file[keep], \
                seg.row[keep]
        if path is not None:
            self._set_aside(path, reason)

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: str, obj_id: str, ra: float, dec: float, image: np.ndarray | None,
            status: str = STATUS_OK) -> None:
        """Remember one fetched stamp (or a lasting failure such as ``no-coverage``)."""
        hi, lo = hash_keys([key])
        if image is not None:
            image = np.asarray(image, dtype=np.float32)
            if image.shape != self.shape:
                raise ValueError(f"stamp shape {image.shape} != cache's {self.shape}")
            if self.keepbits is not None:  # now, so this run already uses what later runs read
                image = round_mantissa(image, self.keepbits)
        image = image if status == STATUS_OK else None
        self._pending[(int(hi[0]), int(lo[0]))] = (key, str(obj_id), float(ra), float(dec),
                                                   image, status)
        self.added += 1
        self._log_arrival(key, str(obj_id), float(ra), float(dec), image, status)

    # -- arrival log: stamps survive a SIGKILL before their chunk is written ---------------
    def _log_arrival(self, key: str, obj_id: str, ra: float, dec: float,
                     image: np.ndarray | None, status: str) -> None:
        header = json.dumps({"key": key, "id": obj_id, "ra": ra, "dec": dec, "status": status,
                             "cache_key": self.cache_key}).encode("utf-8", "surrogateescape")
        pixels = b"" if image is None else np.ascontiguousarray(image, "<f4").tobytes()
        body = ARRIVAL_HEAD.pack(ARRIVAL_MAGIC, len(header), len(pixels)) + header + pixels
        record = memoryview(body + hashlib.blake2b(body, digest_size=16).digest())
        with _disk_errors(self.journal):
            if self._arrivals is None:
                path = atomic.temp_beside(self.journal / "arrivals")
                self._arrivals = os.open(path, os.O_WRONLY | os.O_APPEND
                                         | getattr(os, "O_NOFOLLOW", 0)
                                         | getattr(os, "O_CLOEXEC", 0))
                self._arrivals_path = path
            # one write to the kernel: a killed process's data stays (a torn record would be
            # dropped on replay)
            while record:
                record = record[os.write(self._arrivals, record):]

    def _close_arrivals(self) -> None:
        if self._arrivals is not None:
            os.close(self._arrivals)
            self._arrivals = None
        if self._arrivals_path is not None:
            self._arrivals_path.unlink(missing_ok=True)
            self._arrivals_path = None

    def _replay_arrivals(self) -> None:
        """Commit the stamps a dead process of this host logged but never flushed."""
        logs = list(atomic.dead_temporaries(self.journal, ".arrivals~*.tmp"))
        if not logs:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        with atomic.open_nofollow(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process replays a log, once
            for log in logs:
                try:
                    records = _read_arrivals(log, self.shape)
                except FileNotFoundError:  # replayed by another process meanwhile
                    continue
                for rec in records:
                    if rec["cache_key"] != self.cache_key or self.lookup([rec["key"]])[0]:
                        continue
                    hi, lo = hash_keys([rec["key"]])
                    self._pending[(int(hi[0]), int(lo[0]))] = (
                        rec["key"], rec["id"], rec["ra"], rec["dec"], rec["image"],
                        rec["status"])
                self.flush()
                log.unlink(missing_ok=True)

    def maybe_flush(self) -> None:
        """Flush when enough stamps or time have accumulated."""
        if len(self._pending) >= self.flush_rows or (
            self._pending and time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Write pending entries as one complete journal chunk (temp file + rename)."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        entries = list(self._pending.items())
        self._seq += 1
        name = f"c-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.h5"
        final = self.journal / name
        ok = [(h, e) for h, e in entries if e[5] == STATUS_OK]
        bad = [(h, e) for h, e in entries if e[5] != STATUS_OK]
        images = (np.stack([e[4] for _, e in ok]) if ok
                  else np.zeros((0, *self.shape), np.float32))
        self._write_file(final, images,
                         ids=[e[1] for _, e in ok], ra=[e[2] for _, e in ok],
                         dec=[e[3] for _, e in ok], keys=[e[0] for _, e in ok],
                         hashes=np.array([h for h, _ in ok], dtype=np.uint64).reshape(-1, 2),
                         mkeys=[e[0] for _, e in bad],
                         mhashes=np.array([h for h, _ in bad], dtype=np.uint64).reshape(-1, 2),
                         mstatus=[e[5] for _, e in bad])
        file_no = len(self.files)
        self.files.append(final)
        codes = np.array([-1 - self._status_code(e[5]) for _, e in bad], dtype=np.int64)
        hashes = np.array([h for h, _ in ok] + [h for h, _ in bad], dtype=np.uint64).reshape(-1, 2)
        self._add_segment(hashes[:, 0], hashes[:, 1],
                          np.full(len(hashes), file_no, dtype=np.int32),
                          np.concatenate([np.arange(len(ok), dtype=np.int64), codes]))
        self._pending.clear()
        if self._arrivals is not None:  # its records are in the chunk now
            os.ftruncate(self._arrivals, 0)

    def _write_file(self, final: Path, images: np.ndarray, *, ids, ra, dec, keys, hashes,
                    mkeys, mhashes, mstatus) -> None:
        # Built in memory, then written by Python in one go: a full disk or a file-size limit
        # is then a plain OSError, where HDF5 writing the file itself crashes the process.
        with h5py.File(f"{final.name}.mem", "w", driver="core", backing_store=False) as f:
            self._write_header(f)
            _create_images(f, images, self.shape)
            hashes = np.asarray(hashes, np.uint64).reshape(-1, 2)
            self._write_columns(f, len(images), ids, ra, dec, keys, hashes, mkeys, mhashes,
                                mstatus, stamp_checks(hashes[:, 0], hashes[:, 1], images))
            f.flush()
            image = f.id.get_file_image()
        with _disk_errors(final.parent):
            tmp = atomic.temp_beside(final.with_name(final.stem))
            try:
                with open(tmp, "wb") as out:
                    out.write(image)
                atomic.publish(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def _write_header(self, f: h5py.File) -> None:
        for name, value in self.attrs.items():
            f.attrs[name] = value
        f.attrs["galmerge_cache_format"] = CACHE_FORMAT
        f.attrs["galmerge_cache_key"] = self.cache_key
        # how the stamps were stored: mantissa bits kept (23 = exact) and the error bound
        f.attrs["stamp_keepbits"] = MAX_KEEPBITS if self.keepbits is None else self.keepbits
        f.attrs["stamp_max_relative_error"] = (0.0 if self.keepbits is None
                                               else 2.0 ** -(self.keepbits + 1))

    @staticmethod
    def _write_columns(f, n, ids, ra, dec, keys, hashes, mkeys, mhashes, mstatus,
                       checks) -> None:
        text = h5py.string_dtype("utf-8")

        def texts(values: Sequence[str]) -> np.ndarray:
            # a catalog's undecodable id bytes as %XX: UTF-8 datasets, and lookups go by
            # key_hash (hashed from the exact key), so no stamp is served for another
            return np.array([escape_undecodable(v) for v in values], dtype=object)

        f.create_dataset("stamp_check", data=np.asarray(checks, np.uint64).reshape(-1, 2))
        f.create_dataset("labels", data=np.full(n, -1, dtype=np.int8))
        f.create_dataset("id", data=texts(ids), dtype=text)
        f.create_dataset("ra", data=np.asarray(ra, dtype=np.float64))
        f.create_dataset("dec", data=np.asarray(dec, dtype=np.float64))
        f.create_dataset("key", data=texts(keys), dtype=text)
        f.create_dataset("key_hash", data=np.asarray(hashes, np.uint64).reshape(-1, 2))
        f.create_dataset("missing_key", data=texts(mkeys), dtype=text)
        f.create_dataset("missing_key_hash", data=np.asarray(mhashes, np.uint64).reshape(-1, 2))
        f.create_dataset("missing_status", data=texts(mstatus), dtype=text)
        # written last: a reader trusts only files whose counts match their datasets
        f.attrs["n_missing"] = len(mkeys)
        f.attrs["n_images"] = n

    # -- compaction ------------------------------------------------------------------------
    def close(self, compact: bool = True) -> None:
        """Flush, then merge the journal into the consolidated file when it has grown enough."""
        self.flush()
        self._close_arrivals()
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._checks.clear()
        if compact:
            self.compact_or_warn()

    def compact_or_warn(self) -> bool:
        """`compact(force=False)`, a failure for want of room reported in one line instead:
        the journal keeps every stamp and is read as it is, and a later run compacts it."""
        try:
            return self.compact(force=False)
        except GalmergeError as exc:
            self.warn(str(exc))
            return False

    def compact(self, force: bool = True) -> bool:
        """Merge journal chunks into the consolidated file (under a lock); True if it did."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with atomic.open_nofollow(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            chunks = sorted(self.journal.glob("c-*.h5"))
            if not chunks:
                return False
            main_size = self.path.stat().st_size if self.path.exists() else 0
            chunk_size = sum(c.stat().st_size for c in chunks)
            if not force and main_size and 2 * chunk_size < main_size and len(chunks) <= 64:
                return False
            sources = [self.path] if self.path.exists() else []
            sources += chunks
            self._check_room(main_size + chunk_size)
            try:
                self._merge(sources)
            except (OSError, RuntimeError) as exc:  # h5py reports EFBIG/ENOSPC as either
                raise self._room_error(exc) from None
            for c in chunks:
                c.unlink(missing_ok=True)
            return True

    def _room_message(self, why: str) -> str:
        return (f"cannot compact the cutout cache {self.path}: {why}; its stamps stay in "
                f"{self.journal.name}/ and are used as they are: free disk space or raise the "
                "file-size limit (ulimit -f), and the next run compacts it")

    def _check_room(self, need: int) -> None:
        """Refuse up front a merge that cannot fit: HDF5 failing half way through a write
        leaves a broken file handle behind (tracebacks, at worst a crash)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY and need > soft:
            raise GalmergeError(self._room_message(
                f"the merged file needs up to {need / 1e6:.1f} MB and the file-size limit is "
                f"{soft / 1e6:.1f} MB"))
        free = shutil.disk_usage(self.path.parent).free
        if need > free:
            raise GalmergeError(self._room_message(
                f"the merged file needs up to {need / 1e6:.1f} MB and its disk has "
                f"{free / 1e6:.1f} MB free"))

    def _room_error(self, exc: BaseException) -> BaseException:
        errno_ = atomic.no_space_errno(exc)
        if errno_ is None:
            return exc
        return GalmergeError(self._room_message(os.strerror(errno_)))

    def _merge(self, sources: list[Path]) -> None:
        readable: list[tuple[Path, np.ndarray, np.ndarray]] = []
        for src in sources:
            try:
                hi, lo, _, mhi, mlo, _ = self._read_index(src)
            except CorruptCacheFile as exc:
                self._set_aside(src, str(exc))
                continue
            readable.append((src, np.stack([hi, lo], 1), np.stack([mhi, mlo], 1)))
        # first occurrence of each key wins (a chunk may repeat what the main file has)
        all_h = np.concatenate([r[1] for r in readable] + [np.zeros((0, 2), np.uint64)])
        _, first = np.unique(all_h, axis=0, return_index=True)
        keep_all = np.zeros(len(all_h), dtype=bool)
        keep_all[first] = True
        all_m = np.concatenate([r[2] for r in readable] + [np.zeros((0, 2), np.uint64)])
        _, mfirst = np.unique(all_m, axis=0, return_index=True)
        mkeep_all = np.zeros(len(all_m), dtype=bool)
        mkeep_all[mfirst] = True
        # a key cached as a stamp anywhere is no longer 'missing'
        if len(all_m) and len(all_h):
            mkeep_all &= ~np.isin(all_m[:, 0], all_h[:, 0])
        n = int(keep_all.sum())
        tmp = atomic.temp_beside(self.path)
        try:
            self._write_merged(tmp, readable, keep_all, mkeep_all, n)
            atomic.publish(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # never a partial copy left beside the cache
            raise

    def _write_merged(self, tmp: Path, readable: list[tuple[Path, np.ndarray, np.ndarray]],
                      keep_all: np.ndarray, mkeep_all: np.ndarray, n: int) -> None:
        text = h5py.string_dtype("utf-8")
        with h5py.File(tmp, "w") as out:
            if readable:  # keep what earlier runs recorded (bands, survey...) unless given now
                with h5py.File(readable[0][0], "r") as first_file:
                    for name, value in first_file.attrs.items():
                        if name not in ("n_images", "n_missing"):
                            out.attrs[name] = value
            self._write_header(out)
            dset = _create_images(out, np.zeros((0, *self.shape), np.float32), self.shape,
                                  total=n)
            cols: dict[str, list[np.ndarray]] = {k: [] for k in (
                "id", "ra", "dec", "key", "key_hash", "missing_key", "missing_key_hash",
                "missing_status", "stamp_check")}
            pos = 0
            off = moff = 0
            for src, h, mh in readable:
                keep = keep_all[off : off + len(h)]
                mkeep = mkeep_all[moff : moff + len(mh)]
                off += len(h)
                moff += len(mh)
                with h5py.File(src, "r") as f:
                    rows = np.flatnonzero(keep)
                    same = _same_storage(f["images"], dset)
                    # copied, never recomputed (that would bless a swapped row); files from
                    # before stamp_check existed get theirs computed from what they hold
                    old_checks = f["stamp_check"][()] if "stamp_check" in f else None
                    for start in range(0, len(rows), COPY_BLOCK):
                        block = rows[start : start + COPY_BLOCK]
                        lo_, hi_ = int(block[0]), int(block[-1]) + 1
                        data = f["images"][lo_:hi_][block - lo_]  # checks every checksum
                        if same:  # copy the compressed chunks: no second compression
                            for j, r in enumerate(block.tolist()):
                                mask, raw = f["images"].id.read_direct_chunk((r, 0, 0, 0))
                                dset.id.write_direct_chunk((pos + j, 0, 0, 0), raw, mask)
                        else:  # an older, uncompressed file: compressed now
                            dset[pos : pos + len(block)] = data
                        pos += len(block)
                        cols["stamp_check"].append(
                            old_checks[block] if old_checks is not None
                            else stamp_checks(h[block, 0], h[block, 1], data))
                    cols["id"].append(f["id"].asstr()[()][keep])
                    cols["ra"].append(f["ra"][()][keep])
                    cols["dec"].append(f["dec"][()][keep])
                    cols["key"].append(f["key"].asstr()[()][keep])
                    cols["key_hash"].append(h[keep])
                    cols["missing_key"].append(f["missing_key"].asstr()[()][mkeep])
                    cols["missing_key_hash"].append(mh[mkeep])
                    cols["missing_status"].append(f["missing_status"].asstr()[()][mkeep])
            joined = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
            out.create_dataset("labels", data=np.full(n, -1, dtype=np.int8))
            for name in ("id", "key", "missing_key", "missing_status"):
                out.create_dataset(name, data=joined[name].astype(object), dtype=text)
            out.create_dataset("ra", data=joined["ra"].astype(np.float64))
            out.create_dataset("dec", data=joined["dec"].astype(np.float64))
            out.create_dataset("key_hash",
                               data=joined["key_hash"].astype(np.uint64).reshape(-1, 2))
            out.create_dataset("stamp_check",
                               data=joined["stamp_check"].astype(np.uint64).reshape(-1, 2))
            out.create_dataset("missing_key_hash",
                               data=joined["missing_key_hash"].astype(np.uint64).reshape(-1, 2))
            out.attrs["n_missing"] = len(joined["missing_key"])
            out.attrs["n_images"] = n

    def describe(self) -> str:
        return json.dumps({"path": str(self.path), "entries": len(self),
                           "cache_key": self.cache_key})


def _read_arrivals(path: Path, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """The complete, intact records of an arrival log, in order (data only, checksummed); the
    first torn or damaged record ends the list."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb") as fh:
        data = fh.read()
    n_pixels = int(np.prod(shape)) * 4
    out: list[dict[str, Any]] = []
    pos = 0
    while pos + ARRIVAL_HEAD.size <= len(data):
        magic, n_header, n_body = ARRIVAL_HEAD.unpack_from(data, pos)
        end = pos + ARRIVAL_HEAD.size + n_header + n_body
        if (magic != ARRIVAL_MAGIC or n_header > ARRIVAL_MAX_HEADER or n_body not in (0, n_pixels)
                or end + 16 > len(data)):
            break
        if hashlib.blake2b(data[pos:end], digest_size=16).digest() != data[end : end + 16]:
            break
        try:
            head = json.loads(data[pos + ARRIVAL_HEAD.size : pos + ARRIVAL_HEAD.size + n_header]
                              .decode("utf-8", "surrogateescape"))
            rec = {k: head[k] for k in ("key", "id", "status", "cache_key")}
            rec["ra"], rec["dec"] = float(head["ra"]), float(head["dec"])
        except (ValueError, KeyError, TypeError):
            break
        if not all(isinstance(rec[k], str) for k in ("key", "id", "status", "cache_key")):
            break
        image = None
        if n_body:
            image = np.frombuffer(data, "<f4", n_pixels // 4, end - n_body).reshape(shape)
            image = image.astype(np.float32)
        if (rec["status"] == STATUS_OK) != (image is not None) or (
                image is not None and not np.isfinite(image).all()):
            break
        rec["image"] = image
        out.append(rec)
        pos = end + 16
    return out


def _same_storage(a: h5py.Dataset, b: h5py.Dataset) -> bool:
    """Whether raw chunks of ``a`` are valid chunks of ``b`` (same type, chunks and filters)."""
    return (a.dtype == b.dtype and a.chunks == b.chunks and a.compression == b.compression
            and a.compression_opts == b.compression_opts and a.shuffle == b.shuffle
            and a.fletcher32 == b.fletcher32 and a.chunks is not None)
@contextlib.contextmanager
def _disk_errors(where: Path) -> Any:
    """A full disk or a file-size limit while writing in ``where``: one line naming it."""
    try:
        yield
    except OSError as exc:
        errno_ = atomic.no_space_errno(exc)
        if errno_ is None:
            raise
        why = os.strerror(errno_)
        raise GalmergeError(
            f"cannot write the cutout cache in {where}: {why}; free disk space or raise the "
            "file-size limit (ulimit -f), then run the same command again: what was cached is "
            "kept") from None


def _create_images(f: h5py.File, images: np.ndarray, shape: tuple[int, ...],
                   total: int | None = None) -> h5py.Dataset:
    n = len(images) if total is None else total
    # Fletcher-32 needs chunking; zero-length datasets cannot be chunked. One stamp per chunk:
    # a random read decompresses exactly the stamp it needs
    kwargs: dict[str, Any] = ({"chunks": (1, *shape), "fletcher32": True, **IMAGE_FILTERS}
                              if n else {})
    dset = f.create_dataset("images", shape=(n, *shape), dtype=np.float32, **kwargs)
    if total is None and n:
        dset[...] = images
    return dset

