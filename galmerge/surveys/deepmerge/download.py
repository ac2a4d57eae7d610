"""Resumable, verified downloads of the DeepMerge data files (Zenodo record, MAST HLSP).

A file is written to ``NAME.part`` (resumed with an HTTP Range request after a dropped
connection or a later run, with If-Range on the ETag or Last-Modified the part began with, kept
in ``NAME.part.validator``, so a file that changed on the server starts over), checked against
the size and MD5 the Zenodo API publishes, then renamed into place. A file that fails its check is moved to ``NAME.corrupt`` and reported.
Retries, backoff and ``Retry-After`` follow `galmerge.io.http`, like every other HTTP
client in galmerge; a try that got further into the file does not use up the retries.

Environment: ``GALMERGE_ZENODO_URL`` (default https://zenodo.org) and ``GALMERGE_MAST_URL``
(default https://archive.stsci.edu) set the servers, so tests can use a loopback server; a
user name and password in them are used, and shown as ``***`` in every message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.http import (
    FetchError,
    GuardedSession,
    HeadersDeadline,
    RateGuard,
    RedirectPolicy,
    RetryingClient,
    RetryPolicy,
    http_status_error,
    read_body,
)
from galmerge.io.provenance import hide_userinfo
from galmerge.surveys.deepmerge import data as deepmerge_data

ZENODO_ENV = "GALMERGE_ZENODO_URL"
MAST_ENV = "GALMERGE_MAST_URL"
DEFAULT_ZENODO = "https://zenodo.org"
DEFAULT_MAST = "https://archive.stsci.edu"
# small reads: a dropped connection loses at most one chunk of what arrived
CHUNK = 64 * 1024
USER_AGENT = "galmerge-fetch"
ANNOUNCE_WAIT_S = 10.0  # retry waits at least this long are shown on the console
JSON_MAX_BYTES = 32 * 1024 * 1024  # a record's file list is a few kB
# a file body is too big for one deadline: a try fails when less than this came in a window
MIN_RATE_BYTES = 64 * 1024
MIN_RATE_WINDOW_S = 60.0
#: Zenodo serves files from zenodo.org itself (its storage is proxied, not redirected to) and
#: MAST from archive.stsci.edu: redirects within those hosts only
REDIRECTS = RedirectPolicy(hint=f"if you trust that server, point {ZENODO_ENV} or {MAST_ENV} "
                           "at it")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_RANGE_TOTAL = re.compile(r"bytes\s+\*/(\d+)")


@dataclass(frozen=True)
class RemoteFile:
    """A file to download; ``size``/``md5`` None when the server publishes none."""

    name: str
    url: str
    size: int | None = None
    md5: str | None = None


@dataclass(frozen=True)
class FetchResult:
    """What happened to one file: ``status`` is "downloaded" or "present"."""

    name: str
    path: Path
    status: str
    size: int
    verified: str  # "md5", "size" or "structure"


def zenodo_url() -> str:
    return (os.environ.get(ZENODO_ENV) or DEFAULT_ZENODO).rstrip("/")


def mast_url() -> str:
    return (os.environ.get(MAST_ENV) or DEFAULT_MAST).rstrip("/")


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(64 * CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _write_marker(path: Path, md5: str | None) -> None:
    st = path.stat()
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}
    atomic.write_text(_marker(path), json.dumps(record))


def _marker_matches(path: Path, remote: RemoteFile) -> bool:
    try:
        record = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return False
    st = path.stat()
    return (
        record.get("size") == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
        and (remote.size is None or remote.size == st.st_size)
        and (remote.md5 is None or record.get("md5") == remote.md5)
    )


def _move_aside(path: Path) -> Path:
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    return target


class _Transfer:
    """Where one file's download stands, across tries."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.furthest = 0  # the most bytes the part file has held: beyond it is progress
        self.advanced = False  # the last try pushed ``furthest`` on

    def start(self, offset: int) -> None:
        """A try begins with ``offset`` bytes on disk: they are no progress of this try (a part
        file from an earlier run counts as where this run starts)."""
        self.advanced = False
        self.furthest = max(self.furthest, offset)

    def note(self, part_size: int) -> None:
        if part_size > self.furthest:
            self.furthest = part_size
            self.advanced = True


class Downloader:
    """Downloads files with retries (`galmerge.io.http` policy), resume and verification."""

    def __init__(
        self,
        *,
        session: requests.Session | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: tuple[float, float] = (10.0, 60.0),
        progress: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retry_after: float = RetryPolicy.max_retry_after,
        deadline: float | None = None,
    ) -> None:
        """``timeout`` is (connect, read) seconds; ``deadline`` bounds a metadata answer (default
        4 x the read timeout), so a server dripping bytes cannot hold the run. The default
        session follows redirects within the server's own host only (`REDIRECTS`)."""
        self.session = session or GuardedSession(REDIRECTS)
        self.session.headers["User-Agent"] = USER_AGENT
        # byte ranges and sizes must refer to the file itself, never to a compressed transfer
        self.session.headers["Accept-Encoding"] = "identity"
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.progress = progress  # a rich Progress, or None for silence
        policy = RetryPolicy(attempts=retries + 1, backoff=backoff, max_retry_after=max_retry_after,
                             timeout=float(timeout[1]), deadline=deadline)
        # only the retry loop of the client is used: requests go through self.session
        self.client = RetryingClient(policy, name="fetch", sleep=sleep, user_agent=USER_AGENT)

    # -- metadata -------------------------------------------------------------------------
    def get_json(self, url: str, what: str, env: str) -> Any:
        """GET a JSON document with the same retry policy as file downloads."""

        def once() -> Any:
            started = time.monotonic()
            resp = self._send(url, timeout=self.timeout, stream=True)
            with resp:
                if resp.status_code != 200:
                    err = http_status_error(resp)
                    if err.retryable:
                        raise err
                    raise GalmergeError(
                        f"{what}: HTTP {resp.status_code} from {hide_userinfo(url)}; check the record id "
                        f"or {env}"
                    )
                # whole within the transfer deadline, and of a sane size
                body = read_body(resp, self.client.policy.transfer_deadline, started,
                                 max_bytes=JSON_MAX_BYTES)
            try:
                return json.loads(body)
            except ValueError:
                raise GalmergeError(f"{what}: {hide_userinfo(url)} did not return JSON; check "
                                    f"{env}") from None

        try:
            return self.client.call(once, what, on_retry=self._announce(what))
        except FetchError as err:
            raise GalmergeError(
                f"{what}: cannot reach {hide_userinfo(url)} ({_reason(err)}); check the network "
                f"or set {env}"
            ) from None

    def _send(self, url: str, method: str = "GET", **kwargs: Any) -> requests.Response:
        """One request whose answer's headers must come within the transfer deadline
        (`HeadersDeadline`): a server dripping them cannot hold the fetch; a retryable
        `FetchError` when it cut the request off."""
        with HeadersDeadline(self.client.policy.transfer_deadline) as waited:
            resp = self.session.request(method, url, **kwargs)
            if waited.cut:
                resp.close()
        return resp

    def head_size(self, url: str) -> int | None:
        try:
            resp = self._send(url, "HEAD", timeout=self.timeout, allow_redirects=True)
        except (requests.ConnectionError, requests.Timeout, FetchError):
            return None
        length = resp.headers.get("Content-Length")
        return int(length) if resp.ok and length and length.isdigit() else None

    # -- one file -------------------------------------------------------------------------
    def fetch(self, remote: RemoteFile, folder: Path, *, force: bool = False) -> FetchResult:
        """Make ``folder/remote.name`` a verified copy of ``remote``; skip it when it is one."""
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder / f".{remote.name}.lock", remote.name):
            return self._fetch_locked(remote, folder / remote.name, force)

    def _fetch_locked(self, remote: RemoteFile, dest: Path, force: bool) -> FetchResult:
        part = dest.with_name(dest.name + ".part")
        if part.is_symlink():  # refused before any transfer (opening it would refuse it too)
            atomic.open_nofollow(part, "ab").close()
        if force:
            part.unlink(missing_ok=True)
            _validator_path(part).unlink(missing_ok=True)
        elif dest.is_file():
            present = self._check_present(remote, dest)
            if present is not None:
                return present
        remote = self._with_size(remote)
        self._download(remote, part)
        verified = self._verify(remote, part, dest)
        os.replace(part, dest)
        _validator_path(part).unlink(missing_ok=True)
        _write_marker(dest, remote.md5 if verified == "md5" else None)
        return FetchResult(remote.name, dest, "downloaded", dest.stat().st_size, verified)

    def _check_present(self, remote: RemoteFile, dest: Path) -> FetchResult | None:
        size = dest.stat().st_size
        if _marker_matches(dest, remote):
            return FetchResult(remote.name, dest, "present", size, "md5" if remote.md5 else "size")
        remote = self._with_size(remote)
        ok = remote.size is None or remote.size == size
        if ok and remote.md5 is not None:
            ok = md5sum(dest) == remote.md5
        elif ok:  # no checksum published (MAST): at least it must open in its format
            ok = _structure_problem(dest, remote.name) is None
        if ok:
            _write_marker(dest, remote.md5)
            return FetchResult(remote.name, dest, "present", size, "md5" if remote.md5 else "size")
        aside = _move_aside(dest)
        self._say(f"{remote.name}: existing copy failed its check; moved to {aside.name}")
        return None

    def _with_size(self, remote: RemoteFile) -> RemoteFile:
        if remote.size is not None:
            return remote
        size = self.head_size(remote.url)
        return RemoteFile(remote.name, remote.url, size, remote.md5)

    def _download(self, remote: RemoteFile, part: Path) -> None:
        task = None
        if self.progress is not None:
            task = self.progress.add_task(remote.name, total=remote.size)
        transfer = _Transfer(remote.size)

        def once() -> None:
            offset = part.stat().st_size if part.exists() else 0
            if transfer.size is not None and offset > transfer.size:
                part.unlink()
                offset = 0
            transfer.start(offset)
            if transfer.size is not None and offset == transfer.size:
                return
            self._attempt(remote, part, offset, transfer, task)
            got = part.stat().st_size
            if transfer.size is not None and got < transfer.size:
                raise FetchError("connection closed before the end of the file", retryable=True)

        try:
            self.client.call(
                once,
                remote.name,
                progressed=lambda: transfer.advanced,
                on_retry=self._announce(remote.name),
            )
        except FetchError as err:
            tried = f"after {self.retries} retries " if err.retryable else ""
            raise GalmergeError(
                f"{remote.name}: download failed {tried}({_reason(err)}); "
                "run the same fetch again to resume"
            ) from None
        if task is not None:
            self.progress.update(task, completed=part.stat().st_size, total=part.stat().st_size)

    def _attempt(
        self, remote: RemoteFile, part: Path, offset: int, transfer: _Transfer, task: Any
    ) -> None:
        """One GET from ``offset``, appended to ``part``; learns the total size on the way."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        validator = _validator_path(part)
        if offset and validator.is_file():
            # the rest only if the file is still the one the part began with, else all of it
            headers["If-Range"] = validator.read_text().strip()
        r = self._send(remote.url, headers=headers, stream=True, timeout=self.timeout)
        with r:
            if r.status_code == 416:
                match = _RANGE_TOTAL.search(r.headers.get("Content-Range", ""))
                if match and int(match.group(1)) == offset:
                    transfer.size = offset  # the part already holds the whole file
                    return
                part.unlink(missing_ok=True)  # the part is longer than the file: start over
                raise FetchError("HTTP 416 for a stale partial file", retryable=True)
            if r.status_code not in (200, 206):
                err = http_status_error(r)
                if err.retryable:
                    raise err
                raise GalmergeError(
                    f"{remote.name}: HTTP {r.status_code} from {hide_userinfo(remote.url)}; the "
                    "file may have moved, check the server URL variables "
                    "(GALMERGE_ZENODO_URL/GALMERGE_MAST_URL)"
                )
            mode = "ab"
            if r.status_code == 206:
                match = _CONTENT_RANGE.search(r.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != offset:
                    part.unlink(missing_ok=True)
                    raise FetchError("server answered a different range", retryable=True)
                if match.group(3) != "*" and transfer.size is None:
                    transfer.size = int(match.group(3))
            else:  # a full body: the server ignored the Range header, or the file changed
                mode = "wb"
                offset = 0
                _remember_validator(validator, r.headers)
                length = r.headers.get("Content-Length")
                if transfer.size is None and length and length.isdigit():
                    transfer.size = int(length)
            if task is not None:
                self.progress.update(task, total=transfer.size, completed=offset)
            written = offset
            guard = RateGuard(r, MIN_RATE_BYTES, MIN_RATE_WINDOW_S)
            oversize = False
            with atomic.open_nofollow(part, mode) as fh, guard:
                try:
                    for chunk in r.iter_content(CHUNK):
                        if transfer.size is not None and written + len(chunk) > transfer.size:
                            oversize = True  # not the file the record describes
                            break
                        if chunk:
                            fh.write(chunk)
                            written += len(chunk)
                            guard.count(len(chunk))
                            if task is not None:
                                self.progress.advance(task, len(chunk))
                except Exception:
                    guard.check()  # the guard shut the socket: say so, not "connection dropped"
                    raise
                finally:  # a dropped connection still counts what reached the disk
                    transfer.note(written)
                    if guard.stalled:  # a drip is no progress: it uses up the tries
                        transfer.advanced = False
            if oversize:
                aside = part.with_name(remote.name + ".corrupt")
                os.replace(part, aside)
                _validator_path(part).unlink(missing_ok=True)
                raise GalmergeError(
                    f"{remote.name}: the server sent more than the {transfer.size} bytes the "
                    f"file should have; stopped and moved what came to {aside}; run the fetch "
                    "again later, or report it if it happens again"
                )
            guard.check()

    def _verify(self, remote: RemoteFile, part: Path, dest: Path) -> str:
        got = part.stat().st_size
        problem = None
        verified = "size"
        if remote.size is not None and got != remote.size:
            problem = f"size {got} bytes, expected {remote.size}"
        elif remote.md5 is not None:
            digest = md5sum(part)
            verified = "md5"
            if digest != remote.md5:
                problem = f"checksum mismatch (md5 {digest}, expected {remote.md5})"
        if problem is None and remote.md5 is None:
            problem = _structure_problem(part, remote.name)
            verified = "structure"
        if problem is not None:
            # a copy already at dest (there is one only with --force) passed its own check
            # before: it stays, a bad transfer must not cost the good file
            aside = part.with_name(dest.name + ".corrupt")
            os.replace(part, aside)
            _validator_path(part).unlink(missing_ok=True)
            kept = "; the copy already there is kept" if dest.is_file() else ""
            raise GalmergeError(
                f"{remote.name}: {problem}; moved to {aside}{kept}; run the fetch again with "
                "--force"
            )
        return verified

    def _announce(self, what: str) -> Callable[[FetchError, float], None]:
        """Say so before a long wait (a server's Retry-After), so a quiet fetch is not a hang."""

        def announce(err: FetchError, delay: float) -> None:
            if delay >= ANNOUNCE_WAIT_S:
                self._say(f"{what}: {err.reason}; waiting {delay:.0f} s before trying again")

        return announce

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False)


@contextlib.contextmanager
def _exclusive(lock_path: Path, name: str) -> Iterator[None]:
    """One process at a time per file: two writers appending to one .part would corrupt it."""
    with atomic.exclusive_lock(
        lock_path,
        f"{name}: another galmerge fetch is downloading it into {lock_path.parent}; wait for "
        "it to finish",
    ):
        yield


def _validator_path(part: Path) -> Path:
    """Beside ``NAME.part``: the ETag (or Last-Modified) of the file the part is a prefix of."""
    return part.with_name(part.name + ".validator")


def _remember_validator(path: Path, headers: Any) -> None:
    """Keep a strong ETag, else Last-Modified, for If-Range on a later resume; none: forget."""
    etag = headers.get("ETag") or ""
    value = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified") or ""
    if value:
        atomic.write_text(path, value + "\n")
    else:
        path.unlink(missing_ok=True)


def _structure_problem(path: Path, name: str) -> str | None:
    """Without a published checksum, at least the file must open in its format."""
    import numpy as np

    try:
        if name.lower().endswith((".fits", ".fit")):
            from astropy.io import fits

            with warnings.catch_warnings():
                # astropy only warns when the file ends before the data its headers announce
                warnings.filterwarnings("error", message=".*truncated", category=UserWarning)
                with fits.open(path, memmap=True) as hdul:
                    data = hdul[0].data
                    if data is None or data.ndim != 4 or len(hdul) < 2:
                        return "not a DeepMerge FITS file (images in HDU0, labels in HDU1)"
                    for hdu in hdul[1:]:  # every HDU's data must be there, the labels too
                        if hdu.data is not None:
                            np.asarray(hdu.data)[-1:].tobytes()
        elif name.lower().endswith(".npy"):
            np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, TypeError, UserWarning) as exc:
        return f"unreadable ({_short(exc)})"
    return None


def _reason(err: FetchError) -> str:
    """The retry helper's reason, with the detail of the exception behind it when there is one."""
    cause = err.__cause__
    if cause is None or isinstance(cause, FetchError):
        return err.reason
    return f"{err.reason}: {_short(_innermost(cause))}"


def _innermost(exc: BaseException) -> BaseException:
    """requests wraps urllib3 wraps socket errors; the innermost says what happened."""
    seen = 0
    while seen < 8:
        seen += 1
        reason = getattr(exc, "reason", None)
        inner = reason if isinstance(reason, BaseException) else None
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if inner is None:
            break
        exc = inner
    return exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:160] + "...") if len(text) > 160 else text or type(exc).__name__


def zenodo_files(
    names: Iterable[str], downloader: Downloader, record: str = deepmerge_data.ZENODO_RECORD
) -> list[RemoteFile]:
    """Look ``names`` up in the Zenodo record's file list (``GET /api/records/<id>``)."""
    base = zenodo_url()
    url = f"{base}/api/records/{record}"
    doc = downloader.get_json(url, f"Zenodo record {record}", ZENODO_ENV)
    entries = doc.get("files") if isinstance(doc, dict) else None
    if isinstance(entries, dict):  # the InvenioRDM form: {"entries": {key: {...}}}
        entries = entries.get("entries") or {}
        entries = list(entries.values()) if isinstance(entries, dict) else None
    if not isinstance(entries, list):
        raise GalmergeError(f"Zenodo record {record}: {hide_userinfo(url)} lists no files; "
                            f"check {ZENODO_ENV}")
    by_name: dict[str, RemoteFile] = {}
    for entry in entries:
        remote = _zenodo_entry(entry, base, record, url)
        if remote is not None:
            by_name[remote.name.lower()] = remote
    wanted = []
    for name in names:
        found = by_name.get(name.lower())
        if found is None:
            raise GalmergeError(
                f"Zenodo record {record} has no file {name}; the record changed, please report it"
            )
        wanted.append(found)
    return wanted


def _zenodo_entry(entry: Any, base: str, record: str, url: str) -> RemoteFile | None:
    """One file of a Zenodo record's list; None for an entry without a name; a one-line
    GalmergeError for one that is not the documented shape."""

    def bad(what: str) -> GalmergeError:
        return GalmergeError(f"Zenodo record {record}: {hide_userinfo(url)} lists a file with "
                             f"{what}; the "
                             f"record's format changed or {ZENODO_ENV} is not Zenodo")

    if not isinstance(entry, dict):
        raise bad(f"a {type(entry).__name__} where an object belongs")
    key = entry.get("key") or entry.get("filename")
    if not key:
        return None
    if not isinstance(key, str):
        raise bad(f"name {key!r} (not text)")
    checksum = str(entry.get("checksum") or "")
    md5 = checksum.split(":", 1)[1] if checksum.startswith("md5:") else None
    if md5 is None and re.fullmatch(r"[0-9a-f]{32}", checksum):
        md5 = checksum
    links = entry.get("links") or {}
    if not isinstance(links, dict):
        raise bad(f"links that are a {type(links).__name__}, not an object ({key})")
    link = links.get("content") or links.get("self") or links.get("download")
    if link is None or link == "":  # no usable link given: Zenodo's own file address
        link = f"{base}/records/{record}/files/{key}?download=1"
    elif not isinstance(link, str):
        raise bad(f"a link that is not text ({key})")
    size = entry.get("size", entry.get("filesize"))
    if size is not None:
        text = str(size) if isinstance(size, (int, str)) and not isinstance(size, bool) else ""
        if not (text.isascii() and text.isdigit()):
            raise bad(f"size {size!r}, not a whole number of bytes ({key})")
        size = int(size)
    return RemoteFile(key, link, size, md5)


def mast_files(names: Iterable[str]) -> list[RemoteFile]:
    """MAST HLSP files: the directory listing publishes no checksums."""
    base = mast_url()
    return [RemoteFile(n, f"{base}/{deepmerge_data.MAST_HLSP_PATH}/{n}") for n in names]


TARGETS = {
    "illustris": ("illustris",),
    "sdss": ("sdss",),
    "deepmerge1": ("deepmerge1",),
    "all": ("illustris", "sdss"),
}


def remote_files(target: str, downloader: Downloader) -> list[RemoteFile]:
    """The files a `galmerge fetch TARGET` downloads."""
    if target not in TARGETS:
        raise GalmergeError(f"unknown fetch target {target!r}; choose one of {', '.join(TARGETS)}")
    files: list[RemoteFile] = []
    for group in TARGETS[target]:
        source, names = deepmerge_data.FETCH_GROUPS[group]
        files += zenodo_files(names, downloader) if source == "zenodo" else mast_files(names)
    return files


def fetch(
    target: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    downloader: Downloader | None = None,
) -> list[FetchResult]:
    """Download every file of ``target`` into ``<data_dir>/deepmerge``; raise after trying all.

    A failed file does not stop the others; the error names the first failure.
    """
    downloader = downloader or Downloader()
    folder = deepmerge_data.data_root(data_dir)
    try:  # every line fetch prints names a file in it: refused before anything is fetched
        str(folder).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(folder).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise GalmergeError(f"data folder {shown} (--data-dir or GALMERGE_DATA) is not valid "
                            "UTF-8; choose a folder name in UTF-8") from None
    results: list[FetchResult] = []
    errors: list[str] = []
    for remote in remote_files(target, downloader):
        try:
            results.append(downloader.fetch(remote, folder, force=force))
        except GalmergeError as exc:
            if errors:  # the first failure becomes the command's error line
                downloader._say(str(exc))
            errors.append(str(exc))
    if errors:
        more = f" (and {len(errors) - 1} more failed)" if len(errors) > 1 else ""
        raise GalmergeError(errors[0] + more)
    return results
