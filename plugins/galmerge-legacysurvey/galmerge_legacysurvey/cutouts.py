"""Legacy Surveys cutouts: one ``cutout.fits`` request per galaxy, fetched through galmerge's
retry helper (bounded concurrency, timeouts, backoff, HTTP 429).

The service (``{base}/cutout.fits?ra=&dec=&layer=ls-dr10&pixscale=0.262&size=N&bands=grz``)
resamples the DR10 coadds itself, so any pixel scale and size the model asks for is served
exactly; it answers a FITS cube (C, H, W) in nanomaggies, north up and east left in FITS pixel
order (row 0 south, column 0 east) -- the same convention as galmerge's SDSS frame stamps.
Outside the footprint it answers zeros: a stamp with more than ``max_edge_fraction`` (option,
default 0.5, as the sdss survey's) of its pixels zero in every band is ``no-coverage``; one with
less is kept with its zeros (blank or masked pixels become zeros too) and counted in the summary.

Base URL: env ``GALMERGE_LEGACYSURVEY_URL`` (default ``https://www.legacysurvey.org/viewer``).
"""

from __future__ import annotations

import io
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from galmerge import (
    ClientStatus,
    CorruptResponse,
    CutoutRequest,
    CutoutResult,
    FetchError,
    GalmergeError,
    PreprocessSpec,
    RedirectPolicy,
    RetryingClient,
    RetryPolicy,
    bounded_map,
)

DEFAULT_URL = "https://www.legacysurvey.org/viewer"
DEFAULT_LAYER = "ls-dr10"
NATIVE_SCALE_ARCSEC = 0.262
#: DR10 (south) images g, r, i and z; DR9 and the north have no i
LAYER_BANDS = {"ls-dr10": "griz", "ls-dr10-south": "griz", "ls-dr9": "grz"}
#: the wait between tries; tests replace it (monkeypatch). Not an option: a survey spec could
#: set an option to a number, which is no function
retry_sleep: Callable[[float], None] = time.sleep
#: the viewer answers cutout.fits itself: redirects within its host only
REDIRECTS = RedirectPolicy(hint="if you trust that server, set the url option (or "
                           "GALMERGE_LEGACYSURVEY_URL) to it")


def make_cutout_service(preprocess: Mapping[str, Any], options: Mapping[str, Any]):
    """A LegacySurveyCutouts for the model's bands, size and scale, or a one-line refusal."""
    layer = str(options.get("layer", DEFAULT_LAYER))
    allowed = LAYER_BANDS.get(layer, "grz")
    bands, size, scale = PreprocessSpec.from_dict(preprocess).stamp_geometry(
        f"Legacy Surveys layer {layer}", bands=allowed, sources=("frames", "fits"),
        size=(4, 3000), default_scale=NATIVE_SCALE_ARCSEC)
    try:
        return LegacySurveyCutouts(bands, size, scale, layer, options)
    except (TypeError, ValueError) as exc:
        raise GalmergeError(
            f"bad legacysurvey option ({exc}); numeric options: workers, attempts, retries, "
            f"timeout, backoff, max_retry_after, max_edge_fraction"
        ) from None


class LegacySurveyCutouts(ClientStatus):
    """Fetches (C, size, size) float32 nanomaggie stamps from the Legacy Surveys cutout service."""

    def __init__(
        self, bands: Sequence[str], size: int, scale: float, layer: str, options: Mapping[str, Any]
    ) -> None:
        self.bands = list(bands)
        self.size = size
        self.scale = scale
        self.layer = layer
        base = options.get("url") or os.environ.get("GALMERGE_LEGACYSURVEY_URL") or DEFAULT_URL
        self.url = str(base).rstrip("/") + "/cutout.fits"
        self.workers = max(1, int(options.get("workers", 4)))
        self.client = RetryingClient(
            RetryPolicy.from_options(options), name="legacysurvey",
            sleep=retry_sleep, redirects=REDIRECTS,
        )
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="galmerge-legacysurvey")
        self._edge_lock = threading.Lock()
        self.max_edge_fraction = float(options.get("max_edge_fraction", 0.5))
        if not 0.0 <= self.max_edge_fraction <= 1.0:
            raise ValueError(f"max_edge_fraction must be in [0, 1], got {self.max_edge_fraction}")
        self.edge_stamps = 0
        # v2: stamps past the footprint's edge became no-coverage (v1 kept any with one band)
        edge = ("" if self.max_edge_fraction == 0.5 else f":edge{self.max_edge_fraction:g}")
        self.cache_key = (f"legacysurvey:{layer}:{','.join(self.bands)}:{size}px:"
                          f"{scale:.4f}arcsec{edge}:v2")

    def fetch(self, requests: Sequence[CutoutRequest]) -> Iterator[CutoutResult]:
        todo = []
        for r in requests:
            ok = math.isfinite(r.ra) and math.isfinite(r.dec) and 0 <= r.ra < 360
            if ok and -90 <= r.dec <= 90:
                todo.append(r)
            else:
                yield CutoutResult(r.row, None, "bad-coordinates")
        for r, result, exc in bounded_map(self._one, todo, self.workers, self._pool):
            if exc is None:
                yield result
            elif isinstance(exc, FetchError):
                yield CutoutResult(r.row, None, f"fetch-failed: {exc.reason}")
            else:
                raise exc

    def _params(self, r: CutoutRequest) -> dict[str, str]:
        return {
            "ra": f"{r.ra:.7f}", "dec": f"{r.dec:.7f}", "layer": self.layer,
            "pixscale": f"{self.scale:g}", "size": str(self.size), "bands": "".join(self.bands),
        }

    def _decode(self, blob: bytes) -> np.ndarray:
        from astropy.io import fits

        if len(blob) % 2880:  # FITS files come in 2880-byte blocks; anything else is cut short
            raise ValueError("not a whole FITS file")
        with fits.open(io.BytesIO(blob)) as hdul:
            hdu = hdul[0]
            if hdu.data is None:
                raise ValueError("no image in HDU0")
            cube = np.array(hdu.data, dtype=np.float32)
            header = hdu.header
        if cube.ndim == 2:
            cube = cube[None]
        if cube.shape != (len(self.bands), self.size, self.size):
            raise CorruptResponse(f"cutout shape {cube.shape}, asked {len(self.bands)}x{self.size}")
        # The service names its planes BAND0, BAND1, ...: follow them rather than assume order.
        # Names other than the bands asked for are an answer for other bands, never used as
        # ours; an answer naming no band is taken in the order asked.
        names = [header.get(f"BAND{i}") for i in range(cube.shape[0])]
        if any(n is not None for n in names):
            got = ["?" if n is None else str(n).strip().lower() for n in names]
            asked = [b.lower() for b in self.bands]
            if sorted(got) != sorted(asked):
                raise CorruptResponse(f"cutout holds bands {''.join(got)}, asked "
                                      f"{''.join(asked)}")
            cube = cube[[got.index(b) for b in asked]]
        return cube

    def _one(self, r: CutoutRequest) -> CutoutResult:
        cube = self.client.get(self.url, params=self._params(r), validate=self._decode,
                               what="cutout")
        if not np.isfinite(cube).all():
            cube = np.nan_to_num(cube, nan=0.0, posinf=0.0, neginf=0.0)
        if any(not plane.any() for plane in cube):  # a band the survey never imaged here
            return CutoutResult(r.row, None, "no-coverage")
        missing = float((cube == 0).all(axis=0).mean())  # pixels past the footprint's edge
        if missing > self.max_edge_fraction:
            return CutoutResult(r.row, None, "no-coverage")
        if missing:
            with self._edge_lock:
                self.edge_stamps += 1
        return CutoutResult(r.row, cube, "ok")

    def summary(self) -> str:
        """One line: requests, retries and failures with their reasons, and stamps kept with
        zeros past the footprint's edge."""
        text = self.client.summary()
        if self.edge_stamps:
            text += (f"; {self.edge_stamps} stamps partly past the footprint's edge kept "
                     f"(zeros; above {self.max_edge_fraction:g} of a stamp is no-coverage)")
        return text

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def __enter__(self) -> LegacySurveyCutouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
