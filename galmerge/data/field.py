"""Field stars and background galaxies of the target survey, cut out and pasted into the source.

The ``field = "target"`` option of ``[observe]`` (`galmerge.data.observe`): RealSim (Bottrell et
al. 2019) inserts simulated galaxies into real survey fields, so that their stamps carry the
survey's stars and background galaxies. Here the field sources are found in the outer ring of
the unlabelled target stamps, where they cannot be the central galaxy or its companion, and
pasted at uniform positions into the source images. No target label is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet

FIELD_PATCH = 15  # pixels on a side of each harvested field source
FIELD_MIN_RADIUS = 0.35  # of the stamp size: only sources further out are harvested
FIELD_NSIGMA = 5.0  # detection threshold over the smoothed sky noise
FIELD_SMOOTH = 1.0  # Gaussian sigma (pixels) of the detection filter
MAX_FIELD_IMAGES = 1000
MAX_FIELD_SOURCES = 4000


def _frame(h: int, w: int) -> torch.Tensor:
    """The stamp borders that the sky is measured on (`galmerge.data.observe.BORDER` wide)."""
    from galmerge.data.observe import BORDER

    frame = torch.ones(h, w, dtype=torch.bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    return frame


def _radius(h: int, w: int) -> torch.Tensor:
    """Each pixel's distance from the stamp centre (H, W)."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2)


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
    pixel_scale: float | None = None  # arcsec per pixel of ``patches``, where known

    def on_pixels(self, pixel_scale: float | None) -> FieldLibrary:
        """The library with its patches resampled to ``pixel_scale`` (the source's), their
        flux kept; itself where either scale is unknown or they agree."""
        if not pixel_scale or not self.pixel_scale or not len(self.patches):
            return self
        zoom = float(self.pixel_scale) / float(pixel_scale)
        if abs(zoom - 1.0) <= 1e-3:
            return self
        size = 2 * round(self.patches.shape[-1] * zoom / 2) + 1  # odd: a patch keeps its centre
        flux = self.patches.sum(dim=(2, 3), keepdim=True)
        resized = F.interpolate(self.patches, size=(size, size), mode="bilinear",
                                align_corners=True)
        total = resized.sum(dim=(2, 3), keepdim=True)
        patches = resized * torch.where(total != 0, flux / total, torch.zeros(()))
        return replace(self, patches=patches, pixel_scale=float(pixel_scale))


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

    from galmerge.data.observe import blur

    n, c, h, w = x.shape
    frame = _frame(h, w)
    sky = x[:, :, frame].median(dim=2).values  # (N, C) per stamp and band
    det = ((x - sky[:, :, None, None]) / noise[None, :, None, None]).sum(1) / math.sqrt(c)
    det = blur(det[:, None], torch.full((n,), FIELD_SMOOTH))[:, 0]
    threshold = max(FIELD_NSIGMA * float(mad_std(det[:, frame].numpy())), floor)
    peak = (det == F.max_pool2d(det[:, None], 5, stride=1, padding=2)[:, 0]) & (det > threshold)
    half = FIELD_PATCH // 2
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    region = (_radius(h, w) > FIELD_MIN_RADIUS * min(h, w)) & (yy >= half) & (yy < h - half) \
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
    frame = _frame(*x.shape[-2:])
    noise = torch.tensor([float(mad_std(x[:, b][:, frame].numpy())) for b in range(c)])
    if not bool((noise > 0).all()):
        raise GalmergeError(f"observe.field = \"target\": the stamp borders of "
                            f"{target.survey} have no sky noise in some band; set observe.field "
                            "= \"none\"")
    found, sky, threshold, rate = _detect(x, noise)
    scale = 1.0
    if source is not None and source.pixel_scale_arcsec and target.pixel_scale_arcsec:
        # a target pixel spans `zoom` source pixels: a source stamp covers 1 / zoom^2 of the
        # sky a target stamp does (`FieldLibrary.on_pixels` resamples the patches)
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
    return FieldLibrary(patches, rate, scale, target.pixel_scale_arcsec)


def _central_flux(x: torch.Tensor) -> float:
    """Median over stamps of the band-summed, sky-subtracted flux within the inner region
    (radius ``FIELD_MIN_RADIUS`` of the size): the central galaxies' typical brightness."""
    n, c, h, w = x.shape
    frame = _frame(h, w)
    sky = x[:, :, frame].median(dim=2).values
    inner = _radius(h, w) <= FIELD_MIN_RADIUS * min(h, w)
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


def paste_sources(x: torch.Tensor, generators: list[torch.Generator], library: FieldLibrary
                  ) -> torch.Tensor:
    """A copy of ``x`` (N, C, H, W) with Poisson(``library.rate``) sources of ``library``,
    times its ``scale``, pasted into each image at uniform positions; image i draws from
    ``generators[i]`` only, so its sources depend on nothing else in the batch."""
    x = x.clone()
    lib, (h, w) = library.patches, x.shape[-2:]
    rate = torch.tensor([library.rate], dtype=torch.float64)
    for image, g in zip(x, generators, strict=True):
        for _ in range(int(torch.poisson(rate, generator=g))):
            k = int(torch.randint(len(lib), (1,), generator=g))
            y, q = divmod(int(torch.randint(h * w, (1,), generator=g)), w)
            paste(image, lib[k].to(x.dtype) * library.scale, y, q)
    return x
