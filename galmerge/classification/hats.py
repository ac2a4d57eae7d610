"""`classify` on HATS catalogs through LSDB on Dask: one HEALPix partition at a time.

`classify_partition` is the unit of work and a public API: give it to
``catalog.map_partitions(classify_partition, include_pixel=True, meta=..., model=RUN, ...)``
(`result_meta` builds the meta). It adds ``p_merger``, ``is_merger`` and ``status`` to the
partition's rows, and the ``extra`` columns asked for (`result_columns`: ``shift_score`` and
``shift_flag`` for a run with ``shift_stats.npz``, as classify writes them for other formats),
with stamps from a cutout cache of that partition alone
(``<cache_dir>/Norder=K/Dir=D/Npix=N.h5``): sky locality is frame reuse, and no process needs
the whole cache. `classify_hats` runs it over a catalog on a local Dask cluster (or
``scheduler``) and writes a new HATS catalog with LSDB's `write_catalog`, holding
``.OUTPUT.lock`` beside the output (`sharding.output_lock`: one run per output). A run started
again on a killed or finished output continues it: partitions verified complete are not computed
again (`galmerge.classification.hats_progress`), the others find the stamps they had fetched in
their caches. It continues only with the settings recorded in the output's ``galmerge_run.json``
(`RUN_RECORD`), so results of two settings never mix.

Partition borders: every row is classified from its own cutout, centred on it, which shows its
companions whichever partition their catalog rows fall in; results therefore do not depend on
the partitioning and no margin cache is needed (one, if present, is dropped on open: margin
rows belong to a neighbouring partition, which classifies them once).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io.provenance import shown_spec
from galmerge.runtime.devices import check_device_name

RESULT_COLUMNS = ("p_merger", "is_merger", "status")
# a worker process's one loaded model: (key, inference), the key naming the checkpoint by
# its hash; a call for another key (a retrained model) replaces it
_MODEL: tuple[tuple[Any, ...], Any] | None = None


def is_hats_catalog(path: str | os.PathLike[str]) -> bool:
    """A folder holding a HATS catalog (or collection) description."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in (
        "hats.properties", "properties", "collection.properties", "partition_info.csv"))


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a SLURM allocation, ``taskset``), not
    all the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _cutout_provenance(survey: str, spec: Any, keepbits: int | None) -> tuple[str, str]:
    """(data release, cutout kind) as the workers' cutout service states them, for the
    output's provenance: the service is opened here once and closed (no request is made)."""
    from galmerge.classification.cutout_cache import keepbits_key
    from galmerge.classification.inputs import SurveyService, cutout_options, survey_record
    from galmerge.data.datasets import parse_survey_spec
    from galmerge.io.provenance import data_release

    name, arg, options = parse_survey_spec(survey)
    record = survey_record(name, arg)
    service = SurveyService.open(name, record, spec, cutout_options(record, 1, options),
                                 shown_spec(survey)).service
    try:
        key = str(getattr(service, "cache_key", "") or name)
        return data_release(service, options, key), keepbits_key(key, keepbits)
    finally:
        service.close()


def _inference(model: str, domain: str, device: str, batch_size: int,
               checkpoint_sha256: str | None = None) -> Any:
    from galmerge.classification.pipeline import _Inference

    if checkpoint_sha256 is None:  # by content: a checkpoint retrained in place is another model
        from galmerge.io.provenance import sha256_file
        from galmerge.models.model import resolve_checkpoint

        checkpoint_sha256 = sha256_file(resolve_checkpoint(model))
    global _MODEL
    key = (str(model), checkpoint_sha256, domain, device, int(batch_size))
    if _MODEL is not None and _MODEL[0] == key:
        return _MODEL[1]
    try:  # one torch thread per Dask thread: workers share the machine's cores
        import torch
        from distributed import get_worker

        torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
    except (ImportError, ValueError):
        pass
    _MODEL = None  # the old model is released before the new one is loaded
    inference = _Inference(model, domain, device, batch_size, 0)
    _MODEL = (key, inference)
    return inference


def partition_cache(cache_dir: str | os.PathLike[str], pixel: Any) -> Path:
    """The cutout cache of one HEALPix partition (HATS's own Norder/Dir/Npix layout)."""
    order, npix = int(pixel.order), int(pixel.pixel)
    return Path(cache_dir) / f"Norder={order}" / f"Dir={npix // 10000 * 10000}" / f"Npix={npix}.h5"


def _shift_stats(model: str | os.PathLike[str],
                 checkpoint_sha256: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """The model's shift statistics (or None and why not), as classify's inference loads them."""
    from galmerge.models import shift

    if checkpoint_sha256 is None:
        return shift.load_with_checkpoint(model)
    return shift.load(model, checkpoint_sha256)


def result_columns(model: str | os.PathLike[str]) -> list[str]:
    """The optional result columns ``model`` gives after ``status``: ``shift_score`` and
    ``shift_flag`` when its run has usable ``shift_stats.npz``, else none (pass them as
    `classify_partition`'s and `result_meta`'s ``extra``)."""
    return _columns_of(_shift_stats(model)[0])


def _columns_of(stats: dict[str, Any] | None) -> list[str]:
    from galmerge.models import shift

    return [shift.SCORE_COLUMN, shift.FLAG_COLUMN] if stats is not None else []


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    from galmerge.models import shift

    return pa.int8() if name == shift.FLAG_COLUMN else pa.float64()


def result_meta(meta: Any, keep: list[str] | None = None,
                extra: list[str] | tuple[str, ...] = ()) -> Any:
    """The empty frame `classify_partition` returns for input ``meta`` (for map_partitions);
    ``extra``: the same optional result columns as given to `classify_partition`."""
    import pandas as pd
    import pyarrow as pa

    out = meta[keep].copy() if keep is not None else meta.copy()
    (p, flag, status), names = _names(list(out.columns), extra)
    out[p] = pd.Series([], dtype=pd.ArrowDtype(pa.float64()), index=out.index)
    out[flag] = pd.Series([], dtype=pd.ArrowDtype(pa.int8()), index=out.index)
    out[status] = pd.Series([], dtype=pd.ArrowDtype(pa.string()), index=out.index)
    for name, column in zip(extra, names, strict=True):
        out[column] = pd.Series([], dtype=pd.ArrowDtype(_arrow_type(name)), index=out.index)
    return out


def _names(columns: list[str], extra: list[str] | tuple[str, ...]
           ) -> tuple[tuple[str, str, str], list[str]]:
    """The result columns' names, with a ``_1``... suffix where an input column has the name
    (as the other output formats do: an input column is never overwritten)."""
    from galmerge.classification.outputs import extra_names, result_names

    return result_names(columns), extra_names(columns, list(extra))


def classify_partition(df: Any, pixel: Any = None, *, model: str, survey: str = "sdss",
                       cache_dir: str | os.PathLike[str] | None = None,
                       keep: list[str] | None = None, ra_col: str | None = None,
                       dec_col: str | None = None, id_col: str | None = None,
                       threshold: float = 0.5, domain: str = "target", device: str = "cpu",
                       batch_size: int = 256, workers: int = 4,
                       chunk_rows: int = 4096, keepbits: int | None = None,
                       extra: list[str] | tuple[str, ...] = (),
                       checkpoint_sha256: str | None = None) -> Any:
    """Classify the rows of one partition (a pandas frame); returns ``keep`` columns (default
    all) plus ``p_merger``, ``is_merger``, ``status`` and the ``extra`` result columns
    (`result_columns`; null where a row has no value), in the same order and index.
    ``checkpoint_sha256``: the model's hash, which keys the worker's loaded model (default:
    the checkpoint hashed for each partition)."""
    import pandas as pd
    import pyarrow as pa

    from galmerge.classification.catalogs import DEC_NAMES, ID_NAMES, RA_NAMES, Catalog, _pick
    from galmerge.classification.cutout_cache import CutoutCache, keepbits_key
    from galmerge.classification.inputs import (
        SurveyService,
        cutout_options,
        default_cache,
        survey_record,
    )
    from galmerge.classification.parquet import arrow_to_numpy
    from galmerge.classification.pipeline import _classify_chunk
    from galmerge.data.datasets import parse_survey_spec

    columns = [c for c in df.columns]
    where = Path(f"HEALPix partition {pixel}")
    ra = _pick(columns, ra_col, RA_NAMES, "RA", where, "--ra-col", True)
    dec = _pick(columns, dec_col, DEC_NAMES, "Dec", where, "--dec-col", True)
    ident = _pick(columns, id_col, ID_NAMES, "id", where, "--id-col", False)
    out = result_meta(df.iloc[:0], keep, extra) if len(df) == 0 else None
    if out is not None:
        return out
    infer = _inference(model, domain, device, batch_size, checkpoint_sha256)
    name, arg, spec_options = parse_survey_spec(survey)
    record = survey_record(name, arg)
    survey_service = SurveyService.open(name, record, infer.spec,
                                        cutout_options(record, workers, spec_options),
                                        shown_spec(survey))
    service = survey_service.service
    key = str(getattr(service, "cache_key", "") or name)
    path = (partition_cache(cache_dir, pixel) if cache_dir is not None and pixel is not None
            else default_cache(name, keepbits_key(key, keepbits)))
    store = CutoutCache(path, key, infer.shape, keepbits=keepbits, attrs={
        "survey": name, "bands": ",".join(map(str, infer.spec.get("bands", [])))})
    reader = Catalog()
    reader.ra_col, reader.dec_col, reader.id_col = ra, dec, ident
    p = np.full(len(df), np.nan)
    flag = np.full(len(df), -1, dtype=np.int8)
    status = np.empty(len(df), dtype=object)
    # what the model cannot give stays null (-1 / NaN: the CSV path's "no value")
    values = {name: np.full(len(df), -1 if _arrow_type(name) == pa.int8() else np.nan,
                            dtype=np.int8 if _arrow_type(name) == pa.int8() else np.float64)
              for name in extra}
    fetched: Counter = Counter()
    try:
        table = pa.Table.from_pandas(df[[c for c in {ra, dec, ident} if c]],
                                     preserve_index=False)
        for start in range(0, len(df), chunk_rows):
            part = table.slice(start, chunk_rows)
            cols = {c: arrow_to_numpy(part.column(c)) for c in part.column_names}
            block = _classify_chunk(reader._chunk(start, cols), None, survey_service, store,
                                    infer, float(threshold), fetched)
            stop = start + len(block)
            p[start:stop], flag[start:stop], status[start:stop] = block.p, block.flag, block.status
            for name in extra:
                if name in block.extra:
                    values[name][start:stop] = block.extra[name]
    finally:
        service.close()
        store.close()
    out = df[keep].copy() if keep is not None else df.copy()
    (p_name, flag_name, status_name), names = _names(list(out.columns), extra)
    out[p_name] = pd.array(pa.array(p, mask=~np.isfinite(p)), dtype=pd.ArrowDtype(pa.float64()))
    out[flag_name] = pd.array(pa.array(flag, mask=flag < 0), dtype=pd.ArrowDtype(pa.int8()))
    out[status_name] = pd.array(pa.array(status.tolist(), type=pa.string()),
                                dtype=pd.ArrowDtype(pa.string()))
    for (name, v), column in zip(values.items(), names, strict=True):
        missing = v < 0 if v.dtype == np.int8 else ~np.isfinite(v)
        out[column] = pd.array(pa.array(v, mask=missing, type=_arrow_type(name)),
                               dtype=pd.ArrowDtype(_arrow_type(name)))
    return out


def classify_hats(catalog: str | os.PathLike[str], model: str | os.PathLike[str], *,
                  output: str | os.PathLike[str] | None = None, survey: str = "sdss",
                  cache: str | os.PathLike[str] | None = None,
                  columns: list[str] | None = None, scheduler: str | None = None,
                  n_workers: int | None = None, ra_col: str | None = None,
                  dec_col: str | None = None, id_col: str | None = None,
                  threshold: float = 0.5, domain: str = "target", device: str = "cpu",
                  batch_size: int = 256, workers: int = 4, quiet: bool = False,
                  keepbits: int | None = None,
                  provenance: dict[str, Any] | None = None,
                  checkpoint_sha256: str | None = None) -> dict[str, Any]:
    """Classify a HATS catalog partition by partition on Dask; write a HATS catalog.

    ``output`` defaults to ``<catalog name>_galmerge`` in the working directory, ``cache`` to
    ``<output>.cache`` (one cutout cache per partition below it). ``scheduler``: the address of
    a running Dask scheduler; default a local cluster of ``n_workers`` processes (one per CPU
    this process may use).
    ``checkpoint_sha256``: the checkpoint's hash when the caller has loaded it (the shift
    statistics are then matched to it without hashing the checkpoint again). Returns counts
    (rows, statuses, mergers).
    """
    try:
        import dask.distributed  # noqa: F401  (here: one line where it is missing)
        import lsdb
    except ImportError:
        raise GalmergeError("classifying a HATS catalog needs LSDB and Dask: pip install "
                            "'galmerge[lsdb]'") from None
    from galmerge.classification.segments import check_private_folder
    from galmerge.classification.sharding import output_lock

    src = Path(catalog)
    out = Path(output) if output is not None else Path.cwd() / f"{src.name}_galmerge"
    if out.resolve() == src.resolve():
        raise GalmergeError(f"--output {out} is the input catalog; choose another folder")
    cache_dir = Path(cache) if cache is not None else out.with_name(out.name + ".cache")
    if cache_dir.resolve() == out.resolve() or out.resolve() in cache_dir.resolve().parents:
        # the output folder holds LSDB's catalog and the run record alone (a cache there
        # made a first run look like a resume)
        raise GalmergeError(f"--cache {cache_dir} is inside --output {out}; choose a cache "
                            "folder outside the output (default: <output>.cache beside it)")
    for folder in (out, cache_dir):
        check_private_folder(folder)
    try:
        cat = lsdb.open_catalog(src, columns="all")
    except Exception as exc:  # hats/lsdb raise many kinds for a bad folder
        raise GalmergeError(f"{src}: cannot open as a HATS catalog ({exc})".splitlines()[0]) \
            from None
    # a collection's margin would be classified (and its rows fetched) a second time by
    # map_partitions and written as a margin catalog: its rows are in their own partitions
    cat.margin = None
    from galmerge.classification.catalogs import ID_NAMES, _pick, _pick_position

    # here, in one line, before any folder is made: the workers would fail with a traceback
    names = list(cat.columns)
    ra_col, dec_col = _pick_position(names, ra_col, dec_col, src)
    id_col = _pick(names, id_col, ID_NAMES, "id", src, "--id-col", False)
    keep = list(columns) if columns else None
    if keep:
        missing = [c for c in keep if c not in cat.columns]
        if missing:
            raise GalmergeError(f"{src}: no column '{missing[0]}' for --columns; columns are: "
                                f"{', '.join(cat.columns)}")
        # the catalog's positions stay: a HATS catalog without them cannot be read back
        info = cat.hc_structure.catalog_info
        keep += [c for c in (info.ra_column, info.dec_column) if c and c not in keep]
    # the columns classify writes for other formats: shift_score/shift_flag when the run has
    # statistics (the workers' inference loads the same file; no note here: the CLI prints it)
    stats, _ = _shift_stats(model, checkpoint_sha256)
    extra = _columns_of(stats)
    from galmerge.io.provenance import stamped

    record = stamped(provenance) if provenance else {}  # created_utc: the time of this write
    if provenance:  # a folder's input_sha256: the hash of its description (`_catalog_sha256`)
        record.update(input=str(src.resolve()), input_sha256=_catalog_sha256(cat))
    if stats is not None:
        record["shift_threshold"] = float(stats["threshold"])
        record["shift_stats_sha256"] = stats["meta"].get("sha256", "")
    props = {f"galmerge_{k}": (v if isinstance(v, str) else json.dumps(v))
             for k, v in record.items() if k != "format"}
    # the spec as recorded: no URL's user info (the workers get the real one, in memory only)
    run = _run_record(model, record, threshold=float(threshold), domain=domain,
                      survey=shown_spec(survey),
                      keepbits=keepbits, columns=keep, ra_col=ra_col, dec_col=dec_col,
                      id_col=id_col, shift_stats_sha256=record.get("shift_stats_sha256"),
                      input=str(src.resolve()),
                      input_sha256=record.get("input_sha256") or _catalog_sha256(cat))
    result = cat.map_partitions(
        classify_partition, include_pixel=True, meta=result_meta(cat.meta, keep, extra),
        model=str(model), survey=survey, cache_dir=str(cache_dir), keep=keep, ra_col=ra_col,
        dec_col=dec_col, id_col=id_col, threshold=float(threshold), domain=domain,
        device=device, batch_size=batch_size, workers=workers, keepbits=keepbits, extra=extra,
        checkpoint_sha256=run["checkpoint_sha256"])
    # one run per output, as for the other formats (`.OUT.lock` beside it): two runs would
    # write the same partitions and progress files
    with output_lock(out, 0, 1):
        _check_resumable(out, run)
        _write(result, out, run, cache_dir, scheduler=scheduler, n_workers=n_workers,
               quiet=quiet, props=props)
    inputs = list(keep) if keep else list(cat.meta.columns)
    return _counts(out, _names(inputs, extra)[0])


def _write(result: Any, out: Path, run: dict[str, Any], cache_dir: Path, *,
           scheduler: str | None, n_workers: int | None, quiet: bool,
           props: dict[str, str]) -> None:
    """Write ``result`` (the classified catalog) into ``out`` on Dask, continuing an earlier
    run of the same settings: only partitions not verified complete are computed
    (`galmerge.classification.hats_progress`)."""
    from dask.distributed import Client, LocalCluster

    from galmerge.classification import hats_progress

    run_fp = hats_progress.fingerprint(run)
    pixels = result.get_healpix_pixels()
    resume = out.is_dir() and any(out.iterdir())
    progress = hats_progress.verify(out, run_fp, pixels) if resume else None
    if progress is not None and progress.complete:
        if progress.unrecorded:  # finished by LSDB, killed before its record was written
            hats_progress.write_record(out, run_fp, pixels, progress.kept)
        return  # a finished output of these settings, every partition as recorded
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=n_workers or _usable_cpus(),
                               threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        try:  # connected before any folder is made or changed
            client = Client(scheduler or cluster)
        except (OSError, TimeoutError) as exc:
            raise GalmergeError(f"--scheduler {scheduler}: no Dask scheduler answers there "
                                f"({exc}); start one, or drop --scheduler for a local cluster"
                                .splitlines()[0]) from None
        except ValueError as exc:  # distributed's parse of the address
            raise GalmergeError(f"--scheduler {scheduler}: not a Dask scheduler address ({exc}); "
                                "give one such as tcp://HOST:8786, or drop --scheduler for a "
                                "local cluster".splitlines()[0]) from None
        with client:
            cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if progress is not None:
                hats_progress.resume(out, progress, hats_progress.histogram_order(result))
            else:  # before LSDB writes: a folder with partitions always has its record
                from galmerge.io import atomic

                out.mkdir(mode=0o700, parents=True, exist_ok=True)
                atomic.write_text(out / RUN_RECORD, json.dumps(run, indent=1) + "\n")
            try:
                result.write_catalog(out, catalog_name=out.name, resume=resume,
                                     progress_bar=not quiet, addl_hats_properties=props)
            except RuntimeError as exc:  # a worker's OSError, as LSDB hands it on: as text
                _no_space(exc, out)
                raise
    finally:
        if cluster is not None:
            cluster.close()
    # last: the record of a finished output (a rerun keeps the partitions it lists)
    hats_progress.write_record(out, run_fp, pixels, progress.kept if progress else {})


def _no_space(exc: RuntimeError, out: Path) -> None:
    """A full disk, a quota or the file-size limit met by a Dask worker writing a partition is
    one line: LSDB hands the worker's OSError on as a RuntimeError holding its text, which the
    CLI's own handler of a full disk does not see."""
    from galmerge.io.atomic import no_space_errno

    code = no_space_errno(exc)
    if code is not None:
        raise GalmergeError(
            f"cannot write the HATS catalog {out}: {os.strerror(code)} (disk full / no "
            "space left, a quota or the file-size limit); free space and run the same "
            "command again: finished partitions are kept") from None


#: in a HATS output folder: the settings that wrote it (a rerun resumes only with the same)
RUN_RECORD = "galmerge_run.json"
_OPTIONS = {"checkpoint_sha256": "--model (checkpoint SHA-256)", "threshold": "--threshold",
            "domain": "--domain", "survey": "--survey", "keepbits": "--cache-keepbits",
            "columns": "--columns", "ra_col": "--ra-col", "dec_col": "--dec-col",
            "id_col": "--id-col", "shift_stats_sha256": "shift_stats.npz (SHA-256)",
            "input": "the input catalog",
            "input_sha256": "the input catalog's hats.properties and partition_info.csv (SHA-256)"}


def _catalog_sha256(cat: Any) -> str:
    """A hash of the catalog's description (properties and partition list): a catalog written
    again, or with other partitions, under the same path is another input."""
    import hashlib

    from hats.io.paths import get_partition_info_pointer

    base = Path(str(cat.hc_structure.catalog_path))
    props = next((base / n for n in ("hats.properties", "properties") if (base / n).is_file()),
                 base / "hats.properties")
    h = hashlib.sha256()
    for f in (props, Path(str(get_partition_info_pointer(base)))):
        h.update(f.name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"") + b"\0")
    return h.hexdigest()


def _run_record(model: str | os.PathLike[str], provenance: dict[str, Any],
                **settings: Any) -> dict[str, Any]:
    """What decides a HATS output's values: the checkpoint's SHA-256 and the settings."""
    from galmerge.io.provenance import sha256_file
    from galmerge.models.model import resolve_checkpoint

    sha = provenance.get("checkpoint_sha256") or sha256_file(resolve_checkpoint(model))
    return json.loads(json.dumps({"checkpoint_sha256": sha, **settings}))  # as read back


def _check_resumable(out: Path, run: dict[str, Any]) -> None:
    """One line, before any work, where ``out`` holds something a rerun must not continue: a
    run with other settings (its partitions would mix with this run's) or no record of one."""
    if not (out.is_dir() and any(out.iterdir())):
        return
    try:
        old = json.loads((out / RUN_RECORD).read_text())
    except (OSError, ValueError):
        raise GalmergeError(f"--output {out} is not empty and holds no record of a galmerge run "
                            f"({RUN_RECORD}); choose another --output, or delete the folder"
                            ) from None
    for key, value in run.items():
        before = old.get(key)
        if key == "survey" and isinstance(before, str):  # one recorded with its password
            before = shown_spec(before)
        if before != value:
            raise GalmergeError(
                f"--output {out} holds a run with other settings ({_OPTIONS.get(key, key)}: "
                f"{before!r} there, {value!r} now), which a rerun would mix with this "
                "one's; choose another --output, or delete the folder to start again")


def _counts(out: Path, names: tuple[str, str, str] = ("p_merger", "is_merger", "status")
            ) -> dict[str, Any]:
    import hats
    import pyarrow.parquet as pq
    from hats.io.paths import pixel_catalog_file

    statuses: Counter = Counter()
    mergers = rows = 0
    # the partitions partition_info.csv lists, not every file below dataset/ (a file a
    # write with other partitions left there is no part of the catalog)
    written = hats.read_hats(out)
    written = getattr(written, "main_catalog", written)  # LSDB writes a collection
    for pixel in written.get_healpix_pixels():
        batch = pq.read_table(str(pixel_catalog_file(written.catalog_base_dir, pixel)),
                              columns=[names[1], names[2]])
        rows += batch.num_rows
        statuses.update(str(s).split(":", 1)[0] for s in batch.column(1).to_pylist())
        mergers += int(np.sum(np.asarray(batch.column(0).fill_null(0).to_numpy()) == 1))
    return {"output": str(out), "rows": rows, "statuses": dict(statuses), "mergers": mergers}


def classify_hats_summary(catalog: Path, model: str | os.PathLike[str], *, t0: float,
                          **options: Any) -> Any:
    """`classify_hats` for the CLI: the model's provenance recorded, a `ClassifySummary` back."""
    import sys
    import time

    from galmerge.classification.pipeline import ClassifySummary, _print_summary
    from galmerge.io.provenance import record
    from galmerge.models.model import load_model

    if not is_hats_catalog(catalog):
        raise GalmergeError(f"{catalog} is a folder but no HATS catalog (no hats.properties); "
                            "give a catalog file or a HATS catalog folder")
    loaded = load_model(model)  # fails here, in one line, before a cluster starts
    domain = options.get("domain", "target")
    if domain not in loaded.preprocess:
        raise GalmergeError(f"model {loaded.path} has no '{domain}' preprocessing; use --domain "
                            f"{' or '.join(sorted(loaded.preprocess))}")
    _, note = _shift_stats(loaded.path, loaded.sha256)
    if note and not options.get("quiet"):  # as the other formats say it: once, on stderr
        print(f"galmerge: {note}", file=sys.stderr)
    release, kind = _cutout_provenance(options["survey"], loaded.preprocess[domain],
                                       options.get("keepbits"))
    prov = record(checkpoint=loaded.path, config=loaded.config,
                  survey=shown_spec(options["survey"]),
                  data_release=release, cutout_kind=kind, domain=domain,
                  preprocessing=loaded.preprocess[domain], temperature=loaded.temperature,
                  threshold=float(options["threshold"]))
    # any spelling of auto (None from the Python API, AUTO): the workers' device is the CPU,
    # never what each worker would pick for itself
    device = check_device_name(options.pop("device", None))
    counts = classify_hats(catalog, loaded.path, device="cpu" if device == "auto" else device,
                           provenance=prov, checkpoint_sha256=loaded.sha256, **options)
    statuses = counts["statuses"]
    summary = ClassifySummary(
        output=counts["output"], rows=counts["rows"], ok=statuses.get("ok", 0),
        failed={k: v for k, v in sorted(statuses.items()) if k != "ok"},
        mergers=counts["mergers"], fetched=0, seconds=time.monotonic() - t0,
        cache=str(options.get("cache") or ""), statuses=statuses)
    if not options.get("quiet"):
        _print_summary(summary)
    return summary
