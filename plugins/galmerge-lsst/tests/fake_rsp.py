"""A loopback Rubin Science Platform: the three IVOA services the lsst plugin uses.

``{base}/tap/sync`` (GET or POST, ADQL): answers an ObsCore VOTable (with STC-S ``s_region``)
of deep-coadd images whose square footprint holds any ``POINT('ICRS', ra, dec)`` of the query,
for the bands in ``lsst_band IN (...)``;
``{base}/datalink/links?ID=``: a DataLink VOTable with ``#this`` and a ``#cutout`` row pointing
at the ``cutout-sync`` SODA service descriptor; ``{base}/cutout/sync?ID=&CIRCLE=ra dec r``: a
FITS file (empty primary HDU, then the image in nJy with the patch's TAN WCS, optionally
rotated) holding Gaussian galaxies, clipped to the patch. Every endpoint wants
``Authorization: Bearer <token>`` and answers 401 otherwise.

With ``results_to`` set to another FakeRsp, a cutout is answered as the RSP's SODA does: a 303
redirect to a signed-URL-like address under ``{results_to.url}/results/`` (no token wanted
there, like an object store).

Faults: ``server.add_fault(match, kind, times=1, retry_after="1")`` with kind one of
``500 503 429 truncate drop drip headerdrip nodata queryerror`` (drip: 64 bytes every 0.05 s;
headerdrip: the status line, then one endless header line a byte every 0.1 s), matched against the path plus the query text (the ADQL
for TAP; ``a|b`` needs both a and b); ``server.count(part)`` counts requests whose path contains ``part``.
"""

from __future__ import annotations

import io
import math
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np

SCALE = 0.2  # arcsec per coadd pixel
NJY = 3631.0  # nJy per nanomaggy


@dataclass
class Galaxy:
    ra: float
    dec: float
    flux: dict[str, float] = field(default_factory=lambda: {"u": 5.0, "g": 10.0, "r": 20.0,
                                                            "i": 25.0, "z": 30.0, "y": 32.0})
    sigma_arcsec: float = 1.0


@dataclass
class Patch:
    tract: int
    patch: int
    ra: float
    dec: float
    half_deg: float = 0.02
    bands: str = "ugrizy"
    rotation_deg: float = 0.0

    def contains(self, ra: float, dec: float) -> bool:
        dra = ((ra - self.ra + 180) % 360 - 180) * math.cos(math.radians(self.dec))
        return abs(dra) <= self.half_deg and abs(dec - self.dec) <= self.half_deg

    def region(self) -> str:
        """The footprint `contains` tests, as an STC-S polygon (counter-clockwise on the sky)."""
        w = self.half_deg / math.cos(math.radians(self.dec))
        corners = [(self.ra - w, self.dec - self.half_deg), (self.ra + w, self.dec - self.half_deg),
                   (self.ra + w, self.dec + self.half_deg), (self.ra - w, self.dec + self.half_deg)]
        return "POLYGON ICRS " + " ".join(f"{ra % 360:.7f} {dec:.7f}" for ra, dec in corners)

    @property
    def npix(self) -> int:
        return int(round(2 * self.half_deg * 3600 / SCALE))


@dataclass
class Fault:
    match: str
    kind: str
    times: int = 1
    retry_after: str = "1"


def default_patches() -> list[Patch]:
    return [
        Patch(5063, 14, 53.1, -28.1),
        Patch(5063, 15, 53.1, -28.07, rotation_deg=1.5),  # overlaps 14
        Patch(7000, 3, 180.0, 10.0, bands="gri"),
    ]


def default_galaxies() -> list[Galaxy]:
    return [
        Galaxy(53.1, -28.1),
        Galaxy(53.1, -28.096, {b: 2.0 for b in "ugrizy"}),  # 14.4" north of galaxy 0
        Galaxy(53.105, -28.07, sigma_arcsec=0.7),  # in the rotated patch only
        Galaxy(180.0, 10.0, {"g": 3.0, "r": 4.0, "i": 5.0}),
    ]


def _votable_bytes(table) -> bytes:
    from astropy.io.votable import from_table

    buf = io.BytesIO()
    from_table(table).to_xml(buf)
    return buf.getvalue()


DATALINK = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.3">
<RESOURCE type="results">
<TABLE>
<FIELD name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.main"/>
<FIELD name="access_url" datatype="char" arraysize="*" ucd="meta.ref.url"/>
<FIELD name="service_def" datatype="char" arraysize="*" ucd="meta.ref"/>
<FIELD name="error_message" datatype="char" arraysize="*" ucd="meta.code.error"/>
<FIELD name="semantics" datatype="char" arraysize="*" ucd="meta.code"/>
<FIELD name="description" datatype="char" arraysize="*" ucd="meta.note"/>
<FIELD name="content_type" datatype="char" arraysize="*" ucd="meta.code.mime"/>
<FIELD name="content_length" datatype="long" unit="byte" ucd="phys.size;meta.file"/>
<DATA><TABLEDATA>
<TR><TD>{id}</TD><TD>{base}/files/{id}.fits</TD><TD></TD><TD></TD><TD>#this</TD><TD>deep coadd</TD><TD>application/fits</TD><TD>100000000</TD></TR>
<TR><TD>{id}</TD><TD></TD><TD>cutout-sync</TD><TD></TD><TD>#cutout</TD><TD>cutout</TD><TD>application/fits</TD><TD></TD></TR>
</TABLEDATA></DATA>
</TABLE>
</RESOURCE>
<RESOURCE type="meta" utype="adhoc:service" ID="cutout-sync">
<PARAM name="standardID" datatype="char" arraysize="*" value="ivo://ivoa.net/std/SODA#sync-1.0"/>
<PARAM name="accessURL" datatype="char" arraysize="*" value="{base}/cutout/sync"/>
<GROUP name="inputParams">
<PARAM name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.dataset" value="{id}"/>
<PARAM name="CIRCLE" datatype="double" arraysize="3" xtype="circle" unit="deg" ucd="obs.field" value=""/>
</GROUP>
</RESOURCE>
</VOTABLE>
"""


QUERY_ERROR = b"""<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.3">
<RESOURCE type="results">
<INFO name="QUERY_STATUS" value="ERROR">Column not found: lsst_band
(in table ivoa.ObsCore)</INFO>
</RESOURCE>
</VOTABLE>
"""


class FakeRsp:
    """The server; ``url`` is the API base to put in GALMERGE_LSST_URL."""

    def __init__(self, token: str | None = "rsp-secret-token-0123456789",
                 patches: list[Patch] | None = None,
                 galaxies: list[Galaxy] | None = None) -> None:
        self.token = token
        self.patches = default_patches() if patches is None else patches
        self.galaxies = default_galaxies() if galaxies is None else galaxies
        self.soda_base: str | None = None  # the cutout descriptor's host (default: this one)
        self.results_to: FakeRsp | None = None  # answer cutouts with a 303 to this server
        self.results: dict[str, bytes] = {}  # what /results/NAME serves, without a token
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.seen: list[tuple[str, dict[str, str], str | None]] = []  # path, params, auth
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> FakeRsp:
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
        return f"http://127.0.0.1:{self._server.server_address[1]}/api"

    def add_fault(self, match: str, kind: str, times: int = 1, **kw) -> None:
        with self.lock:
            self.faults.append(Fault(match, kind, times, **kw))

    def count(self, part: str = "") -> int:
        with self.lock:
            return sum(n for k, n in self.counts.items() if part in k)

    def take_fault(self, target: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if all(part in target for part in f.match.split("|")) and f.times != 0:
                    f.times -= 1 if f.times > 0 else 0
                    return f
        return None

    # -- the services --------------------------------------------------------------------------
    def image_id(self, p: Patch, band: str) -> str:
        return f"ivo://org.rubinobs/usdac/lsst-dp1?repo=dp1&id=coadd-{p.tract}-{p.patch}-{band}"

    def find(self, image_id: str) -> tuple[Patch, str] | None:
        m = re.search(r"coadd-(\d+)-(\d+)-([ugrizy])$", image_id)
        if not m:
            return None
        for p in self.patches:
            if (p.tract, p.patch) == (int(m[1]), int(m[2])) and m[3] in p.bands:
                return p, m[3]
        return None

    def obscore(self, adql: str) -> bytes:
        from astropy.table import Table

        points = re.findall(r"POINT\('ICRS',\s*([-\d.eE+]+),\s*([-\d.eE+]+)\)", adql)
        bands = re.search(r"lsst_band IN \(([^)]*)\)", adql)
        if (not points or not bands or "FROM ivoa.ObsCore" not in adql
                or "dataproduct_subtype = 'lsst.deep_coadd'" not in adql
                or "obs_collection = 'LSST.DP1'" not in adql):
            raise ValueError("unexpected ADQL")
        wanted = re.findall(r"'([a-z])'", bands[1])
        rows = []
        for p in self.patches:
            if any(p.contains(float(ra), float(dec)) for ra, dec in points):
                for b in wanted:
                    if b in p.bands:
                        link = f"{self.url}/datalink/links?ID={quote(self.image_id(p, b), safe='')}"
                        rows.append((b, p.tract, p.patch, p.ra, p.dec, link, p.region()))
        names = ["lsst_band", "lsst_tract", "lsst_patch", "s_ra", "s_dec", "access_url",
                 "s_region"]
        if rows:
            table = Table(rows=rows, names=names)
        else:
            table = Table(names=names, dtype=["U1", "i8", "i8", "f8", "f8", "U200", "U200"])
        return _votable_bytes(table)

    def datalink(self, image_id: str) -> bytes:
        from xml.sax.saxutils import escape

        return DATALINK.format(id=escape(image_id), base=self.url).replace(
            f"{self.url}/cutout/sync", f"{self.soda_base or self.url}/cutout/sync").encode()

    def wcs_header(self, p: Patch, x0: int = 0, y0: int = 0) -> dict[str, float | str]:
        s = SCALE / 3600.0
        t = math.radians(p.rotation_deg)
        c = (p.npix - 1) / 2.0
        return {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": p.ra, "CRVAL2": p.dec,
                "CRPIX1": c + 1 - x0, "CRPIX2": c + 1 - y0, "CUNIT1": "deg", "CUNIT2": "deg",
                "CD1_1": -s * math.cos(t), "CD1_2": s * math.sin(t),
                "CD2_1": s * math.sin(t), "CD2_2": s * math.cos(t)}

    def cutout(self, p: Patch, band: str, circle: str, nodata: bool) -> bytes:
        from astropy.io import fits
        from astropy.wcs import WCS

        ra, dec, radius = (float(v) for v in circle.split())
        full = WCS(self.wcs_header(p))
        x, y = (float(v) for v in full.world_to_pixel_values(ra, dec))
        r = radius * 3600 / SCALE
        x0, x1 = max(0, math.floor(x - r)), min(p.npix, math.ceil(x + r) + 1)
        y0, y1 = max(0, math.floor(y - r)), min(p.npix, math.ceil(y + r) + 1)
        if x0 >= x1 or y0 >= y1:
            raise ValueError("no overlap")
        header = self.wcs_header(p, x0, y0)
        wcs = WCS(header)
        rows, cols = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
        pra, pdec = wcs.pixel_to_world_values(cols, rows)
        image = np.zeros(rows.shape, dtype=np.float32)
        for g in self.galaxies:
            dx = ((pra - g.ra + 180) % 360 - 180) * math.cos(math.radians(g.dec)) * 3600
            dy = (pdec - g.dec) * 3600
            s2 = g.sigma_arcsec**2
            image += (g.flux.get(band, 0.0) * NJY * np.exp(-(dx * dx + dy * dy) / (2 * s2))
                      / (2 * math.pi * s2) * SCALE**2).astype(np.float32)
        if nodata:
            image[:] = np.nan
        h = fits.Header()
        for k, v in header.items():
            h[k] = v
        h["BUNIT"] = "nJy"
        h["EXTNAME"] = "IMAGE"
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, header=h)]).writeto(buf)
        return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeRsp

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._serve(urlsplit(self.path).query)

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        self._serve(self.rfile.read(n).decode())

    def _serve(self, query_text: str) -> None:
        fake = self.fake
        path = urlsplit(self.path).path
        q = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        q.update({k: v[-1] for k, v in parse_qs(query_text).items()})
        auth = self.headers.get("Authorization")
        with fake.lock:
            fake.counts[path] += 1
            fake.seen.append((path, q, auth))
        if path.startswith("/api/results/"):  # the object store: the signed URL is the key
            blob = fake.results.get(path.rsplit("/", 1)[-1])
            if blob is None:
                return self._send(404, b"no such result", "text/plain")
            return self._send(200, blob, "application/fits")
        if fake.token is not None and auth != f"Bearer {fake.token}":  # None: an open service
            return self._send(401, b"Unauthorized", "text/plain",
                              {"WWW-Authenticate": 'Bearer realm="rsp"'})
        fault = fake.take_fault(path + "?" + " ".join(f"{k}={v}" for k, v in q.items()))
        if fault and fault.kind == "headerdrip":  # each byte in time, the headers never end
            self.close_connection = True
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(300):  # 30 s, then it gives up itself
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up and closed the connection
                pass
            return None
        if fault and fault.kind in ("500", "503"):
            return self._send(int(fault.kind), b"error", "text/plain",
                              {"Retry-After": fault.retry_after} if fault.kind == "503" else None)
        if fault and fault.kind == "429":
            return self._send(429, b"slow down", "text/plain", {"Retry-After": fault.retry_after})
        if fault and fault.kind == "queryerror":  # TAP: HTTP 200, the error in the VOTable
            return self._send(200, QUERY_ERROR, "application/x-votable+xml")
        if fault and fault.kind == "queryerror400":  # DALI allows the error document with 400
            return self._send(400, QUERY_ERROR, "application/x-votable+xml")
        try:
            if path == "/api/tap/sync":
                body, ctype = fake.obscore(q.get("QUERY", "")), "application/x-votable+xml"
            elif path == "/api/datalink/links":
                if fake.find(q.get("ID", "")) is None:
                    return self._send(404, b"no such image", "text/plain")
                body, ctype = fake.datalink(q["ID"]), "application/x-votable+xml"
            elif path == "/api/cutout/sync":
                found = fake.find(q.get("ID", ""))
                if found is None or "CIRCLE" not in q:
                    return self._send(400, b"bad cutout request", "text/plain")
                nodata = bool(fault and fault.kind == "nodata")
                body, ctype = fake.cutout(*found, q["CIRCLE"], nodata), "application/fits"
                store = fake.results_to
                if store is not None:
                    with store.lock:
                        name = f"r{len(store.results)}.fits"
                        store.results[name] = body
                    where = f"{store.url}/results/{name}?X-Goog-Signature=0123abcd"
                    return self._send(303, b"", "text/plain", {"Location": where})
            else:
                return self._send(404, b"not found", "text/plain")
        except ValueError as exc:
            return self._send(400, str(exc).encode(), "text/plain")
        if fault and fault.kind == "truncate":
            return self._send(200, body[:-100], ctype)  # whole as sent, but not a FITS file
        if fault and fault.kind == "drip":  # every byte in time, but the whole never comes
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(0, len(body), 64):
                    self.wfile.write(body[i : i + 64])
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:  # the client gave up and closed the connection
                pass
            self.close_connection = True
            return None
        if fault and fault.kind == "drop":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return None
        return self._send(200, body, ctype)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
