"""`classify`: a catalog (or an HDF5 image file) in, one merger probability per row out.

The catalog streams through in chunks of rows. For each chunk: positions are checked, stamps
come from the cutout cache or — for the rest — from the survey's `CutoutService` (each fetched
stamp is appended to the cache's arrival log as it arrives, and committed to its journal in
chunks of up to 256 stamps or 10 s, and on SIGINT or SIGTERM before the process ends), the model
runs in batches, and the rows go to the output's temporary file. The cache is the journal of a
run: a run killed at any point (SIGKILL included) and started again fetches only the stamps that
had not arrived (at most the 2 x workers requests in flight), then rewrites the output.

Rows with the same (id, RA, Dec) share one stamp and get the same probability (status ``ok``);
rows with unusable positions get ``bad-coordinates``, malformed CSV lines ``bad-row: ...``;
a stamp the survey's plugin got wrong (wrong shape, no result) ``plugin-error: ...``.

Where rows and stamps come from is `galmerge.classification.inputs` (catalogs, HDF5 image files,
the survey's service behind the cutout cache); how a run is shared between processes and merged
is `galmerge.classification.sharding`.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from galmerge.classification.inputs import (
    STATUS_PLUGIN_ERROR,
    ImageFileInput,
    SurveyService,
    cutout_options,
    default_cache,
    fetch_stamps,
    is_image_file,
    service_name,
    survey_record,
)
from galmerge.classification.outputs import ResultBlock, ResultJournal, Tally
from galmerge.classification.segments import check_private_folder
from galmerge.classification.sharding import (
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_SHARD_TIMEOUT,
    HEARTBEAT_SECONDS,
    HEARTBEAT_TIMEOUT_ENV,
    SHARD_TIMEOUT_ENV,
    Heartbeat,
    beat_path,
    check_parts_folder,
    merge_parts,
    output_lock,
    remove_stale_parts,
    timeout_seconds,
)
from galmerge.errors import GalmergeError, named
from galmerge.io import atomic
from galmerge.io.provenance import code_identity, data_release, sha256_file_once, shown_spec
from galmerge.io.provenance import record as provenance_record
from galmerge.plugin.options import plain_number
from galmerge.runtime.devices import check_device_name

DEFAULT_CHUNK_ROWS = 4096

INFER_ROWS = 1024  # stamps held in memory at once for inference


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
    #: each cutout service's closing summary line (requests, retries, failures), by service
    services: dict[str, str] = field(default_factory=dict)
    #: the shift statistics this run scored with (threshold, SHA-256), None without any: what an
    #: ensemble combines, so it never reads the statistics files a second time
    shift_threshold: float | None = None
    shift_stats_sha256: str | None = None

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


#: names of other kinds of file: an output so named is a mistake (--output RUN/best.pt), not a
#: CSV to write (`galmerge.classification.outputs.open_writer` writes CSV for any other suffix)
NOT_OUTPUT_SUFFIXES = (".pt", ".pth", ".ckpt", ".onnx", ".toml", ".json", ".yaml", ".yml",
                       ".npz", ".npy", ".py", ".md", ".png", ".pdf", ".svg", ".jpg", ".jpeg",
                       ".xlsx", ".xls", ".ods", ".xml", ".vot", ".gz", ".bz2", ".zip",
                       # text formats of their own, not CSV (a name without suffix, or .tsv as
                       # before, is written as CSV)
                       ".txt", ".dat", ".log", ".ecsv", ".html", ".tex")


def check_output(out_path: Path, catalog: Path) -> None:
    """One line, before any work, for an output that would destroy a file: the input catalog,
    a name classify does not write, a symbolic link, or a non-empty file that is not a classify
    output (`atomic.check_replaceable`: a rerun may replace one; it reads it back first)."""
    if out_path.suffix.lower() in NOT_OUTPUT_SUFFIXES:
        raise GalmergeError(f"--output {out_path}: classify writes .csv, .h5, .fits or .parquet "
                            "files; choose such a name")
    for folder in out_path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise GalmergeError(f"--output {out_path}: {folder} is a file, not a folder; "
                                    "choose another --output")
            break
    from galmerge.fractions.report import P_NAME, STATUS_NAME, _result_column, output_columns

    def ours(path: Path) -> bool:
        if path.resolve() == catalog.resolve():
            raise GalmergeError(f"--output {path} is the input catalog; choose another file")
        try:
            names = output_columns(path)[0]
        except Exception:  # any unreadable file: not an output of ours
            return False
        return (_result_column(names, P_NAME) is not None
                and _result_column(names, STATUS_NAME) is not None)

    atomic.check_replaceable(out_path, ours, "a galmerge classify output (no p_merger and "
                             "status columns)", option="--output")


def rank_cache(cache: str | os.PathLike[str], rank: int) -> Path:
    """The cutout cache a process uses: ``{rank}`` in the name replaced by its rank."""
    return Path(str(cache).replace("{rank}", str(rank)))


def check_cache(cache_path: Path, out_path: Path, catalog: Path) -> None:
    """One line, before any work, for a cache that is the output or the catalog: the output
    would replace the cache (every stamp lost), the cache would write into the catalog."""
    for what, path in (("--output", out_path), ("the input catalog", catalog)):
        if cache_path.resolve() == path.resolve():
            raise GalmergeError(f"--cache {cache_path} is the same file as {what} ({path}); "
                                "give --cache another file")


def default_output(catalog: Path) -> Path:
    """``<catalog stem>_galmerge.csv`` in the working directory (catalogs may be read-only)."""
    name = catalog.name
    for suffix in (".gz", ".fits", ".fit", ".csv", ".h5", ".hdf5", ".xml", ".vot", ".txt",
                   ".parquet"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return Path.cwd() / f"{name}_galmerge.csv"


class _Inference:
    """The model, its preprocessing spec and temperature, applied in batches."""

    def __init__(self, model_path: str | os.PathLike[str], domain: str, device: str,
                 batch_size: int, local_rank: int, mc_dropout: int = 0) -> None:
        import torch

        from galmerge.models import shift as shift_score
        from galmerge.models.domain_norm import select_statistics
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
        self.spec = self.loaded.preprocess[domain]
        if self.spec.mean is None:
            raise GalmergeError(f"model {self.loaded.path}: its {domain} preprocessing has "
                                "no 'mean'/'std'; retrain with this galmerge version")
        self.channels = self.spec.n_channels
        self.size = int(self.spec.image_size or self.loaded.config.get("image_size", 75))
        self.batch_size = max(1, int(batch_size))
        # a model with per-domain BatchNorm statistics classifies with the --domain's set
        select_statistics(self.loaded.model, domain)
        self.model = self.loaded.model.eval()
        self.mc_dropout = int(mc_dropout)
        self.dropouts = _dropout_layers(self.loaded.model) if self.mc_dropout else []
        if self.mc_dropout and not self.dropouts:
            raise GalmergeError(
                f"{named('mc_dropout')}: model {self.loaded.path} (backbone "
                f"'{self.loaded.config.get('backbone', '?')}') has no dropout layer with p > 0 "
                "(nn.Dropout or Dropout1d/2d/3d; AlphaDropout is not drawn per stamp); "
                f"drop {named('mc_dropout')}, or train with a dropout option (deepmerge: "
                "dropout=0.1)")
        self.shift, self.shift_note = shift_score.load(model_path, self.loaded.sha256)
        self.extra = ([shift_score.SCORE_COLUMN, shift_score.FLAG_COLUMN]
                      if self.shift is not None else [])
        if self.mc_dropout:
            from galmerge.classification.ensemble import STD_COLUMN

            self.extra.append(STD_COLUMN)
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
        return self.predict(images)[0]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """p_merger and the `extra` columns (float64; shift_flag int8) of ``images``."""
        import torch

        from galmerge.models import shift as shift_score
        from galmerge.models.inference import merger_probability

        out = np.empty(len(images), dtype=np.float64)
        extra = {name: np.full(len(images), np.nan) for name in self.extra}
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                block = np.asarray(images[start : start + self.batch_size], dtype=np.float32)
                x = torch.from_numpy(np.ascontiguousarray(block)).to(self.device)
                # training's preprocessing, the same code (a new tensor: images stay as they are)
                x = self.spec.apply(x)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                rows = slice(start, start + len(x))
                if not self.mc_dropout or self.shift is not None:
                    feats, logits = self.model(x)
                    out[rows] = merger_probability(logits.cpu(), self.loaded.temperature)
                    if self.shift is not None:
                        extra[shift_score.SCORE_COLUMN][rows] = \
                            shift_score.score_features(self.shift, feats).cpu().numpy()
                if self.mc_dropout:
                    p = self._mc_passes(x, block)
                    out[rows] = p.mean(axis=0)
                    extra[self.extra[-1]][rows] = p.std(axis=0)
        out = np.clip(out, 0.0, 1.0)
        if self.shift is not None:
            score = extra[shift_score.SCORE_COLUMN]
            extra[shift_score.FLAG_COLUMN] = shift_score.flags(score, self.shift["threshold"])
        return out, extra

    def _mc_passes(self, x: Any, block: np.ndarray) -> np.ndarray:
        """p_merger of ``mc_dropout`` passes through the plain model (the CPU-optimised one
        has its dropout removed) with every dropout layer's mask drawn per stamp, from a
        generator seeded by that stamp's bytes, the pass and the layer: a stamp gets the same
        draws whatever batch, chunk or fetch order it comes in, so reruns and other
        --batch-size / --chunk-rows give the same values."""
        import zlib

        from galmerge.models.inference import merger_probability

        seeds = [zlib.crc32(stamp.tobytes()) for stamp in block]
        probs = []
        for draw in range(self.mc_dropout):
            hooks = [layer.register_forward_hook(_stamp_dropout(seeds, draw, k))
                     for k, layer in enumerate(self.dropouts)]
            try:
                _, logits = self.loaded.model(x.contiguous())
            finally:
                for hook in hooks:
                    hook.remove()
            probs.append(merger_probability(logits.float().cpu(), self.loaded.temperature))
        return np.clip(np.stack(probs), 0.0, 1.0)


def _stamp_dropout(seeds: list[int], draw: int, layer: int) -> Any:
    """A forward hook that applies inverted dropout to an eval-mode dropout layer's input with
    one mask per stamp (``nn.Dropout``: per element; ``Dropout1d/2d/3d``: per channel), drawn
    from ``torch.Generator`` seeded by (stamp, draw, layer). Hand-written because torch's own
    dropout draws one mask for the whole batch from one global generator."""
    import torch
    from torch import nn

    def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> Any:
        x = inputs[0]
        if len(x) != len(seeds):  # a layer whose first dimension is not the stamps
            raise GalmergeError(f"--mc-dropout: a dropout layer of this backbone sees {len(x)} "
                                f"rows for {len(seeds)} stamps, so its masks cannot be drawn "
                                "per stamp; drop --mc-dropout, or use an ensemble of runs")
        keep = 1.0 - float(module.p)
        channelwise = isinstance(module, nn.Dropout1d | nn.Dropout2d | nn.Dropout3d)
        shape = (*x.shape[1:2], *(1,) * (x.dim() - 2)) if channelwise else x.shape[1:]
        masks = torch.stack([
            torch.rand(shape, generator=torch.Generator().manual_seed(
                (seed * 1_000_003 + draw * 9_176 + layer) % (2**63)))
            for seed in seeds]) < keep
        return x * masks.to(device=x.device, dtype=x.dtype) / keep

    return hook


def _dropout_layers(model: Any) -> list[Any]:
    from torch import nn

    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)  # what _stamp_dropout draws
    return [m for m in model.modules() if isinstance(m, kinds) and float(m.p) > 0]


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


class _Progress:
    """Rich progress on stderr: rows, rows/s, ETA, failures so far."""

    def __init__(self, enabled: bool, total: int | None, label: str = "classify") -> None:
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
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
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


def _shift_stamp(infer: Any) -> Any:
    """What makes the shift scores of an earlier run's segments reusable: the statistics."""
    shift = getattr(infer, "shift", None)
    return None if shift is None else shift["meta"].get("sha256")


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
    mc_dropout: int | None = None,
    prior_rule: str | None = None,
    _member: tuple[int, int] | None = None,
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
    (`galmerge.fractions.prior`; ``prior_rule`` "match", the default, or "bayes").
    ``mc_dropout`` (N >= 2): p_merger is the mean of N passes with the dropout layers active,
    ``p_merger_std`` their spread. A run with ``shift_stats.npz`` adds ``shift_score`` and
    ``shift_flag`` (`galmerge.models.shift`).
    ``_member`` (internal, set by the ensemble): ``(i, n)``, model i of n: its progress is
    labelled so and it prints no closing summary (the ensemble prints one for its output).
    """
    code_identity()  # the code this job runs, read as it starts (a commit made meanwhile is not it)
    # numpy numbers from a notebook are the numbers they hold; other types, one line naming
    # the argument (assignments only: the ensemble branch passes on locals())
    batch_size = plain_number("batch_size", batch_size, whole=True)
    workers = plain_number("workers", workers, whole=True)
    chunk_rows = plain_number("chunk_rows", chunk_rows, whole=True)
    flush_rows = plain_number("flush_rows", flush_rows, whole=True)
    cache_keepbits = plain_number("cache_keepbits", cache_keepbits, whole=True, optional=True)
    mc_dropout = plain_number("mc_dropout", mc_dropout, whole=True, optional=True)
    threshold = plain_number("threshold", threshold)
    shard_timeout = plain_number("shard_timeout", shard_timeout, optional=True)
    heartbeat_timeout = plain_number("heartbeat_timeout", heartbeat_timeout, optional=True)
    check_passes(mc_dropout, not isinstance(model, str | os.PathLike) and len(list(model)) > 1)
    prior, prior_rule = _parse_prior_options(prior, prior_rule)  # one line, before any work
    # before any branch: a HATS run checks it only in its Dask workers, an ONNX model never
    check_device_name(device)
    model = _refuse_torchscript(model)  # (a function: the ensemble below passes on locals())
    _refuse_on_hats(catalog, model, prior, mc_dropout)
    if not Path(catalog).is_dir() and (scheduler is not None or columns):
        raise GalmergeError(f"{named('scheduler' if scheduler is not None else 'columns')} applies "
                            f"to a HATS catalog folder only, and {catalog} is a file (every "
                            "column of a file catalog is kept, and it is classified here); "
                            "drop the option")
    if not isinstance(model, str | os.PathLike):  # several models: an ensemble
        kw = dict(locals())
        cat, models = kw.pop("catalog"), [str(m) for m in kw.pop("model")]
        if len(models) == 1:
            return classify(cat, models[0], **kw)
        from galmerge.classification.ensemble import classify_ensemble

        return classify_ensemble(cat, models, **kw)
    from galmerge.runtime.distributed import from_environment

    t0 = time.monotonic()
    shard_timeout = timeout_seconds(shard_timeout, SHARD_TIMEOUT_ENV, "--shard-timeout",
                                    DEFAULT_SHARD_TIMEOUT)
    heartbeat_timeout = timeout_seconds(heartbeat_timeout, HEARTBEAT_TIMEOUT_ENV,
                                        HEARTBEAT_TIMEOUT_ENV, DEFAULT_HEARTBEAT_TIMEOUT)
    cat_path = Path(catalog)
    if not cat_path.is_file() and not cat_path.is_dir():
        raise GalmergeError(f"catalog {cat_path} does not exist")
    check_threshold_domain(threshold, domain)
    from galmerge.fractions.prior import training_prior

    # before the work: the run's statistics may take a pass over its source validation split
    prior_from = training_prior(model) if prior is not None else None
    if chunk_rows < 1 or batch_size < 1 or workers < 1:
        raise GalmergeError(f"{named('batch_size')}, {named('workers')} and "
                            f"{named('chunk_rows')} must be at least 1")
    _check_kinds(cat_path, output, cache)
    if cat_path.is_dir():  # a HATS catalog: partition by partition on Dask
        from galmerge.classification.hats import classify_hats_summary

        return classify_hats_summary(
            cat_path, model, output=output, survey=survey, cache=cache, ra_col=ra_col,
            dec_col=dec_col, id_col=id_col, threshold=threshold, domain=domain, device=device,
            batch_size=batch_size, workers=workers, quiet=quiet, scheduler=scheduler,
            columns=columns, keepbits=cache_keepbits, t0=t0)
    out_path = Path(output) if output is not None else default_output(cat_path)
    dist = from_environment()
    if cache is not None:  # first: the clearer line where the output is an existing cache
        check_cache(rank_cache(cache, dist.rank), out_path, cat_path)
    check_output(out_path, cat_path)
    show = not quiet and dist.is_main
    with _no_space_names(out_path), output_lock(out_path, dist.rank, dist.world), \
            _terminate_cleanly():
        return _classify_locked(
            cat_path, model, out_path, dist, show, t0, survey=survey, cache=cache,
            ra_col=ra_col, dec_col=dec_col, id_col=id_col, batch_size=batch_size, device=device,
            workers=workers, threshold=threshold, domain=domain, chunk_rows=chunk_rows,
            flush_rows=flush_rows, survey_options=survey_options, shard_timeout=shard_timeout,
            heartbeat_timeout=heartbeat_timeout, cache_keepbits=cache_keepbits, prior=prior,
            prior_from=prior_from, quiet=quiet, mc_dropout=int(mc_dropout or 0),
            prior_rule=prior_rule, member=_member)


@contextlib.contextmanager
def _no_space_names(out_path: Path) -> Iterator[None]:
    """A full disk, a quota or the file-size limit met while writing the output or its result
    segments is one line naming them: the error from pyarrow or a file's write() carries no
    file name, which the CLI needs to say it in one line instead of a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.filename or exc.errno not in atomic.NO_SPACE_ERRNOS:
            raise
        raise GalmergeError(
            f"cannot write {out_path} or its result segments in {out_path.name}.parts: "
            f"{os.strerror(exc.errno)} (disk full / no space left, a quota or the file-size "
            "limit); free space and run the same command again: finished chunks are kept"
        ) from None


def _check_kinds(cat_path: Path, output: Any, cache: Any) -> None:
    """One line where --output or --cache is a file for a HATS catalog (its output and caches
    are folders) or a folder for a catalog file (they are files)."""
    from galmerge.runtime.distributed import from_environment

    hats = cat_path.is_dir()
    rank = from_environment().rank
    for option, value in (("--output", output), ("--cache", cache)):
        if value is None:
            continue
        path = rank_cache(value, rank) if option == "--cache" else Path(value)
        if hats and path.is_file():
            raise GalmergeError(f"{option} {path} is a file; for a HATS catalog folder {option} "
                                "names a folder: give a folder name")
        if not hats and path.is_dir():
            what = ("a file (.csv, .h5, .fits or .parquet)" if option == "--output"
                    else "an HDF5 file")
            raise GalmergeError(f"{option} {path} is a folder; for a catalog file {option} "
                                f"names {what}: give a file name")


def check_passes(mc_dropout: int | None, several_models: bool) -> None:
    """``mc_dropout`` (None: off) from 2 to 1000 passes, and not with an ensemble (both
    would fill p_merger_std); one line each (`classify`, `galmerge.predict`)."""
    if mc_dropout is not None and not 2 <= mc_dropout <= 1000:  # a typo ran for days
        raise GalmergeError(f"{named('mc_dropout')} must be a whole number of passes from 2 to "
                            f"1000 (10 to 100 is usual), got {mc_dropout!r}")
    if mc_dropout and several_models:
        raise GalmergeError(f"{named('mc_dropout')} with several models: not supported (both "
                            "would fill p_merger_std); use an ensemble or MC-dropout, not both")


def check_threshold_domain(threshold: float, domain: str) -> None:
    """``threshold`` in [0, 1] and ``domain`` source or target; one line each (`classify`,
    `galmerge.predict`)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise GalmergeError(f"{named('threshold')} must be in [0, 1], got {threshold}")
    if domain not in ("source", "target"):
        raise GalmergeError(f"{named('domain')} must be source or target, got {domain}")


def _parse_prior_options(prior: Any, rule: Any) -> tuple[str | float | None, str]:
    """``--prior`` and ``--prior-rule`` checked (one-line errors); a function, so that the
    ensemble branch's ``locals()`` holds only the values."""
    from galmerge.fractions.prior import parse_prior, parse_rule

    if not isinstance(prior, str):  # "auto" or a fraction, as text or a (numpy) number
        prior = plain_number("prior", prior, optional=True)
    value = parse_prior(prior)
    if rule is not None and (value is None or value == "auto"):
        value_ = named("prior", "VALUE", literal=True)
        raise GalmergeError(f"{named('prior_rule', rule)} needs {value_} (a merger fraction, "
                            f"e.g. {named('prior', 0.05)}; with {named('prior', 'auto')} both "
                            f"rules agree); give {value_} or drop {named('prior_rule')}")
    return value, parse_rule(rule)


def _refuse_torchscript(model: Any) -> Any:
    """One line for a TorchScript export among the models, before torch.load's long refusal;
    returns ``model`` (several: as a list, so an iterator is read once)."""
    from galmerge.models.export import refuse_torchscript

    models = [model] if isinstance(model, str | os.PathLike) else list(model)
    for member in models:
        refuse_torchscript(member)
    return model if isinstance(model, str | os.PathLike) else models


def _refuse_on_hats(catalog: Any, model: Any, prior: Any, mc_dropout: Any) -> None:
    """What the HATS path cannot do yet, refused before any work (it ignored two of them)."""
    several = not isinstance(model, str | os.PathLike) and len(list(model)) > 1
    if Path(catalog).is_dir() and (several or prior is not None or mc_dropout):
        what = ("several --model (an ensemble)" if several else
                "--prior" if prior is not None else "--mc-dropout")
        # galmerge fraction reads a file: a HATS output needs an export first
        raise GalmergeError(f"{what} is not supported for a HATS catalog folder yet; classify "
                            "a Parquet export of the catalog, or classify it with one model and "
                            "run galmerge fraction on a Parquet export of the output "
                            "(lsdb.open_catalog(OUTPUT).compute().to_parquet(FILE))")


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


def open_inference(model: Any, domain: str, device: str, batch_size: int, local_rank: int = 0,
                   mc_dropout: int = 0) -> tuple[Any, str]:
    """The model as classify applies it, and a note for the user ("" if none): a ``.onnx``
    file (`galmerge export`) through ONNX Runtime on the CPU (the note names a ``device`` it
    does not use), else the checkpoint or run directory (`_Inference`)."""
    if str(model).lower().endswith(".onnx"):  # `galmerge export` output: ONNX Runtime, CPU
        from galmerge.models.export import OnnxInference

        if mc_dropout:
            raise GalmergeError(f"{named('mc_dropout')}: {model} is an exported ONNX model, "
                                "whose dropout is folded away; pass the run directory instead")
        note = ""
        if check_device_name(device) not in ("auto", "cpu"):
            note = f"{model} runs on the CPU (ONNX Runtime); --device {device} is not used"
        return OnnxInference(model, domain, batch_size), note
    return _Inference(model, domain, device, batch_size, local_rank, mc_dropout), ""


def add_inference_record(prov: dict[str, Any], infer: Any, mc_dropout: int = 0) -> None:
    """What the provenance record says of the model as applied: the checkpoint an ONNX export
    came from, the shift statistics, the MC-dropout passes."""
    exported_from = getattr(infer, "exported_from", None)
    if exported_from is not None:  # an ONNX export: checkpoint_sha256 is the .onnx file's
        prov["exported_from_checkpoint_sha256"] = exported_from
    shift = getattr(infer, "shift", None)
    if shift is not None:
        prov["shift_threshold"] = float(shift["threshold"])
        prov["shift_stats_sha256"] = shift["meta"].get("sha256", "")
    if mc_dropout:
        prov["mc_dropout"] = int(mc_dropout)


def _classify_locked(cat_path: Path, model: Any, out_path: Path, dist: Any, show: bool,
                     t0: float, *, survey: str, cache: Any, ra_col: str | None,
                     dec_col: str | None, id_col: str | None, batch_size: int, device: str,
                     workers: int, threshold: float, domain: str, chunk_rows: int,
                     flush_rows: int, survey_options: Mapping[str, Any] | None,
                     shard_timeout: float, heartbeat_timeout: float,
                     cache_keepbits: int | None, prior: float | str | None,
                     prior_from: Any, quiet: bool, mc_dropout: int = 0,
                     prior_rule: str = "match",
                     member: tuple[int, int] | None = None) -> ClassifySummary:
    infer, device_note = open_inference(model, domain, device, batch_size, dist.local_rank,
                                        mc_dropout)
    if device_note and dist.is_main and not quiet:
        print(f"galmerge: {device_note}", file=sys.stderr)
    extra = list(getattr(infer, "extra", []))
    # the spec as printed and recorded: no URL's user info (the request itself uses `survey`)
    shown = shown_spec(survey)
    service = survey_service = None
    release = kind = ""
    store: CutoutCache | None = None
    per_rank_cache = cache is not None and "{rank}" in str(cache)
    if is_image_file(cat_path):
        source: Any = ImageFileInput(cat_path, infer.shape, infer.spec)
    else:
        source = open_catalog(cat_path, ra_col=ra_col, dec_col=dec_col, id_col=id_col)
        from galmerge.data.datasets import parse_survey_spec

        # "sdss?workers=8&frame_cache_gb=20": options after '?' go to the cutout service
        survey_name, arg, spec_options = parse_survey_spec(survey)
        record = survey_record(survey_name, arg)
        options = cutout_options(record, workers, {**spec_options, **dict(survey_options or {})})
        survey_service = SurveyService.open(survey_name, record, infer.spec, options, shown)
        service = survey_service.service
        key = str(getattr(service, "cache_key", "")
                  or f"{survey_name}:{_signature(dict(infer.spec))}")
        release, kind = data_release(service, options, key), key
        # "{rank}" in --cache gives each process its own cache (and index) at survey scale
        cache_path = (rank_cache(cache, dist.rank) if cache is not None
                      else default_cache(survey_name, keepbits_key(key, cache_keepbits)))
        check_cache(cache_path, out_path, cat_path)  # the default one too
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
    stale = getattr(infer, "stale_note", "")
    if stale and dist.is_main:  # an export older than its checkpoint: even with --quiet
        print(f"galmerge: {stale}", file=sys.stderr)
    shift_note = getattr(infer, "shift_note", "")
    # once the inputs are known good: a user mistake stays one line (an ensemble: its first)
    if shift_note and show and (member is None or member[0] == 0):
        print(f"galmerge: {shift_note}", file=sys.stderr)
    label = "classify" if member is None else f"classify model {member[0] + 1}/{member[1]}"
    progress = _Progress(show, shard_total, label)
    fetched = Counter()
    # the cutout kind too: it holds --cache-keepbits, and rounded stamps classify otherwise
    # a Parquet input's lists, structs and maps: stored in the result segments in their type
    nested = dict(getattr(source, "nested_types", {}))
    sig = _signature(_file_stamp(cat_path), _file_stamp(infer.loaded.path), domain,
                     float(threshold), shown, chunk_rows, ra_col, dec_col, id_col, kind,
                     *([] if not extra else [extra, _shift_stamp(infer), mc_dropout]),
                     # segments of versions that stored them as text are not resumed from
                     *([] if not nested else ["nested-arrow", sorted(nested)]))
    parts_dir = out_path.with_name(out_path.name + ".parts")
    check_private_folder(parts_dir)  # before anything in it is removed or read
    check_parts_folder(parts_dir)
    if dist.is_main:
        remove_stale_parts(parts_dir, f"-of-{dist.world:05d}-{sig}")
    folder = parts_dir / f"rank{dist.rank:05d}-of-{dist.world:05d}-{sig}"
    # transient failures are retried on resume too (not in another rank's finished share:
    # rank 0 may be merging it)
    reopen = dist.is_main or not folder.with_name(folder.name + ".done").exists()
    journal = ResultJournal(folder, nested=nested, reopen_failed=reopen)
    tally = Tally()
    heartbeat = None
    if dist.enabled and not dist.is_main and not journal.finished:
        heartbeat = Heartbeat(beat_path(journal.folder),
                              min(HEARTBEAT_SECONDS, heartbeat_timeout / 5))
    try:
        if journal.finished:
            if show:
                progress.console.print(f"rank {dist.rank}: its share was already complete")
        else:
            # a marker that disagrees with the segments (a kill while they were removed) must
            # not tell rank 0 this share is complete while it is redone
            journal.marker.unlink(missing_ok=True)
            done = catalog_chunks = 0
            for index, chunk in enumerate(source.chunks(chunk_rows)):
                catalog_chunks = index + 1
                if index % dist.world != dist.rank:
                    continue
                if index not in journal.done:  # else: finished before a kill, kept
                    block = _classify_chunk(chunk, source, survey_service, store, infer,
                                            threshold, fetched)
                    tally.add(block)
                    journal.add(index, block)
                done += len(chunk)
                progress.update(done, tally.failed)
            if heartbeat is not None:  # stopped first: rank 0 removes the file after merging
                heartbeat.stop()
            journal.finish(catalog_chunks)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        progress.stop()
        service_summary = None
        if survey_service is not None:
            service_summary = survey_service.summary()
            service.close()
        if store is not None:
            # a cache shared by processes is consolidated once, by rank 0 after the merge
            store.close(compact=not dist.enabled or per_rank_cache)
    asked = service_name(shown, service)
    services = {asked: service_summary} if asked and service_summary else {}
    if not dist.is_main:
        return _summary(out_path, tally, fetched, t0, store, asked, services)
    # the input's content, so the output leads back to the data it came from. The readers
    # (pandas, pyarrow, astropy, h5py) read by chunk, column or seek, not the file's bytes in
    # order, so the hash cannot ride along: it is one more read of the file at disk speed
    # (~1 s per GB; by rank 0 alone, once per process for an unchanged file: sha256_file_once)
    prov = provenance_record(
        checkpoint=infer.loaded.path, config=infer.loaded.config,
        survey=shown if store is not None else f"hdf5 image file {cat_path.name}",
        data_release=release, cutout_kind=kind, domain=domain, preprocessing=dict(infer.spec),
        temperature=infer.loaded.temperature, threshold=float(threshold), input=cat_path,
        input_sha256=sha256_file_once(cat_path) if cat_path.is_file() else "")
    add_inference_record(prov, infer, mc_dropout)
    shift = getattr(infer, "shift", None)
    tally = merge_parts(parts_dir, sig, dist.world, out_path, source.columns, show,
                        shard_timeout, heartbeat_timeout,
                        arrow_types=getattr(source, "arrow_types", None), provenance=prov,
                        extra=extra)
    if store is not None and dist.enabled and not per_rank_cache:
        store.compact_or_warn()
    summary = _summary(out_path, tally, fetched, t0, store, asked, services)
    if shift is not None:
        summary.shift_threshold = float(shift["threshold"])
        summary.shift_stats_sha256 = str(shift["meta"].get("sha256", ""))
    note = None
    if prior is not None:
        summary.mergers, note = _apply_prior(out_path, prior, threshold, prior_from, model,
                                             prior_rule)
    else:  # a record of an earlier --prior run would now describe the wrong probabilities
        out_path.with_name(out_path.name + ".prior.json").unlink(missing_ok=True)
    if show and member is None:  # an ensemble prints one summary, for its combined output
        _print_summary(summary)
    if note is not None and not quiet:
        print(note, file=sys.stderr)
    _fail_if_nothing_fetched(summary, shown, getattr(service, "unreachable", None), fetched,
                             getattr(service, "failing", None))
    _fail_if_no_position(summary, cat_path)
    return summary


def _apply_prior(out_path: Path, prior: str | float, threshold: float,
                 training: tuple[float, str] | None, model: Any = "",
                 rule: str = "match") -> tuple[int, str]:
    """Rescale the written output to the survey prior; (mergers now, one-line note)."""
    from galmerge.fractions.prior import apply_prior_counted

    rec, mergers = apply_prior_counted(out_path, model, prior, threshold, training, rule)
    check = rec.get("adaptation_check")
    warning = f"; WARNING: {check['message']}" if check and check["warning"] else ""
    if rec["prior_rule"] == "match":
        from galmerge.fractions.prior import FEW_ROWS

        how = (f"so that its mean is the given {rec['prior']:.4g} (the model's probabilities "
               f"carried a merger fraction of {rec['training_prior']:.4g} on these rows, its "
               f"training set {rec['run_training_prior']:.4g})")
        if rec["matched_rows"] < FEW_ROWS:
            warning += (f"; note: matched on {rec['matched_rows']} rows only, a noisy offset "
                        "(--prior-rule bayes needs no sample)")
    else:
        how = (f"from the training merger fraction {rec['training_prior']:.4g} to "
               f"{rec['prior']:.4g} ({rec['prior_from']})")
    return mergers, (f"galmerge: p_merger rescaled {how}; recorded in "
                     f"{out_path.name}.prior.json{warning}")


def _fail_if_no_position(summary: ClassifySummary, catalog: Path) -> None:
    """Exit non-zero (after the output is written) when no row of the catalog has a usable
    position: most often sexagesimal coordinates or the wrong columns, not a survey's gaps."""
    bad = summary.statuses.get("bad-coordinates", 0)
    if summary.rows and bad == summary.rows:
        raise GalmergeError(
            f"every row of {catalog} has bad coordinates ({bad} rows): give RA and Dec in "
            "decimal degrees (sexagesimal such as 10:20:30.5 is not read), and name the columns "
            "with --ra-col/--dec-col if they are others")


def _fail_if_nothing_fetched(summary: ClassifySummary, survey: str, unreachable: Any,
                             fetched: Counter, failing: Any = None) -> None:
    """Exit non-zero (after the output is written) when the survey service died, its failure
    budget was spent, or every fetch failed: a script must not take a run with rows left to
    fetch for a finished one."""
    if unreachable:
        raise GalmergeError(
            f"survey {survey}: {unreachable} stopped answering, so fetching stopped; "
            f"{summary.ok} rows classified are in {summary.output} and the rest are marked "
            "'fetch-failed: service unreachable'; run the same command again to fetch them "
            "(stamps already fetched are cached)")
    if failing:
        raise GalmergeError(
            f"survey {survey}: fetching stopped, {failing}; {summary.ok} rows classified are "
            f"in {summary.output} and the rest are marked 'fetch-failed: service failing'; once "
            "the service works again run the same command to fetch them (stamps already "
            "fetched are cached), or raise the survey option max_failed_requests (0: never stop)")
    broken = fetched.get(STATUS_PLUGIN_ERROR, 0)
    failed = fetched.get("fetch-failed", 0)  # answers of this run's fetches, by reason
    if broken and failed + broken == sum(fetched.values()) and summary.ok == 0:
        example = summary.examples.get(STATUS_PLUGIN_ERROR, STATUS_PLUGIN_ERROR)
        raise GalmergeError(
            f"survey {survey}: no stamp came back usable ({broken + failed} rows; {broken} broke "
            f"the cutout protocol, e.g. '{example}'); that is a bug in the survey's plugin, "
            "not network trouble: report it to the plugin's authors; "
            f"{summary.output} lists each row's status")
    if failed and failed == sum(fetched.values()) and summary.ok == 0:
        example = summary.examples.get("fetch-failed", "fetch-failed")
        raise GalmergeError(
            f"survey {survey}: every fetch failed ({failed} rows, e.g. '{example}'); "
            f"{summary.output} lists each row's status; run the same command again to retry")


def _classify_chunk(chunk: CatalogChunk, source: Any, service: SurveyService | None,
                    store: CutoutCache | None,
                    infer: _Inference, threshold: float, fetched: Counter) -> ResultBlock:
    n = len(chunk)
    status = chunk.problems.copy()
    p = np.full(n, np.nan)
    names = list(getattr(infer, "extra", []))
    extra = {name: np.full(n, np.nan) for name in names}
    if store is None:  # an HDF5 image file: the stamps are already here
        classify_stamps(source.read(chunk), infer, status, p, extra)
    else:
        rows = np.flatnonzero(status == "")
        keys = [make_key(chunk.ids[i], chunk.ra[i], chunk.dec[i]) for i in rows]
        first: dict[str, int] = {}
        for i, key in zip(rows, keys, strict=True):
            first.setdefault(key, int(i))
        unique = list(first)
        key_status = fetch_stamps(unique, first, chunk, service, store, fetched, infer.shape)
        ok_keys = [k for k in unique if key_status[k] == STATUS_OK]
        key_p: dict[str, tuple[float, ...]] = {}
        step = max(INFER_ROWS, infer.batch_size)
        for start in range(0, len(ok_keys), step):  # bounded memory: a slice of stamps at a time
            part = ok_keys[start : start + step]
            key_p.update(_infer_keys(part, first, chunk, service, store, infer, fetched,
                                     key_status))
        for i, key in zip(rows, keys, strict=True):
            status[i] = key_status[key]
            if key in key_p and key_status[key] == STATUS_OK:
                p[i] = key_p[key][0]
                for name, value in zip(names, key_p[key][1:], strict=True):
                    extra[name][i] = value
    flag = finish_stamps(p, extra, status, threshold)
    return ResultBlock(chunk.columns, p, flag, status, extra)


def classify_stamps(images: np.ndarray, infer: Any, status: np.ndarray, p: np.ndarray,
                    extra: dict[str, np.ndarray]) -> None:
    """Stamps in hand (an HDF5 image file's, or `galmerge.predict`'s): ``p`` and ``extra``
    filled in place for the rows whose ``status`` is "" and whose pixels are all finite, which
    become ``ok``; a stamp with NaN/inf pixels gets ``bad-image``."""
    finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    status[~finite & (status == "")] = "bad-image: non-finite pixels"
    good = np.flatnonzero(status == "")
    if len(good):
        p[good], more = infer.predict(images[good])
        for name in extra:
            extra[name][good] = more[name]
    status[good] = STATUS_OK


def finish_stamps(p: np.ndarray, extra: dict[str, np.ndarray], status: np.ndarray,
                  threshold: float) -> np.ndarray:
    """The ``is_merger`` column (-1 where there is no p_merger); a row ``ok`` whose model
    output is not finite becomes ``model-failed``, and its extra values NaN (``shift_flag``
    -1), in place."""
    # 'ok' promises a probability in [0, 1]: a model whose output overflowed does not get it
    status[(status == STATUS_OK) & ~np.isfinite(p)] = "model-failed: non-finite output"
    flag = np.where(np.isfinite(p), (p >= threshold).astype(np.int8), -1).astype(np.int8)
    bad = ~np.isfinite(p)
    for name in list(extra):
        values = extra[name]
        if name == "shift_flag":  # int8: -1 where there is no score
            extra[name] = np.where(bad | ~np.isfinite(values), -1, values).astype(np.int8)
        else:
            values[bad] = np.nan
    return flag


def _infer_keys(keys: list[str], first: dict[str, int], chunk: CatalogChunk,
                service: SurveyService,
                store: CutoutCache, infer: _Inference, fetched: Counter,
                key_status: dict[str, str]) -> dict[str, tuple[float, ...]]:
    """Probabilities for cached stamps; a stamp whose cache file fails its checksum is fetched
    again (and its status updated) before giving up on it."""
    images, got = store.images(keys)
    if not got.all():
        retry = [k for k, g in zip(keys, got, strict=True) if not g]
        key_status.update(fetch_stamps(retry, first, chunk, service, store, fetched,
                                       infer.shape))
        again, got2 = store.images(retry)
        missing = np.flatnonzero(~got)
        images[missing] = again
        for k, g in zip(retry, got2, strict=True):
            if not g and key_status[k] == STATUS_OK:
                key_status[k] = "fetch-failed: cache read failed"
        got[missing] = got2
    if not got.any():
        return {}
    probs, more = infer.predict(images if got.all() else images[got])
    values = list(zip(probs.tolist(), *(more[n].tolist() for n in getattr(infer, "extra", [])),
                      strict=True))
    return dict(zip([k for k, g in zip(keys, got, strict=True) if g], values, strict=True))


def _summary(out_path: Path, tally: Tally, fetched: Counter, t0: float,
             store: CutoutCache | None, survey: str | None = None,
             services: dict[str, str] | None = None) -> ClassifySummary:
    failed = {k: v for k, v in sorted(tally.statuses.items()) if k != STATUS_OK}
    return ClassifySummary(
        output=str(out_path), rows=tally.rows, ok=tally.ok, failed=failed,
        mergers=tally.mergers, fetched=int(fetched.get(STATUS_OK, 0)),
        seconds=time.monotonic() - t0, cache=None if store is None else str(store.path),
        statuses=dict(tally.statuses), examples=dict(tally.examples),
        attempted=int(sum(fetched.values())), survey=survey,
        fetch_failed=int(fetched.get("fetch-failed", 0)), services=dict(services or {}),
    )


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
    broken = summary.statuses.get(STATUS_PLUGIN_ERROR, 0)
    if broken:
        example = summary.examples.get(STATUS_PLUGIN_ERROR, "")
        console.print(
            f"warning: {broken} {_plural(broken, 'stamp')} from {summary.survey or 'the survey'} "
            "broke the cutout protocol" + (f" (e.g. '{example}')" if example else "")
            + "; that is a bug in the survey's plugin, not network trouble: report it to the "
            "plugin's authors (`galmerge plugins` names it)",
            style="yellow", soft_wrap=True, markup=False, highlight=False,
        )
    for name, line in summary.services.items():
        console.print(f"{name}: {line}", soft_wrap=True, markup=False, highlight=False)
    journal = Path(f"{summary.cache}.journal")
    if summary.cache and (Path(summary.cache).exists()
                          or (journal.is_dir() and any(journal.iterdir()))):
        print_path(console, "cache:", summary.cache)
    print_path(console, "output:", summary.output)
