"""Observe the source as the target survey would: PSF blur and sky noise on raw source images.

Observational realism on the source side (as RealSim does for simulated galaxies, Bottrell et
al. 2019): with an ``[observe]`` section in the run config, every source image is convolved with
a Gaussian PSF whose FWHM is drawn per image from ``observe.psf_fwhm`` (arcsec, converted with
the source's pixel scale), then gets Gaussian sky noise of standard deviation
``observe.sky_sigma`` per band (the source's raw pixel units). It reads no target label:

- ``psf_fwhm = [lo, hi]``: the extra blur, i.e. the target survey's seeing for a PSF-free mock
  (what the astronomer knows of the survey, e.g. SDSS r-band seeing of about 1-2 arcsec);
  ``[0, 0]`` (the default) blurs nothing.
- ``sky_sigma``: ``"none"`` (the default), per-band numbers, or ``"auto"``: the noise the source
  lacks, ``sqrt(max(t^2 - s^2, 0))`` per band, where t and s are the robust standard deviations
  (astropy's ``mad_std``) of the stamp borders of the unlabelled target and the source
  training images. "auto" assumes both sets are in the same flux units (Illustris mocks made in
  SDSS nanomaggies and SDSS frames are). The resolved run config records the numbers it found,
  so ``config.toml`` reproduces the run and ``evaluate``/``fraction`` see the same pixels.

- ``field``: ``"none"`` (the default) or ``"target"``: field stars and background galaxies
  harvested from the unlabelled target and pasted into the source (as RealSim inserts mocks
  into real survey fields). Sources are detected (``FIELD_NSIGMA`` over the sky, summed over
  bands) in the outer ring of the target training stamps only (further than
  ``FIELD_MIN_RADIUS`` of the stamp size from the centre), where they cannot be the central
  galaxy or its companion; each is cut out (``FIELD_PATCH`` pixels square, its stamp's sky
  median removed, a taper that keeps the source and little of the noise around it). Every
  source image gets Poisson(``field_rate``) of them at uniform positions, after the blur and
  before the sky noise. ``field_rate = "auto"`` (the default) is the target's detected density
  times the stamp area, less the source's own at the same threshold (the ring also holds parts
  of the central scenes), recorded in the resolved config. Where both surveys declare a pixel
  scale the patches are resampled to the source's (flux kept) and the rate scaled by the
  stamps' sky areas. The library is rebuilt from the
  target's training split wherever the run is reloaded (evaluate), never stored. It assumes
  the two surveys share flux units, as "auto" sky noise does.

An image's realisation depends only on (the run's seed, its row), so the in-memory and streamed
(HDF5) paths give the same pixels (to float rounding), and the source validation and test
splits are observed too: the source metrics of such a run are measured on observed images.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet

BORDER = 4  # pixels of each stamp edge that "auto" measures the sky noise on
MAX_NOISE_IMAGES = 500
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


FIELD_PATCH = 15  # pixels on a side of each harvested field source
FIELD_MIN_RADIUS = 0.35  # of the stamp size: only sources further out are harvested
FIELD_NSIGMA = 5.0  # detection threshold over the smoothed sky noise
FIELD_SMOOTH = 1.0  # Gaussian sigma (pixels) of the detection filter
MAX_FIELD_IMAGES = 1000
MAX_FIELD_SOURCES = 4000


def active(options: Mapping[str, Any] | None) -> bool:
    """Whether a config's ``[observe]`` section changes any pixel."""
    if not options:
        return False
    return (float(options["psf_fwhm"][1]) > 0 or options["sky_sigma"] != "none"
            or options.get("field", "none") != "none")


def needs_target(options: Mapping[str, Any] | None) -> bool:
    """Whether observing the source reads the unlabelled target (``field = "target"``)."""
    return bool(options) and options.get("field", "none") == "target"  # type: ignore[union-attr]


@dataclass(frozen=True)
class FieldLibrary:
    """Field sources cut from the target: ``patches`` (K, C, P, P) in the target's raw units,
    sky removed and tapered; ``rate`` their detected mean count per stamp (less the source's
    own); ``scale`` the source's typical central-galaxy flux over the target's, by which the
    patches are multiplied when pasted (a field source keeps its brightness relative to the
    central galaxy it sits beside)."""

    patches: torch.Tensor
    rate: float
    scale: float = 1.0


def _taper(size: int) -> torch.Tensor:
    """1 within a third of the half width, a cosine fall to 0 at the half width."""
    half = size // 2
    t = torch.arange(size, dtype=torch.float32) - half
    r = torch.sqrt(t[:, None] ** 2 + t[None, :] ** 2)
    inner = half / 3.0
    w = 0.5 * (1 + torch.cos(math.pi * ((r - inner) / (half - inner)).clamp(0, 1)))
    return w


def _stamps(imageset: ImageSet, rows: np.ndarray) -> torch.Tensor:
    idx = np.asarray(rows)
    if len(idx) > MAX_FIELD_IMAGES:
        idx = idx[np.linspace(0, len(idx) - 1, MAX_FIELD_IMAGES).astype(np.int64)]
    return torch.nan_to_num(torch.as_tensor(np.asarray(imageset.batch(idx)), dtype=torch.float32))


def _detect(x: torch.Tensor, noise: torch.Tensor, floor: float = 0.0
            ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Field-source peaks of stamps ``x`` (N, C, H, W): (K, 3) image/y/x, the per-stamp sky
    (N, C), the threshold used (``FIELD_NSIGMA`` times the smoothed noise of the stamp borders,
    at least ``floor``) and the mean count per stamp area of the ring."""
    from astropy.stats import mad_std

    n, c, h, w = x.shape
    frame = torch.ones(h, w, dtype=torch.bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    sky = x[:, :, frame].median(dim=2).values  # (N, C) per stamp and band
    det = ((x - sky[:, :, None, None]) / noise[None, :, None, None]).sum(1) / math.sqrt(c)
    det = blur(det[:, None], torch.full((n,), FIELD_SMOOTH))[:, 0]
    threshold = max(FIELD_NSIGMA * float(mad_std(det[:, frame].numpy())), floor)
    peak = (det == F.max_pool2d(det[:, None], 5, stride=1, padding=2)[:, 0]) & (det > threshold)
    half = FIELD_PATCH // 2
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    radius = torch.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2)
    region = (radius > FIELD_MIN_RADIUS * min(h, w)) & (yy >= half) & (yy < h - half) \
        & (xx >= half) & (xx < w - half)
    found = (peak & region).nonzero()
    area = int(region.sum())
    rate = float(len(found)) / (n * area) * h * w if area else 0.0
    return found, sky, threshold, rate


def field_library(target: ImageSet, rows: np.ndarray, source: ImageSet | None = None,
                  source_rows: np.ndarray | None = None) -> FieldLibrary:
    """Detect and cut out the field sources of the target stamps at ``rows`` (up to
    ``MAX_FIELD_IMAGES``, evenly spaced): local maxima of the band-summed, smoothed
    signal-to-noise image above ``FIELD_NSIGMA`` in the outer ring, whose patch fits the stamp.

    ``rate``: the target's count per stamp area, less the source's own (its ``source_rows``
    searched the same way, at the target's threshold or above its own noise): the outer ring
    also holds parts of the central scene (neighbours, companions, wide discs), which the
    source already has.

    Hand-written rather than photutils (not a dependency): a 5x5 local-maximum filter on a
    matched-filtered image is all this needs; deblending and shapes do not matter here."""
    from astropy.stats import mad_std

    x = _stamps(target, rows)
    c = x.shape[1]
    frame = torch.ones(x.shape[-2:], dtype=torch.bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    noise = torch.tensor([float(mad_std(x[:, b][:, frame].numpy())) for b in range(c)])
    if not bool((noise > 0).all()):
        raise GalmergeError(f"observe.field = \"target\": the stamp borders of "
                            f"{target.survey} have no sky noise in some band; set observe.field "
                            "= \"none\"")
    found, sky, threshold, rate = _detect(x, noise)
    scale, zoom = 1.0, 1.0
    if source is not None and source.pixel_scale_arcsec and target.pixel_scale_arcsec:
        # a target pixel spans `zoom` source pixels: the patches grow by it, and a source stamp
        # covers 1 / zoom^2 of the sky a target stamp does
        zoom = float(target.pixel_scale_arcsec) / float(source.pixel_scale_arcsec)
        rate /= zoom * zoom
    if source is not None and source_rows is not None:
        s = _stamps(source, source_rows)
        own = _detect(s, noise, floor=threshold)[3]  # what the target would detect in it
        rate = max(rate - own, 0.0)
        t_flux, s_flux = _central_flux(x), _central_flux(s)
        if t_flux > 0 and s_flux > 0:
            scale = s_flux / t_flux
    if len(found) > MAX_FIELD_SOURCES:
        found = found[np.linspace(0, len(found) - 1, MAX_FIELD_SOURCES).astype(np.int64)]
    half = FIELD_PATCH // 2
    taper = _taper(FIELD_PATCH)
    patches = torch.stack([
        (x[i, :, y - half:y + half + 1, q - half:q + half + 1] - sky[i][:, None, None]) * taper
        for i, y, q in found.tolist()
    ]) if len(found) else torch.zeros(0, c, FIELD_PATCH, FIELD_PATCH)
    if len(patches) and abs(zoom - 1.0) > 1e-3:
        size = 2 * round(FIELD_PATCH * zoom / 2) + 1  # odd, so a patch keeps its centre
        flux = patches.sum(dim=(2, 3), keepdim=True)
        resized = F.interpolate(patches, size=(size, size), mode="bilinear", align_corners=True)
        total = resized.sum(dim=(2, 3), keepdim=True)
        patches = resized * torch.where(total != 0, flux / total, torch.zeros(()))
    return FieldLibrary(patches, rate, scale)


def _central_flux(x: torch.Tensor) -> float:
    """Median over stamps of the band-summed, sky-subtracted flux within the inner region
    (radius ``FIELD_MIN_RADIUS`` of the size): the central galaxies' typical brightness."""
    n, c, h, w = x.shape
    frame = torch.ones(h, w, dtype=torch.bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    sky = x[:, :, frame].median(dim=2).values
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    inner = torch.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) \
        <= FIELD_MIN_RADIUS * min(h, w)
    flux = ((x - sky[:, :, None, None])[:, :, inner]).sum(dim=(1, 2))
    return float(flux.median())


def paste(image: torch.Tensor, patch: torch.Tensor, y: int, x: int) -> None:
    """Add ``patch`` (C, P, P) to ``image`` (C, H, W) centred at (y, x), cropped at the edges."""
    p = patch.shape[-1]
    half = p // 2
    h, w = image.shape[-2:]
    y0, x0 = y - half, x - half
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + p, h), min(x0 + p, w)
    if ys < ye and xs < xe:
        image[:, ys:ye, xs:xe] += patch[:, ys - y0:ye - y0, xs - x0:xe - x0]


def border_noise(imageset: ImageSet, indices: np.ndarray) -> list[float]:
    """Per-band robust standard deviation (``astropy.stats.mad_std``) of the outer ``BORDER``
    pixels of up to ``MAX_NOISE_IMAGES`` images at ``indices`` (evenly spaced)."""
    from astropy.stats import mad_std

    idx = np.asarray(indices)
    if len(idx) > MAX_NOISE_IMAGES:
        idx = idx[np.linspace(0, len(idx) - 1, MAX_NOISE_IMAGES).astype(np.int64)]
    x = imageset.batch(idx).double().numpy()
    frame = np.ones(x.shape[-2:], dtype=bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    # masked (NaN) pixels of real frames are skipped; a band with none left is one line
    with warnings.catch_warnings():  # numpy's all-NaN warning: the check below says it
        warnings.simplefilter("ignore", RuntimeWarning)
        out = [float(mad_std(x[:, band][:, frame], ignore_nan=True))
               for band in range(x.shape[1])]
    if not all(math.isfinite(v) for v in out):
        raise GalmergeError(f"observe.sky_sigma = \"auto\": the stamp borders of {imageset.survey} "
                            "have no finite pixels in some band; give observe.sky_sigma per band")
    return out


def resolve(options: Mapping[str, Any], source: ImageSet, target: ImageSet,
            source_rows: np.ndarray, target_rows: np.ndarray) -> dict[str, Any]:
    """``options`` with ``sky_sigma = "auto"`` replaced by the per-band numbers it stands for,
    and ``field_rate``/``field_scale`` = "auto" (with ``field = "target"``) by the measured
    numbers (`field_library`)."""
    out = dict(options)
    auto = [k for k in ("field_rate", "field_scale") if out.get(k, "auto") == "auto"]
    if needs_target(out) and auto:
        lib = field_library(target, target_rows, source, source_rows)
        for key in auto:  # 6 significant figures, as sky_sigma
            out[key] = float(f"{getattr(lib, key.removeprefix('field_')):.6g}")
    if out["sky_sigma"] == "auto":
        t = border_noise(target, target_rows)
        s = border_noise(source, source_rows)
        # 6 significant figures: config.toml stays readable in any flux unit
        out["sky_sigma"] = [float(f"{math.sqrt(max(a * a - b * b, 0.0)):.6g}")
                            for a, b in zip(t, s, strict=True)]
    return out


CHUNK = 256  # images observed at once (bounds the padded copy's memory)


def blur(images: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image (N, C, H, W) with its own sigma (N,) in pixels: a kernel of
    half width ceil(4 sigma) (at most the image's half size), reflected edges.

    Hand-written: torchvision's ``gaussian_blur`` takes one sigma per call and convolves with
    the full 2-D kernel; one sigma per image as two grouped 1-D convolutions (the Gaussian is
    separable) is ~10x cheaper per image. Same kernel and edges as calling ``gaussian_blur``
    on each image with kernel size 2 ceil(4 sigma) + 1 (taps beyond an image's half width are
    zero), to float rounding.
    """
    n, c, h, w = images.shape
    sigma = sigma_px.to(images.dtype).clamp_min(1e-3)
    cap = min(h, w) // 2 - 1
    halves = torch.clamp(torch.ceil(4 * sigma), 1, cap)  # (N,)
    half = int(halves.max())
    size = 2 * half + 1
    t = torch.arange(-half, half + 1, dtype=images.dtype)
    k = torch.exp(-0.5 * (t / sigma[:, None]) ** 2) * (t.abs() <= halves[:, None])
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, size)
    x = F.pad(images.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    x = F.conv2d(x, k.view(n * c, 1, 1, size), groups=n * c)
    x = F.conv2d(x, k.view(n * c, 1, size, 1), groups=n * c)
    return x.view(n, c, h, w)


@dataclass(frozen=True)
class Observation:
    """What is done to each source image: FWHM range in pixels, per-band sky sigma, seed."""

    fwhm_px: tuple[float, float]
    sky_sigma: tuple[float, ...] | None
    seed: int
    field: FieldLibrary | None = None

    def rows(self, images: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Raw images (N, C, H, W) at ``rows`` as observed: each a pure function of (seed, its
        row, its pixels), whatever else is in the batch."""
        out = []
        for start in range(0, len(rows), CHUNK):
            out.append(self._chunk(images[start:start + CHUNK].float(),
                                   rows[start:start + CHUNK]))
        return torch.cat(out) if out else images.float()

    def _chunk(self, x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(self.seed * 1_000_003 + int(r)) for r in rows]
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens])
        lo, hi = self.fwhm_px
        if hi > 0:
            x = blur(x, (lo + u * (hi - lo)) / FWHM_PER_SIGMA)
        if self.field is not None and self.field.rate > 0 and len(self.field.patches):
            x = x.clone()
            lib, (h, w) = self.field.patches, x.shape[-2:]
            for image, g in zip(x, gens, strict=True):
                count = int(torch.poisson(torch.tensor([self.field.rate], dtype=torch.float64),
                                          generator=g))
                for _ in range(count):
                    k = int(torch.randint(len(lib), (1,), generator=g))
                    y, q = divmod(int(torch.randint(h * w, (1,), generator=g)), w)
                    paste(image, lib[k].to(x.dtype) * self.field.scale, y, q)
        if self.sky_sigma is not None:
            sky = torch.tensor(self.sky_sigma, dtype=x.dtype).view(-1, 1, 1)
            noise = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype)
                                 for g in gens])
            x = x + sky * noise
        return x


class ObservedImages:
    """A lazy image reader whose rows come back observed (`LazyImages` protocol)."""

    def __init__(self, images: Any, observation: Observation) -> None:
        self._images, self._obs = images, observation
        self.shape = tuple(images.shape)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        rows = np.asarray(index, dtype=np.int64)
        raw = torch.from_numpy(np.asarray(self._images[rows], dtype=np.float32))
        return self._obs.rows(raw, rows).numpy()


def observed(source: ImageSet, options: Mapping[str, Any] | None, seed: int,
             field: FieldLibrary | None = None) -> ImageSet:
    """``source`` as the ``[observe]`` section (resolved: no "auto") says the target sees it;
    the set itself when the section changes nothing. ``field``: the target's field sources
    (`field_library`), needed when the section says ``field = "target"``."""
    if not active(options):
        return source
    assert options is not None
    if options["sky_sigma"] == "auto" or needs_target(options) and "auto" in (
            options.get("field_rate", "auto"), options.get("field_scale", "auto")):
        raise GalmergeError("observe.sky_sigma, field_rate or field_scale = \"auto\" was never "
                            "resolved; pass the run's config.toml, which records the numbers")
    if needs_target(options) and field is None:
        raise GalmergeError("observe.field = \"target\" needs the run's target data to cut the "
                            "field sources from; pass it (--target SPEC)")
    if field is not None:
        if field.patches.shape[1] != source.channels:
            raise GalmergeError(f"observe.field: the target has {field.patches.shape[1]} bands "
                                f"but the source {source.channels}; use surveys with the same "
                                "bands")
        field = replace(field, rate=float(options["field_rate"]),
                        scale=float(options["field_scale"]))
    fwhm = [float(v) for v in options["psf_fwhm"]]
    if fwhm[1] > 0 and not source.pixel_scale_arcsec:
        raise GalmergeError(f"observe.psf_fwhm is in arcsec but the source {source.survey} "
                            "declares no pixel scale; drop observe.psf_fwhm or use a survey "
                            "that records one")
    sky = options["sky_sigma"]
    if sky != "none" and len(sky) != source.channels:
        raise GalmergeError(f"observe.sky_sigma has {len(sky)} values but the source has "
                            f"{source.channels} bands ({','.join(source.bands)}); give one per "
                            "band")
    scale = float(source.pixel_scale_arcsec or 1.0)
    obs = Observation((fwhm[0] / scale, fwhm[1] / scale),
                      None if sky == "none" else tuple(float(v) for v in sky), int(seed),
                      field if needs_target(options) else None)
    meta = {**source.meta, "observed": {"psf_fwhm": fwhm,
                                        "sky_sigma": None if sky == "none" else list(sky)}}
    if needs_target(options):
        meta["observed"]["field_rate"] = float(options["field_rate"])
        meta["observed"]["field_scale"] = float(options["field_scale"])
    if source.in_memory:
        images = obs.rows(source.images, np.arange(len(source)))  # type: ignore[arg-type]
    else:
        images = ObservedImages(source.images, obs)  # type: ignore[assignment]
    return replace(source, images=images, meta=meta)
