"""Rubin deep-coadd cutouts through the Rubin Science Platform's IVOA services, with PyVO.

Per galaxy: (1) a TAP ObsCore query (``pyvo.dal.TAPService.run_sync``) finds the deep-coadd
images (one per band and patch) whose footprint contains the position; the patch holding every
band the model needs, nearest its centre, is chosen; (2) the image's DataLink document
(``pyvo.dal.adhoc.DatalinkQuery``, cached per image) names the ``#cutout`` service
descriptor; (3) a SODA sync request (``pyvo.dal.adhoc.SodaQuery.from_resource`` with
``CIRCLE ra dec radius``) returns a small FITS image in the coadd's own (tract) TAN WCS, which
is resampled onto a north-up, east-left grid at the model's pixel scale with galmerge's
``cut_stamp_with_edge`` (the SDSS frame path), flux conserved. Pixels are converted from nJy to
nanomaggies (1 nanomaggy = 3631 nJy), the unit of galmerge's SDSS and Legacy Surveys stamps,
unless ``units=nJy``.

Every request goes through galmerge's ``RetryingClient`` (bounded concurrency, timeouts,
backoff, 429/503 ``Retry-After``); the transfer deadline (option ``deadline``) runs from sending
a request to its body's last byte, the wait for its headers included (``HeadersDeadline``).
The token (env ``GALMERGE_RSP_TOKEN``, else the RSP's own ``ACCESS_TOKEN``) travels only as ``Authorization: Bearer`` to the configured service host; it is
never logged, never part of an error, repr or option. A refused token (HTTP 401/403) stops the
run with one line, since every later row would fail the same way.

Redirects: the RSP's SODA (and TAP) services answer a sync request with a redirect (303) to
a signed URL on the object store the result was written to (Google Cloud Storage,
``storage.googleapis.com``, for data.lsst.cloud). Redirects are followed within the API's own
host and to the hosts of option ``redirect_hosts`` (default that one; comma-separated ``host``
or ``host:port``), never from https to http; anything else stops the run with one line naming
the target. The token never follows a redirect to another host.

Base URL: option ``url``, else env ``GALMERGE_LSST_URL`` (default
``https://data.lsst.cloud/api``); TAP is ``{base}/tap``. One with user info is refused: requests
would send it as basic auth in place of the token.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests

from galmerge import (
    ClientStatus,
    CorruptResponse,
    CutoutRequest,
    CutoutResult,
    FetchError,
    GalmergeError,
    GuardedSession,
    HeadersDeadline,
    PreprocessSpec,
    RedirectPolicy,
    RetryingClient,
    RetryPolicy,
    bounded_map,
    check_service_url,
    classify_exception,
    cut_stamp_with_edge,
    http_status_error,
    read_body,
    shown_host,
    shown_url,
)

DEFAULT_URL = "https://data.lsst.cloud/api"
URL_ENV = "GALMERGE_LSST_URL"
TOKEN_ENVS = ("GALMERGE_RSP_TOKEN", "ACCESS_TOKEN")
LSST_BANDS = "ugrizy"
NATIVE_SCALE_ARCSEC = 0.2
NJY_PER_NANOMAGGY = 3631.0
#: where data.lsst.cloud's SODA/TAP sync answers redirect to: signed GCS URLs of the results
DEFAULT_REDIRECT_HOSTS = "storage.googleapis.com"
DEFAULTS: dict[str, Any] = {
    "subtype": "lsst.deep_coadd", "collection": "LSST.DP1", "obscore_table": "ivoa.ObsCore",
    "units": "nanomaggies", "max_edge_fraction": 0.5, "datalink_cache": 4096, "tap_batch": 20,
}  # fmt: skip
#: the wait between tries; tests replace it (monkeypatch). Not an option: a survey spec could
#: set an option to a number, which is no function
retry_sleep: Callable[[float], None] = time.sleep
#: ADQL identifiers and literals we splice into the query: nothing that could end a string
_SAFE = re.compile(r"^[A-Za-z0-9_.:\-]+$")


class RspAuthError(GalmergeError):
    """The Rubin Science Platform refused the token; no later row can succeed."""


def find_token() -> tuple[str, str] | None:
    """``(env name, token)`` from the first set variable of `TOKEN_ENVS`, or None."""
    for name in TOKEN_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None


def make_cutout_service(preprocess: Mapping[str, Any], options: Mapping[str, Any]):
    """An LsstCutouts for the model's bands, size and scale, or a one-line refusal."""
    if "token" in options:
        raise GalmergeError(
            "the lsst survey takes no token option (it would end up in logs); export "
            "GALMERGE_RSP_TOKEN instead"
        )
    bands, size, scale = PreprocessSpec.from_dict(preprocess).stamp_geometry(
        "the lsst survey (Rubin coadds)", bands=LSST_BANDS, sources=("frames", "fits"),
        size=(4, 2000), scale=(0.02, 20), default_scale=NATIVE_SCALE_ARCSEC)
    for key in ("subtype", "collection", "obscore_table"):
        value = str(options.get(key, DEFAULTS[key]))
        if not _SAFE.match(value):
            raise GalmergeError(f"lsst option {key}='{value}' must be a plain name "
                                f"(letters, digits, . _ : -)")
    units = str(options.get("units", DEFAULTS["units"]))
    if units not in ("nanomaggies", "nJy"):
        raise GalmergeError(f"lsst option units='{units}': choose nanomaggies or nJy")
    found = find_token()
    if found is None:
        raise GalmergeError(
            "no Rubin Science Platform token: export GALMERGE_RSP_TOKEN (make one at "
            "https://data.lsst.cloud/auth/tokens; inside the RSP ACCESS_TOKEN is already set)"
        )
    try:
        return LsstCutouts(bands, size, scale, options, token=found)
    except (TypeError, ValueError) as exc:
        raise GalmergeError(
            f"bad lsst option ({exc}); numeric options: workers, attempts, retries, timeout, "
            f"backoff, max_retry_after, max_edge_fraction, datalink_cache, tap_batch"
        ) from None


def service_base(options: Mapping[str, Any]) -> str:
    """The API base: option ``url``, else `URL_ENV`, else `DEFAULT_URL`; an http(s) address
    with a host and no user info, else one line naming the option or variable."""
    if options.get("url"):
        value, where = str(options["url"]), "lsst option url"
    elif os.environ.get(URL_ENV):
        value, where = os.environ[URL_ENV], URL_ENV
    else:
        return DEFAULT_URL
    base = check_service_url(value, where, DEFAULT_URL)
    # requests sends a URL's user info as basic auth, which replaces the token's
    # "Authorization: Bearer" header: the RSP would refuse every request, blaming the token
    if "@" in urlsplit(base).netloc:
        raise GalmergeError(
            f"{where} = {shown_url(base)!r}: its user name or password would be sent in place "
            f"of the RSP token (as basic auth); remove the 'USER:PASSWORD@' part (the token "
            f"comes from {' or '.join(TOKEN_ENVS)})")
    return base


class _RspSession(GuardedSession):
    """A requests session that adds the bearer token for the RSP host only, and a timeout, and
    follows only the redirects ``redirects`` allows.

    pyvo passes neither a timeout nor credentials per call; it takes a session, so both live
    here. The token is kept off other hosts (a DataLink document may point anywhere).
    """

    def __init__(self, origin: tuple[str, str], token: str, timeout: float,
                 redirects: RedirectPolicy | None = None) -> None:
        super().__init__(redirects)
        self._origin = origin
        self._token = token
        self._timeout = timeout

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        parts = urlsplit(str(url))
        if (parts.scheme, parts.netloc) == self._origin:
            headers = dict(kwargs.get("headers") or {})
            headers["Authorization"] = f"Bearer {self._token}"
            kwargs["headers"] = headers
        return super().request(method, url, *args, **kwargs)

    def rebuild_auth(self, prepared_request, response):  # a redirect elsewhere drops the token
        super().rebuild_auth(prepared_request, response)
        parts = urlsplit(prepared_request.url)
        if (parts.scheme, parts.netloc) != self._origin:
            prepared_request.headers.pop("Authorization", None)

    def __repr__(self) -> str:
        return f"<RSP session for {self._origin[0]}://{self._origin[1]}>"


def auth_error(code: int, token_env: str, url: str | None = None) -> RspAuthError:
    """One line for a refused token, naming the host that refused it (never the token)."""
    host = shown_host(url) if url else ""
    who = f"the Rubin Science Platform ({host})" if host else "the Rubin Science Platform"
    return RspAuthError(
        f"{who} refused the token in {token_env} (HTTP {code}); make a new one with "
        f"read:tap and read:image scopes at https://data.lsst.cloud/auth/tokens and export it"
    )


def _fetch_error(exc: BaseException, token_env: str) -> BaseException:
    """pyvo and requests failures as galmerge FetchErrors; a refused token as RspAuthError."""
    from pyvo.dal.exceptions import DALFormatError, DALQueryError, DALServiceError

    if isinstance(exc, FetchError):
        return exc
    code = None
    cause = exc
    if isinstance(exc, DALServiceError):
        code = exc.code or None
        cause = exc.cause if exc.cause is not None else exc
    elif isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
    if code in (401, 403):
        response = getattr(cause, "response", None)
        return auth_error(code, token_env, getattr(response, "url", None))
    if isinstance(cause, requests.RequestException):  # HTTP status, timeout, dropped link
        mapped = classify_exception(cause)
        if mapped is not None:
            return mapped
    if code:
        return FetchError(f"HTTP {code}", retryable=code >= 500 or code in (408, 429))
    if isinstance(exc, DALQueryError):  # the service's own words say what it disliked
        why = " ".join(str(exc.reason or "").split())[:100]
        return FetchError(f"TAP query refused ({why})" if why else "TAP query refused")
    if isinstance(exc, DALFormatError):
        return CorruptResponse("corrupt VOTable")
    if isinstance(exc, DALServiceError):
        return FetchError("service error", retryable=True)
    return exc


class LsstCutouts(ClientStatus):
    """Fetches (C, size, size) float32 stamps from Rubin deep coadds through TAP/DataLink/SODA."""

    def __init__(
        self, bands: Sequence[str], size: int, scale: float, options: Mapping[str, Any], *,
        token: tuple[str, str],
    ) -> None:
        self.bands = list(bands)
        self.size = size
        self.scale = scale
        self.subtype = str(options.get("subtype", DEFAULTS["subtype"]))
        self.collection = str(options.get("collection", DEFAULTS["collection"]))
        self.table = str(options.get("obscore_table", DEFAULTS["obscore_table"]))
        self.units = str(options.get("units", DEFAULTS["units"]))
        self.max_edge_fraction = float(options.get("max_edge_fraction",
                                                   DEFAULTS["max_edge_fraction"]))
        self.workers = max(1, int(options.get("workers", 4)))
        self.base = service_base(options)
        parts = urlsplit(self.base)
        self._origin = (parts.scheme, parts.netloc)
        hosts = str(options.get("redirect_hosts", DEFAULT_REDIRECT_HOSTS) or "")
        self.redirects = RedirectPolicy(
            hosts=frozenset(h.strip() for h in hosts.split(",") if h.strip()),
            hint="if you trust that host, add it to the lsst option redirect_hosts "
                 "(comma-separated; the token is never sent there)")
        self._token_env, self._token = token
        self.policy = RetryPolicy.from_options(options)
        self.client = RetryingClient(self.policy, name="lsst",
                                     sleep=retry_sleep)
        self._local = threading.local()
        self._sessions: list[_RspSession] = []
        self._lock = threading.Lock()
        self._datalinks: OrderedDict[str, Any] = OrderedDict()
        self._fetching: dict[str, threading.Lock] = {}
        self._datalink_cap = max(1, int(options.get("datalink_cache", DEFAULTS["datalink_cache"])))
        self.tap_batch = max(1, int(options.get("tap_batch", DEFAULTS["tap_batch"])))
        self.datalink_hits = 0
        self.tap_queries = 0
        self.edge_stamps = 0
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="galmerge-lsst")
        # a no-coverage answer depends on max_edge_fraction: a non-default one keys its own
        # answers; v2 because v1 caches may hold answers from non-default runs under the
        # default key
        edge = "" if self.max_edge_fraction == 0.5 else f":edge{self.max_edge_fraction:g}"
        self.cache_key = (
            f"lsst:{self.collection}:{self.subtype}:{','.join(self.bands)}:{size}px:"
            f"{scale:.4f}arcsec:{self.units}{edge}:v2"
        )

    def __repr__(self) -> str:  # no token here, ever, nor the URL's user info
        return (f"LsstCutouts({shown_url(self.base)!r}, bands={''.join(self.bands)}, "
                f"{self.size}px)")

    # -- sessions: one per thread, since requests.Session is not documented thread-safe --------
    def _session(self) -> _RspSession:
        s = getattr(self._local, "session", None)
        if s is None:
            s = _RspSession(self._origin, self._token, self.policy.timeout, self.redirects)
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def _call(self, fn, what: str, url: str):
        """``fn()`` under the retry policy, with pyvo's exceptions translated first; ``url``'s
        host is the one the connection breaker and the failure budget name."""

        def once():
            try:
                return fn()
            except Exception as exc:
                mapped = _fetch_error(exc, self._token_env)
                if mapped is exc:
                    raise
                raise mapped from None

        return self.client.call(once, what, where=shown_host(url) or url)

    # -- the three protocol steps --------------------------------------------------------------
    def adql(self, positions: Sequence[tuple[float, float]]) -> str:
        """The ObsCore query for the coadd images of the model's bands that contain any of
        ``positions`` (ra, dec in degrees); ``s_region`` tells which position each row holds."""
        bands = ", ".join(f"'{b}'" for b in self.bands)
        where = " OR ".join(f"CONTAINS(POINT('ICRS', {ra:.7f}, {dec:.7f}), s_region) = 1"
                            for ra, dec in positions)
        return (
            f"SELECT lsst_band, lsst_tract, lsst_patch, s_ra, s_dec, access_url, s_region "
            f"FROM {self.table} WHERE dataproduct_subtype = '{self.subtype}' "
            f"AND obs_collection = '{self.collection}' AND lsst_band IN ({bands}) "
            f"AND ({where})"
        )

    def _votable(self, method: str, url: str, params: Mapping[str, Any]) -> Any:
        """The VOTable a service answers, read within the transfer deadline (pyvo reads it
        with no bound, so a server dripping bytes would hold a worker forever)."""
        from astropy.io.votable import parse

        session = self._session()
        started = time.monotonic()
        args = {"data": dict(params)} if method == "POST" else {"params": dict(params)}
        # one deadline from sending to the last body byte: HeadersDeadline until the headers
        # came (a server dripping them), then read_body's, counted from the same start
        with HeadersDeadline(self.policy.transfer_deadline) as waited:
            response = session.request(method, url, stream=True, **args)
            if waited.cut:
                response.close()
        with response:
            if response.status_code in (401, 403):
                raise auth_error(response.status_code, self._token_env, response.url)
            if response.status_code != 200:
                raise http_status_error(response)
            body = read_body(response, self.policy.transfer_deadline, started,
                             max_bytes=self.policy.max_bytes)
        try:
            return parse(io.BytesIO(body))
        except Exception as exc:
            raise CorruptResponse("corrupt VOTable") from exc

    def _obscore(self, positions: Sequence[tuple[float, float]]) -> list[tuple]:
        from pyvo.dal import TAPService
        from pyvo.dal.tap import TAPResults

        def query():
            q = TAPService(f"{self.base}/tap", session=self._session()).create_query(
                self.adql(positions))
            # TAPResults raises DALQueryError for an error the service states in the VOTable
            table = TAPResults(self._votable("POST", q.queryurl, q), url=q.queryurl,
                               session=self._session()).to_table()
            try:
                return [(str(r["lsst_band"]), str(r["lsst_tract"]), str(r["lsst_patch"]),
                         float(r["s_ra"]), float(r["s_dec"]), str(r["access_url"]),
                         r["s_region"]) for r in table]
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                # the same query would get the same table: not worth a retry
                raise FetchError(f"malformed ObsCore answer ({_what_is_wrong(exc)})",
                                 retryable=False) from None

        with self._lock:
            self.tap_queries += 1
        return self._call(query, "ObsCore query", self.base)

    def _choose(self, ra: float, dec: float, rows: Sequence[tuple]) -> dict[str, str] | None:
        """``{band: DataLink URL}`` of the patch holding every band, nearest its centre."""
        patches: dict[tuple[str, str], dict[str, str]] = {}
        centre: dict[tuple[str, str], float] = {}
        for band, tract, patch, s_ra, s_dec, url, _ in rows:
            key = (tract, patch)
            patches.setdefault(key, {})[band] = url
            centre[key] = _separation(ra, dec, s_ra, s_dec)
        full = [k for k, v in patches.items() if all(b in v for b in self.bands)]
        if not full:
            return None
        return patches[min(full, key=lambda k: (centre[k], k))]

    def _resolve(self, batch: Sequence[CutoutRequest]) -> list[dict[str, str] | None]:
        """The images for each request of a batch (``tap_batch`` positions), one ObsCore query.

        Rows are matched to positions by their ``s_region`` polygon; when one does not parse,
        each position of the batch is asked on its own (then no matching is needed). Either
        way a position sees every patch that holds it, so the choice does not depend on the
        batching.
        """
        rows = self._obscore([(r.ra, r.dec) for r in batch])
        if len(batch) == 1:
            return [self._choose(batch[0].ra, batch[0].dec, rows)]
        polygons = [parse_polygon(row[6]) for row in rows]
        if any(p is None for p in polygons):
            return [self._choose(r.ra, r.dec, self._obscore([(r.ra, r.dec)])) for r in batch]
        return [self._choose(r.ra, r.dec, [row for row, poly in zip(rows, polygons, strict=True)
                                           if polygon_contains(poly, r.ra, r.dec)])
                for r in batch]

    def _cutout_descriptor(self, url: str) -> tuple[Any, Any]:
        """The DataLink ``#cutout`` row and its service-descriptor resource, cached per image."""
        from pyvo.dal.adhoc import DatalinkQuery, DatalinkResults

        with self._lock:
            hit = self._datalinks.get(url)
            if hit is not None:
                self._datalinks.move_to_end(url)
                self.datalink_hits += 1
                return hit
            # one fetch per document: workers cutting neighbours on one patch wait for it
            url_lock = self._fetching.setdefault(url, threading.Lock())
        with url_lock:
            with self._lock:
                hit = self._datalinks.get(url)
                if hit is not None:
                    self.datalink_hits += 1
                    return hit

            def query():
                q = DatalinkQuery(url, session=self._session())
                return DatalinkResults(self._votable("GET", q.queryurl, q), url=q.queryurl,
                                       session=self._session())

            links = self._call(query, "DataLink", url)
            # include_narrower=False: the narrower terms would be looked up in the IVOA
            # vocabulary online (a download per process, impossible on a compute node)
            row = next(iter(links.bysemantics("#cutout", include_narrower=False)), None)
            if row is None or not row.service_def:
                raise FetchError("DataLink has no #cutout service", retryable=False)
            try:
                found = (row, links.get_adhocservice_by_id(row.service_def))
            except Exception:  # pyvo: DALServiceError when no resource has that ID
                raise FetchError("DataLink #cutout names no service descriptor",
                                 retryable=False) from None
            with self._lock:
                self._datalinks[url] = found
                self._fetching.pop(url, None)
                while len(self._datalinks) > self._datalink_cap:
                    self._datalinks.popitem(last=False)
        return found

    def _soda(self, url: str, ra: float, dec: float) -> tuple[np.ndarray, Any]:
        """The SODA cutout around (ra, dec) that covers the whole stamp: (pixels, WCS)."""
        from pyvo.dal.adhoc import SodaQuery

        row, resource = self._cutout_descriptor(url)
        # half the stamp's diagonal plus two native pixels, so resampling has its neighbours
        radius = (self.size * self.scale / 2 * math.sqrt(2) + 2 * NATIVE_SCALE_ARCSEC) / 3600

        def query():
            soda = SodaQuery.from_resource(row, resource, session=self._session(),
                                           circle=(ra, dec, radius))
            # submit() and our own status check instead of execute_stream(): the response's
            # Retry-After (429/503) and a short body must reach the retry policy.
            started = time.monotonic()
            with HeadersDeadline(self.policy.transfer_deadline) as waited:
                response = soda.submit()  # through this thread's _RspSession
                if waited.cut:
                    response.close()
            with response:
                if response.status_code in (401, 403):
                    raise auth_error(response.status_code, self._token_env, response.url)
                if response.status_code != 200:
                    raise http_status_error(response)
                # whole within the transfer deadline, and as long as Content-Length says
                body = read_body(response, self.policy.transfer_deadline, started,
                                 max_bytes=self.policy.max_bytes)
            try:
                return _decode_image(body)
            except FetchError:
                raise
            except Exception as exc:
                raise CorruptResponse(f"corrupt cutout ({type(exc).__name__})") from exc

        return self._call(query, "SODA cutout", _access_url(resource) or url)

    def _one(self, job: tuple[CutoutRequest, dict[str, str]]) -> CutoutResult:
        r, images = job
        planes = []
        worst = 0.0
        for band in self.bands:
            data, wcs = self._soda(images[band], r.ra, r.dec)
            stamp, missing = cut_stamp_with_edge(data, wcs, r.ra, r.dec, self.size, self.scale)
            if stamp is None or missing > self.max_edge_fraction or not stamp.any():
                return CutoutResult(r.row, None, "no-coverage")
            worst = max(worst, missing)
            planes.append(stamp)
        if worst:
            with self._lock:
                self.edge_stamps += 1
        cube = np.stack(planes).astype(np.float32)
        if self.units == "nanomaggies":
            cube /= np.float32(NJY_PER_NANOMAGGY)
        return CutoutResult(r.row, cube, "ok")

    # -- the CutoutService protocol ------------------------------------------------------------
    def fetch(self, requests: Sequence[CutoutRequest]) -> Iterator[CutoutResult]:
        todo = []
        for r in requests:
            ok = math.isfinite(r.ra) and math.isfinite(r.dec) and 0 <= r.ra < 360
            if ok and -90 <= r.dec <= 90:
                todo.append(r)
            else:
                yield CutoutResult(r.row, None, "bad-coordinates")
        batches = [todo[i : i + self.tap_batch] for i in range(0, len(todo), self.tap_batch)]
        jobs = []
        for batch, found, exc in bounded_map(self._resolve, batches, self.workers, self._pool):
            if exc is not None:
                if not isinstance(exc, FetchError):
                    raise exc
                for r in batch:
                    yield CutoutResult(r.row, None, f"fetch-failed: {exc.reason}")
                continue
            for r, images in zip(batch, found, strict=True):
                if images is None:
                    yield CutoutResult(r.row, None, "no-coverage")
                else:
                    jobs.append((r, images))
        for (r, _), result, exc in bounded_map(self._one, jobs, self.workers, self._pool):
            if exc is None:
                yield result
            elif isinstance(exc, FetchError):
                yield CutoutResult(r.row, None, f"fetch-failed: {exc.reason}")
            else:
                raise exc

    def summary(self) -> str:
        """One line: requests, retries and failures with their reasons; cache reuse."""
        extra = (f"; {self.tap_queries} ObsCore queries, DataLink documents reused "
                 f"{self.datalink_hits} times")
        if self.edge_stamps:
            extra += f", {self.edge_stamps} stamps zero-filled past a coadd edge"
        return self.client.summary() + extra

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()
        self.client.close()

    def __enter__(self) -> LsstCutouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _what_is_wrong(exc: Exception) -> str:
    """A few words on a table that is not the ObsCore shape asked for."""
    if isinstance(exc, KeyError):
        return f"no column {exc.args[0]}" if exc.args else "a column is missing"
    return " ".join(str(exc).split())[:80] or type(exc).__name__


def _access_url(resource: Any) -> str | None:
    """The ``accessURL`` of a DataLink service descriptor (the SODA endpoint), as pyvo reads
    it (the last of that name); None when it has none (pyvo then refuses the query, inside the
    retry policy)."""
    found = None
    for param in getattr(resource, "params", ()):
        if getattr(param, "name", None) == "accessURL":
            found = param.value
    if not found:
        return None
    return found.decode() if isinstance(found, bytes) else str(found)


def _separation(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Angular distance in degrees (haversine)."""
    p1, p2 = math.radians(dec1), math.radians(dec2)
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(ra2 - ra1) / 2) ** 2)
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))


def parse_polygon(region: Any) -> list[tuple[float, float]] | None:
    """(ra, dec) vertices of an ObsCore ``s_region``: STC-S text (``POLYGON ICRS ra dec ...``)
    or a DALI polygon (a flat array of numbers); None when it is neither."""
    try:
        if isinstance(region, bytes):
            region = region.decode()
        if isinstance(region, str):
            words = region.split()
            if not words or words[0].upper() != "POLYGON":
                return None
            numbers = []
            for w in words[1:]:
                try:
                    numbers.append(float(w))
                except ValueError:
                    if numbers:  # a word after the coordinates: not one plain polygon
                        return None
        else:
            numbers = [float(v) for v in np.ravel(np.ma.filled(np.ma.asarray(region, dtype=float),
                                                                np.nan))]
    except (TypeError, ValueError):
        return None
    if len(numbers) < 6 or len(numbers) % 2 or not all(math.isfinite(v) for v in numbers):
        return None
    return list(zip(numbers[0::2], numbers[1::2], strict=True))


def polygon_contains(vertices: Sequence[tuple[float, float]], ra: float, dec: float) -> bool:
    """Whether (ra, dec) lies inside a small spherical polygon: the vertices are projected on
    the plane tangent at the point (gnomonic: great-circle edges stay straight) and the edges
    crossing the ray from the origin along +x are counted."""
    r0, d0 = math.radians(ra), math.radians(dec)
    xy = []
    for vra, vdec in vertices:
        r, d = math.radians(vra), math.radians(vdec)
        cos_c = math.sin(d0) * math.sin(d) + math.cos(d0) * math.cos(d) * math.cos(r - r0)
        if cos_c <= 0:  # a vertex 90 degrees away: no patch around this point
            return False
        xy.append((math.cos(d) * math.sin(r - r0) / cos_c,
                   (math.cos(d0) * math.sin(d) - math.sin(d0) * math.cos(d) * math.cos(r - r0))
                   / cos_c))
    inside = False
    for (x1, y1), (x2, y2) in zip(xy, xy[1:] + xy[:1], strict=True):
        if (y1 > 0) != (y2 > 0) and x1 - y1 * (x2 - x1) / (y2 - y1) > 0:
            inside = not inside
    return inside


def _decode_image(blob: bytes) -> tuple[np.ndarray, Any]:
    """The first 2-D image HDU of a SODA answer and its celestial WCS.

    Rubin cutouts are written like afw Exposures: an empty primary HDU, then the image (and,
    by request, mask and variance) as extensions; NO_DATA pixels are NaN.
    """
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    if len(blob) % 2880:  # FITS files come in 2880-byte blocks; anything else is cut short
        raise ValueError("not a whole FITS file")
    with fits.open(io.BytesIO(blob)) as hdul:
        for hdu in hdul:
            if hdu.data is not None and np.ndim(hdu.data) == 2:
                data = np.array(hdu.data, dtype=np.float64)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FITSFixedWarning)
                    wcs = WCS(hdu.header).celestial
                if not wcs.has_celestial:
                    raise ValueError("cutout has no celestial WCS")
                return data, wcs
    raise ValueError("no image HDU in the cutout")
