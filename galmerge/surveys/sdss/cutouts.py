"""SDSS cutouts for `classify`: corrected frames through astroquery, or SkyServer colour JPEGs.

Frames (``image_source = "frames"``): positions are resolved to the (run, rerun, camcol, field)
of the nearest primary object with ``astroquery.sdss.SDSS.query_sql_async`` (many positions per
query, as ``get_images(coordinates=...)`` does one at a time through CrossID), corrected frames are
downloaded from the SAS at astroquery's ``IMAGING_URL_SUFFIX`` (our own GET, because astroquery's
download path has no retries, 429 handling or body checks), cached on disk under
``$GALMERGE_DATA/cache/sdss-frames/`` and in a small in-memory LRU, and stamps are cut with
``astropy.nddata.Cutout2D`` plus the frame WCS and resampled onto a north-up grid at the model's
pixel scale. Output: (C, size, size) float32 nanomaggies per output pixel (flux conserved when the
scale differs from the native 0.396"), bands in the model's order, FITS pixel order (row 0 south,
column 0 east, i.e. north up and east left when drawn with origin at the bottom).

JPEG (``image_source = "jpeg"``): SkyServer ImgCutout ``getjpeg`` at the model's scale and size,
channels in R,G,B order (= i,r,g filters) unless the model names channels R/G/B in another
order, values 0..255 as float32 times ``preprocess["jpeg_scale"]`` (default 1, as the DeepMerge II
SDSS arrays `galmerge.surveys.deepmerge.data` loads), rows as in the JPEG (row 0 north).

Base URLs: env ``GALMERGE_SDSS_SKYSERVER_URL`` and ``GALMERGE_SDSS_SAS_URL``, applied through
``astroquery.sdss.conf``. Options (``--survey 'sdss?workers=8&timeout=30'``): ``workers`` (4),
``attempts`` (5) or ``retries``, ``timeout`` (60 s), ``backoff`` (0.5 s), ``max_retry_after``
(300 s), ``data_release`` (17), ``frame_cache_dir`` (``none`` for memory only),
``frame_cache_gb`` (size bound of that folder: env ``GALMERGE_SDSS_FRAME_CACHE_GB``, default 4;
``inf`` for none; least recently used frame files go first), ``memory_frames``
(6 decoded frames kept), ``resolve_batch`` (25 positions per SkyServer query), ``radius_arcmin``
(0.5, lookup radius), ``check_footprint`` (JPEG: look positions up first; default true),
``max_edge_fraction`` (0.5: a stamp with more of its area past the frame edge is
``no-coverage``; less is zero-filled and counted in the summary), ``max_connection_failures``
(10 tries in a row with no answer, then the rest is ``fetch-failed: service unreachable``;
env ``GALMERGE_MAX_CONNECTION_FAILURES``; 0 = never), ``max_failed_requests`` (20 requests in
a row that failed after all their tries, then the rest is ``fetch-failed: service failing``; env
``GALMERGE_MAX_FAILED_REQUESTS``; 0 = never) and ``deadline`` (seconds per transfer, default
4 x timeout).
"""

from __future__ import annotations

import bz2
import contextlib
import io
import math
import os
import re
import sys
import threading
import time
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.data.preprocess import PreprocessSpec
from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.http import (
    CorruptResponse,
    FetchError,
    RedirectPolicy,
    RetryingClient,
    RetryPolicy,
    bounded_map,
    check_service_url,
)
from galmerge.io.paths import data_dir
from galmerge.plugin.cutouts import ClientStatus, CutoutRequest, CutoutResult

SDSS_BANDS = ("u", "g", "r", "i", "z")
NATIVE_SCALE_ARCSEC = 0.396
DEFAULT_SKYSERVER_URL = "https://skyserver.sdss.org"
DEFAULT_SAS_URL = "https://data.sdss.org/sas"
#: SDSS colour JPEGs put i, r, g into R, G, B (Lupton et al. 2004)
JPEG_NAME_CHANNEL = {"R": 0, "G": 1, "B": 2}
JPEG_MIN_SIZE = 64
FRAME_CACHE_ENV = "GALMERGE_SDSS_FRAME_CACHE_GB"
DEFAULT_FRAME_CACHE_GB = 4.0
#: the wait between tries; tests replace it (monkeypatch). Not an option: a survey spec could
#: set an option to a number, which is no function
retry_sleep: Callable[[float], None] = time.sleep
#: a corrected frame (2048 x 1489 float32 image plus calibration HDUs) is about 12 MB
#: decompressed; a bz2 stream that inflates past this is no frame (a decompression bomb)
FRAME_MAX_BYTES = 64 * 1024 * 1024
#: redirects within SkyServer's or the SAS's own host only (http -> https on it included)
REDIRECTS = RedirectPolicy(hint="if you trust that server, point skyserver_url/sas_url (or "
                           "GALMERGE_SDSS_SKYSERVER_URL/GALMERGE_SDSS_SAS_URL) at it")


def _query_suffix(sdss: Any, data_release: int) -> str:
    """SkyServer's SQL search path for a data release, from astroquery's public class
    constants (its private ``_get_query_url`` chooses among them the same way)."""
    suffix = (sdss.QUERY_URL_SUFFIX_DR_OLD if data_release < 10 else
              sdss.QUERY_URL_SUFFIX_DR_10 if data_release == 10 else
              sdss.QUERY_URL_SUFFIX_DR_NEW)
    return str(suffix).format(dr=data_release)


@dataclass(frozen=True, order=True)
class FieldKey:
    """One SDSS imaging field."""

    run: int
    rerun: int
    camcol: int
    field: int

    def frame_name(self, band: str) -> str:
        return f"frame-{band}-{self.run:06d}-{self.camcol}-{self.field:04d}.fits.bz2"


@dataclass(frozen=True)
class Settings:
    """Everything a service reads from options and environment, resolved once."""

    skyserver_url: str
    sas_url: str
    data_release: int
    workers: int
    policy: RetryPolicy
    sleep: Callable[[float], None]
    frame_cache_dir: Path | None
    frame_cache_bytes: float
    memory_frames: int
    resolve_batch: int
    radius_arcmin: float
    check_footprint: bool
    max_edge_fraction: float

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings:
        data = data_dir()
        cache = options.get("frame_cache_dir", data / "cache" / "sdss-frames")
        policy = RetryPolicy.from_options(options)
        return cls(
            skyserver_url=service_url(options, "skyserver_url", "GALMERGE_SDSS_SKYSERVER_URL",
                                      DEFAULT_SKYSERVER_URL),
            sas_url=service_url(options, "sas_url", "GALMERGE_SDSS_SAS_URL", DEFAULT_SAS_URL),
            data_release=int(options.get("data_release", 17)),
            workers=max(1, int(options.get("workers", 4))),
            policy=policy,
            sleep=retry_sleep,
            frame_cache_dir=None if cache in (None, "", False, "none") else Path(cache),
            frame_cache_bytes=frame_cache_bytes(options),
            memory_frames=max(0, int(options.get("memory_frames", 6))),
            resolve_batch=max(1, int(options.get("resolve_batch", 25))),
            radius_arcmin=float(options.get("radius_arcmin", 0.5)),
            check_footprint=bool(options.get("check_footprint", True)),
            max_edge_fraction=float(options.get("max_edge_fraction", 0.5)),
        )


def service_url(options: Mapping[str, Any], key: str, env: str, default: str) -> str:
    """A service's base URL: option ``key``, else env ``env``, else ``default``; checked before
    any work by `galmerge.io.http.check_service_url`, in one line naming where it came from."""
    if options.get(key):
        return check_service_url(str(options[key]), f"survey option {key}", default)
    if os.environ.get(env):
        return check_service_url(os.environ[env], env, default)
    return default.rstrip("/")


def frame_cache_bytes(options: Mapping[str, Any]) -> float:
    """The frame folder's size bound in bytes: option ``frame_cache_gb``, else the environment
    variable, else 4 GB; ``inf`` (or ``none``) means unbounded."""
    raw, where = options.get("frame_cache_gb"), "sdss survey option frame_cache_gb"
    if raw is None or raw == "":
        raw, where = os.environ.get(FRAME_CACHE_ENV, ""), FRAME_CACHE_ENV
    if raw is None or str(raw).strip() == "":
        return DEFAULT_FRAME_CACHE_GB * 1e9
    text = str(raw).strip().lower()
    try:
        gb = math.inf if text in ("none", "inf", "unlimited") else float(text)
    except ValueError:
        gb = math.nan
    if not gb >= 0:  # NaN too
        raise GalmergeError(
            f"{where} must be a size in GB (0 or more, or 'inf' for no bound), got '{raw}'"
        )
    return gb * 1e9


def make_cutout_service(preprocess: Mapping[str, Any], options: Mapping[str, Any]):
    """The SDSS cutout service that reproduces a model's recorded inputs, or a one-line refusal."""
    spec = PreprocessSpec.from_dict(preprocess)
    source = spec.image_source
    bands, size, scale = spec.stamp_geometry(
        "SDSS frames" if source == "frames" else "SDSS", sources=("frames", "jpeg"),
        bands=SDSS_BANDS if source == "frames" else None, size=(4, 2048), scale=(0.05, 60),
        default_scale=NATIVE_SCALE_ARCSEC)
    if source == "jpeg":
        channels = jpeg_channels(bands)
    try:
        settings = Settings.from_options(options)
        jpeg_scale = float(spec.get("jpeg_scale", 1.0))
    except (TypeError, ValueError) as exc:
        raise GalmergeError(
            f"bad sdss survey option ({exc}); numeric options: workers, attempts, retries, "
            f"timeout, backoff, max_retry_after, memory_frames, resolve_batch, radius_arcmin, "
            f"frame_cache_gb, max_connection_failures, max_failed_requests, deadline"
        ) from None
    if source == "frames":
        return SdssFrameCutouts(bands, size, scale, settings)
    return SdssJpegCutouts(bands, channels, size, scale, jpeg_scale, settings)



def jpeg_channels(bands: Sequence[str]) -> list[int]:
    """JPEG channel index per model band.

    Channel names (R, G, B in any order and case) are followed. Any other three names keep the
    JPEG's own R, G, B order: training arrays made from colour JPEGs are stored that way whatever
    filters they are labelled with -- the DeepMerge II SDSS set is labelled g,r,i, yet its
    channel means (25.8 > 21.1 > 14.3) are those of R, G, B.
    """
    if len(bands) == 3 and len(set(bands)) == 3:
        upper = [b.upper() for b in bands]
        if set(upper) <= set(JPEG_NAME_CHANNEL):
            return [JPEG_NAME_CHANNEL[b] for b in upper]
        return [0, 1, 2]
    raise GalmergeError(
        f"SDSS colour JPEGs have 3 channels (R,G,B = i,r,g) but this model expects bands "
        f"{','.join(bands) or '(none)'}; train on 3 JPEG channels or use image_source 'frames'"
    )


def _configure_astroquery(settings: Settings) -> None:
    # astroquery reads its base URLs from this config at call time.
    from astroquery.sdss import conf

    conf.skyserver_baseurl = settings.skyserver_url
    conf.sas_baseurl = settings.sas_url


def _valid_position(r: CutoutRequest) -> bool:
    return math.isfinite(r.ra) and math.isfinite(r.dec) and 0 <= r.ra < 360 and -90 <= r.dec <= 90


def _short(err: BaseException) -> str:
    return f"fetch-failed: {getattr(err, 'reason', None) or type(err).__name__}"


# --------------------------------------------------------------------------------------------
# Position -> field, through astroquery's SQL search
# --------------------------------------------------------------------------------------------
LOOKUP_COLUMNS = ("up_id", "run", "rerun", "camcol", "field")


def parse_lookup_csv(text: str) -> dict[int, FieldKey]:
    """SkyServer's CSV answer (``#Table1``, header, rows) -> field per up_id; raises on
    anything else (error text, an HTML page, a row cut short)."""
    if "error_message" in text:
        raise FetchError("SkyServer error: " + text.strip().splitlines()[-1][:80])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines or tuple(c.strip().lower() for c in lines[0].split(",")) != LOOKUP_COLUMNS:
        raise CorruptResponse("unexpected SkyServer answer")
    found = {}
    for ln in lines[1:]:
        try:
            up_id, *rest = (int(p) for p in ln.split(","))
            found[up_id] = FieldKey(*rest)
        except (ValueError, TypeError):
            raise CorruptResponse("SkyServer row cut short") from None
    return found


class FieldResolver:
    """Finds the field of the nearest primary object for many positions per SkyServer query."""

    MEMO_SIZE = 200_000

    def __init__(self, client: RetryingClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._local = threading.local()
        self._memo: dict[tuple[float, float], FieldKey | None] = {}  # answers already had
        self._memo_lock = threading.Lock()
        self.queries = 0

    def _sdss(self):
        # astroquery keeps one requests.Session per instance: one instance per thread.
        sdss = getattr(self._local, "sdss", None)
        if sdss is None:
            from astroquery.sdss import SDSSClass

            sdss = self._local.sdss = SDSSClass()
        return sdss

    def sql(self, batch: Sequence[CutoutRequest]) -> str:
        values = ",".join(f"({i},{r.ra:.7f},{r.dec:.7f})" for i, r in enumerate(batch))
        return (
            "SELECT t.up_id, p.run, p.rerun, p.camcol, p.field "
            f"FROM (VALUES {values}) AS t(up_id, ra, dec) "
            "CROSS APPLY (SELECT TOP 1 q.run, q.rerun, q.camcol, q.field "
            f"FROM dbo.fGetNearbyObjEq(t.ra, t.dec, {self._settings.radius_arcmin:g}) AS n "
            "JOIN PhotoPrimary AS q ON q.objID = n.objID ORDER BY n.distance) AS p "
            "ORDER BY t.up_id"
        )

    def resolve(self, batch: Sequence[CutoutRequest]) -> list[FieldKey | None]:
        """The field for each request, None where SDSS has no object nearby (no coverage)."""
        sql = self.sql(batch)
        s = self._settings

        # astroquery builds the request (URL and sanitized query); our client sends it, so the
        # answer is read within the transfer deadline (astroquery reads it with no bound). Not
        # query_sql: it turns an empty table *and* a maintenance page alike into None, and only
        # the first means "no coverage".
        sdss = self._sdss()
        params = sdss.query_sql_async(sql, data_release=s.data_release, get_query_payload=True)
        url = s.skyserver_url + _query_suffix(sdss, s.data_release)
        found = self._client.get(
            url, params, validate=lambda body: parse_lookup_csv(body.decode("utf-8", "replace")),
            what="position lookup")
        keys = [found.get(i) for i in range(len(batch))]
        with self._memo_lock:
            self.queries += 1
            if len(self._memo) > self.MEMO_SIZE:
                self._memo.clear()
            for r, key in zip(batch, keys, strict=True):
                self._memo[(round(r.ra, 7), round(r.dec, 7))] = key
        return keys

    def resolve_all(
        self, reqs: Sequence[CutoutRequest], pool: ThreadPoolExecutor
    ) -> Iterator[tuple[CutoutRequest, FieldKey | None, BaseException | None]]:
        """``(request, field or None, error or None)`` for every request; positions seen
        before are answered from memory, the rest in batched queries on the pool."""
        todo = []
        for r in reqs:
            with self._memo_lock:
                pos = (round(r.ra, 7), round(r.dec, 7))
                known, key = pos in self._memo, self._memo.get(pos)
            if known:
                yield r, key, None
            else:
                todo.append(r)
        n = self._settings.resolve_batch
        batches = [todo[i : i + n] for i in range(0, len(todo), n)]
        for batch, keys, exc in bounded_map(self.resolve, batches, self._settings.workers, pool):
            if exc is not None and not isinstance(exc, FetchError):
                raise exc  # a bug, not a network failure
            for j, r in enumerate(batch):
                yield r, (None if exc else keys[j]), exc


# --------------------------------------------------------------------------------------------
# Frames: download once, keep on disk and in memory
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """A corrected frame: image in nanomaggies and its celestial WCS."""

    data: np.ndarray
    wcs: Any


def decode_frame(blob: bytes) -> Frame:
    """Decode a (bz2-compressed) SDSS frame file; raises on truncated or corrupt bytes."""
    from astropy.io import fits
    from astropy.wcs import WCS

    raw = _bunzip_frame(blob) if blob[:3] == b"BZh" else blob
    if len(raw) % 2880:  # FITS files come in 2880-byte blocks; anything else is cut short
        raise ValueError("not a whole FITS file")
    with fits.HDUList.fromstring(raw) as hdul:
        hdu = hdul[0]
        if hdu.data is None or hdu.data.ndim != 2:
            raise ValueError("frame HDU0 holds no 2-D image")
        data = np.array(hdu.data, dtype=np.float32)  # native byte order, own memory
        ny, nx = data.shape
        if (hdu.header.get("NAXIS1"), hdu.header.get("NAXIS2")) != (nx, ny):
            raise ValueError("frame shape does not match its header")
        wcs = WCS(hdu.header, naxis=2)
    if not wcs.has_celestial:
        raise ValueError("frame has no celestial WCS")
    return Frame(data, wcs)


def _bunzip_frame(blob: bytes) -> bytes:
    """The decompressed frame, at most `FRAME_MAX_BYTES` in all; CorruptResponse for a stream
    that is cut short or inflates past the bound. Several concatenated bz2 streams (pbzip2,
    lbzip2) are read one after another, as ``bz2.decompress`` does."""
    parts: list[bytes] = []
    left, rest = FRAME_MAX_BYTES, blob
    while True:
        unzip = bz2.BZ2Decompressor()
        try:
            raw = unzip.decompress(rest, max_length=left)
        except (OSError, EOFError, ValueError) as exc:
            raise CorruptResponse(f"corrupt frame ({type(exc).__name__})") from None
        if not unzip.eof:
            why = ("cut short" if unzip.needs_input
                   else f"over {FRAME_MAX_BYTES >> 20} MiB unpacked")
            raise CorruptResponse(f"corrupt frame (bz2 {why})")
        parts.append(raw)
        left -= len(raw)
        rest = unzip.unused_data
        if not rest:
            return b"".join(parts)
        if left <= 0:
            raise CorruptResponse(f"corrupt frame (bz2 over {FRAME_MAX_BYTES >> 20} MiB unpacked)")


def _lock_file(fh: Any, *, shared: bool, wait: bool) -> bool:
    """flock the open file (shared or exclusive); False if ``wait`` is off and it is held.
    Without fcntl (Windows) there are no locks, and removing an open file fails there anyway."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return True
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(fh.fileno(), flags)
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without flock: fall back to unlocked use
        return True
    return True


class FrameDiskCache:
    """Frame files in one folder, bounded in size: the least recently used files go first.

    Last use is a file's mtime: set when it is written, refreshed on every read. Readers hold a
    shared ``flock`` while they read; eviction takes an exclusive non-blocking lock on a file and
    skips it when that fails or when its mtime moved since the folder was scanned, so a frame
    being read -- by a thread of this process or by another process sharing the folder (torchrun
    shards) -- is never removed under it (and on POSIX a reader that already has the file open
    keeps its bytes in any case). One thread of one process evicts at a time (``.evict.lock``).
    Eviction runs when a write takes this process's running estimate of the folder size past the
    bound, and at least every ``RESCAN_SECONDS`` of writing (other processes write too); it
    removes files until the folder is at ``LOW_WATER`` of the bound, so it does not rescan the
    folder on every write.
    """

    RESCAN_SECONDS = 60.0
    LOW_WATER = 0.9
    TMP_MAX_AGE = 3600.0  # a temporary download older than this was left by a killed run
    LOCK_NAME = ".evict.lock"
    # a frame (FieldKey.frame_name), one set aside as corrupt, or its download in progress
    # (galmerge.io.atomic's temporary name: "." + name + tag + "~host~pid~random.tmp")
    OWN_FILE = re.compile(r"^(frame-[a-z]-\d{6,}-\d+-\d{4,}\.fits\.bz2(\.corrupt)?"
                          r"|\.frame-[a-z]-\d{6,}-\d+-\d{4,}\.fits\.bz2[^/]*~.*\.tmp)$")

    def __init__(self, root: Path, max_bytes: float) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.evicted = 0
        self.kept_in_use = 0  # files eviction skipped because they were being read
        self._lock = threading.Lock()
        self._evicting = threading.Lock()
        self._estimate: float | None = None  # bytes: the last scan plus our writes since
        self._scanned_at = -math.inf

    @contextlib.contextmanager
    def reading(self, path: Path) -> Iterator[Any]:
        """The file open for reading under a shared lock (FileNotFoundError if absent)."""
        with open(path, "rb") as fh:
            _lock_file(fh, shared=True, wait=True)
            yield fh

    def read(self, path: Path) -> bytes | None:
        """The file's bytes, or None if it is not (or no longer) cached; marks it used."""
        try:
            with self.reading(path) as fh:
                blob = fh.read()
                with contextlib.suppress(OSError):
                    # last use, for LRU; set under the lock: see _remove_idle
                    os.utime(fh.fileno() if os.utime in os.supports_fd else path)
        except OSError:  # gone (evicted), or unreadable (e.g. ESTALE on NFS): download again
            return None
        return blob

    def write(self, path: Path, blob: bytes) -> None:
        """Store a file atomically (a kill never leaves half a frame), then keep the bound."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, blob)
        with self._lock:
            if self._estimate is not None:
                self._estimate += len(blob)
            due = (self._estimate is None or self._estimate > self.max_bytes
                   or time.monotonic() - self._scanned_at > self.RESCAN_SECONDS)
        if due and math.isfinite(self.max_bytes):
            self.evict()

    def _scan(self) -> list[tuple[int, int, Path, bool]]:
        """(mtime_ns, size, path, removable) of every file under the folder that this cache
        wrote (`OWN_FILE`): a folder given as frame_cache_dir may hold the user's own files,
        which are neither counted nor ever removed."""
        now = time.time_ns()
        out = []
        for folder, _dirs, names in os.walk(self.root):
            for name in names:
                if not self.OWN_FILE.match(name):
                    continue
                path = Path(folder) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                # a temporary file is some thread's download in progress, unless it is old
                removable = not name.endswith(".tmp") or (
                    now - st.st_mtime_ns > self.TMP_MAX_AGE * 1e9)
                out.append((st.st_mtime_ns, st.st_size, path, removable))
        return out

    def evict(self) -> None:
        """Remove least recently used files until the folder is under the bound.

        Waits for an eviction already running in another thread or process, then scans again:
        skipping it instead let a frame written after that scan stay over the bound."""
        with self._evicting:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic.open_nofollow(self.root / self.LOCK_NAME, "a+b") as guard:
                _lock_file(guard, shared=False, wait=True)
                files = self._scan()
                total = sum(size for _, size, _, _ in files)
                if total > self.max_bytes:
                    target = self.max_bytes * self.LOW_WATER
                    for mtime_ns, size, path, removable in sorted(files):
                        if total <= target:
                            break
                        if removable and self._remove_idle(path, mtime_ns):
                            total -= size
                with self._lock:
                    self._estimate = float(total)
                    self._scanned_at = time.monotonic()

    def _remove_idle(self, path: Path, mtime_ns: int) -> bool:
        """Unlink ``path`` unless someone reads it or used it since the scan."""
        try:
            fh = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return True  # gone already (another process, a corrupt file set aside)
        except OSError:
            return False
        with fh:
            if not _lock_file(fh, shared=False, wait=False):
                with self._lock:
                    self.kept_in_use += 1
                return False
            st = os.fstat(fh.fileno())
            if st.st_mtime_ns != mtime_ns:
                return False  # read (or rewritten) since the scan: no longer least recent
            try:
                if os.stat(path).st_ino != st.st_ino:
                    return False  # replaced by a fresh download meanwhile
                os.unlink(path)
            except FileNotFoundError:
                return True
            except OSError:  # e.g. Windows: an open file cannot be removed
                return False
        with self._lock:
            self.evicted += 1
        return True


def _stderr(message: str) -> None:
    print(f"galmerge: {message}", file=sys.stderr)


def _check_folder(root: Path) -> None:
    """`GalmergeError` when ``root`` cannot be a folder: it, or the nearest part of it that
    exists, is something else (a file). A folder that cannot be written is only warned of,
    on the first write: the disk cache is optional."""
    for part in (root, *root.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                what = "is" if part == root else f"is under {part}, which is"
                raise GalmergeError(
                    f"sdss: frame_cache_dir {root} {what} not a folder; set the sdss option "
                    "frame_cache_dir to a folder (or none: no disk cache)")
            return


class FrameStore:
    """Frames by (field, band): memory LRU, then disk cache, then one download (single-flight)."""

    N_LOCKS = 64

    def __init__(self, client: RetryingClient, settings: Settings,
                 warn: Callable[[str], None] = _stderr) -> None:
        """``warn`` is told, once, that frames cannot be written to the disk cache."""
        self._client = client
        self._settings = settings
        self._memory: OrderedDict[tuple[FieldKey, str], Frame] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks = [threading.Lock() for _ in range(self.N_LOCKS)]
        root = settings.frame_cache_dir
        if root is not None:
            _check_folder(root)
        self.disk = None if root is None else FrameDiskCache(root, settings.frame_cache_bytes)
        self.downloads = 0
        self.disk_hits = 0
        self.corrupt_cache_files = 0
        self.cache_write_failures = 0
        self._warn = warn

    def url(self, key: FieldKey, band: str) -> str:
        from astroquery.sdss import SDSSClass

        dr = self._settings.data_release
        # Same instrument rule and URL template as SDSSClass.get_images_async.
        instrument = "boss" if dr <= 12 else "eboss" if dr <= 17 else "prior-surveys/sdss4-dr17-eboss"
        return SDSSClass.IMAGING_URL_SUFFIX.format(
            base=self._settings.sas_url, dr=dr, instrument=instrument, rerun=key.rerun,
            run=key.run, camcol=key.camcol, field=key.field, band=band,
        )

    def path(self, key: FieldKey, band: str) -> Path | None:
        root = self._settings.frame_cache_dir
        if root is None:
            return None
        dr = f"dr{self._settings.data_release}"
        return root / dr / str(key.rerun) / str(key.run) / str(key.camcol) / key.frame_name(band)

    def get(self, key: FieldKey, band: str) -> Frame:
        mk = (key, band)
        with self._lock:
            frame = self._memory.get(mk)
            if frame is not None:
                self._memory.move_to_end(mk)
                return frame
        with self._key_locks[hash(mk) % self.N_LOCKS]:
            with self._lock:
                frame = self._memory.get(mk)
            if frame is None:
                frame = self._load(key, band)
                self._remember(mk, frame)
        return frame

    def _remember(self, mk: tuple[FieldKey, str], frame: Frame) -> None:
        if self._settings.memory_frames <= 0:
            return
        with self._lock:
            self._memory[mk] = frame
            self._memory.move_to_end(mk)
            while len(self._memory) > self._settings.memory_frames:
                self._memory.popitem(last=False)

    def _load(self, key: FieldKey, band: str) -> Frame:
        path = self.path(key, band)
        blob = None if path is None or self.disk is None else self.disk.read(path)
        if blob is not None:
            try:
                frame = decode_frame(blob)
                with self._lock:
                    self.disk_hits += 1
                return frame
            except Exception:  # a damaged cache file is set aside and fetched again
                with self._lock:
                    self.corrupt_cache_files += 1
                with contextlib.suppress(OSError):  # another process may have done it
                    os.replace(path, path.with_suffix(path.suffix + ".corrupt"))
        blob, frame = self._client.get(
            self.url(key, band), validate=lambda b: (b, decode_frame(b)), what="frame"
        )
        with self._lock:
            self.downloads += 1
        if path is not None and self.disk is not None:
            try:
                self.disk.write(path, blob)
            except OSError as exc:  # the disk cache is optional: the frame is in memory
                self._write_failed(exc)
        return frame

    def _write_failed(self, exc: OSError) -> None:
        with self._lock:
            self.cache_write_failures += 1
            if self.cache_write_failures > 1:
                return
        root = self._settings.frame_cache_dir
        why = exc.strerror or type(exc).__name__
        fix = (f"free space there or lower {FRAME_CACHE_ENV} (option frame_cache_gb)"
               if exc.errno in atomic.NO_SPACE_ERRNOS
               else "make it writable or set the sdss option frame_cache_dir")
        self._warn(f"sdss: cannot write frames to the frame cache {root} ({why}); this run "
                   f"keeps them in memory only; {fix} (frame_cache_dir=none: no disk cache)")


# --------------------------------------------------------------------------------------------
# Stamp geometry
# --------------------------------------------------------------------------------------------
def _sky_offset(ra: float, dec: float, pa_deg: float, sep_arcsec: float) -> tuple[float, float]:
    """The point ``sep_arcsec`` away at position angle ``pa_deg`` (east of north), on the sphere
    (the formula of astropy's ``directional_offset_by``, without building SkyCoords per stamp)."""
    d, pa, s = math.radians(dec), math.radians(pa_deg), math.radians(sep_arcsec / 3600.0)
    sin_d2 = math.sin(d) * math.cos(s) + math.cos(d) * math.sin(s) * math.cos(pa)
    d2 = math.asin(max(-1.0, min(1.0, sin_d2)))
    dra = math.atan2(math.sin(pa) * math.sin(s) * math.cos(d), math.cos(s) - math.sin(d) * sin_d2)
    return (ra + math.degrees(dra)) % 360.0, math.degrees(d2)


def cut_stamp(
    data: np.ndarray, wcs: Any, ra: float, dec: float, size: int, scale_arcsec: float
) -> np.ndarray | None:
    """A (size, size) stamp centred on (ra, dec), north up and east left in FITS pixel order.

    Cut with `Cutout2D` around the position, then sampled on the output grid through the local
    affine map of the frame WCS (TAN is flat over a stamp): nearest pixel when the grids align
    (exact frame values), bilinear otherwise, averaged over sub-samples when the output pixel
    is coarser; values are scaled by the pixel-area ratio so fluxes are conserved. Returns None
    if (ra, dec) is off the frame; pixels beyond the frame edge are 0 (frames are
    sky-subtracted) -- `cut_stamp_with_edge` also says which fraction that was.
    """
    stamp, _ = cut_stamp_with_edge(data, wcs, ra, dec, size, scale_arcsec)
    return stamp


def cut_stamp_with_edge(
    data: np.ndarray, wcs: Any, ra: float, dec: float, size: int, scale_arcsec: float
) -> tuple[np.ndarray | None, float]:
    """`cut_stamp` plus the fraction of the stamp that lies beyond the frame edge."""
    from astropy.nddata import Cutout2D
    from scipy.ndimage import map_coordinates

    ny, nx = data.shape
    x0, y0 = (float(v) for v in wcs.world_to_pixel_values(ra, dec))
    if not (math.isfinite(x0) and math.isfinite(y0)):
        return None, 1.0
    if not (-0.5 <= x0 < nx - 0.5 and -0.5 <= y0 < ny - 0.5):
        return None, 1.0
    # Frame-pixel steps for one output pixel to the west (+column) and to the north (+row).
    step = scale_arcsec
    wx, wy = wcs.world_to_pixel_values(*_sky_offset(ra, dec, 270.0, step))
    nx_, ny_ = wcs.world_to_pixel_values(*_sky_offset(ra, dec, 0.0, step))
    jac = np.array([[float(wx) - x0, float(nx_) - x0], [float(wy) - y0, float(ny_) - y0]])
    ratio = math.sqrt(abs(np.linalg.det(jac)))
    half = int(math.ceil(size * ratio * 0.75)) + 3
    # No wcs= here: the geometry comes from the frame WCS above, and copying it per stamp
    # would cost more than the cut itself.
    cut = Cutout2D(
        data, (x0, y0), (2 * half + 1, 2 * half + 1), mode="partial", fill_value=np.nan,
        copy=False,
    )
    # Cutout2D.to_cutout_position is off when a partial cutout overhangs both edges of the
    # frame (astropy 8.0); the slices are exact.
    so, sc = cut.slices_original, cut.slices_cutout
    cx, cy = x0 - so[1].start + sc[1].start, y0 - so[0].start + sc[0].start
    aligned = np.allclose(np.abs(jac), np.round(np.abs(jac)), atol=2e-3) and abs(ratio - 1) < 2e-3
    if aligned:
        jac = np.round(jac)  # exact unit steps: nearest-pixel sampling never repeats a pixel
    k = 1 if ratio <= 1.25 else int(math.ceil(ratio))
    sub = (np.arange(k) + 0.5) / k - 0.5
    grid = np.arange(size) - (size - 1) / 2.0
    cols = (grid[None, :, None, None] + sub[None, None, None, :]) * np.ones((size, 1, k, 1))
    rows = (grid[:, None, None, None] + sub[None, None, :, None]) * np.ones((1, size, 1, k))
    fx = cx + jac[0, 0] * cols + jac[0, 1] * rows
    fy = cy + jac[1, 0] * cols + jac[1, 1] * rows
    if aligned:
        fx, fy = np.floor(fx + 0.5), np.floor(fy + 0.5)  # np.round halves to even
    samples = map_coordinates(
        cut.data, [fy.ravel(), fx.ravel()], order=0 if aligned else 1, mode="constant",
        cval=np.nan, prefilter=False,
    ).reshape(size, size, k, k)
    if k > 1:
        with warnings.catch_warnings():  # off-frame pixels have only NaN samples
            warnings.simplefilter("ignore", RuntimeWarning)
            stamp = np.nanmean(samples, axis=(2, 3))
    else:
        stamp = samples[:, :, 0, 0]
    off_frame = np.isnan(stamp)
    missing = float(off_frame.mean())
    if missing:
        stamp = np.where(off_frame, 0.0, stamp)
    return (stamp * (ratio**2)).astype(np.float32), missing


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------
def _answer_options(settings: Settings) -> str:
    """The options that decide a cached answer (``no-coverage`` above all) beyond the stamp's
    kind, in the cache key when not the defaults: one run with a tiny ``radius_arcmin`` must
    not make later default runs read its ``no-coverage`` answers. Defaults add nothing, so
    caches written before stay valid."""
    extra = ""
    if settings.radius_arcmin != 0.5:
        extra += f":radius{settings.radius_arcmin:g}"
    if settings.max_edge_fraction != 0.5:
        extra += f":edge{settings.max_edge_fraction:g}"
    if not settings.check_footprint:
        extra += ":nofootprint"
    return extra




class _SdssService(ClientStatus):
    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        _configure_astroquery(settings)
        # SkyServer and the SAS answer from their own hosts: a redirect elsewhere is refused
        self.client = RetryingClient(settings.policy, name=name, sleep=settings.sleep,
                                     redirects=REDIRECTS)
        self.resolver = FieldResolver(self.client, settings)
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix=f"galmerge-{name}")

    def summary(self) -> str:
        """One line: requests, retries and failures with their reasons."""
        return self.client.summary()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SdssFrameCutouts(_SdssService):
    """Stamps cut from SDSS corrected frames (nanomaggies), one download per field and band."""

    def __init__(self, bands: Sequence[str], size: int, scale: float, settings: Settings) -> None:
        super().__init__(settings, "sdss")
        self.bands = list(bands)
        self.size = size
        self.scale = scale
        self.frames = FrameStore(self.client, settings)
        self.edge_stamps = 0  # ok stamps that reach past the frame edge (zero-filled there)
        self._edge_lock = threading.Lock()
        self.cache_key = (
            f"sdss:frames:{','.join(self.bands)}:{size}px:{scale:.4f}arcsec:"
            f"dr{settings.data_release}:v1{_answer_options(settings)}"
        )

    def fetch(self, requests: Sequence[CutoutRequest]) -> Iterator[CutoutResult]:
        todo = []
        for r in requests:
            if _valid_position(r):
                todo.append(r)
            else:
                yield CutoutResult(r.row, None, "bad-coordinates")
        by_field: dict[FieldKey, list[CutoutRequest]] = defaultdict(list)
        for r, key, exc in self.resolver.resolve_all(todo, self._pool):
            if exc is not None:
                yield CutoutResult(r.row, None, _short(exc))
            elif key is None:
                yield CutoutResult(r.row, None, "no-coverage")
            else:
                by_field[key].append(r)
        for (_key, reqs), results, exc in bounded_map(
            self._cut_field, sorted(by_field.items()), self.settings.workers, self._pool
        ):
            if exc is not None:
                if not isinstance(exc, FetchError):
                    raise exc
                for r in reqs:
                    yield CutoutResult(r.row, None, _short(exc))
            else:
                yield from results

    def _cut_field(self, item: tuple[FieldKey, list[CutoutRequest]]) -> list[CutoutResult]:
        key, reqs = item
        frames = [self.frames.get(key, band) for band in self.bands]
        out = []
        for r in reqs:
            cuts = [cut_stamp_with_edge(f.data, f.wcs, r.ra, r.dec, self.size, self.scale)
                    for f in frames]
            missing = max(m for _, m in cuts)
            if any(p is None for p, _ in cuts) or missing > self.settings.max_edge_fraction:
                out.append(CutoutResult(r.row, None, "no-coverage"))
                continue
            if missing:
                with self._edge_lock:
                    self.edge_stamps += 1
            out.append(CutoutResult(r.row, np.stack([p for p, _ in cuts]), "ok"))
        return out

    def summary(self) -> str:
        f = self.frames
        extra = f"; frames: {f.downloads} downloaded, {f.disk_hits} from disk cache"
        if f.disk is not None and f.disk.evicted:
            extra += f", {f.disk.evicted} least recently used evicted from it"
        if self.edge_stamps:
            extra += f", {self.edge_stamps} stamps zero-filled past a frame edge"
        if f.corrupt_cache_files:
            extra += f", {f.corrupt_cache_files} corrupt cache files set aside"
        return super().summary() + extra


class SdssJpegCutouts(_SdssService):
    """SkyServer ImgCutout colour JPEG stamps (0..255 times jpeg_scale), one request per galaxy."""

    def __init__(
        self,
        bands: Sequence[str],
        channels: Sequence[int],
        size: int,
        scale: float,
        jpeg_scale: float,
        settings: Settings,
    ) -> None:
        super().__init__(settings, "sdss-jpeg")
        self.bands = list(bands)
        self.channels = list(channels)
        self.size = size
        self.scale = scale
        self.jpeg_scale = jpeg_scale
        self.url = f"{settings.skyserver_url}/dr{settings.data_release}/SkyServerWS/ImgCutout/getjpeg"
        # ImgCutout draws 64..2048 pixels: ask for at least 64 (same parity) and keep the centre
        self.request_size = size if size >= JPEG_MIN_SIZE else JPEG_MIN_SIZE + size % 2
        self.cache_key = (
            f"sdss:jpeg:{','.join(self.bands)}:{size}px:{scale:.4f}arcsec:"
            f"x{jpeg_scale:g}:dr{settings.data_release}:v1{_answer_options(settings)}"
        )

    def fetch(self, requests: Sequence[CutoutRequest]) -> Iterator[CutoutResult]:
        todo = []
        for r in requests:
            if _valid_position(r):
                todo.append(r)
            else:
                yield CutoutResult(r.row, None, "bad-coordinates")
        if self.settings.check_footprint:
            covered = []
            for r, key, exc in self.resolver.resolve_all(todo, self._pool):
                if exc is not None:
                    yield CutoutResult(r.row, None, _short(exc))
                elif key is None:
                    yield CutoutResult(r.row, None, "no-coverage")
                else:
                    covered.append(r)
            todo = covered
        for r, result, exc in bounded_map(self._one, todo, self.settings.workers, self._pool):
            if exc is not None:
                if not isinstance(exc, FetchError):
                    raise exc
                yield CutoutResult(r.row, None, _short(exc))
            else:
                yield result

    def _decode(self, blob: bytes) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(blob)) as img:
            if img.format != "JPEG":
                raise ValueError(f"expected a JPEG, got {img.format}")
            img.load()  # raises on a truncated body
            rgb = np.asarray(img.convert("RGB"))
        n = self.request_size
        if rgb.shape != (n, n, 3):
            raise CorruptResponse(f"JPEG is {rgb.shape[1]}x{rgb.shape[0]}, asked {n}")
        return rgb

    def _one(self, r: CutoutRequest) -> CutoutResult:
        params = {
            "ra": f"{r.ra:.7f}", "dec": f"{r.dec:.7f}", "scale": f"{self.scale:g}",
            "width": self.request_size, "height": self.request_size,
        }
        rgb = self.client.get(self.url, params=params, validate=self._decode, what="JPEG")
        lo = (self.request_size - self.size) // 2
        rgb = rgb[lo : lo + self.size, lo : lo + self.size]
        if int(rgb.max()) <= 2:  # ImgCutout draws an empty black sky outside the footprint
            return CutoutResult(r.row, None, "no-coverage")
        image = rgb[:, :, self.channels].transpose(2, 0, 1).astype(np.float32) * self.jpeg_scale
        return CutoutResult(r.row, np.ascontiguousarray(image), "ok")


__all__ = [
    "FieldKey",
    "FieldResolver",
    "parse_lookup_csv",
    "Frame",
    "FrameDiskCache",
    "FrameStore",
    "SdssFrameCutouts",
    "SdssJpegCutouts",
    "cut_stamp",
    "cut_stamp_with_edge",
    "decode_frame",
    "frame_cache_bytes",
    "jpeg_channels",
    "make_cutout_service",
]
