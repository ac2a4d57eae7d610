"""`classify`: a catalog (or an HDF5 image file) in, one merger probability per row out.

The catalog streams through in chunks of rows. For each chunk: positions are checked, stamps
come from the cutout cache or — for the rest — from the survey's `CutoutService` (each fetched
stamp is appended to the cache's arrival log as it arrives, and committed to its journal in
chunks of up to 256 stamps or 10 s, and on SIGINT or SIGTERM before the process ends), the model
runs in batches, and the rows go to the output's temporary file. The cache is the journal of a
run: a run killed at any point (SIGKILL included) and started again fetches only the stamps that
had not arrived (at most the 2 x workers requests in flight), then rewrites the output.

Rows with the same (id, RA, Dec) share one stamp and get the same probability (status ``ok``);
rows with unusable positions get ``bad-coordinates``, malformed CSV lines ``bad-row: ...``.

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
import hashlib
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.classification.catalogs import CatalogChunk, open_catalog
from galmerge.classification.cutout_cache import STATUS_OK, CutoutCache, keepbits_key, make_key
from galmerge.classification.outputs import ResultBlock, ResultJournal, Tally, open_writer
from galmerge.classification.segments import check_private_folder
from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.paths import data_dir
from galmerge.io.provenance import data_release
from galmerge.io.provenance import record as provenance_record
from galmerge.plugin.cutouts import CutoutRequest

DEFAULT_CHUNK_ROWS = 4096
INFER_ROWS = 1024  # stamps held in memory at once for inference
PART_POLL_SECONDS = 0.5
SHARD_TIMEOUT_ENV = "GALMERGE_SHARD_TIMEOUT"
HEARTBEAT_TIMEOUT_ENV = "GALMERGE_SHARD_HEARTBEAT_TIMEOUT"
DEFAULT_SHARD_TIMEOUT = 24 * 3600.0
DEFAULT_HEARTBEAT_TIMEOUT = 300.0
HEARTBEAT_SECONDS = 10.0  # at most; a fifth of the heartbeat timeout when that is shorter


@dataclass
class ClassifySummary:
    """What a run did (for rank 0 of a sharded run: the whole catalog)."""

    output: str
    rows: int
    ok: int
    failed: dict[str, int]
    mergers: int
    fetched: int
    seconds: float
    cache: str | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    attempted: int = 0  # stamps asked of the survey's service (fetched: the ones that came)
    survey: str | None = None  # the service asked: survey name and, where it has one, its URL
    fetch_failed: int = 0  # stamps asked for that did not come (retried by the next run)

    @property
    def merger_fraction(self) -> float:
        return self.mergers / self.ok if self.ok else float("nan")

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output, "rows": self.rows, "ok": self.ok, "failed": self.failed,
            "mergers": self.mergers, "merger_fraction": self.merger_fraction,
            "fetched": self.fetched, "seconds": self.seconds, "rows_per_s": self.rows_per_s,
            "cache": self.cache, "attempted": self.attempted, "survey": self.survey,
            "fetch_failed": self.fetch_failed,
        }


def default_output(catalog: Path) -> Path:
    """``<catalog stem>_galmerge.csv`` in the working directory (catalogs may be read-only)."""
    name = catalog.name
    for suffix in (".gz", ".fits", ".fit", ".csv", ".h5", ".hdf5", ".xml", ".vot", ".txt",
                   ".parquet"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return Path.cwd() / f"{name}_galmerge.csv"


def default_cache(survey: str, cache_key: str) -> Path:
    """``$GALMERGE_DATA/cache/<survey>-<hash of the service's cache key>.h5``."""
    digest = hashlib.sha256(cache_key.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in survey)
    return data_dir() / "cache" / f"{safe}-{digest}.h5"


def _is_image_file(path: Path) -> bool:
    import h5py

    if not h5py.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return "images" in f
    except OSError:
        return False


class _Inference:
    """The model, its preprocessing spec and temperature, applied in batches."""

    def __init__(self, model_path: str | os.PathLike[str], domain: str, device: str,
                 batch_size: int, local_rank: int) -> None:
        import torch

        from galmerge.models.model import load_model
        from galmerge.runtime.devices import resolve_device

        dev = resolve_device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        self.device = dev
        self.loaded = load_model(model_path, device=dev)
        if domain not in self.loaded.preprocess:
            raise GalmergeError(
                f"model {self.loaded.path} has no '{domain}' preprocessing; use --domain "
                f"{' or '.join(sorted(self.loaded.preprocess))}"
            )
        self.spec = dict(self.loaded.preprocess[domain])
        for key in ("mean", "std"):
            if key not in self.spec:
                raise GalmergeError(f"model {self.loaded.path}: its {domain} preprocessing has "
                                    f"no '{key}'; retrain with this galmerge version")
        self.channels = int(self.spec.get("channels", len(self.spec["mean"])))
        self.size = int(self.spec.get("image_size", self.loaded.config.get("image_size", 75)))
        self.batch_size = max(1, int(batch_size))
        self.model = self.loaded.model.eval()
        self.channels_last = False
        if dev.type == "cpu":
            fast = _cpu_inference_model(self.model, self.shape)
            if fast is not None:  # BN folded into MKL-DNN convolutions: ~2-3x on CPU
                self.model = fast
            else:  # ~15% faster convolutions than the default layout
                self.model = self.model.to(memory_format=torch.channels_last)
                self.channels_last = True

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        import torch

        from galmerge.data.preprocess import asinh_, normalise
        from galmerge.models.inference import merger_probability

        out = np.empty(len(images), dtype=np.float64)
        spec = self.spec
        stretch = None
        if spec.get("stretch", "none") == "arcsinh":
            # the same stretch normalise applies (asinh(x / stretch_scale)), done by asinh_:
            # torch.asinh and numpy.arcsinh are scalar loops on CPUs without AVX-512 and cost
            # more than the model there
            stretch = float(spec.get("stretch_scale", 1.0))
            spec = {**spec, "stretch": "none"}
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                block = np.asarray(images[start : start + self.batch_size], dtype=np.float32)
                x = torch.from_numpy(np.ascontiguousarray(block)).to(self.device)
                if stretch is not None:
                    x = asinh_(x / stretch)  # a new tensor: the caller's images stay as they are
                x = normalise(x, spec)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                _, logits = self.model(x)
                out[start : start + len(x)] = merger_probability(logits.cpu(),
                                                                 self.loaded.temperature)
        return np.clip(out, 0.0, 1.0)


def _cpu_inference_model(model: Any, shape: tuple[int, int, int]) -> Any | None:
    """The model traced and optimised for CPU inference, if that works and agrees with it."""
    import copy
    import warnings

    import torch

    try:
        from torch.fx.experimental.optimization import optimize_for_inference

        with warnings.catch_warnings():  # it calls deprecated torch.jit helpers
            warnings.simplefilter("ignore")
            fast = optimize_for_inference(torch.fx.symbolic_trace(copy.deepcopy(model)))
        gen = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            for n in (3, 5):  # any batch size
                x = torch.randn(n, *shape, generator=gen)
                if not torch.allclose(fast(x)[1], model(x)[1], atol=1e-4, rtol=1e-4):
                    return None
        return fast
    except Exception:  # not traceable or no MKL-DNN: the plain model is the fallback
        return None


class _ImageFileInput:
    """An HDF5 image file read lazily: rows are images, columns id/ra/dec/label."""

    kind = "hdf5"

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        from galmerge.io.hdf5 import read_imageset

        self.path = path
        self.images = read_imageset(path, in_memory=False)
        got = (self.images.channels, self.images.image_size, int(self.images.images.shape[-2]))
        if got != shape:
            raise GalmergeError(
                f"{path}: images are {got[0]}x{got[2]}x{got[1]} but the model takes "
                f"{shape[0]}x{shape[1]}x{shape[2]}; cut stamps the way the model was trained"
            )
        self.columns = ["id"]
        if self.images.ra is not None:
            self.columns += ["ra", "dec"]
        self.labels = self.images.labels.numpy()
        if (self.labels >= 0).any():
            self.columns.append("label")

    def estimated_rows(self) -> int:
        return len(self.images)

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:
        n = len(self.images)
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            sl = slice(start, stop)
            ids = np.array([str(v) for v in self.images.ids[sl]], dtype=object)
            cols: dict[str, np.ndarray] = {"id": self.images.ids[sl]}
            ra = dec = np.full(stop - start, np.nan)
            if self.images.ra is not None:
                ra, dec = self.images.ra[sl], self.images.dec[sl]
                cols["ra"], cols["dec"] = ra, dec
            if "label" in self.columns:
                cols["label"] = self.labels[sl]
            yield CatalogChunk(start, cols, ra, dec, ids, np.full(stop - start, "", object))

    def read(self, chunk: CatalogChunk) -> np.ndarray:
        return self.images.batch(np.arange(chunk.start, chunk.start + len(chunk))).numpy()


class _Progress:
    """Rich progress on stderr: rows, rows/s, ETA, failures so far."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self._bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self._bar = Progress(
            TextColumn("[bold]classify"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"), TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("rows", total=total, rate="-", failed=0)
        self._t0 = time.monotonic()

    def update(self, done: int, failed: int) -> None:
        if self._bar is None:
            return
        rate = done / max(1e-9, time.monotonic() - self._t0)
        self._bar.update(self._task, completed=done, rate=f"{rate:,.0f}", failed=failed)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _signature(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _file_stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def classify(
    catalog: str | os.PathLike[str],
    model: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    survey: str = "sdss",
    output: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    ra_col: str | None = None,
    dec_col: str | None = None,
    id_col: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 4,
    threshold: float = 0.5,
    domain: str = "target",
    quiet: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    flush_rows: int = 256,
    survey_options: Mapping[str, Any] | None = None,
    shard_timeout: float | None = None,
    heartbeat_timeout: float | None = None,
    cache_keepbits: int | None = None,
    scheduler: str | None = None,
    columns: list[str] | None = None,
    prior: str | float | None = None,
) -> ClassifySummary:
    """Classify every row of ``catalog`` (CSV/FITS/VOTable/Parquet, or an HDF5 image file).

    Writes ``output`` (default ``<stem>_galmerge.csv`` in the working directory) with every
    input column plus ``p_merger``, ``is_merger`` (p >= ``threshold``) and ``status``.
    Sharded runs: ``shard_timeout`` and ``heartbeat_timeout`` (seconds; default from
    GALMERGE_SHARD_TIMEOUT and GALMERGE_SHARD_HEARTBEAT_TIMEOUT) bound rank 0's wait.
    ``cache_keepbits``: store new stamps rounded to that many float32 mantissa bits (lossy).
    A folder holding a HATS catalog is classified on Dask (`galmerge.classification.hats`; address of
    a running ``scheduler``, else a local cluster), keeping ``columns`` (default all).
    Several ``model``s: an ensemble (`galmerge.classification.ensemble`; mean p_merger and p_merger_std).
    ``prior`` ("auto" or a merger fraction): p_merger rescaled to it afterwards
    (`galmerge.fractions.prior`).
    """
    if not isinstance(model, str | os.PathLike):  # several models: an ensemble
        kw = dict(locals())
        cat, models = kw.pop("catalog"), [str(m) for m in kw.pop("model")]
        if len(models) == 1:
            return classify(cat, models[0], **kw)
        from galmerge.classification.ensemble import classify_ensemble

        return classify_ensemble(cat, models, **kw)
    from galmerge.runtime.distributed import from_environment

    t0 = time.monotonic()
    shard_timeout = _seconds(shard_timeout, SHARD_TIMEOUT_ENV, "--shard-timeout",
                             DEFAULT_SHARD_TIMEOUT)
    heartbeat_timeout = _seconds(heartbeat_timeout, HEARTBEAT_TIMEOUT_ENV,
                                 HEARTBEAT_TIMEOUT_ENV, DEFAULT_HEARTBEAT_TIMEOUT)
    cat_path = Path(catalog)
    if not cat_path.is_file() and not cat_path.is_dir():
        raise GalmergeError(f"catalog {cat_path} does not exist")
    if not 0.0 <= float(threshold) <= 1.0:
        raise GalmergeError(f"--threshold must be in [0, 1], got {threshold}")
    if domain not in ("source", "target"):
        raise GalmergeError(f"--domain must be source or target, got {domain}")
    from galmerge.fractions.prior import parse_prior, training_prior

    prior = parse_prior(prior)
    # before the work: the run's statistics may take a pass over its source validation split
    prior_from = training_prior(model) if prior is not None else None
    if chunk_rows < 1 or batch_size < 1 or workers < 1:
        raise GalmergeError("--batch-size, --workers and --chunk-rows must be at least 1")
    if cat_path.is_dir():  # a HATS catalog: partition by partition on Dask
        from galmerge.classification.hats import classify_hats_summary

        return classify_hats_summary(
            cat_path, model, output=output, survey=survey, cache=cache, ra_col=ra_col,
            dec_col=dec_col, id_col=id_col, threshold=threshold, domain=domain, device=device,
            batch_size=batch_size, workers=workers, quiet=quiet, scheduler=scheduler,
            columns=columns, keepbits=cache_keepbits, t0=t0)
    out_path = Path(output) if output is not None else default_output(cat_path)
    if out_path.exists() and out_path.resolve() == cat_path.resolve():
        raise GalmergeError(f"--output {out_path} is the input catalog; choose another file")
    dist = from_environment()
    show = not quiet and dist.is_main
    with _output_lock(out_path, dist.rank, dist.world), _terminate_cleanly():
        return _classify_locked(
            cat_path, model, out_path, dist, show, t0, survey=survey, cache=cache,
            ra_col=ra_col, dec_col=dec_col, id_col=id_col, batch_size=batch_size, device=device,
            workers=workers, threshold=threshold, domain=domain, chunk_rows=chunk_rows,
            flush_rows=flush_rows, survey_options=survey_options, shard_timeout=shard_timeout,
            heartbeat_timeout=heartbeat_timeout, cache_keepbits=cache_keepbits, prior=prior,
            prior_from=prior_from, quiet=quiet)


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, ``kill``) unwinds like Ctrl-C, so the stamps fetched but not
    yet committed are flushed to the cache journal on the way out instead of being lost."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _output_lock(out_path: Path, rank: int, world: int) -> Iterator[None]:
    """One run per output (per rank under torchrun): a second one is refused in one line
    instead of both writing the same result segments."""
    suffix = f".rank{rank:05d}" if world > 1 else ""
    lock_path = out_path.with_name(f".{out_path.name}{suffix}.lock")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.exclusive_lock(
        lock_path,
        f"another galmerge classify is writing {out_path} (it holds {lock_path}); wait for it "
        "to finish or choose another --output",
    ):
        yield


def _classify_locked(cat_path: Path, model: Any, out_path: Path, dist: Any, show: bool,
                     t0: float, *, survey: str, cache: Any, ra_col: str | None,
                     dec_col: str | None, id_col: str | None, batch_size: int, device: str,
                     workers: int, threshold: float, domain: str, chunk_rows: int,
                     flush_rows: int, survey_options: Mapping[str, Any] | None,
                     shard_timeout: float, heartbeat_timeout: float,
                     cache_keepbits: int | None, prior: float | str | None,
                     prior_from: Any, quiet: bool) -> ClassifySummary:
    if str(model).lower().endswith(".onnx"):  # `galmerge export` output: ONNX Runtime, CPU
        from galmerge.models.export import OnnxInference

        infer: Any = OnnxInference(model, domain, batch_size)
    else:
        infer = _Inference(model, domain, device, batch_size, dist.local_rank)
    service = None
    release = kind = ""
    store: CutoutCache | None = None
    per_rank_cache = cache is not None and "{rank}" in str(cache)
    if _is_image_file(cat_path):
        source: Any = _ImageFileInput(cat_path, infer.shape)
    else:
        source = open_catalog(cat_path, ra_col=ra_col, dec_col=dec_col, id_col=id_col)
        from galmerge.data.datasets import parse_survey_spec

        # "sdss?workers=8&frame_cache_gb=20": options after '?' go to the cutout service
        survey_name, arg, spec_options = parse_survey_spec(survey)
        record = _survey_record(survey_name, arg)
        options = {"workers": int(workers), **spec_options, **dict(survey_options or {})}
        try:
            service = record.cutouts(infer.spec, options)
        except (TypeError, ValueError) as exc:  # e.g. RetryPolicy.from_options: timeout=0
            raise GalmergeError(f"--survey {survey}: bad option ({exc})".splitlines()[0]) from None
        key = str(getattr(service, "cache_key", "") or f"{survey_name}:{_signature(infer.spec)}")
        release, kind = data_release(service, options, key), key
        # "{rank}" in --cache gives each process its own cache (and index) at survey scale
        cache_path = (Path(str(cache).replace("{rank}", str(dist.rank))) if cache is not None
                      else default_cache(survey_name, keepbits_key(key, cache_keepbits)))
        store = CutoutCache(
            cache_path, key, infer.shape, flush_rows=flush_rows,
            attrs={"survey": survey_name, "bands": ",".join(map(str, infer.spec.get("bands", []))),
                   "pixel_scale_arcsec": float(infer.spec.get("pixel_scale_arcsec") or np.nan)},
            keepbits=cache_keepbits,
        )
        kind = store.cache_key

    total = source.estimated_rows()
    shard_total = None
    if total is not None:  # this rank's chunks: rank, rank + W, rank + 2W, ...
        n_chunks = -(-total // chunk_rows)
        shard_total = sum(min(chunk_rows, total - c * chunk_rows)
                          for c in range(dist.rank, n_chunks, dist.world))
    progress = _Progress(show, shard_total)
    fetched = Counter()
    sig = _signature(_file_stamp(cat_path), _file_stamp(infer.loaded.path), domain,
                     float(threshold), survey, chunk_rows, ra_col, dec_col, id_col)
    parts_dir = out_path.with_name(out_path.name + ".parts")
    check_private_folder(parts_dir)  # before anything in it is removed or read
    if dist.is_main:
        _remove_stale_parts(parts_dir, f"-of-{dist.world:05d}-{sig}")
    journal = ResultJournal(parts_dir / f"rank{dist.rank:05d}-of-{dist.world:05d}-{sig}")
    tally = Tally()
    heartbeat = None
    if dist.enabled and not dist.is_main and not journal.finished:
        heartbeat = _Heartbeat(_beat_path(journal.folder),
                               min(HEARTBEAT_SECONDS, heartbeat_timeout / 5))
    try:
        if journal.finished:
            if show:
                progress.console.print(f"rank {dist.rank}: its share was already complete")
        else:
            done = 0
            for index, chunk in enumerate(source.chunks(chunk_rows)):
                if index % dist.world != dist.rank:
                    continue
                if index not in journal.done:  # else: finished before a kill, kept
                    block = _classify_chunk(chunk, source, service, store, infer, threshold,
                                            fetched)
                    tally.add(block)
                    journal.add(index, block)
                done += len(chunk)
                progress.update(done, tally.failed)
            if heartbeat is not None:  # stopped first: rank 0 removes the file after merging
                heartbeat.stop()
            journal.finish()
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        progress.stop()
        if service is not None:
            service.close()
        if store is not None:
            # a cache shared by processes is consolidated once, by rank 0 after the merge
            store.close(compact=not dist.enabled or per_rank_cache)
    if not dist.is_main:
        return _summary(out_path, tally, fetched, t0, store, _service_name(survey, service))
    prov = provenance_record(
        checkpoint=infer.loaded.path, config=infer.loaded.config,
        survey=survey if store is not None else f"hdf5 image file {cat_path.name}",
        data_release=release, cutout_kind=kind, domain=domain, preprocessing=infer.spec,
        temperature=infer.loaded.temperature, threshold=float(threshold))
    tally = _merge_parts(parts_dir, sig, dist.world, out_path, source.columns, show,
                         shard_timeout, heartbeat_timeout,
                         arrow_types=getattr(source, "arrow_types", None), provenance=prov)
    if store is not None and dist.enabled and not per_rank_cache:
        store.compact_or_warn()
    summary = _summary(out_path, tally, fetched, t0, store, _service_name(survey, service))
    note = None
    if prior is not None:
        summary.mergers, note = _apply_prior(out_path, prior, threshold, prior_from)
    else:  # a record of an earlier --prior run would now describe the wrong probabilities
        out_path.with_name(out_path.name + ".prior.json").unlink(missing_ok=True)
    if show:
        _print_summary(summary)
    if note is not None and not quiet:
        print(note, file=sys.stderr)
    _fail_if_nothing_fetched(summary, survey, getattr(service, "unreachable", None), fetched)
    return summary


def _apply_prior(out_path: Path, prior: str | float, threshold: float,
                 training: tuple[float, str] | None) -> tuple[int, str]:
    """Rescale the written output to the survey prior; (mergers now, one-line note)."""
    from galmerge.fractions.prior import apply_prior
    from galmerge.fractions.report import read_results

    rec = apply_prior(out_path, "", prior, threshold, training)
    mergers = int((read_results(out_path).p >= threshold).sum())
    return mergers, (f"galmerge: p_merger rescaled from the training merger fraction "
                     f"{rec['training_prior']:.4g} to {rec['prior']:.4g} ({rec['prior_from']});"
                     f" recorded in {out_path.name}.prior.json")


def _fail_if_nothing_fetched(summary: ClassifySummary, survey: str, unreachable: Any,
                             fetched: Counter) -> None:
    """Exit non-zero (after the output is written) when the survey service died or every fetch
    failed: a script must not take a run with rows left to fetch for a finished one."""
    if unreachable:
        raise GalmergeError(
            f"survey {survey}: {unreachable} stopped answering, so fetching stopped; "
            f"{summary.ok} rows classified are in {summary.output} and the rest are marked "
            "'fetch-failed: service unreachable'; run the same command again to fetch them "
            "(stamps already fetched are cached)")
    failed = fetched.get("fetch-failed", 0)  # answers of this run's fetches, by reason
    if failed and failed == sum(fetched.values()) and summary.ok == 0:
        example = summary.examples.get("fetch-failed", "fetch-failed")
        raise GalmergeError(
            f"survey {survey}: every fetch failed ({failed} rows, e.g. '{example}'); "
            f"{summary.output} lists each row's status; run the same command again to retry")


def _survey_record(name: str, arg: str | None = None) -> Any:
    from galmerge.plugin.manager import get_plugin_manager

    record = get_plugin_manager().get("surveys", name)
    if record.cutouts is None:
        raise GalmergeError(
            f"survey '{name}' has no cutout service, so it cannot classify catalogs; pick a "
            "survey with one (see `galmerge list surveys`) or pass an HDF5 image file"
        )
    if arg is not None:  # a cutout service takes options only: ':ARG' would be dropped
        raise GalmergeError(
            f"--survey {name}:{arg}: survey '{name}' takes no ':{arg}' argument when "
            f"classifying; use --survey {name} (options go after '?', e.g. {name}?workers=8)"
        )
    return record


def _classify_chunk(chunk: CatalogChunk, source: Any, service: Any, store: CutoutCache | None,
                    infer: _Inference, threshold: float, fetched: Counter) -> ResultBlock:
    n = len(chunk)
    status = chunk.problems.copy()
    p = np.full(n, np.nan)
    if store is None:  # an HDF5 image file: the stamps are already here
        images = source.read(chunk)
        finite = np.isfinite(images.reshape(n, -1)).all(axis=1)
        status[~finite] = "bad-image: non-finite pixels"
        good = np.flatnonzero(status == "")
        if len(good):
            p[good] = infer.probabilities(images[good])
        status[good] = STATUS_OK
    else:
        rows = np.flatnonzero(status == "")
        keys = [make_key(chunk.ids[i], chunk.ra[i], chunk.dec[i]) for i in rows]
        first: dict[str, int] = {}
        for i, key in zip(rows, keys, strict=True):
            first.setdefault(key, int(i))
        unique = list(first)
        key_status = _stamps(unique, first, chunk, service, store, fetched, infer.shape)
        ok_keys = [k for k in unique if key_status[k] == STATUS_OK]
        key_p: dict[str, float] = {}
        step = max(INFER_ROWS, infer.batch_size)
        for start in range(0, len(ok_keys), step):  # bounded memory: a slice of stamps at a time
            part = ok_keys[start : start + step]
            key_p.update(_infer_keys(part, first, chunk, service, store, infer, fetched,
                                     key_status))
        for i, key in zip(rows, keys, strict=True):
            status[i] = key_status[key]
            if key in key_p and key_status[key] == STATUS_OK:
                p[i] = key_p[key]
    # 'ok' promises a probability in [0, 1]: a model whose output overflowed does not get it
    status[(status == STATUS_OK) & ~np.isfinite(p)] = "model-failed: non-finite output"
    flag = np.where(np.isfinite(p), (p >= threshold).astype(np.int8), -1).astype(np.int8)
    return ResultBlock(chunk.columns, p, flag, status)


def _infer_keys(keys: list[str], first: dict[str, int], chunk: CatalogChunk, service: Any,
                store: CutoutCache, infer: _Inference, fetched: Counter,
                key_status: dict[str, str]) -> dict[str, float]:
    """Probabilities for cached stamps; a stamp whose cache file fails its checksum is fetched
    again (and its status updated) before giving up on it."""
    images, got = store.images(keys)
    if not got.all():
        retry = [k for k, g in zip(keys, got, strict=True) if not g]
        key_status.update(_stamps(retry, first, chunk, service, store, fetched, infer.shape))
        again, got2 = store.images(retry)
        missing = np.flatnonzero(~got)
        images[missing] = again
        for k, g in zip(retry, got2, strict=True):
            if not g and key_status[k] == STATUS_OK:
                key_status[k] = "fetch-failed: cache read failed"
        got[missing] = got2
    if not got.any():
        return {}
    probs = infer.probabilities(images if got.all() else images[got])
    return dict(zip([k for k, g in zip(keys, got, strict=True) if g], probs.tolist(),
                    strict=True))


def _stamps(keys: list[str], first: dict[str, int], chunk: CatalogChunk, service: Any,
            store: CutoutCache, fetched: Counter, shape: tuple[int, int, int]) -> dict[str, str]:
    """Status per key after looking in the cache and fetching what is not there."""
    known = store.lookup(keys)
    out = {k: s for k, s in zip(keys, known, strict=True) if s is not None}
    todo = [k for k, s in zip(keys, known, strict=True) if s is None]
    if not todo:
        return out
    requests = []
    for j, key in enumerate(todo):
        i = first[key]
        requests.append(CutoutRequest(row=j, ra=float(chunk.ra[i]), dec=float(chunk.dec[i]),
                                      id=str(chunk.ids[i])))
    try:
        for result in service.fetch(requests):
            if not 0 <= result.row < len(todo) or todo[result.row] in out:
                continue
            key = todo[result.row]
            req = requests[result.row]
            st = str(result.status or "fetch-failed: no status")
            image = result.image
            if st == STATUS_OK:
                if image is None or tuple(np.shape(image)) != shape:
                    got = None if image is None else tuple(np.shape(image))
                    st = f"fetch-failed: stamp shape {got}, model needs {shape}"
                elif not np.isfinite(image).all():
                    st = "fetch-failed: non-finite pixels"
            out[key] = st
            fetched[st.split(":", 1)[0]] += 1
            if st == STATUS_OK or st == "no-coverage":  # lasting answers are remembered
                store.put(key, req.id, req.ra, req.dec, image if st == STATUS_OK else None, st)
                store.maybe_flush()
    except GalmergeError:
        raise
    except Exception as exc:  # a failing service must not lose the rows: they get a status
        reason = f"fetch-failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        for key in todo:
            out.setdefault(key, reason)
    for key in todo:
        out.setdefault(key, "fetch-failed: no result from the survey")
    store.flush()
    return out


def _remove_stale_parts(parts_dir: Path, sig: str) -> None:
    """Results of a run with another catalog, model or process count can never be merged."""
    import shutil

    if not parts_dir.is_dir():
        return
    for entry in parts_dir.iterdir():
        if sig not in entry.name:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _seconds(value: float | None, env: str, name: str, default: float) -> float:
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


def _beat_path(journal_folder: Path) -> Path:
    return journal_folder.with_name(journal_folder.name + ".alive")


class _Heartbeat:
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


def _wait_for_ranks(markers: list[Path], beats: list[Path], parts_dir: Path, show: bool,
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


def _merge_parts(parts_dir: Path, sig: str, world: int, out_path: Path, columns: list[str],
                 show: bool, shard_timeout: float = DEFAULT_SHARD_TIMEOUT,
                 heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
                 arrow_types: dict[str, Any] | None = None,
                 provenance: dict[str, Any] | None = None) -> Tally:
    """Rank 0: wait until every rank's share is complete, then write them in input order."""
    folders = [parts_dir / f"rank{r:05d}-of-{world:05d}-{sig}" for r in range(world)]
    # Wait on the .done markers alone: opening another rank's journal before it has finished
    # would clear its in-flight temporary segment under its feet.
    markers = [f.with_name(f.name + ".done") for f in folders]
    _wait_for_ranks(markers, [_beat_path(f) for f in folders], parts_dir, show, shard_timeout,
                    heartbeat_timeout)
    journals = [ResultJournal(f) for f in folders]
    writer = open_writer(out_path, columns, arrow_types=arrow_types, provenance=provenance)
    try:
        readers = [j.blocks() for j in journals]
        index = 0
        while True:
            item = next(readers[index % world], None)
            if item is None:
                break
            chunk_index, block = item
            if chunk_index != index:
                raise GalmergeError(f"result segments in {parts_dir} are inconsistent (chunk "
                                    f"{chunk_index} where {index} was expected); delete them")
            writer.write(block)
            index += 1
        if any(next(r, None) is not None for r in readers):
            raise GalmergeError(f"result segments in {parts_dir} are incomplete; delete the "
                                "folder and run again")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    for j in journals:
        j.remove()
        _beat_path(j.folder).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # another run may share the folder
        parts_dir.rmdir()
    return writer.tally


def _summary(out_path: Path, tally: Tally, fetched: Counter, t0: float,
             store: CutoutCache | None, survey: str | None = None) -> ClassifySummary:
    failed = {k: v for k, v in sorted(tally.statuses.items()) if k != STATUS_OK}
    return ClassifySummary(
        output=str(out_path), rows=tally.rows, ok=tally.ok, failed=failed,
        mergers=tally.mergers, fetched=int(fetched.get(STATUS_OK, 0)),
        seconds=time.monotonic() - t0, cache=None if store is None else str(store.path),
        statuses=dict(tally.statuses), examples=dict(tally.examples),
        attempted=int(sum(fetched.values())), survey=survey,
        fetch_failed=int(fetched.get("fetch-failed", 0)),
    )


def _service_name(spec: str, service: Any) -> str | None:
    """``survey 'sdss' (https://...)``: what a user checks when fetching fails; None when no
    service was asked (an HDF5 image file)."""
    if service is None:
        return None
    name = f"survey '{str(spec).split('?', 1)[0]}'"
    settings = getattr(service, "settings", None)
    urls = [getattr(service, "url", None)] + [
        getattr(settings, attr, None) for attr in ("skyserver_url", "sas_url", "base_url")
    ]
    found = list(dict.fromkeys(u for u in urls if isinstance(u, str) and u))
    return f"{name} ({', '.join(found)})" if found else name


def _plural(n: float, word: str) -> str:
    return word if round(n) == 1 else f"{word}s"


def _print_summary(summary: ClassifySummary) -> None:
    from rich.console import Console

    from galmerge.runtime.progress import print_path

    console = Console(stderr=True)
    failed = ", ".join(
        f"{k} {v}" + (f" e.g. '{summary.examples[k]}'" if summary.examples.get(k, k) != k else "")
        for k, v in summary.failed.items()) or "none"
    frac = summary.merger_fraction
    rate = summary.rows_per_s
    fetch = (
        f"; stamps: {summary.attempted} asked of {summary.survey or 'the survey'}, "
        f"{summary.fetched} fetched" if summary.attempted else "; no stamps fetched"
    )
    console.print(
        f"classified {summary.rows} {_plural(summary.rows, 'row')} in {summary.seconds:.1f} s "
        f"({rate:,.0f} {_plural(rate, 'row')}/s): ok {summary.ok}, failed "
        f"{summary.rows - summary.ok} ({failed}); mergers {summary.mergers}"
        + (f" ({100 * frac:.1f}% of ok)" if np.isfinite(frac) else "")
        + fetch,
        soft_wrap=True, markup=False, highlight=False,
    )
    failures = summary.fetch_failed
    if failures:
        example = summary.examples.get("fetch-failed", "")
        console.print(
            f"warning: {failures} of {summary.attempted} stamps could not be fetched from "
            f"{summary.survey or 'the survey'}" + (f" (e.g. '{example}')" if example else "")
            + "; check the network (proxy, firewall) and the survey's service URL, then run the "
            "same command again: cached stamps are not fetched twice",
            style="yellow", soft_wrap=True, markup=False, highlight=False,
        )
    journal = Path(f"{summary.cache}.journal")
    if summary.cache and (Path(summary.cache).exists()
                          or (journal.is_dir() and any(journal.iterdir()))):
        print_path(console, "cache:", summary.cache)
    print_path(console, "output:", summary.output)
