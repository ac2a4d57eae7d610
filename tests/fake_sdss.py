"""A loopback HTTP server that speaks SDSS as astroquery 0.4.11 and galmerge call it.

- SkyServer SQL search: ``GET /dr17/en/tools/search/x_results.aspx?cmd=<SQL>&format=csv&searchtool=SQL``
  (astroquery's ``SDSS.query_sql``), answered in SkyServer's CSV (``#Table1`` then a header row).
  It understands galmerge's position lookup (``VALUES`` list + ``fGetNearbyObjEq`` radius) and
  returns, per position, the field of the nearest galaxy within the radius.
- SAS corrected frames: ``GET /sas/dr17/eboss/photoObj/frames/301/<run>/<camcol>/
  frame-<band>-<run:06d>-<camcol>-<field:04d>.fits.bz2``: bz2 FITS, HDU0 the image in nanomaggies
  with an SDSS-like TAN WCS (CD matrix transposed as in real frames, or any rotation), HDU1 the
  calibration vector.
- ImgCutout: ``GET /dr17/SkyServerWS/ImgCutout/getjpeg?ra=&dec=&scale=&width=&height=``, a colour
  JPEG (R,G,B = i,r,g) north up, black outside the footprint.

Faults are injected per test with ``server.add_fault(match, kind, times=1)``; ``server.count(s)``
counts requests whose path contains ``s``. Use the ``fake_sdss`` fixture (import it into a test
module: ``from fake_sdss import fake_sdss_fixture  # noqa: F401``): it points
``GALMERGE_SDSS_SKYSERVER_URL`` and ``GALMERGE_SDSS_SAS_URL`` at the server.
"""

from __future__ import annotations

import bz2
import io
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

PIXEL_SCALE = 0.396  # arcsec, SDSS native
DEFAULT_FLUX = {"u": 5.0, "g": 10.0, "r": 20.0, "i": 30.0, "z": 40.0}  # nanomaggies
_RENDERED: dict[str, bytes] = {}  # frame files shared by every server in this process
FRAME_RE = re.compile(
    r"^/sas/dr(\d+)/eboss/photoObj/frames/(\d+)/(\d+)/(\d)/"
    r"frame-([ugriz])-(\d{6})-(\d)-(\d{4})\.fits\.bz2$"
)


@dataclass
class FakeGalaxy:
    """A Gaussian galaxy: total flux per band in nanomaggies, sigma in arcsec."""

    ra: float
    dec: float
    flux: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FLUX))
    sigma_arcsec: float = 1.2
    #: optional pixels instead of a Gaussian: band -> odd-sized (n, n) nanomaggies at 0.396"/px,
    #: FITS order (row 0 south, column 0 east), centred on (ra, dec); only on frames whose
    #: axes align with north/east (angle a multiple of 90), and (ra, dec) on a pixel centre
    stamp: dict[str, np.ndarray] | None = field(default=None, repr=False)
    name: str = ""


@dataclass
class FakeField:
    """One imaging field; ``angle_deg`` 90 gives the transposed CD matrix real frames have."""

    run: int
    camcol: int
    field: int
    ra: float
    dec: float
    angle_deg: float = 90.0
    shape: tuple[int, int] = (160, 240)  # (ny, nx); real frames are 1489 x 2048
    rerun: int = 301

    def header(self, band: str):
        from astropy.io import fits

        s = PIXEL_SCALE / 3600.0
        t = math.radians(self.angle_deg)
        h = fits.Header()
        ny, nx = self.shape
        for key, value in [
            ("TAI", 4.56e9), ("RUN", self.run), ("CAMCOL", self.camcol),
            ("FIELD", self.field), ("FILTER", band), ("CAMROW", 1 + "ugriz".index(band)),
            ("RERUN", str(self.rerun)), ("RADESYS", "ICRS"), ("EQUINOX", 2000.0),
            ("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CUNIT1", "deg"), ("CUNIT2", "deg"),
            ("CRPIX1", (nx + 1) / 2.0), ("CRPIX2", (ny + 1) / 2.0),
            ("CRVAL1", self.ra), ("CRVAL2", self.dec),
            # east-left parity, rotated: angle 0 is north up; 90 is x along dec (SDSS scans)
            ("CD1_1", -s * math.cos(t)), ("CD1_2", s * math.sin(t)),
            ("CD2_1", s * math.sin(t)), ("CD2_2", s * math.cos(t)),
            ("BUNIT", "nanomaggy"), ("NMGY", 0.0045), ("SOFTBIAS", 1000),
            ("VERSION", "v5_6_3"), ("ASTRO", "v5_8"), ("PHOTO", "v5_6"),
        ]:
            h[key] = value
        return h

    def wcs(self, band: str = "r"):
        from astropy.wcs import WCS

        h = self.header(band)
        h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, self.shape[1], self.shape[0]
        return WCS(h)

    def contains(self, ra: float, dec: float) -> bool:
        x, y = self.wcs().world_to_pixel_values(ra, dec)
        ny, nx = self.shape
        return bool(-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5)


def default_sky() -> tuple[list[FakeField], list[FakeGalaxy]]:
    """Three fields: two neighbours on one SDSS-like run, one rotated by 33 degrees."""
    fields = [
        FakeField(1000, 1, 100, 150.000, 2.000),
        FakeField(1000, 1, 101, 150.022, 2.000),
        FakeField(2000, 3, 50, 210.000, 30.000, angle_deg=33.0),
    ]
    galaxies = [
        FakeGalaxy(150.0000, 2.0000),
        FakeGalaxy(149.9960, 2.0080, {"u": 2, "g": 4, "r": 8, "i": 16, "z": 32}),
        FakeGalaxy(150.0045, 1.9930, sigma_arcsec=0.8),
        FakeGalaxy(150.0240, 2.0050),
        FakeGalaxy(210.0000, 30.0000),
        FakeGalaxy(210.0040, 30.0050, {"u": 1, "g": 3, "r": 9, "i": 27, "z": 81}),
    ]
    return fields, galaxies


def render(galaxies: list[FakeGalaxy], band: str, ra: np.ndarray, dec: np.ndarray,
           pixel_arcsec: float) -> np.ndarray:
    """Nanomaggies per pixel of area ``pixel_arcsec**2`` at sky positions (degrees)."""
    out = np.zeros(ra.shape, dtype=np.float64)
    for g in galaxies:
        dx = (ra - g.ra) * math.cos(math.radians(g.dec)) * 3600.0
        dy = (dec - g.dec) * 3600.0
        r2 = dx * dx + dy * dy
        s2 = g.sigma_arcsec**2
        out += g.flux.get(band, 0.0) * np.exp(-r2 / (2 * s2)) / (2 * math.pi * s2) * pixel_arcsec**2
    return out


def render_frame(fld: FakeField, galaxies: list[FakeGalaxy], band: str) -> np.ndarray:
    """A field's image: each galaxy drawn in a box of +-7 sigma around it, offsets through the
    CD matrix (the tangent plane is flat over a few arcsec), so real-size frames stay cheap."""
    ny, nx = fld.shape
    image = np.zeros((ny, nx), dtype=np.float64)
    wcs = fld.wcs(band)
    cd = wcs.wcs.cd * 3600.0  # arcsec per pixel
    for g in galaxies:
        x, y = (float(v) for v in wcs.world_to_pixel_values(g.ra, g.dec))
        if g.stamp is not None:
            _paste(image, g.stamp[band], x, y, cd)
            continue
        half = int(math.ceil(7 * g.sigma_arcsec / PIXEL_SCALE)) + 1
        x0, x1 = max(0, int(x) - half), min(nx, int(x) + half + 2)
        y0, y1 = max(0, int(y) - half), min(ny, int(y) + half + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dxi = cd[0, 0] * (xx - x) + cd[0, 1] * (yy - y)
        deta = cd[1, 0] * (xx - x) + cd[1, 1] * (yy - y)
        s2 = g.sigma_arcsec**2
        image[y0:y1, x0:x1] += (g.flux.get(band, 0.0) * np.exp(-(dxi**2 + deta**2) / (2 * s2))
                                / (2 * math.pi * s2) * PIXEL_SCALE**2)
    return image


def _paste(image: np.ndarray, stamp: np.ndarray, x: float, y: float, cd: np.ndarray) -> None:
    """Add a north-up stamp into an axis-aligned frame at pixel (x, y)."""
    inv = np.linalg.inv(cd / PIXEL_SCALE)  # (xi east, eta north) in pixels -> frame pixels
    west, north = np.round(inv @ [-1.0, 0.0]), np.round(inv @ [0.0, 1.0])
    assert np.abs(west).sum() == np.abs(north).sum() == 1, "stamps need an axis-aligned frame"
    n = stamp.shape[0]
    c = (n - 1) // 2
    rows, cols = np.mgrid[0:n, 0:n]
    fx = int(round(x)) + west[0] * (cols - c) + north[0] * (rows - c)
    fy = int(round(y)) + west[1] * (cols - c) + north[1] * (rows - c)
    ny, nx = image.shape
    ok = (fx >= 0) & (fx < nx) & (fy >= 0) & (fy < ny)
    np.add.at(image, (fy[ok].astype(int), fx[ok].astype(int)), stamp[ok])


def rendered_galaxies(fld: FakeField, n: int, seed: int = 0, size: int = 41) -> list[FakeGalaxy]:
    """``n`` merging galaxies drawn by galmerge's renderer (sdss preset, no noise or field),
    on pixel centres in a row across the lower quarter of ``fld``."""
    from galmerge.surveys.synthetic.render import draw_scenes, get_preset, sample_scenes

    scenes = sample_scenes(n, seed=seed, merger_fraction=1.0)
    images, _ = draw_scenes(scenes, get_preset("sdss"), seed=seed, size=size, noise=False,
                            field=False)
    wcs = fld.wcs()
    ny, nx = fld.shape
    out = []
    for i in range(n):
        x, y = nx // 2 + (i - n // 2) * (size + 5), ny // 4 + 3 * i
        ra, dec = (float(v) for v in wcs.pixel_to_world_values(x, y))
        planes = {b: images[i, k].numpy().astype(np.float32) for k, b in enumerate("gri")}
        flux = {b: float(p.sum()) for b, p in planes.items()}
        out.append(FakeGalaxy(ra, dec, {**flux, "u": flux["g"], "z": flux["i"]}, 1.5,
                              stamp=planes, name=f"rendered-merger-{i}"))
    return out


@dataclass
class Fault:
    """Misbehave on requests whose path+query contains ``match``, ``times`` times (-1: always)."""

    match: str
    kind: str  # "500" "502" "503" "404" "429" "slow" "drop" "truncate" "corrupt" "garbage"
    # "drip": the body one byte every ``delay`` s (each read in time, the whole never)
    # "redirect": 302 to ``location`` + the request's path and query
    times: int = 1
    retry_after: str = "1"
    delay: float = 1.0
    location: str = ""


class FakeSdss:
    """The server; ``url`` is the SkyServer base, ``sas_url`` the SAS base."""

    def __init__(self, fields=None, galaxies=None, noise: float = 0.0) -> None:
        if fields is None and galaxies is None:
            fields, galaxies = default_sky()
        self.fields: list[FakeField] = list(fields or [])
        self.galaxies: list[FakeGalaxy] = list(galaxies or [])
        self.noise = noise
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.log: list[str] = []
        self._lock = threading.Lock()
        self._frames: dict[tuple[int, int, int, str], bytes] = {}
        self._field_of: dict[tuple, FakeField | None] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeSdss:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeSdss:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def sas_url(self) -> str:
        return self.url + "/sas"

    # -- test controls --------------------------------------------------------------------
    def add_fault(self, match: str, kind: str, times: int = 1, **kw) -> Fault:
        fault = Fault(match, kind, times, **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def count(self, part: str = "") -> int:
        """Requests whose path contains ``part``."""
        with self._lock:
            return sum(n for path, n in self.counts.items() if part in path)

    def _take_fault(self, target: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.match in target and f.times != 0:
                    if f.times > 0:
                        f.times -= 1
                    return f
        return None

    # -- the sky ----------------------------------------------------------------------------
    def field_of(self, g: FakeGalaxy) -> FakeField | None:
        memo = (id(g), g.ra, g.dec)
        if memo not in self._field_of:
            self._field_of[memo] = next((f for f in self.fields if f.contains(g.ra, g.dec)), None)
        return self._field_of[memo]

    def frame_bytes(self, run: int, camcol: int, fieldnum: int, band: str) -> bytes | None:
        key = (run, camcol, fieldnum, band)
        with self._lock:
            if key in self._frames:
                return self._frames[key]
        fld = next(
            (f for f in self.fields if (f.run, f.camcol, f.field) == (run, camcol, fieldnum)), None
        )
        if fld is None:
            return None
        memo = repr((fld, self.galaxies, self.noise, band))  # rendering is the slow part
        if memo in _RENDERED:
            with self._lock:
                self._frames[key] = _RENDERED[memo]
            return _RENDERED[memo]
        from astropy.io import fits

        ny, nx = fld.shape
        image = render_frame(fld, self.galaxies, band)
        if self.noise:
            rng = np.random.default_rng(run * 1000 + fieldnum)
            image = image + rng.normal(0, self.noise, image.shape)
        primary = fits.PrimaryHDU(image.astype(np.float32), header=fld.header(band))
        calib = fits.ImageHDU(np.full(nx, 0.0045, dtype=np.float32))
        buf = io.BytesIO()
        fits.HDUList([primary, calib]).writeto(buf)
        blob = bz2.compress(buf.getvalue())
        with self._lock:
            self._frames[key] = blob
        _RENDERED[memo] = blob
        return blob

    def lookup_csv(self, sql: str) -> str | None:
        values = re.search(r"VALUES\s+(.*?)\)\s+AS\s+t\(up_id", sql)
        radius = re.search(r"fGetNearbyObjEq\(t\.ra, t\.dec, ([0-9.eE+-]+)\)", sql)
        if not values or not radius or "PhotoPrimary" not in sql:
            return None
        r_arcmin = float(radius.group(1))
        lines = ["#Table1", "up_id,run,rerun,camcol,field"]
        for up_id, ra, dec in re.findall(r"\((\d+),([-0-9.]+),([-0-9.]+)\)", values.group(1) + ")"):
            ra, dec = float(ra), float(dec)
            best = None
            for g in self.galaxies:
                d = math.hypot((g.ra - ra) * math.cos(math.radians(dec)), g.dec - dec) * 60
                fld = self.field_of(g)
                if d <= r_arcmin and fld is not None and (best is None or d < best[0]):
                    best = (d, fld)
            if best:
                f = best[1]
                lines.append(f"{up_id},{f.run},{f.rerun},{f.camcol},{f.field}")
        return "\n".join(lines) + "\n"

    def jpeg_bytes(self, ra: float, dec: float, scale: float, width: int, height: int) -> bytes:
        from PIL import Image

        if not any(f.contains(ra, dec) for f in self.fields):
            rgb = np.zeros((height, width, 3), dtype=np.uint8)
        else:
            rows, cols = np.mgrid[0:height, 0:width]
            north = ((height - 1) / 2.0 - rows) * scale / 3600.0  # row 0 is north
            east = ((width - 1) / 2.0 - cols) * scale / 3600.0  # column 0 is east
            pra = ra + east / math.cos(math.radians(dec))
            pdec = dec + north
            reach = (max(width, height) * scale / 2 + 20) / 3600  # galaxies that can show
            near = [g for g in self.galaxies if abs(g.dec - dec) < reach
                    and abs(g.ra - ra) * math.cos(math.radians(dec)) < reach]
            planes = [render(near, b, pra, pdec, scale) for b in ("i", "r", "g")]
            stack = np.stack(planes, axis=-1)
            rgb = np.clip(12 + 240 * stack / max(stack.max(), 1e-9), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSdss
    server_version = "FakeSDSS/1.0"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        fake = self.fake
        parts = urlsplit(self.path)
        with fake._lock:
            fake.counts[parts.path] += 1
            fake.log.append(self.path)
        fault = fake._take_fault(self.path)
        if fault is not None and fault.kind in ("500", "502", "503", "404"):
            return self._send(int(fault.kind), b"<html>Server Error</html>", "text/html")
        if fault is not None and fault.kind == "429":
            return self._send(429, b"Too Many Requests", "text/plain",
                              {"Retry-After": fault.retry_after})
        if fault is not None and fault.kind == "redirect":
            return self._send(302, b"", "text/plain", {"Location": fault.location + self.path})
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        status, body, ctype = self._route(parts)
        if fault is None or fault.kind == "slow" or status != 200:
            return self._send(status, body, ctype)
        if fault.kind == "truncate":
            return self._send(200, body[: len(body) // 2], ctype)
        if fault.kind == "corrupt":
            bad = bytearray(body)
            mid = len(bad) // 2
            bad[mid : mid + 64] = bytes(64)
            return self._send(200, bytes(bad), ctype)
        if fault.kind == "garbage":
            return self._send(200, b"<html>maintenance</html>", ctype)
        if fault.kind == "drip":
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(fault.delay)
            except OSError:  # the client gave up
                pass
            self.close_connection = True
            return None
        if fault.kind == "drop":
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return None
        return self._send(status, body, ctype)

    def _route(self, parts) -> tuple[int, bytes, str]:
        fake = self.fake
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path.endswith("/en/tools/search/x_results.aspx"):
            if q.get("format") != "csv" or q.get("searchtool") != "SQL" or "cmd" not in q:
                return 400, b"bad request", "text/plain"
            csv = fake.lookup_csv(q["cmd"])
            if csv is None:
                return 200, b"error_message: unsupported query in fake SkyServer", "text/plain"
            return 200, csv.encode(), "text/plain"
        if parts.path.endswith("/SkyServerWS/ImgCutout/getjpeg"):
            try:
                # like ImgCutout, sizes are moved into 64..2048
                width = min(max(int(q.get("width", 64)), 64), 2048)
                height = min(max(int(q.get("height", 64)), 64), 2048)
                args = (float(q["ra"]), float(q["dec"]), float(q.get("scale", PIXEL_SCALE)),
                        width, height)
            except (KeyError, ValueError):
                return 400, b"bad parameters", "text/plain"
            return 200, fake.jpeg_bytes(*args), "image/jpeg"
        m = FRAME_RE.match(parts.path)
        if m:
            _dr, rerun, run, camcol, band, run6, camcol2, field4 = m.groups()
            if int(run6) != int(run) or camcol2 != camcol or rerun != "301":
                return 404, b"not found", "text/html"
            blob = fake.frame_bytes(int(run), int(camcol), int(field4), band)
            if blob is None:
                return 404, b"not found", "text/html"
            return 200, blob, "application/x-bzip2"
        return 404, b"not found", "text/html"

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Date", formatdate(usegmt=True))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


@pytest.fixture(name="fake_sdss")
def fake_sdss_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSdss]:
    """A started FakeSdss with the default sky; SDSS env variables point at it."""
    server = FakeSdss().start()
    monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", server.url)
    monkeypatch.setenv("GALMERGE_SDSS_SAS_URL", server.sas_url)
    try:
        yield server
    finally:
        server.stop()
