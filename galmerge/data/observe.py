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
  training images (blurred as they will be, with ``psf_fwhm``). "auto" assumes both sets are in the same flux units (Illustris mocks made in
  SDSS nanomaggies and SDSS frames are). The resolved run config records the numbers it found,
  so ``config.toml`` reproduces the run and ``evaluate``/``fraction`` see the same pixels.

- ``field``: ``"none"`` (the default) or ``"target"``: field stars and background galaxies
  cut from the unlabelled target's training stamps and pasted into the source at uniform
  positions, Poisson(``field_rate``) per image, times ``field_scale``, after the blur and
  before the sky noise (`galmerge.data.field`, which says how they are found). "auto" (the
  default of both) measures them (``field_library``); the resolved config records the numbers.
  The library is cut again from the target's training split wherever the run is reloaded
  (``evaluate``, ``fraction``), never stored, and resampled to the source's pixels where both
  surveys declare a pixel scale. It assumes the two surveys share flux units, as "auto" sky
  noise does.

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

from galmerge.data.field import FieldLibrary, field_library, paste_sources
from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet

BORDER = 4  # pixels of each stamp edge that "auto" measures the sky noise on
MAX_NOISE_IMAGES = 500
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def active(options: Mapping[str, Any] | None) -> bool:
    """Whether a config's ``[observe]`` section changes any pixel."""
    if not options:
        return False
    return (float(options["psf_fwhm"][1]) > 0 or options["sky_sigma"] != "none"
            or options.get("field", "none") != "none")


def needs_target(options: Mapping[str, Any] | None) -> bool:
    """Whether observing the source reads the unlabelled target (``field = "target"``)."""
    return options is not None and options.get("field", "none") == "target"


def border_noise(imageset: ImageSet, indices: np.ndarray,
                 observation: Observation | None = None) -> list[float]:
    """Per-band robust standard deviation (``astropy.stats.mad_std``) of the outer ``BORDER``
    pixels of up to ``MAX_NOISE_IMAGES`` images at ``indices`` (evenly spaced), as
    ``observation`` sees them when given (images at row r observed as row r)."""
    from astropy.stats import mad_std

    idx = np.asarray(indices)
    if len(idx) > MAX_NOISE_IMAGES:
        idx = idx[np.linspace(0, len(idx) - 1, MAX_NOISE_IMAGES).astype(np.int64)]
    x = imageset.batch(idx)
    if observation is not None:
        x = observation.rows(x.float(), idx.astype(np.int64))
    x = x.double().numpy()
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
            source_rows: np.ndarray, target_rows: np.ndarray,
            field: FieldLibrary | None = None, seed: int = 0) -> dict[str, Any]:
    """``options`` with ``sky_sigma = "auto"`` replaced by the per-band numbers it stands for,
    and ``field_rate``/``field_scale`` = "auto" (with ``field = "target"``) by the measured
    numbers: ``field``'s, when the caller already built it with the source, else a new
    `field_library`'s. ``seed``: the run's (`observed`'s), so that with ``psf_fwhm`` the
    source's own noise is measured after the blur each image will get (the blur lowers it)."""
    out = dict(options)
    auto = [k for k in ("field_rate", "field_scale") if out.get(k, "auto") == "auto"]
    if needs_target(out) and auto:
        lib = field or field_library(target, target_rows, source, source_rows)
        for key in auto:  # 6 significant figures, as sky_sigma
            out[key] = float(f"{getattr(lib, key.removeprefix('field_')):.6g}")
    if out["sky_sigma"] == "auto":
        t = border_noise(target, target_rows)
        fwhm = [float(v) for v in out["psf_fwhm"]]
        blurred = None
        if fwhm[1] > 0 and source.pixel_scale_arcsec:  # without a scale `observed` refuses
            scale = float(source.pixel_scale_arcsec)
            blurred = Observation((fwhm[0] / scale, fwhm[1] / scale), None, int(seed))
        s = border_noise(source, source_rows, blurred)
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
            x = paste_sources(x, gens, self.field)
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
        field = replace(field.on_pixels(source.pixel_scale_arcsec),
                        rate=float(options["field_rate"]), scale=float(options["field_scale"]))
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
