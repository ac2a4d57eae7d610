"""What a rerun of `classify` on a HATS output keeps: partitions verified complete, nothing else.

LSDB's resumable write (``write_catalog(resume=True)``) skips the partitions its progress files
name (a ``done/<order>_<pixel>_done`` marker and a ``hists/`` histogram each) and removes those
files once the catalog is written, so a finished output has none and LSDB alone would compute it
all again. At the end of a run galmerge therefore records every partition file it wrote in
``<output>/galmerge_partitions.json`` (`RECORD`): its rows, bytes and SHA-256, and the run's
fingerprint (`fingerprint` of ``galmerge_run.json``). A rerun with the same settings (`verify`,
then `resume`):

- keeps a partition whose file matches its record, or whose LSDB progress files say it was
  written and whose Parquet footer holds the rows its histogram counts (a killed run's);
- gives each kept partition LSDB's progress files back, so LSDB's resume skips it, and lets LSDB
  write every other one (missing, truncated, changed);
- before anything is written, removes the record and the files by which the folder reads as a
  catalog (``collection.properties``, the catalog's ``hats.properties`` and
  ``partition_info.csv``; LSDB writes them again at its end): a run killed midway never leaves
  an output that reads as complete. A finished output that verifies is left untouched.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.io import atomic
from galmerge.io.provenance import sha256_file

#: in a HATS output folder: the partitions a finished run wrote (absent while one is unfinished)
RECORD = "galmerge_partitions.json"
RECORD_FORMAT = "galmerge-hats-partitions/1"
#: the files that make a folder read as a HATS catalog: the collection's, then its catalog's
_COLLECTION_FILES = ("collection.properties",)
_CATALOG_FILES = ("hats.properties", "partition_info.csv")


def fingerprint(run: dict[str, Any]) -> str:
    """The SHA-256 of a run record (the checkpoint, the input catalog and the settings)."""
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()


def pixel_name(pixel: Any) -> str:
    """A partition as LSDB names its progress files: ``<order>_<pixel>``."""
    return f"{int(pixel.order)}_{int(pixel.pixel)}"


def _footer_rows(path: Path) -> int | None:
    """The row count a Parquet file's footer states; None if it cannot be read (torn, gone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, pa.ArrowException):
        return None


def _entry(path: Path) -> dict[str, Any] | None:
    """A partition file's record entry (an empty partition, which LSDB writes no file for: 0
    rows); None when the file is unreadable."""
    if not path.exists():
        return {"rows": 0, "bytes": 0, "sha256": ""}
    rows = _footer_rows(path)
    if rows is None:
        return None
    stat = path.stat()
    return {"rows": rows, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": sha256_file(path)}


@dataclass
class Progress:
    """What `verify` found: the partitions to keep (name: record entry), those of them known
    from the record alone (LSDB has no progress files for them yet), and whether the output is
    complete as it is (then nothing is to be written)."""

    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    from_record: list[Any] = field(default_factory=list)
    complete: bool = False
    #: complete, but killed after LSDB finished and before the record was written
    unrecorded: bool = False


def catalog_dir(out: Path) -> Path:
    """Where LSDB writes the catalog of the collection ``out`` (named after the folder)."""
    return out / out.name


def _partition_file(out: Path, pixel: Any) -> Path:
    from hats.io.paths import pixel_catalog_file

    return Path(str(pixel_catalog_file(catalog_dir(out), pixel)))


def _read_record(out: Path, run_fp: str) -> dict[str, Any]:
    """The record's partitions when it belongs to this run (``run_fp``); else none."""
    try:
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT \
            or record.get("run") != run_fp or not isinstance(record.get("partitions"), dict):
        return {}
    return record["partitions"]


def _matches(path: Path, entry: Any) -> bool:
    """Whether a partition file is the one its record entry describes: the same size and
    modification time (nothing read: a rerun of a finished survey-scale output must not read
    it all), else the same size and SHA-256 (a copy, `cp` without ``-p``)."""
    if not isinstance(entry, dict):
        return False
    try:
        if entry.get("rows") == 0:  # an empty partition: no file
            return not path.exists()
        stat = path.stat()
        if stat.st_size != entry.get("bytes"):
            return False
        return (stat.st_mtime_ns == entry.get("mtime_ns")
                or sha256_file(path) == entry.get("sha256"))
    except OSError:
        return False


def _lsdb_progress(out: Path, pixels: list[Any]) -> dict[str, dict[str, Any]]:
    """The partitions a killed run's LSDB progress files show written, each verified (its file's
    footer holds the rows its histogram counts); every other progress file is removed, so
    LSDB's resume, which refuses a histogram without its marker (or a torn one) and markers
    without histograms, redoes those partitions.

    LSDB (``lsdb.io.to_hats``) writes each partition's Parquet file, then its histogram, then
    its ``done`` marker, and at the end removes ``hists/``, then ``done/``."""
    kept: dict[str, dict[str, Any]] = {}
    by_name = {pixel_name(p): p for p in pixels}
    for folder in [out, *(d for d in out.iterdir() if d.is_dir())]:
        hists, done_dir = folder / "hists", folder / "done"
        done = {f.name.removesuffix("_done") for f in done_dir.glob("*_done")}
        for hist in hists.glob("*_histogram.npz"):
            name = hist.name.removesuffix("_histogram.npz")
            try:
                with np.load(hist, allow_pickle=False) as npz:  # data only, never code
                    counted = int(np.sum(npz["counts"]))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                counted = -1
            entry = None
            if name in done and name in by_name and folder == catalog_dir(out) and counted > 0:
                entry = _entry(_partition_file(out, by_name[name]))
            if entry is not None and entry["rows"] == counted:  # (an empty one is redone)
                kept[name] = entry
            else:
                hist.unlink(missing_ok=True)
        for name in done - set(kept):  # also where hists/ is gone
            (done_dir / f"{name}_done").unlink(missing_ok=True)
        for empty in (hists, done_dir):  # a finished write leaves neither
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
    return kept


def _reads_as_catalog(out: Path) -> bool:
    return all((out / n).is_file() for n in _COLLECTION_FILES) and all(
        (catalog_dir(out) / n).is_file() for n in _CATALOG_FILES)


def _give_back_progress(out: Path, pixel: Any, order: int) -> None:
    """LSDB's progress files for a partition kept from the record: its histogram (from the
    file's spatial index, at the order LSDB counts at) and its ``done`` marker, so that
    ``write_catalog(resume=True)`` skips it and still counts it in the catalog's metadata."""
    import pyarrow.parquet as pq
    from hats.io.file_io import get_upath
    from hats.pixel_math import spatial_index_to_healpix
    from hats.pixel_math.sparse_histogram import SparseHistogram
    from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN
    from lsdb.io.to_hats import write_done_pixel, write_histogram

    index = pq.read_table(_partition_file(out, pixel), columns=[SPATIAL_INDEX_COLUMN])
    cells = spatial_index_to_healpix(index.column(0).to_numpy(), target_order=order)
    indexes, counts = np.unique(cells, return_counts=True)
    base = get_upath(catalog_dir(out))
    write_histogram(SparseHistogram(indexes, counts, order), base, pixel)
    write_done_pixel(base, pixel)  # after the histogram, as LSDB writes them


def _can_give_back() -> bool:
    """Whether this LSDB has the progress-file writers `_give_back_progress` uses."""
    try:
        from lsdb.io.to_hats import write_done_pixel, write_histogram  # noqa: F401
    except ImportError:
        return False
    return True


def histogram_order(catalog: Any) -> int:
    """The order LSDB's writer counts a catalog's rows at (``lsdb.io.to_hats``: the catalog's
    skymap order, else its deepest partition's and at least 8)."""
    structure = catalog.hc_structure
    if structure.catalog_info.skymap_order is not None:
        return int(structure.catalog_info.skymap_order)
    depth = structure.pixel_tree.get_max_depth() if len(catalog.get_healpix_pixels()) else 0
    return max(int(depth), 8)


def verify(out: Path, run_fp: str, pixels: list[Any]) -> Progress:
    """The partitions of ``out`` (whose run record matches, fingerprint ``run_fp``) that a rerun
    keeps; a killed run's LSDB progress files of any other partition are removed (see the
    module). A recorded partition file is read only when its size or time changed (`_matches`)."""
    progress = Progress(kept=_lsdb_progress(out, pixels))
    # partitions kept from the record get LSDB's progress files back (`resume`) through LSDB's
    # own writers, internals of lsdb 0.11: an LSDB without them redoes every such partition
    # (as before this record existed) rather than failing the run
    recorded = _read_record(out, run_fp) if _can_give_back() else {}
    for pixel in pixels:
        name = pixel_name(pixel)
        if name not in progress.kept and _matches(_partition_file(out, pixel),
                                                  recorded.get(name)):
            progress.kept[name] = dict(recorded[name])
            progress.from_record.append(pixel)
    progress.complete = len(progress.from_record) == len(pixels) and _reads_as_catalog(out)
    if not progress.complete and not recorded and _can_give_back() and _reads_as_catalog(out):
        # LSDB writes the catalog's description last, and a rerun removes it before writing:
        # a folder that reads as a catalog without its record was finished by LSDB and killed
        # before `write_record` (while LSDB cleaned up, the cluster closed or the new files
        # were hashed). Its partitions are kept when every footer reads, not computed again.
        entries = {pixel_name(p): _entry(_partition_file(out, p)) for p in pixels}
        if all(e is not None for e in entries.values()):
            progress.kept = {k: e for k, e in entries.items() if e is not None}
            progress.from_record = list(pixels)
            progress.complete = progress.unrecorded = True
    return progress


def resume(out: Path, progress: Progress, order: int) -> None:
    """Before LSDB's resumable write into ``out``: the partitions kept from the record get
    LSDB's progress files back, then the folder stops reading as a catalog (see the module)."""
    for pixel in progress.from_record:
        if progress.kept[pixel_name(pixel)]["rows"] > 0:  # (an empty one is simply redone)
            _give_back_progress(out, pixel, order)
    # from here on the folder must not read as complete: LSDB rewrites these files at its end
    (out / RECORD).unlink(missing_ok=True)
    for name in _COLLECTION_FILES:
        (out / name).unlink(missing_ok=True)
    for name in _CATALOG_FILES:
        (catalog_dir(out) / name).unlink(missing_ok=True)


def write_record(out: Path, run_fp: str, pixels: list[Any],
                 known: dict[str, dict[str, Any]]) -> None:
    """After LSDB finished writing ``out``: record every partition file (``known`` entries are
    those `verify` read, not hashed again). Written whole (temp + rename), last."""
    partitions = {}
    for pixel in pixels:
        name = pixel_name(pixel)
        entry = known.get(name) or _entry(_partition_file(out, pixel))
        if entry is not None:
            partitions[name] = entry
    atomic.write_text(out / RECORD, json.dumps(
        {"format": RECORD_FORMAT, "run": run_fp, "partitions": partitions}, indent=1,
        sort_keys=True) + "\n")

