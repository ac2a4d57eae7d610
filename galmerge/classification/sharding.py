"""Sharded classify runs: which rank does what, heartbeats, and rank 0's merge.

Sharding: under torchrun (or any launcher setting ``RANK``/``WORLD_SIZE``) rank r takes chunks
r, r + W, r + 2W, ... and writes a part file next to the output; rank 0 waits for every part and
merges them in input order. A rank whose part from an identical earlier run is complete skips
its work. Every other rank refreshes a heartbeat file while it works; rank 0 gives up, naming the
ranks, when one has been silent for ``GALMERGE_SHARD_HEARTBEAT_TIMEOUT`` seconds (dead: default
300) or is still unfinished ``--shard-timeout`` seconds after rank 0 finished its own share (hung:
default 24 h, env ``GALMERGE_SHARD_TIMEOUT``). Nothing is lost then: the same command, run again,
resumes every rank from its result journal.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galmerge.classification.outputs import Tally, open_writer, read_marker
from galmerge.errors import GalmergeError
from galmerge.io import atomic

PART_POLL_SECONDS = 0.5

SHARD_TIMEOUT_ENV = "GALMERGE_SHARD_TIMEOUT"

HEARTBEAT_TIMEOUT_ENV = "GALMERGE_SHARD_HEARTBEAT_TIMEOUT"

DEFAULT_SHARD_TIMEOUT = 24 * 3600.0

DEFAULT_HEARTBEAT_TIMEOUT = 300.0

HEARTBEAT_SECONDS = 10.0  # at most; a fifth of the heartbeat timeout when that is shorter


def output_lock_path(out_path: Path, rank: int, world: int) -> Path:
    """The lock file `output_lock` holds for ``out_path``: ``.NAME.lock`` for a single process
    and for rank 0 of any launch (so launches of different process counts exclude each other:
    rank 0 removes other counts' journals as stale), ``.NAME.rankNNNNN.lock`` for rank r ≥ 1."""
    suffix = f".rank{rank:05d}" if world > 1 and rank > 0 else ""
    return out_path.with_name(f".{out_path.name}{suffix}.lock")


@contextlib.contextmanager
def output_lock(out_path: Path, rank: int, world: int) -> Iterator[None]:
    """One run per output (rank 0's lock is a single process's): a second one is refused in one
    line instead of both writing the same result segments."""
    lock_path = output_lock_path(out_path, rank, world)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.exclusive_lock(
        lock_path,
        f"another galmerge classify is writing {out_path} (it holds {lock_path}); wait for it "
        "to finish or choose another --output",
    ):
        yield


#: what classify writes in OUTPUT.parts: per-rank journal folders, their .done/.alive files and
#: the atomic temporaries of those (".rank...~host~pid~XXXX.tmp")
_OWN_ENTRY = re.compile(r"^\.?rank\d{5}-of-\d{5}-[0-9a-f]{12}")


def check_parts_folder(parts_dir: Path) -> None:
    """Refuse an ``OUTPUT.parts`` that is a link, not a folder, or holds anything classify did
    not write there: stale results in it are removed, so it must be galmerge's own."""
    fix = "(or pass another --output) and run again"
    if parts_dir.is_symlink():
        raise GalmergeError(f"{parts_dir} is a symbolic link; classify keeps its result "
                            f"segments in a folder of its own there: remove the link {fix}")
    if not parts_dir.exists():
        return
    if not parts_dir.is_dir():
        raise GalmergeError(f"{parts_dir} is not a folder; classify keeps its result segments "
                            f"in a folder of that name: move it away {fix}")
    foreign = sorted(e.name for e in parts_dir.iterdir() if not _OWN_ENTRY.match(e.name))
    if foreign:
        raise GalmergeError(f"{parts_dir} holds {foreign[0]!r}, which classify did not write; it "
                            f"keeps its result segments in that folder and removes stale ones: "
                            f"move your files elsewhere {fix}")


def remove_stale_parts(parts_dir: Path, sig: str) -> None:
    """Results of a run with another catalog, model or process count can never be merged
    (only classify's own entries are there: `check_parts_folder`)."""
    import shutil

    if not parts_dir.is_dir() or parts_dir.is_symlink():
        return
    for entry in parts_dir.iterdir():
        if sig not in entry.name and _OWN_ENTRY.match(entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def timeout_seconds(value: float | None, env: str, name: str, default: float) -> float:
    """A timeout in seconds: the argument, else the environment variable, else the default."""
    raw: Any = value
    if raw is None:
        raw, name = os.environ.get(env, "").strip() or default, env
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0:
        raise GalmergeError(f"{name} must be a number of seconds above 0, got '{raw}'")
    return seconds


def beat_path(journal_folder: Path) -> Path:
    return journal_folder.with_name(journal_folder.name + ".alive")


class Heartbeat:
    """A rank's sign of life for rank 0: a daemon thread refreshes a file's mtime."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True,
                                        name="galmerge-heartbeat")
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(OSError):  # removed by rank 0's merge: nothing to do
                os.utime(self.path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_for_ranks(markers: list[Path], beats: list[Path], parts_dir: Path, show: bool,
                   shard_timeout: float, heartbeat_timeout: float) -> None:
    """Rank 0: block until every marker exists; one-line error on a dead or hung rank.

    A rank is dead when its heartbeat file's mtime has not changed for ``heartbeat_timeout``
    seconds of rank 0's clock (changes, not values, are compared: node clocks may differ).
    """
    world = len(markers)
    start = time.monotonic()
    seen: dict[int, tuple[int | None, float]] = {}
    next_note = start + 60.0
    again = (f"finished results are kept in {parts_dir}; run the same command again (every "
             "rank) to finish: done chunks and cached stamps are not redone")
    while True:
        missing = [r for r, m in enumerate(markers) if not m.exists()]
        if not missing:
            return
        now = time.monotonic()
        silent = []
        for r in missing:
            try:
                mtime: int | None = beats[r].stat().st_mtime_ns
            except OSError:
                mtime = None
            last = seen.get(r)
            if last is None or last[0] != mtime:
                seen[r] = (mtime, now)
            elif now - last[1] >= heartbeat_timeout:
                silent.append(r)
        names = ", ".join(map(str, (silent or missing)[:16]))
        if silent:
            raise GalmergeError(
                f"rank(s) {names} of {world} stopped (no heartbeat for {heartbeat_timeout:g} s; "
                f"{HEARTBEAT_TIMEOUT_ENV} sets that); {again}")
        if now - start >= shard_timeout:
            raise GalmergeError(
                f"rank(s) {names} of {world} still unfinished {shard_timeout:g} s after rank 0 "
                f"finished (--shard-timeout); {again}")
        if show and now >= next_note:
            print(f"galmerge: waiting for rank(s) {names}", file=sys.stderr)
            next_note = now + 60.0
        time.sleep(PART_POLL_SECONDS)


def _expected_chunks(markers: list[Path], parts_dir: Path) -> int:
    """The catalog's chunk count, as every rank's marker states it (each share the size its
    rank's chunks r, r + W, ... make; the segments are checked against it as they are merged):
    what the merge must write, or a one-line error."""
    totals = set()
    for rank, marker in enumerate(markers):
        counts = read_marker(marker)
        if counts is None or counts[0] != len(range(rank, counts[1], len(markers))):
            raise _incomplete(rank, parts_dir)
        totals.add(counts[1])
    if len(totals) != 1:
        raise GalmergeError(f"the ranks' result segments in {parts_dir} disagree on the "
                            f"catalog's length ({', '.join(map(str, sorted(totals)))} chunks); "
                            "run the same command again (every rank) to redo its missing "
                            f"chunks, or delete the folder {parts_dir} and run again")
    return totals.pop()


def _incomplete(rank: int, parts_dir: Path) -> GalmergeError:
    return GalmergeError(
        f"rank {rank}'s result segments in {parts_dir} are incomplete (they lack chunks its "
        ".done marker counts); run the same command again (every rank) to redo its missing "
        f"chunks, or delete the folder {parts_dir} and run again")


def _share_blocks(folder: Path, rank: int, parts_dir: Path) -> Iterator[tuple[int, Any]]:
    """A finished share's blocks in chunk order, each segment decoded once. A damaged segment
    is removed (its rank redoes its chunks when run again, as on opening its journal) and the
    merge stops with one line."""
    from galmerge.classification.outputs import read_part
    from galmerge.classification.segments import segment_files

    for seg in segment_files(folder):
        try:  # (a segment is decoded whole before its first block is given)
            blocks = list(read_part(seg))
        except (ValueError, OSError) as exc:  # damaged, or gone / unopenable (a dead link)
            seg.unlink(missing_ok=True)
            print(f"galmerge: result segment {seg} was unreadable ({exc}); its rows will be "
                  "classified again", file=sys.stderr)
            raise _incomplete(rank, parts_dir) from None
        yield from blocks
        del blocks  # one segment's rows held at a time


def _remove_share(folder: Path) -> None:
    """A merged share's files: its marker first (a kill midway leaves an unfinished share),
    then its segments, its folder and its heartbeat."""
    from galmerge.classification.segments import segment_files

    folder.with_name(folder.name + ".done").unlink(missing_ok=True)
    for seg in segment_files(folder):
        seg.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
    beat_path(folder).unlink(missing_ok=True)


def merge_parts(parts_dir: Path, sig: str, world: int, out_path: Path, columns: list[str],
                show: bool, shard_timeout: float = DEFAULT_SHARD_TIMEOUT,
                heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
                arrow_types: dict[str, Any] | None = None,
                provenance: dict[str, Any] | None = None,
                extra: list[str] | None = None) -> Tally:
    """Rank 0: wait until every rank's share is complete, then write them in input order,
    decoding each result segment once (the markers give the counts to check it against)."""
    from galmerge.classification.segments import check_private_folder, refuse_pickled_segments

    folders = [parts_dir / f"rank{r:05d}-of-{world:05d}-{sig}" for r in range(world)]
    # Wait on the .done markers alone: reading another rank's folder before it has finished
    # would race with its in-flight segment.
    markers = [f.with_name(f.name + ".done") for f in folders]
    wait_for_ranks(markers, [beat_path(f) for f in folders], parts_dir, show, shard_timeout,
                   heartbeat_timeout)
    for folder in [parts_dir, *folders]:  # as a journal checks them, before anything is read
        check_private_folder(folder)
    for folder in folders:
        refuse_pickled_segments(folder)
    expected = _expected_chunks(markers, parts_dir)
    writer = open_writer(out_path, columns, arrow_types=arrow_types, provenance=provenance,
                         extra=extra or ())
    again = f"delete the folder {parts_dir} and run again"
    try:
        readers = [_share_blocks(f, r, parts_dir) for r, f in enumerate(folders)]
        index = 0
        while index < expected:
            rank = index % world
            item = next(readers[rank], None)
            if item is None:  # the share ends before the chunks its marker counts
                raise _incomplete(rank, parts_dir)
            chunk_index, block = item
            if chunk_index != index:
                if chunk_index > index and chunk_index % world == rank:  # a chunk missing
                    raise _incomplete(rank, parts_dir)
                raise GalmergeError(f"result segments in {parts_dir} are inconsistent (chunk "
                                    f"{chunk_index} where {index} was expected); {again}")
            writer.write(block)
            index += 1
        if any(next(r, None) is not None for r in readers):
            # never an output that leaves out rows a share holds (its earlier one is kept)
            raise GalmergeError(f"result segments in {parts_dir} hold more than the catalog's "
                                f"{expected} chunks; {again}")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    for folder in folders:
        _remove_share(folder)
    with contextlib.suppress(OSError):  # another run may share the folder
        parts_dir.rmdir()
    return writer.tally
