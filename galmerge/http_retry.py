"""Robust HTTP for survey services: timeouts, retries with backoff, HTTP 429, bounded concurrency.

Every cutout service fetches through a `RetryingClient`: it retries 5xx answers, timeouts,
dropped connections and truncated or corrupt bodies (a ``validate`` callback that raises marks
a body corrupt), honours ``Retry-After`` on 429/503 for every worker thread at once, and keeps
counts for a closing failure summary. ``sleep`` is injectable so tests run without waiting.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests

T = TypeVar("T")
R = TypeVar("R")

#: statuses worth another try: server trouble, rate limits, gateway hiccups
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524})


class FetchError(Exception):
    """A request that failed; ``str(exc)`` is a short reason fit for a ``fetch-failed:`` status."""

    def __init__(
        self, reason: str, *, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class CorruptResponse(FetchError):
    """A body that arrived whole but does not decode (bad bz2/FITS/JPEG); worth a retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=True)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Delays: ``backoff * 2**(attempt-1)``, capped, with ± ``jitter`` fraction."""

    attempts: int = 5
    backoff: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.25
    timeout: float = 60.0
    max_retry_after: float = 300.0
    seed: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RetryPolicy:
        """Read ``retries``/``attempts``, ``backoff``, ``timeout``, ``max_retry_after``, ``seed``."""
        attempts = options.get("attempts")
        if attempts is None and "retries" in options:
            attempts = int(options["retries"]) + 1
        return cls(
            attempts=max(1, int(attempts if attempts is not None else cls.attempts)),
            backoff=float(options.get("backoff", cls.backoff)),
            backoff_max=float(options.get("backoff_max", cls.backoff_max)),
            jitter=float(options.get("jitter", cls.jitter)),
            timeout=float(options.get("timeout", cls.timeout)),
            max_retry_after=float(options.get("max_retry_after", cls.max_retry_after)),
            seed=int(options.get("seed", cls.seed)),
        )


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
        return FetchError("timeout", retryable=True)
    if isinstance(
        exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
    ):
        return FetchError("connection dropped mid-body", retryable=True)
    if isinstance(exc, requests.ConnectionError):
        return FetchError("connection failed", retryable=True)
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return FetchError(type(exc).__name__, retryable=True)
    if isinstance(exc, requests.RequestException):
        return FetchError(type(exc).__name__, retryable=False)
    return None


def http_status_error(response: requests.Response) -> FetchError:
    """A FetchError for a non-200 answer; 429/503 carry their Retry-After."""
    status = response.status_code
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return FetchError(f"HTTP {status}", retryable=status in RETRY_STATUSES, retry_after=retry_after)


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
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.name = name
        self.stats = FetchStats()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._rng = random.Random(self.policy.seed)
        self._hold_until = 0.0  # monotonic time before which nobody sends (after a 429)
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
            s = requests.Session()
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
    ) -> T:
        """Run ``fn`` until it succeeds or the policy gives up; raises FetchError then.

        ``progressed`` (for resumable transfers) is asked after each retryable failure: when
        it answers True the failed try moved the work forward, so the attempt count starts
        afresh. ``on_retry(error, delay)`` is told before each wait, e.g. to show a long one.
        """
        policy = self.policy
        attempt = 0
        while True:
            attempt += 1
            self._wait_for_hold()
            with self._lock:
                self.stats.requests += 1
            try:
                return fn()
            except Exception as exc:
                err = classify_exception(exc)
                if err is None:  # not a network problem: a bug keeps its traceback
                    raise
                if err.retryable and progressed is not None and progressed():
                    attempt = 0  # a resumed transfer got further: its tries start again
                if not err.retryable or attempt >= policy.attempts:
                    with self._lock:
                        self.stats.failures += 1
                        self.stats.failure_reasons[err.reason] += 1
                    if isinstance(exc, FetchError):
                        raise
                    raise err from exc
                with self._lock:
                    self.stats.retries += 1
                    self.stats.retry_reasons[err.reason] += 1
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

        return self.call(once, what)

    def _get_body(self, url: str, params: Mapping[str, Any] | None) -> bytes:
        timeout = self.policy.timeout
        deadline = time.monotonic() + 4 * timeout  # a server dripping bytes still ends
        with self.session().get(url, params=params, timeout=timeout, stream=True) as r:
            if r.status_code != 200:
                raise http_status_error(r)
            chunks = []
            for chunk in r.iter_content(chunk_size=1 << 16):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise FetchError("timeout (slow body)", retryable=True)
            body = b"".join(chunks)
            expected = r.headers.get("Content-Length")
            if expected is not None and "Content-Encoding" not in r.headers:
                try:
                    n = int(expected)
                except ValueError:
                    n = len(body)
                if n != len(body):
                    raise FetchError("truncated body", retryable=True)
        return body

    def summary(self) -> str:
        with self._lock:
            return self.stats.summary(self.name)


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
