"""A loopback Legacy Surveys cutout service: ``GET /viewer/cutout.fits?ra=&dec=&layer=&pixscale=
&size=&bands=`` answers a FITS cube (C, H, W) of Gaussian galaxies in nanomaggies with a TAN WCS
(north up, east left), ``BANDn`` keywords, a flat sky of 1e-6, and zeros outside a footprint
(dec > -20), pixel by pixel (a stamp on its edge is partly zeros).

Faults per test: ``server.add_fault(match, kind, times=1, retry_after="1")`` with kind one of
``500 503 429 slow drop truncate redirect bands unlabelled`` (redirect: 302 to ``location`` +
the request's path and query; bands: the cube of ``bands`` instead of the bands asked, labelled
truly; unlabelled: no ``BANDn`` keywords); ``server.count(part)`` counts requests.
"""

from __future__ import annotations

import io
import math
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

LAYERS = {"ls-dr10": "griz", "ls-dr9": "grz"}


@dataclass
class Galaxy:
    ra: float
    dec: float
    flux: dict[str, float] = field(default_factory=lambda: {"g": 10.0, "r": 20.0, "i": 25.0,
                                                            "z": 30.0})
    sigma_arcsec: float = 1.0


@dataclass
class Fault:
    match: str
    kind: str
    times: int = 1
    retry_after: str = "1"
    delay: float = 1.0
    location: str = ""
    bands: str = ""


def default_galaxies() -> list[Galaxy]:
    return [
        Galaxy(180.0, 10.0),
        Galaxy(180.0, 10.004, {"g": 1.0, "r": 4.0, "i": 6.0, "z": 9.0}),  # 14.4" north
        Galaxy(35.5, -5.25, {"g": 3.0, "r": 2.0, "i": 1.5, "z": 1.0}, sigma_arcsec=0.7),
    ]


class FakeLegacySurvey:
    """The server; ``url`` is the base to put in GALMERGE_LEGACYSURVEY_URL."""

    def __init__(self, galaxies: list[Galaxy] | None = None) -> None:
        self.galaxies = default_galaxies() if galaxies is None else galaxies
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.queries: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> FakeLegacySurvey:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/viewer"

    def add_fault(self, match: str, kind: str, times: int = 1, **kw) -> None:
        with self.lock:
            self.faults.append(Fault(match, kind, times, **kw))

    def count(self, part: str = "") -> int:
        with self.lock:
            return sum(n for k, n in self.counts.items() if part in k)

    def take_fault(self, target: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.match in target and f.times != 0:
                    f.times -= 1 if f.times > 0 else 0
                    return f
        return None

    def cutout(self, ra: float, dec: float, layer: str, scale: float, size: int, bands: str,
               labels: bool = True) -> bytes:
        from astropy.io import fits

        s = scale / 3600.0
        rows, cols = np.mgrid[0:size, 0:size]
        c = (size - 1) / 2.0
        pdec = dec + (rows - c) * s  # FITS order: row 0 south
        pra = ra - (cols - c) * s / math.cos(math.radians(dec))  # column 0 east
        cube = np.zeros((len(bands), size, size), dtype=np.float32)
        for i, b in enumerate(bands):
            for g in self.galaxies:
                dx = (pra - g.ra) * math.cos(math.radians(g.dec)) * 3600
                dy = (pdec - g.dec) * 3600
                s2 = g.sigma_arcsec**2
                cube[i] += (g.flux[b] * np.exp(-(dx * dx + dy * dy) / (2 * s2))
                            / (2 * math.pi * s2) * scale**2)
            cube[i] += 1e-6  # the sky: imaged pixels are never exactly zero
        cube[:, pdec <= -20] = 0.0  # outside the footprint (dec > -20), pixel by pixel
        h = fits.Header()
        for k, v in [("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", ra),
                     ("CRVAL2", dec), ("CRPIX1", c + 1), ("CRPIX2", c + 1), ("CD1_1", -s),
                     ("CD1_2", 0.0), ("CD2_1", 0.0), ("CD2_2", s), ("IMAGEW", size),
                     ("IMAGEH", size), ("SURVEY", "LegacySurvey"), ("VERSION", "DR10")]:
            h[k] = v
        for i, b in enumerate(bands if labels else ""):
            h[f"BAND{i}"] = b
        buf = io.BytesIO()
        fits.PrimaryHDU(cube if len(bands) > 1 else cube[0], header=h).writeto(buf)
        return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLegacySurvey

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        fake = self.fake
        parts = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with fake.lock:
            fake.counts[parts.path] += 1
            fake.queries.append(q)
        fault = fake.take_fault(self.path)
        if fault and fault.kind in ("500", "503"):
            return self._send(int(fault.kind), b"error")
        if fault and fault.kind == "429":
            return self._send(429, b"slow down", {"Retry-After": fault.retry_after})
        if fault and fault.kind == "redirect":
            return self._send(302, b"", {"Location": fault.location + self.path})
        if fault and fault.kind == "slow":
            time.sleep(fault.delay)
        if parts.path != "/viewer/cutout.fits":
            return self._send(404, b"not found")
        try:
            layer = q.get("layer", "ls-dr10")
            bands = q.get("bands", "grz")
            args = (float(q["ra"]), float(q["dec"]), layer, float(q.get("pixscale", 0.262)),
                    int(q.get("size", 256)), bands)
            if layer not in LAYERS or any(b not in LAYERS[layer] for b in bands):
                raise ValueError(layer)
        except (KeyError, ValueError):
            return self._send(400, b"bad request")
        if fault and fault.kind == "bands":
            args = (*args[:-1], fault.bands)
        body = fake.cutout(*args, labels=not (fault and fault.kind == "unlabelled"))
        if fault and fault.kind == "truncate":
            return self._send(200, body[: len(body) // 2])
        if fault and fault.kind == "drop":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return None
        return self._send(200, body)

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/fits" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
