"""The shared retry helper, against a real loopback HTTP server."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from galmerge.errors import GalmergeError
from galmerge.io.http import (
    FetchError,
    RetryingClient,
    RetryPolicy,
    bounded_map,
    parse_retry_after,
)


class _Script(BaseHTTPRequestHandler):
    """Answers each request with the next (status, headers, body) of the server's script."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        with self.server.lock:
            self.server.hits += 1
            step = self.server.script.pop(0) if self.server.script else (200, {}, b"done")
        status, headers, body = step
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    server.daemon_threads = True
    server.lock, server.hits, server.script = threading.Lock(), 0, []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/x"
    server.shutdown()
    server.server_close()


def _client(sleeps: list[float], **policy) -> RetryingClient:
    policy = {"attempts": 4, "backoff": 0.5, "jitter": 0.0, "timeout": 2.0, **policy}
    return RetryingClient(RetryPolicy(**policy), name="test", sleep=sleeps.append)


def test_retry_after_forms():
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_doubles_then_succeeds(scripted):
    server, url = scripted
    server.script = [(500, {}, b"x"), (502, {}, b"x"), (504, {}, b"x")]
    sleeps: list[float] = []
    client = _client(sleeps)
    assert client.get(url) == b"done"
    assert sleeps == [0.5, 1.0, 2.0]
    assert server.hits == 4
    assert "3 retried" in client.summary() and "none failed" in client.summary()


def test_429_and_503_wait_as_told(scripted):
    server, url = scripted
    server.script = [(429, {"Retry-After": "3"}, b""), (503, {"Retry-After": "5"}, b"")]
    sleeps: list[float] = []
    assert _client(sleeps).get(url) == b"done"
    assert sleeps == [3.0, 5.0]


def test_retry_after_is_capped(scripted):
    server, url = scripted
    server.script = [(429, {"Retry-After": "86400"}, b"")]
    sleeps: list[float] = []
    assert _client(sleeps, max_retry_after=10).get(url) == b"done"
    assert sleeps == [10.0]


def test_the_failure_budget_counts_requests_failing_in_a_row_after_all_their_tries(scripted):
    from galmerge.io.http import ServiceFailing

    server, url = scripted
    fail = [(500, {}, b"x")] * 2  # one request: both its tries answer 500
    server.script = fail + [(200, {}, b"ok")] + fail + [(404, {}, b"no")] + fail
    sleeps: list[float] = []
    client = _client(sleeps, attempts=2, max_failed_requests=2)
    with pytest.raises(FetchError, match="HTTP 500"):
        client.get(url)
    assert client.get(url) == b"ok"  # a success starts the count again
    with pytest.raises(FetchError, match="HTTP 500"):
        client.get(url)
    with pytest.raises(FetchError, match="HTTP 404"):  # one quick try: neither counted nor
        client.get(url)                               # a success
    assert client.failing is None
    with pytest.raises(FetchError, match="HTTP 500"):
        client.get(url)
    host = url.split("/")[2]
    assert client.failing == f"{host}: 2 requests in a row failed after 2 tries each (last: HTTP 500)"
    hits = server.hits
    with pytest.raises(ServiceFailing) as info:  # the budget is spent: no request is sent
        client.get(url)
    assert server.hits == hits and str(info.value) == "service failing"
    assert "1 service failing" in client.summary()


def test_requests_without_an_answer_are_the_breakers_not_the_failure_budgets():
    """``max_connection_failures=0`` (never give up on an unreachable service) holds: requests
    that got no answer at all do not spend the failure budget either."""
    from test_hardening import _closed_port

    url = f"http://127.0.0.1:{_closed_port()}/x"  # a port nobody listens on
    sleeps: list[float] = []
    client = _client(sleeps, attempts=2, backoff=0, max_connection_failures=0,
                     max_failed_requests=2)
    for _ in range(4):
        with pytest.raises(FetchError, match="connection failed"):
            client.get(url)
    assert client.failing is None and client.unreachable is None


def test_a_body_that_stalls_after_the_headers_spends_the_failure_budget():
    """The service answered, so the budget counts it (not the breaker, whose 0 = never holds):
    requests raises urllib3's read timeout mid-body as a ConnectionError, which read as no
    answer at all."""
    from loopback_http import LoopbackServer

    with LoopbackServer() as server:
        server.add("/x", b"x" * 100_000)
        server.faults["/x"] += ["stall", "stall", "stall", "stall"]  # headers, then silence
        client = _client([], attempts=2, backoff=0, timeout=0.2, max_connection_failures=0,
                         max_failed_requests=2)
        for _ in range(2):
            with pytest.raises(FetchError, match="body stalled or cut off"):
                client.get(f"{server.url}/x")
        assert client.failing is not None and client.unreachable is None
        assert "2 requests in a row failed" in client.failing


def test_the_failure_budget_comes_from_options_then_the_environment(monkeypatch):
    assert RetryPolicy.from_options({}).max_failed_requests == 20
    monkeypatch.setenv("GALMERGE_MAX_FAILED_REQUESTS", "7")
    assert RetryPolicy.from_options({}).max_failed_requests == 7
    assert RetryPolicy.from_options({"max_failed_requests": 0}).max_failed_requests == 0
    with pytest.raises(ValueError, match="max_failed_requests"):
        RetryPolicy.from_options({"max_failed_requests": -1})
    for name in ("GALMERGE_MAX_FAILED_REQUESTS", "GALMERGE_MAX_CONNECTION_FAILURES"):
        for bad in ("abc", "-1", "2.5", "\u00b2"):  # the message names the variable
            monkeypatch.setenv(name, bad)
            with pytest.raises(GalmergeError, match=f"environment variable {name} must be"):
                RetryPolicy.from_options({})
        monkeypatch.delenv(name)


def test_redirects_are_followed_within_the_host_and_refused_to_another(scripted):
    from loopback_http import LoopbackServer

    from galmerge.io.http import RedirectPolicy, RedirectRefused

    server, url = scripted
    sleeps: list[float] = []
    with LoopbackServer() as other:
        other.add("/x", b"not the survey's answer")
        server.script = [(302, {"Location": "/y?page=2"}, b""), (200, {}, b"moved here")]
        assert _client(sleeps).get(url) == b"moved here"  # the same host: followed
        for location, why in [
            (f"{other.url}/x?sig=SECRET", "another host"),  # another port: another origin
            ("ftp://127.0.0.1/x", "not an http(s) address"),
        ]:
            server.script = [(302, {"Location": location}, b"")]
            client = RetryingClient(RetryPolicy(attempts=3), name="test", sleep=sleeps.append,
                                    redirects=RedirectPolicy(hint="set THE_URL to allow it"))
            hits = server.hits
            with pytest.raises(RedirectRefused) as info:
                client.get(url)
            message = str(info.value)
            assert f"{url} redirected to {location.split('?')[0]}" in message
            assert why in message and message.endswith("; set THE_URL to allow it")
            assert "SECRET" not in message and "\n" not in message
            assert server.hits == hits + 1  # not retried: the next try would go the same way
        assert [m for m, *_ in other.log] == []  # the other host was never contacted
    assert sleeps == []


def test_a_guarded_session_keeps_a_redirects_own_body_as_requests_does(scripted):
    """The bounded read of a followed redirect's body keeps it: ``allow_redirects=False``
    returns the 3xx with its body and ``next``, and ``history`` holds the body too."""
    from galmerge.io.http import GuardedSession

    server, url = scripted
    moved = (302, {"Location": "/y"}, b"<html>moved</html>")
    with GuardedSession() as session:
        for stream in (False, True):
            server.script = [moved]
            r = session.get(url, allow_redirects=False, stream=stream, timeout=5)
            assert (r.status_code, r.content) == (302, b"<html>moved</html>")
            assert r.next is not None and r.next.url.endswith("/y")
        server.script = [moved, (200, {}, b"moved here")]
        r = session.get(url, timeout=5)
        assert r.content == b"moved here"
        assert [h.content for h in r.history] == [b"<html>moved</html>"]


class _EndlessRedirect(BaseHTTPRequestHandler):
    """``/x``: a 302 to ``/y`` whose body never ends, streamed (``flood``) or a byte at a time
    (``drip``, each byte well within the read timeout); ``/y``: the answer."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/y":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"moved here")
            return
        self.send_response(302)
        self.send_header("Location", "/y")
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()
        chunk, pause = (b"x" * (1 << 16), 0.0) if self.server.kind == "flood" else (b"x", 0.2)
        try:
            while not self.server.done.is_set():
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass


@pytest.mark.parametrize("kind", ["flood", "drip"])
def test_a_followed_redirect_with_an_endless_body_is_not_read_forever(kind, monkeypatch):
    import galmerge.io.http as http

    monkeypatch.setattr(http, "REDIRECT_BODY_SECONDS", 1.0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EndlessRedirect)
    server.daemon_threads, server.kind, server.done = True, kind, threading.Event()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    got: list[bytes] = []
    client = _client([], attempts=1, timeout=2.0, deadline=60.0)
    worker = threading.Thread(
        target=lambda: got.append(client.get(f"http://127.0.0.1:{server.server_address[1]}/x")),
        daemon=True)
    try:
        started = time.monotonic()
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), "still reading the redirect's body"
        assert got == [b"moved here"]
        assert time.monotonic() - started < 10
    finally:
        server.done.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("source", "target", "hosts", "allowed"), [
    ("http://a.org/x", "https://a.org/y", (), True),  # upgrade on the same host
    ("http://a.org:8080/x", "https://a.org:8080/y", (), True),
    ("https://a.org/x", "http://a.org/y", (), False),  # downgrade
    ("https://a.org/x", "https://A.ORG:443/y", (), True),
    ("https://a.org/x", "https://a.org:8443/y", (), False),  # another port: another service
    ("https://a.org/x", "https://b.org/y", (), False),
    ("https://a.org/x", "https://b.org/y", ("b.org",), True),
    ("https://a.org/x", "http://b.org/y", ("b.org",), False),  # named, but a downgrade
    ("https://a.org/x", "https://b.org:8443/y", ("b.org:443",), False),
    ("https://a.org/x", "https://b.org:8443/y", ("b.org:8443",), True),
    ("https://a.org/x", "file:///etc/passwd", (), False),
    ("https://a.org/x", "https://a.org:99999999/y", (), False),
])
def test_the_redirect_policy(source, target, hosts, allowed):
    from galmerge.io.http import RedirectPolicy, RedirectRefused

    policy = RedirectPolicy(hosts=frozenset(hosts))
    if allowed:
        policy.check(source, target)
    else:
        with pytest.raises(RedirectRefused):
            policy.check(source, target)


def test_client_errors_are_not_retried(scripted):
    server, url = scripted
    server.script = [(404, {}, b"no")]
    sleeps: list[float] = []
    client = _client(sleeps)
    with pytest.raises(FetchError, match="HTTP 404"):
        client.get(url)
    assert server.hits == 1 and sleeps == []
    assert "1 failed after retries (1 HTTP 404)" in client.summary()


VOTABLE_ERROR = (b'<?xml version="1.0"?><VOTABLE version="1.3"><RESOURCE type="results">'
                 b'<INFO name="QUERY_STATUS" value="ERROR">Column not found:\n  s_rgion '
                 b'&amp; more</INFO></RESOURCE></VOTABLE>')


@pytest.mark.parametrize(("status", "headers", "body", "said"), [
    (400, {"Content-Type": "application/x-votable+xml"}, VOTABLE_ERROR,
     "HTTP 400 (Column not found: s_rgion & more)"),
    (404, {"Content-Type": "text/plain; charset=utf-8"}, b"no image\r\nwith ID 7\x1b[2J",
     "HTTP 404 (no image with ID 7 [2J)"),
    (404, {"Content-Type": "text/plain"}, b"x" * 300, "HTTP 404 (" + "x" * 97 + "...)"),
    (404, {"Content-Type": "text/html"}, b"<html><body>Not Found</body></html>", "HTTP 404"),
    (400, {"Content-Type": "application/x-votable+xml"},
     b'<VOTABLE><RESOURCE><INFO name="QUERY_STATUS" value="ERROR"/><INFO name="provider" '
     b'value="x">Rubin Observatory TAP</INFO></RESOURCE></VOTABLE>', "HTTP 400"),
    (404, {"Content-Type": "text/plain"}, b"y" * (70 * 1024), "HTTP 404"),
])
def test_a_refusal_carries_the_services_own_words(scripted, status, headers, body, said):
    """A TAP/SODA service says in the body why it refused (a DALI VOTable error document, or
    text): the status gives those words, printable and short; the summary counts the status."""
    server, url = scripted
    server.script = [(status, headers, body)]
    client = _client([])
    with pytest.raises(FetchError) as caught:
        client.get(url)
    assert str(caught.value) == said and caught.value.reason == said
    assert f"1 failed after retries (1 HTTP {status})" in client.summary()


def test_bad_bodies_are_retried_then_reported(scripted):
    server, url = scripted
    server.script = [(200, {}, b"junk")] * 4

    def must_be_done(body: bytes) -> str:
        if body != b"done":
            raise ValueError("not done")
        return body.decode()

    sleeps: list[float] = []
    with pytest.raises(FetchError, match=r"corrupt thing \(ValueError\)"):
        _client(sleeps).get(url, validate=must_be_done, what="thing")
    server.script = [(200, {}, b"junk")]
    assert _client(sleeps).get(url, validate=must_be_done) == "done"


def test_jitter_is_seeded():
    def delays(seed: int) -> list[float]:
        client = RetryingClient(RetryPolicy(jitter=0.5, seed=seed), sleep=lambda s: None)
        return [client._backoff(a) for a in range(1, 6)]

    assert delays(1) == delays(1) != delays(2)
    assert all(0.25 * 2**i <= d <= 0.75 * 2**i for i, d in enumerate(delays(3)))


def test_bounded_map_limits_work_in_flight_and_reports_errors():
    lock = threading.Lock()
    running, peak = 0, 0

    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
        if i == 7:
            raise ValueError("seven")
        return i * i

    started = []

    def items():
        for i in range(40):
            started.append(i)
            yield i

    seen = {}
    for item, result, err in bounded_map(work, items(), workers=3):
        seen[item] = err if err is not None else result
        assert len(started) - len(seen) <= 6  # never more than 2 * workers queued
    assert peak <= 3
    assert isinstance(seen.pop(7), ValueError)
    assert seen == {i: i * i for i in range(40) if i != 7}


def test_a_429_holds_back_every_thread_of_the_client(scripted):
    server, url = scripted
    server.script = [(429, {"Retry-After": "5"}, b"")]
    sleeps: list[float] = []
    client = _client(sleeps)
    worker = threading.Thread(target=client.get, args=(url,))
    worker.start()
    worker.join()
    assert sleeps == [5.0]  # the thread that was told to wait
    assert client.get(url) == b"done"  # another caller, moments later, waits out the rest
    assert len(sleeps) == 2 and 4.0 < sleeps[1] <= 5.0


def test_bugs_are_not_dressed_up_as_fetch_failures():
    sleeps: list[float] = []
    client = _client(sleeps)
    with pytest.raises(ZeroDivisionError):
        client.call(lambda: 1 / 0)
    assert sleeps == []


# -- call(progressed=..., on_retry=...) ---------------------------------------------------------


class _Flaky:
    """Fails with the given errors in turn, then returns "ok"; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _drop() -> FetchError:
    return FetchError("connection dropped mid-body", retryable=True)


def test_tries_that_progress_start_the_count_afresh():
    sleeps: list[float] = []
    fn = _Flaky(*[_drop() for _ in range(6)])
    assert _client(sleeps, attempts=2).call(fn, progressed=lambda: True) == "ok"
    assert fn.calls == 7  # six failures, far beyond two attempts, then success
    assert sleeps == [0.5] * 6  # the backoff starts afresh too


def test_tries_without_progress_use_up_the_attempts():
    sleeps: list[float] = []
    asked: list[int] = []
    fn = _Flaky(*[_drop() for _ in range(6)])

    def progressed() -> bool:
        asked.append(fn.calls)
        return False

    client = _client(sleeps, attempts=3)
    with pytest.raises(FetchError, match="connection dropped") as info:
        client.call(fn, progressed=progressed)
    assert info.value.retryable
    assert fn.calls == 3 and asked == [1, 2, 3]  # asked after each failure
    assert sleeps == [0.5, 1.0]
    assert "1 failed after retries" in client.summary()


def test_progress_resets_then_stalls():
    # progress on the 2nd and 3rd failures only: the count restarts there, then runs out
    sleeps: list[float] = []
    answers = iter([False, True, True, False, False, False])
    fn = _Flaky(*[_drop() for _ in range(10)])
    with pytest.raises(FetchError):
        _client(sleeps, attempts=3).call(fn, progressed=lambda: next(answers))
    assert fn.calls == 6  # 1 + 1 (reset) + 1 (reset) + 3
    assert sleeps == [0.5, 0.5, 0.5, 0.5, 1.0]


def test_progress_is_not_asked_about_errors_that_are_not_retried():
    sleeps: list[float] = []
    asked: list[bool] = []

    def progressed() -> bool:
        asked.append(True)
        return True

    client = _client(sleeps)
    fn = _Flaky(FetchError("HTTP 501"))
    with pytest.raises(FetchError, match="HTTP 501"):
        client.call(fn, progressed=progressed)
    with pytest.raises(ZeroDivisionError):
        client.call(lambda: 1 / 0, progressed=progressed)
    assert fn.calls == 1 and asked == [] and sleeps == []
    assert client.call(_Flaky(), progressed=progressed) == "ok" and asked == []


def test_on_retry_is_told_each_wait_before_it():
    events: list[tuple] = []
    client = RetryingClient(
        RetryPolicy(attempts=4, backoff=0.5, jitter=0.0, max_retry_after=60),
        sleep=lambda s: events.append(("sleep", s)),
    )
    fn = _Flaky(
        _drop(),
        FetchError("HTTP 429", retryable=True, retry_after=7),
        FetchError("HTTP 503", retryable=True, retry_after=3600),
    )

    def on_retry(err: FetchError, delay: float) -> None:
        events.append(("retry", err.reason, delay))

    assert client.call(fn, on_retry=on_retry) == "ok"
    assert events == [
        ("retry", "connection dropped mid-body", 0.5),
        ("sleep", 0.5),
        ("retry", "HTTP 429", 7.0),
        ("sleep", 7.0),
        ("retry", "HTTP 503", 60.0),  # capped by max_retry_after
        ("sleep", 60.0),
    ]


def test_on_retry_is_not_called_when_giving_up():
    told: list[str] = []
    sleeps: list[float] = []
    fn = _Flaky(_drop(), _drop(), FetchError("HTTP 404"))
    with pytest.raises(FetchError, match="HTTP 404"):
        _client(sleeps).call(fn, on_retry=lambda err, d: told.append(err.reason))
    assert told == ["connection dropped mid-body"] * 2
    told.clear()
    with pytest.raises(FetchError):
        _client(sleeps, attempts=2).call(
            _Flaky(_drop(), _drop(), _drop()), on_retry=lambda err, d: told.append(err.reason)
        )
    assert len(told) == 1  # two attempts: one retry, then the last failure is raised


def test_retry_after_from_a_real_429_reaches_on_retry(scripted):
    server, url = scripted
    server.script = [(429, {"Retry-After": "4"}, b"")]
    sleeps: list[float] = []
    told: list[tuple[str, float]] = []
    client = _client(sleeps)
    body = client.call(
        lambda: client._get_body(url, None), on_retry=lambda e, d: told.append((e.reason, d))
    )
    assert body == b"done" and server.hits == 2
    assert told == [("HTTP 429", 4.0)] and sleeps == [4.0]


@pytest.mark.parametrize("status", [501, 505])
def test_not_implemented_and_bad_version_are_not_retried(scripted, status):
    server, url = scripted
    server.script = [(status, {}, b"no")]
    sleeps: list[float] = []
    with pytest.raises(FetchError, match=f"HTTP {status}") as info:
        _client(sleeps).get(url)
    assert not info.value.retryable
    assert server.hits == 1 and sleeps == []


# -- body size cap: an endless or decompression-bomb answer fails, it does not fill memory -----


def test_a_body_past_max_bytes_fails_once_in_one_line(scripted):
    server, url = scripted
    server.script = [(200, {}, b"x" * 300_000)]
    sleeps: list[float] = []
    with pytest.raises(FetchError, match=r"^answer larger than 100000 bytes$") as info:
        _client(sleeps, max_bytes=100_000).get(url)
    assert not info.value.retryable and server.hits == 1 and sleeps == []


def test_a_gzip_bomb_is_capped_on_decoded_bytes(scripted):
    import gzip

    server, url = scripted
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in about 64 KiB
    server.script = [(200, {"Content-Encoding": "gzip"}, bomb)]
    sleeps: list[float] = []
    with pytest.raises(FetchError, match=r"answer larger than 1 MiB"):
        _client(sleeps, max_bytes=1 << 20).get(url)
    server.script = [(200, {"Content-Encoding": "gzip"}, gzip.compress(b"small"))]
    assert _client(sleeps).get(url) == b"small"  # a real gzip answer still decodes


def test_max_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_bytes"):
        RetryPolicy(max_bytes=0).check()


class _HeaderDrip(BaseHTTPRequestHandler):
    """Sends the status line, then its headers a byte every 0.2 s (each read well within the
    read timeout, the whole never) until the client hangs up; a second request gets "ok"."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/ok":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        try:
            while not self.server.done.is_set():
                self.wfile.write(b"X")  # one endless header line
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


def test_the_transfer_deadline_covers_the_wait_for_headers():
    # the deadline runs from sending the request: a server dripping its headers passes every
    # read timeout, and used to hold the worker until http.client's own header limits
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeaderDrip)
    server.daemon_threads, server.done = True, threading.Event()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    client = _client([], attempts=1, timeout=5.0, deadline=1.0)
    got: list[BaseException | bytes] = []

    def fetch() -> None:
        try:
            got.append(client.get(f"{base}/drip"))
        except FetchError as exc:
            got.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    try:
        started = time.monotonic()
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "still waiting for the headers"
        assert time.monotonic() - started < 15  # the deadline is 1 s; margin for a loaded box
        assert len(got) == 1 and isinstance(got[0], FetchError)
        assert "headers not complete after 1 s" in str(got[0])
        assert got[0].retryable
        # the service answered (a byte at a time): the failure budget's, not the breaker's
        assert client.unreachable is None
        assert client.get(f"{base}/ok") == b"ok"  # the cut connection is not reused
    finally:
        server.done.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("guard", ["deadline", "minimum rate"])
def test_the_transfer_guards_end_a_dripping_read_through_urllib3s_public_shutdown(
        monkeypatch, guard):
    # read_body's deadline and RateGuard's minimum rate stop a read blocked in this thread from
    # a watchdog thread with urllib3's documented HTTPResponse.shutdown() (urllib3 >= 2.3), not
    # with a socket dug out of urllib3/http.client internals that a library update may move
    import contextlib

    import requests
    import urllib3
    from loopback_http import LoopbackServer

    from galmerge.io.http import RateGuard, read_body

    calls = []
    shutdown = urllib3.response.HTTPResponse.shutdown

    def spy(self):
        calls.append(self)
        return shutdown(self)

    monkeypatch.setattr(urllib3.response.HTTPResponse, "shutdown", spy)
    with LoopbackServer() as server:
        server.add("/f", b"x" * 200)
        server.faults["/f"].append("trickle")  # a byte every 0.2 s: each read is in time
        t0 = time.monotonic()
        with requests.get(server.url + "/f", stream=True, timeout=5) as r:
            if guard == "deadline":
                with pytest.raises(FetchError, match="timeout"):
                    read_body(r, 0.5)
            else:
                rate = RateGuard(r, 1000, 0.5)
                with rate, contextlib.suppress(requests.RequestException):
                    for chunk in r.iter_content(1 << 16):
                        rate.count(len(chunk))
                with pytest.raises(FetchError, match="stalled"):
                    rate.check()
            assert calls == [r.raw]
        assert time.monotonic() - t0 < 3  # not the 40 s the whole body takes
