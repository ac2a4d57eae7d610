"""A real HTTP/1.1 file server on 127.0.0.1 for download tests, with injectable faults.

Serves byte blobs at paths, honours ``Range: bytes=N-`` and ``If-Range`` (ETag: the blob's
md5), answers HEAD, and pops one fault per
request from a per-path queue: "drop" (send half the body, then close the connection),
"drop-empty" (send the headers, then close before any byte of the body), "corrupt" (flip
bytes, same length), a status such as "500" or "501" (answer with it), "429" and
"503-retry-after" (rate limited, with a ``Retry-After`` header: ``DEFAULT_RETRY_AFTER``, or the
value after a colon, e.g. "429:7" or an HTTP-date), "ignore-range" (answer 200 with the whole
file), "stall" (send headers, then wait past the client's read timeout), "trickle" (send the
body one byte every ``TRICKLE_SECONDS``: every read arrives in time, the whole does not),
"endless" (answer 200 with no Content-Length and send zeros until the client hangs up),
"header-drip" (send the status line, then one endless header line a byte every
``TRICKLE_SECONDS``: every read arrives in time, the headers never end).
Paths in ``redirects`` answer 302 with that Location (no body). Paths in ``no_length`` are
served as a server that gives no size: no Content-Length on HEAD or
GET (the body ends when the connection closes), so a client cannot tell a cut body from a whole
one.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STALL_SECONDS = 3.0
TRICKLE_SECONDS = 0.2
HEADER_DRIP_SECONDS = 30.0  # how long "header-drip" drips before it gives up itself
DEFAULT_RETRY_AFTER = "1"


class LoopbackServer:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.content_type: dict[str, str] = {}
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.no_length: set[str] = set()
        self.redirects: dict[str, str] = {}
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                with server._lock:
                    server.log.append((self.command, path, rng))
                    blob = server.blobs.get(path)
                    fault = server.faults[path].pop(0) if server.faults[path] and not head else None
                    location = server.redirects.get(path)
                if location is not None:
                    self._reply(302, b"", "text/plain", head, {"Location": location})
                    return
                if blob is None:
                    self._reply(404, b"not found", "text/plain", head)
                    return
                if fault == "header-drip":
                    self.close_connection = True
                    try:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                        for _ in range(int(HEADER_DRIP_SECONDS / TRICKLE_SECONDS)):
                            self.wfile.write(b"X")
                            self.wfile.flush()
                            time.sleep(TRICKLE_SECONDS)
                    except OSError:  # the client gave up
                        pass
                    return
                kind, _, retry_after = (fault or "").partition(":")
                if kind in ("429", "503-retry-after"):
                    code = 429 if kind == "429" else 503
                    extra = {"Retry-After": retry_after or DEFAULT_RETRY_AFTER}
                    self._reply(code, b"slow down", "text/plain", head, extra)
                    return
                if fault is not None and fault.isdigit():  # "500", "501", "505", ...
                    self._reply(int(fault), b"server error", "text/plain", head)
                    return
                if fault == "endless":
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    try:
                        while True:
                            self.wfile.write(b"\0" * 65536)
                    except OSError:  # the client gave up
                        return
                if fault == "corrupt":
                    blob = bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(blob))
                total = len(blob)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                etag = f'"{hashlib.md5(blob).hexdigest()}"'
                if_range = self.headers.get("If-Range")
                if match and fault != "ignore-range" and if_range in (None, etag):
                    start = int(match.group(1))
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    end = int(match.group(2)) if match.group(2) else total - 1
                    body = blob[start : end + 1]
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{start + len(body) - 1}/{total}"
                    )
                else:
                    body = blob
                    self.send_response(200)
                self.send_header(
                    "Content-Type", server.content_type.get(path, "application/octet-stream")
                )
                sized = path not in server.no_length
                if sized:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                self.end_headers()
                if head:
                    return
                if fault == "stall":
                    time.sleep(STALL_SECONDS)
                if fault == "trickle":
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(TRICKLE_SECONDS)
                    except OSError:  # the client gave up
                        pass
                    self.close_connection = True
                    return
                if fault in ("drop", "drop-empty"):
                    self.wfile.write(body[: len(body) // 2] if fault == "drop" else b"")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _reply(
                self,
                code: int,
                body: bytes,
                ctype: str,
                head: bool,
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, path: str, blob: bytes, content_type: str = "application/octet-stream") -> None:
        self.blobs[path] = blob
        self.content_type[path] = content_type

    def add_zenodo_record(self, record: str, files: dict[str, bytes]) -> None:
        """Serve files and the Zenodo API document that lists them (key, size, md5, link)."""
        entries = []
        for name, blob in files.items():
            path = f"/api/records/{record}/files/{name}/content"
            self.add(path, blob)
            entries.append(
                {
                    "id": hashlib.sha1(name.encode()).hexdigest()[:12],
                    "key": name,
                    "size": len(blob),
                    "checksum": "md5:" + hashlib.md5(blob).hexdigest(),
                    "links": {"self": self.url + path},
                }
            )
        doc = {"id": int(record), "doi": f"10.5281/zenodo.{record}", "files": entries}
        self.add(f"/api/records/{record}", json.dumps(doc).encode(), "application/json")

    def gets(self, suffix: str) -> list[str | None]:
        """Range headers of the GET requests for paths ending with ``suffix``."""
        return [r for m, p, r in self.log if m == "GET" and p.endswith(suffix)]
