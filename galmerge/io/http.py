"""Robust HTTP for survey services: timeouts, retries with backoff, HTTP 429, bounded concurrency.

Every cutout service fetches through a `RetryingClient`: it retries 5xx answers, timeouts,
dropped connections and truncated or corrupt bodies (a ``validate`` callback that raises marks
a body corrupt), honours ``Retry-After`` on 429/503 for every worker thread at once, and keeps
counts for a closing failure summary. ``sleep`` is injectable so tests run without waiting.

Two bounds keep a dead or hostile service from holding a run for days:

- a circuit breaker: after ``max_connection_failures`` consecutive tries that got no answer at
  all (refused, reset, timed out; default 10, option ``max_connection_failures``, env
  ``GALMERGE_MAX_CONNECTION_FAILURES``, 0 = never), every call fails at once with
  `ServiceUnreachable` (``fetch-failed: service unreachable``) instead of retrying;
- a failure budget: after ``max_failed_requests`` requests in a row that each failed after all
  their tries (HTTP 5xx, corrupt bodies, deadlines; default 20, option ``max_failed_requests``,
  env ``GALMERGE_MAX_FAILED_REQUESTS``, 0 = never), every call fails at once with
  `ServiceFailing` (``fetch-failed: service failing``): a service that answers, but badly, no
  longer costs ``attempts x timeout`` for every galaxy of a catalogue;
- a wall-clock deadline per transfer (option ``deadline``, default 4 x ``timeout``), from
  sending the request to the body's last byte: a server dripping its headers or its body byte
  by byte is cut off when it passes, whatever its Content-Length.

A body is also bounded in size (`RetryPolicy.max_bytes`, counted after any gzip/deflate
decoding): an endless or decompression-bomb answer fails instead of filling memory.

Redirects are followed only as a `RedirectPolicy` allows (`GuardedSession`): within the same
host, and from http to https on it; never to a scheme other than http(s), never from https to
http, and to another host only when the service names it (the lsst plugin, whose cutouts come
from an object store). A refused redirect is `RedirectRefused`: one line naming where the
service tried to send the request and how to allow it, which stops the run (every later
request would be sent the same way). A followed redirect's own body is read for at most
64 KiB and 10 s, then its connection is dropped.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from galmerge.errors import GalmergeError
from galmerge.io.provenance import hide_userinfo
from galmerge.plugin.options import RETRY_OPTIONS

T = TypeVar("T")
R = TypeVar("R")

#: the largest body `read_body` keeps by default (decoded bytes); real answers are far smaller
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

#: statuses worth another try: server trouble, rate limits, gateway hiccups
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524})


class FetchError(Exception):
    """A request that failed; ``str(exc)`` is a short reason fit for a ``fetch-failed:`` status."""

    def __init__(
        self, reason: str, *, retryable: bool = False, retry_after: float | None = None,
        detail: str = "",
    ) -> None:
        full = f"{reason} ({detail})" if detail else reason
        super().__init__(full)
        self.reason = full
        self.kind = reason  # without the service's words: what the closing summary counts
        self.retryable = retryable
        self.retry_after = retry_after


def _env_count(name: str, default: int) -> int:
    """A count of 0 or more from the environment variable ``name``, else ``default``; a
    `GalmergeError` naming the variable for anything else (not a ValueError, which the surveys
    report as a bad survey option)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise GalmergeError(f"environment variable {name} must be a whole number, 0 or more "
                            f"(0 = never), got {raw!r}; fix or unset it")
    return int(raw)


UNREACHABLE_STATUS = "fetch-failed: service unreachable"
MAX_CONNECTION_FAILURES_ENV = "GALMERGE_MAX_CONNECTION_FAILURES"
FAILING_STATUS = "fetch-failed: service failing"
MAX_FAILED_REQUESTS_ENV = "GALMERGE_MAX_FAILED_REQUESTS"


class ServiceUnreachable(FetchError):
    """The circuit breaker is open: the service did not answer many tries in a row."""

    def __init__(self, where: str) -> None:
        super().__init__("service unreachable", retryable=False)
        self.where = where


class ServiceFailing(FetchError):
    """The failure budget is spent: many requests in a row failed after all their tries."""

    def __init__(self, why: str) -> None:
        super().__init__("service failing", retryable=False)
        self.why = why


class CorruptResponse(FetchError):
    """A body that arrived whole but does not decode (bad bz2/FITS/JPEG); worth a retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=True)


class RedirectRefused(GalmergeError):
    """A redirect the `RedirectPolicy` does not allow; it was not followed."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class RedirectPolicy:
    """Which redirects a `GuardedSession` follows.

    Allowed: to the same host and port (the same origin), and from http to https on the same
    host (default ports, or the same port). Refused: another scheme than http(s), https to http,
    and another host unless ``hosts`` names it (``host`` for any port, or ``host:port``).
    ``hint`` ends the refusal's line: how a user who trusts the new host allows it (usually
    the option or variable that points the service at that host).
    """

    hosts: frozenset[str] = frozenset()
    hint: str = ""

    def check(self, source: str, target: str) -> None:
        """`RedirectRefused` unless a redirect from ``source`` to ``target`` (absolute URLs)
        is allowed."""
        src, dst = urlsplit(source), urlsplit(target)
        why = self._refusal(src, dst)
        if why is not None:
            hint = f"; {self.hint}" if self.hint else ""
            raise RedirectRefused(f"{shown_url(source)} redirected to {shown_url(target)}, not "
                                  f"followed ({why}){hint}")

    def _refusal(self, src: Any, dst: Any) -> str | None:
        scheme = dst.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            return "not an http(s) address"
        if src.scheme.lower() == "https" and scheme == "http":
            return "from https to plain http"
        try:
            src_port = src.port or _DEFAULT_PORTS.get(src.scheme.lower())
            dst_port = dst.port or _DEFAULT_PORTS[scheme]
        except ValueError:  # a port that is no number
            return "a malformed address"
        host = (dst.hostname or "").lower()
        if host == (src.hostname or "").lower() and (
                dst_port == src_port or (src_port, dst_port) == (80, 443)):
            return None
        named = {h.strip().lower() for h in self.hosts}
        if host and (host in named or f"{host}:{dst_port}" in named):
            return None
        return "another host"


def shown_url(url: str) -> str:
    """One URL for a message: its user info as ``***`` (`galmerge.io.provenance.hide_userinfo`,
    ``http://***@host/path``), its query as ``?...`` (it may hold a signature)."""
    # hidden before it is split: a password holding '#' or '?' would end the split's netloc
    parts = urlsplit(hide_userinfo(url))
    query = "?..." if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + query


def check_service_url(value: str, where: str, example: str) -> str:
    """A service's base URL as given (``where``: the option or environment variable it came
    from), stripped and without a trailing '/', once it has an http(s) scheme, a host and a
    valid port; else a one-line `GalmergeError` naming ``where`` and an ``example``. Checked
    before any request: unchecked, a typo made every row `fetch-failed`, blaming the fetches."""
    text = str(value).strip()
    try:
        parts = urlsplit(text)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and (
            parts.port is None or parts.port > 0)
    except ValueError:  # a port that is no number or past 65535, a malformed [IPv6] host
        ok = False
    if not ok:
        raise GalmergeError(f"{where} = {hide_userinfo(str(value))!r}: give an http(s) address "
                            f"with a host (and a valid port), e.g. {example}, or unset it")
    return text.rstrip("/")


def shown_host(url: str) -> str:
    """``host[:port]`` of ``url`` for a message or a count: never its user name or password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{host}{port}"


class GuardedSession(requests.Session):
    """A `requests.Session` that follows only the redirects its `RedirectPolicy` allows.

    The check sits in ``get_redirect_target``, requests' documented place for redirect logic,
    so a refused redirect is raised before its body is read or its target contacted. It also
    runs when a caller passes ``allow_redirects=False`` (requests then asks it for
    ``Response.next``): a guarded session refuses a disallowed redirect either way.
    """

    def __init__(self, redirects: RedirectPolicy | None = None) -> None:
        super().__init__()
        self.redirects = redirects or RedirectPolicy()
        # connections a `HeadersDeadline` can end while they wait for an answer's headers
        self.mount("https://", _DeadlineAdapter())
        self.mount("http://", _DeadlineAdapter())

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target:
            try:
                self.redirects.check(str(resp.url), urljoin(str(resp.url), target))
            except RedirectRefused:
                resp.close()
                raise
            _read_redirect_body(resp)
        return target


# A redirect's own body is never used, but requests reads it whole before following (to reuse
# the connection) with no bound but the per-read timeout: a server streaming or dripping it
# would hold the worker forever. At most this much is read, within this many seconds; past
# either the connection is dropped instead, and the redirect is followed all the same.
REDIRECT_BODY_MAX_BYTES = 1 << 16
REDIRECT_BODY_SECONDS = 10.0


def _read_redirect_body(resp: requests.Response) -> None:
    # What was read is kept as the response's content (requests' own attribute, as its
    # ``content`` property fills it), so ``resp.content``, ``history[i].content`` and an
    # ``allow_redirects=False`` caller's body work as with a plain session; past either bound
    # the body is empty.
    try:
        resp._content = read_body(resp, REDIRECT_BODY_SECONDS,
                                  max_bytes=REDIRECT_BODY_MAX_BYTES)
    except FetchError:
        resp.close()
        resp._content = b""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Delays: ``backoff * 2**(attempt-1)``, capped, with ± ``jitter`` fraction."""

    # the defaults of the options surveys declare (`galmerge.plugin.options.RETRY_OPTIONS`)
    attempts: int = RETRY_OPTIONS["attempts"].default
    backoff: float = RETRY_OPTIONS["backoff"].default
    backoff_max: float = RETRY_OPTIONS["backoff_max"].default
    jitter: float = RETRY_OPTIONS["jitter"].default
    timeout: float = RETRY_OPTIONS["timeout"].default
    max_retry_after: float = RETRY_OPTIONS["max_retry_after"].default
    seed: int = RETRY_OPTIONS["seed"].default
    max_connection_failures: int = 10  # RETRY_OPTIONS: None = GALMERGE_MAX_CONNECTION_FAILURES, else 10
    # Requests in a row that each failed after all their tries before fetching stops (0: never;
    # RETRY_OPTIONS: None = GALMERGE_MAX_FAILED_REQUESTS, else 20). In a row, not in total: a
    # long run over a working but flaky service collects scattered failures and must not stop
    # for them, while failures with no success between them mean every request is failing.
    # Requests, not galaxies: a request is what costs ``attempts x timeout`` (one SDSS frame or
    # position lookup serves many galaxies, one Rubin galaxy takes several requests). At the
    # defaults (5 tries, 7.5 s of backoff, 4 workers) 20 lets about 40 s of 5xx answers pass,
    # and stops a service whose every body stalls after 20 x 5 x deadline / 4, not N galaxies.
    max_failed_requests: int = 20
    deadline: float | None = None  # seconds per transfer; None: 4 x timeout
    max_bytes: int = DEFAULT_MAX_BYTES  # largest body kept, after decoding

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RetryPolicy:
        """Read ``retries``/``attempts``, ``backoff``, ``timeout``, ``max_retry_after``, ``seed``,
        ``max_connection_failures`` (else env GALMERGE_MAX_CONNECTION_FAILURES),
        ``max_failed_requests`` (else env GALMERGE_MAX_FAILED_REQUESTS) and ``deadline``.

        ValueError names the first option out of range (a timeout of 0 would fail every row).
        """
        attempts = options.get("attempts")
        if attempts is None and "retries" in options:
            attempts = int(options["retries"]) + 1
        breaker = options.get("max_connection_failures")
        if breaker is None:
            breaker = _env_count(MAX_CONNECTION_FAILURES_ENV, cls.max_connection_failures)
        budget = options.get("max_failed_requests")
        if budget is None:
            budget = _env_count(MAX_FAILED_REQUESTS_ENV, cls.max_failed_requests)
        deadline = options.get("deadline")
        policy = cls(
            attempts=int(attempts if attempts is not None else cls.attempts),
            backoff=float(options.get("backoff", cls.backoff)),
            backoff_max=float(options.get("backoff_max", cls.backoff_max)),
            jitter=float(options.get("jitter", cls.jitter)),
            timeout=float(options.get("timeout", cls.timeout)),
            max_retry_after=float(options.get("max_retry_after", cls.max_retry_after)),
            seed=int(options.get("seed", cls.seed)),
            max_connection_failures=int(breaker),
            max_failed_requests=int(budget),
            deadline=None if deadline in (None, "") else float(deadline),
        )
        policy.check()
        return policy

    def check(self) -> None:
        """ValueError naming the first setting out of range."""
        positive = {"timeout": self.timeout, "deadline": self.deadline}
        for name, value in positive.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        for name, value in (("backoff", self.backoff), ("backoff_max", self.backoff_max),
                            ("max_retry_after", self.max_retry_after)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be 0 or more seconds, got {value}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1 (retries at least 0), got "
                             f"{self.attempts}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {self.max_bytes}")
        if self.max_connection_failures < 0:
            raise ValueError("max_connection_failures must be 0 (never give up) or more, got "
                             f"{self.max_connection_failures}")
        if self.max_failed_requests < 0:
            raise ValueError("max_failed_requests must be 0 (never stop) or more, got "
                             f"{self.max_failed_requests}")

    @property
    def transfer_deadline(self) -> float:
        return self.deadline if self.deadline is not None else 4 * self.timeout


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def classify_exception(exc: BaseException) -> FetchError | None:
    """A FetchError saying whether a retry may help, or None for an exception that is no
    network trouble (a bug: the caller re-raises it with its traceback)."""
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return http_status_error(exc.response)
    if isinstance(exc, requests.Timeout):
        return _no_answer(FetchError("timeout", retryable=True))
    if isinstance(
        exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
    ):
        return FetchError("connection dropped mid-body", retryable=True)
    if isinstance(exc, requests.ConnectionError):
        return _no_answer(FetchError("connection failed", retryable=True))
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return _no_answer(FetchError(type(exc).__name__, retryable=True))
    if isinstance(exc, requests.RequestException):
        return FetchError(type(exc).__name__, retryable=False)
    return None


def _no_answer(err: FetchError) -> FetchError:
    """Mark a failure in which the service gave no answer at all (what the breaker counts)."""
    err.no_answer = True  # type: ignore[attr-defined]
    return err


def http_status_error(response: requests.Response) -> FetchError:
    """A FetchError for a non-200 answer; 429/503 carry their Retry-After. A request the
    service refuses for good (4xx) carries the service's own short words where it gave any
    (`service_words`), e.g. ``HTTP 400 (Column not found: lsst_band)``."""
    status = response.status_code
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    retryable = status in RETRY_STATUSES
    detail = service_words(response) if 400 <= status < 500 and not retryable else ""
    return FetchError(f"HTTP {status}", retryable=retryable, retry_after=retry_after,
                      detail=detail)


WORDS_BYTES = 64 * 1024  # an error document is small; a bigger one is not read for its words
WORDS_SECONDS = 5.0
WORDS_CHARS = 100
_QUERY_STATUS = re.compile(
    r"<INFO\b[^>]*\bname\s*=\s*[\"']QUERY_STATUS[\"'][^>]*(?<!/)>(.*?)</INFO>", re.S | re.I)


def service_words(response: requests.Response) -> str:
    """The reason a service gives in the body of a refusal, in at most 100 printable
    characters; "" where it gives none that reads as words (an HTML page, a binary body, a
    body that does not come within 5 s or 64 KiB).

    A VOTable error document (IVOA DALI: ``<INFO name="QUERY_STATUS" value="ERROR">``, what a
    TAP, DataLink or SODA service answers) gives that INFO's text, a ``text/plain`` body its
    text (an empty ``<INFO .../>`` gives none). Read with a regular expression rather than a
    VOTable parser: only this one element is wanted, from a document the service may have
    left malformed."""
    try:  # iter_content (read_body) gives a body requests already read from memory too
        body = read_body(response, WORDS_SECONDS, max_bytes=WORDS_BYTES)
    except Exception:  # noqa: BLE001 - no words can be read: the status alone must do
        return ""
    text = body[:WORDS_BYTES].decode("utf-8", "replace")
    found = _QUERY_STATUS.search(text)
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if found:
        text = html.unescape(re.sub(r"<[^>]*>", " ", found.group(1)))
    elif ctype != "text/plain":
        return ""
    words = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return words if len(words) <= WORDS_CHARS else words[: WORDS_CHARS - 3].rstrip() + "..."


@dataclass
class FetchStats:
    """Counts kept across threads for the closing summary."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    waited_s: float = 0.0
    retry_reasons: Counter[str] = field(default_factory=Counter)
    failure_reasons: Counter[str] = field(default_factory=Counter)

    def summary(self, name: str) -> str:
        parts = [f"{name}: {self.requests} requests"]
        if self.retries:
            why = ", ".join(f"{n} {r}" for r, n in self.retry_reasons.most_common())
            parts.append(f"{self.retries} retried ({why})")
        if self.failures:
            why = ", ".join(f"{n} {r}" for r, n in self.failure_reasons.most_common())
            parts.append(f"{self.failures} failed after retries ({why})")
        else:
            parts.append("none failed")
        if self.waited_s:
            parts.append(f"{self.waited_s:.1f} s spent waiting")
        return "; ".join(parts)


class RetryingClient:
    """Retries requests per a `RetryPolicy`; safe to share between worker threads."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        name: str = "http",
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str | None = None,
        redirects: RedirectPolicy | None = None,
    ) -> None:
        """``redirects``: which redirects its sessions follow (default: the same host only)."""
        self.policy = policy or RetryPolicy()
        self.redirects = redirects or RedirectPolicy()
        self.name = name
        self.stats = FetchStats()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._rng = random.Random(self.policy.seed)
        self._hold_until = 0.0  # monotonic time before which nobody sends (after a 429)
        self._no_answer_run = 0  # consecutive tries that got no answer (the breaker's count)
        self.unreachable: str | None = None  # set when the breaker opened: what was dead
        self._failed_run = 0  # consecutive requests that failed after all their tries
        self.failing: str | None = None  # set when the failure budget was spent: what failed
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        if user_agent is None:
            from galmerge import __version__

            user_agent = f"galmerge/{__version__} (+python-requests)"
        self._user_agent = user_agent

    # -- sessions: one per thread, since requests.Session is not documented thread-safe ----
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = GuardedSession(self.redirects)
            s.headers["User-Agent"] = self._user_agent
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    # -- retry core ---------------------------------------------------------------------------
    def call(
        self,
        fn: Callable[[], T],
        what: str = "request",
        *,
        progressed: Callable[[], bool] | None = None,
        on_retry: Callable[[FetchError, float], None] | None = None,
        where: str | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds or the policy gives up; raises FetchError then.

        ``progressed`` (for resumable transfers) is asked after each retryable failure: when
        it answers True the failed try moved the work forward, so the attempt count starts
        afresh. ``on_retry(error, delay)`` is told before each wait, e.g. to show a long one.
        ``where`` (a host) names the service in the breaker's message.
        """
        policy = self.policy
        attempt = 0
        while True:
            attempt += 1
            self._wait_for_hold()
            self._check_breaker(what)
            with self._lock:
                self.stats.requests += 1
            try:
                result = fn()
            except Exception as exc:
                err = classify_exception(exc)
                if err is None:  # not a network problem: a bug keeps its traceback
                    raise
                moved = err.retryable and progressed is not None and progressed()
                if moved:
                    attempt = 0  # a resumed transfer got further: its tries start again
                self._count_answer(not getattr(err, "no_answer", False) or moved, where)
                if self.unreachable is not None:
                    self._check_breaker(what)
                if not err.retryable or attempt >= policy.attempts:
                    with self._lock:
                        self.stats.failures += 1
                        self.stats.failure_reasons[err.kind] += 1
                    # all its tries spent, the last answered (5xx, corrupt, stalled): what the
                    # failure budget counts; no answer at all is the breaker's to count
                    # (max_connection_failures), so that its 0 ("never") holds
                    if err.retryable and not getattr(err, "no_answer", False):
                        self._count_failed(err, where)
                    if isinstance(exc, FetchError):
                        raise
                    raise err from exc
                with self._lock:
                    self.stats.retries += 1
                    self.stats.retry_reasons[err.kind] += 1
                if err.retry_after is not None:
                    # A rate limit applies to the whole client: every thread holds back.
                    delay = min(err.retry_after, policy.max_retry_after)
                    with self._lock:
                        self._hold_until = max(self._hold_until, time.monotonic() + delay)
                        self._local.held = self._hold_until  # this thread waits right here
                else:
                    delay = self._backoff(max(attempt, 1))
                if on_retry is not None:
                    on_retry(err, delay)
                self._pause(delay)
            else:
                self._count_answer(True, where)
                with self._lock:
                    self._failed_run = 0
                return result

    def _count_answer(self, answered: bool, where: str | None) -> None:
        limit = self.policy.max_connection_failures
        with self._lock:
            self._no_answer_run = 0 if answered else self._no_answer_run + 1
            if limit and self._no_answer_run >= limit and self.unreachable is None:
                self.unreachable = where or self.name

    def _count_failed(self, err: FetchError, where: str | None) -> None:
        """Count a request that failed after all its tries; a non-retryable answer (one row's
        404, a refused query) is neither counted nor a success: it cost one quick try."""
        limit = self.policy.max_failed_requests
        with self._lock:
            self._failed_run += 1
            if limit and self._failed_run >= limit and self.failing is None:
                self.failing = (f"{where or self.name}: {self._failed_run} requests in a row "
                                f"failed after {self.policy.attempts} tries each (last: "
                                f"{err.kind})")

    def _check_breaker(self, what: str) -> None:
        if self.unreachable is not None:
            with self._lock:
                self.stats.failures += 1
                self.stats.failure_reasons["service unreachable"] += 1
            raise ServiceUnreachable(self.unreachable)
        if self.failing is not None:
            with self._lock:
                self.stats.failures += 1
                self.stats.failure_reasons["service failing"] += 1
            raise ServiceFailing(self.failing)

    def _backoff(self, attempt: int) -> float:
        p = self.policy
        base = min(p.backoff * (2 ** (attempt - 1)), p.backoff_max)
        with self._lock:
            factor = 1.0 + p.jitter * (2.0 * self._rng.random() - 1.0)
        return max(0.0, base * factor)

    def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self.stats.waited_s += seconds
        self._sleep(seconds)

    def _wait_for_hold(self) -> None:
        with self._lock:
            remaining = self._hold_until - time.monotonic()
            owner_slept = getattr(self._local, "held", 0.0) >= self._hold_until
        if remaining > 0 and not owner_slept:
            self._local.held = self._hold_until
            self._pause(remaining)

    # -- HTTP GET with body checks ----------------------------------------------------------
    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        validate: Callable[[bytes], T] | None = None,
        what: str = "download",
    ) -> T | bytes:
        """GET ``url`` with retries; returns ``validate(body)`` (or the body when None).

        A body shorter than its Content-Length or one ``validate`` rejects (by raising any
        exception) counts as corrupt and is fetched again.
        """

        def once() -> Any:
            body = self._get_body(url, params)
            if validate is None:
                return body
            try:
                return validate(body)
            except FetchError:
                raise
            except Exception as exc:  # any decode error means the bytes are bad
                raise CorruptResponse(f"corrupt {what} ({type(exc).__name__})") from exc

        return self.call(once, what, where=shown_host(url))

    def _get_body(self, url: str, params: Mapping[str, Any] | None) -> bytes:
        started = time.monotonic()
        limit = self.policy.transfer_deadline
        # one deadline from sending to the last body byte: HeadersDeadline until the headers
        # came, then read_body's watchdog, counted from the same start
        with HeadersDeadline(limit) as waited:
            r = self.session().get(url, params=params, timeout=self.policy.timeout,
                                   stream=True)
            if waited.cut:
                r.close()
        with r:
            if r.status_code != 200:
                raise http_status_error(r)
            return read_body(r, limit, started, max_bytes=self.policy.max_bytes)

    def summary(self) -> str:
        with self._lock:
            return self.stats.summary(self.name)


def read_body(
    r: requests.Response,
    limit: float,
    started: float | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """The body of a streamed response (``stream=True``), complete within ``limit`` seconds of
    wall clock from ``started`` (`time.monotonic`; default now: a server dripping bytes still
    ends) and as long as its Content-Length says; a retryable `FetchError` otherwise.

    A body past ``max_bytes`` (counted after gzip/deflate decoding) is a `FetchError` that is
    not retried: the same server would send the same oversized answer again."""
    deadline = (time.monotonic() if started is None else started) + limit
    # A read blocks until a whole chunk arrives, so checking the clock between chunks is not
    # enough: a watchdog shuts the response's socket when the deadline passes.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _shutdown(r)

    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    watchdog.daemon = True
    watchdog.start()
    chunks = []
    size = 0
    try:
        for chunk in r.iter_content(chunk_size=1 << 16):
            size += len(chunk)
            if size > max_bytes:
                break
            chunks.append(chunk)
            if time.monotonic() > deadline:
                expired.set()
                break
    except (requests.ConnectionError, requests.Timeout, OSError) as exc:
        if not expired.is_set():
            # the headers came: a service that answered and then went silent or dropped the
            # connection mid-body (requests wraps urllib3's read timeout as ConnectionError);
            # the failure budget counts it, the breaker (no answer at all) does not
            raise FetchError("body stalled or cut off mid-transfer", retryable=True) from exc
    except Exception:
        if not expired.is_set():
            raise
    finally:
        watchdog.cancel()
    if size > max_bytes:
        r.close()  # do not read the rest of an endless answer to reuse the connection
        raise FetchError(f"answer larger than {_mib(max_bytes)}", retryable=False)
    if expired.is_set():
        # not a dead service (it answered): the breaker does not count it
        raise FetchError(f"timeout (body not complete after {limit:g} s)", retryable=True)
    body = b"".join(chunks)
    expected = r.headers.get("Content-Length")
    if expected is not None:
        # Content-Length counts the bytes on the wire: the encoded ones when gzip/deflate
        received = _wire_bytes(r) if "Content-Encoding" in r.headers else len(body)
        try:
            n = int(expected)
        except ValueError:
            n = received
        if received is not None and n != received:
            raise FetchError("truncated body", retryable=True)
    return body


class RateGuard:
    """A minimum transfer rate for a streamed response too big for one deadline: when fewer
    than ``min_bytes`` arrive in any ``window`` seconds, its socket is shut down (a read blocks
    until a whole chunk arrives, so the clock between chunks cannot see a drip).

    Use as a context manager; call ``count(n)`` for each chunk, and after the read loop (or the
    read error it causes) ``check()`` raises a retryable `FetchError` if the guard fired."""

    def __init__(self, r: requests.Response, min_bytes: int, window: float) -> None:
        self.min_bytes = min_bytes
        self.window = window
        self.stalled = False
        self._received = 0
        self._response = r
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="galmerge-rate-guard")

    def __enter__(self) -> RateGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def count(self, n: int) -> None:
        self._received += n

    def _watch(self) -> None:
        seen = 0
        while not self._done.wait(self.window):
            got = self._received
            if got - seen < self.min_bytes:
                self.stalled = True
                _shutdown(self._response)
                return
            seen = got

    def check(self) -> None:
        if self.stalled:
            raise FetchError(f"transfer stalled (less than {_mib(self.min_bytes)} in "
                             f"{self.window:g} s)", retryable=True)


def _shutdown(r: requests.Response) -> None:
    """End a read of streamed response ``r`` blocked in another thread, through urllib3's public
    ``HTTPResponse.shutdown()`` (urllib3 >= 2.3: ``shutdown(SHUT_RD)`` on the response's socket,
    made for this). A response with nothing left to stop (its connection already released, no
    socket, not a urllib3 response) is left as it is."""
    with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
        r.raw.shutdown()


_waiting = threading.local()  # the HeadersDeadline a thread's request runs under, if any


class HeadersDeadline:
    """Ends a request of a `GuardedSession` whose answer headers are not complete within
    ``limit`` seconds (a server dripping them a byte at a time passes every read timeout).

    Use as a context manager around the request, in the thread that sends it: it raises a
    retryable `FetchError` saying so when it cut the request off. urllib3's public
    ``HTTPResponse.shutdown()`` exists only once the headers came, so until then a timer shuts
    down the socket of the connection waiting for them (`_DeadlineAdapter`); the body is
    ``read_body``'s to bound."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.expired = False
        self.cut = False  # it shut a socket waiting for headers: what came is not an answer
        self._lock = threading.Lock()
        self._sock: Any = None
        self._timer = threading.Timer(max(0.0, limit), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> HeadersDeadline:
        _waiting.deadline = self
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        self._timer.cancel()
        _waiting.deadline = None
        with self._lock:
            self._sock = None
        if self.cut and (exc is None or (isinstance(exc, Exception)
                                         and not isinstance(exc, RedirectRefused))):
            # http.client takes the end of the stream for the end of the headers, so a cut
            # request may also come back as an answer with half its headers
            raise FetchError(f"timeout (headers not complete after {self.limit:g} s)",
                             retryable=True) from exc

    def attach(self, sock: Any) -> None:
        """The socket now waiting for headers; shut at once if the deadline already passed."""
        with self._lock:
            self._sock = sock
            if self.expired:
                self.cut = True
                _shutdown_socket(sock)

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                self.cut = True
                _shutdown_socket(self._sock)


def _shutdown_socket(sock: Any) -> None:
    # SHUT_RD, as urllib3's HTTPResponse.shutdown() does: the blocked read ends at once
    with contextlib.suppress(OSError, AttributeError, ValueError):
        sock.shutdown(socket.SHUT_RD)


class _HeadersWatched:
    """Connection mixin: hands its socket to the thread's `HeadersDeadline` while it waits for
    an answer's headers. ``sock`` is http.client's connection socket, the one urllib3's own
    ``getresponse`` takes ``shutdown`` from for the response."""

    sock: Any

    def getresponse(self) -> Any:
        deadline: HeadersDeadline | None = getattr(_waiting, "deadline", None)
        if deadline is None:
            return super().getresponse()  # type: ignore[misc]
        deadline.attach(self.sock)
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            deadline.detach()


class _WatchedHTTPConnection(_HeadersWatched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_HeadersWatched, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections a `HeadersDeadline` can end (urllib3 picks a pool
    class per scheme from the pool manager's ``pool_classes_by_scheme``). A SOCKS proxy keeps
    urllib3's own pools: there only the body is bounded by the deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def _wire_bytes(r: requests.Response) -> int | None:
    """How many (still encoded) body bytes urllib3 read from the connection, if it says
    (``HTTPResponse.tell()``, public)."""
    tell = getattr(r.raw, "tell", None)
    try:
        return int(tell()) if callable(tell) else None
    except (TypeError, ValueError, OSError):
        return None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n} bytes"


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    executor: ThreadPoolExecutor | None = None,
) -> Iterator[tuple[T, R | None, BaseException | None]]:
    """Run ``fn`` over ``items`` on at most ``workers`` threads, yielding ``(item, result, error)``
    as each finishes; at most ``2 * workers`` items are in flight, so a huge iterable is fine."""
    workers = max(1, int(workers))
    own = executor is None
    pool = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="galmerge-fetch")
    pending: dict[Future[R], T] = {}
    iterator = iter(items)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(fn, item)] = item
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                exc = fut.exception()
                yield item, (None if exc else fut.result()), exc
    finally:
        for fut in pending:
            fut.cancel()
        if own:
            pool.shutdown(wait=True, cancel_futures=True)
