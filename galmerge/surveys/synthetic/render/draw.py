"""Batched rendering: scenes + a preset -> (N, 3, size, size) float32 images in nanomaggies."""

from __future__ import annotations

import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from galmerge.surveys.synthetic.render import instrument, profiles
from galmerge.surveys.synthetic.render.presets import Preset
from galmerge.surveys.synthetic.render.scene import ABSENT, DISC_SLOTS, Scenes

# Scenes rendered together; fixed so a seed gives the same noise whatever n is.
CHUNK = 64
# field stars + background galaxies kept per stamp, stars first: Poisson counts above it are
# cut (kept as it is, so that renders stay those of renderer version 4; the synthetic survey
# refuses means that total more, and a total near 8 comes out lower: about 6.9 for 8)
MAX_FIELD = 8
FWHM_STEP = 0.002  # arcsec
# Components weighted and added to the canvas per step (their 3-band copies stay in cache)
ACC_BLOCK = 16


@dataclass
class Observation:
    """Per-image observing conditions drawn for one preset (saved with the images)."""

    z: np.ndarray  # (N,)
    psf_fwhm: np.ndarray  # (N, 3) arcsec, 0 without a PSF
    f_x: np.ndarray  # (N, MAX_FIELD) field sources, pixels from the stamp centre
    f_y: np.ndarray
    f_sigma: np.ndarray  # (N, MAX_FIELD) Gaussian sigma, arcsec (0 for stars)
    f_mag: np.ndarray  # (N, MAX_FIELD, 3) apparent AB magnitudes (ABSENT = none)


def _preset_seed(seed: int, preset: Preset) -> list[int]:
    return [int(seed), zlib.crc32(preset.name.encode())]


def observe(scenes: Scenes, preset: Preset, seed: int, size: int) -> Observation:
    """Redshifts, seeing and field sources for each scene, deterministic in (seed, preset)."""
    n = len(scenes)
    rng = np.random.default_rng(_preset_seed(seed, preset))
    z0, z1 = preset.z_range
    z = z0 + scenes.z_quantile * (z1 - z0)
    if preset.psf == "none":
        fwhm = np.zeros((n, 3))
    else:
        fwhm = rng.uniform(*preset.psf_fwhm, n)[:, None] * np.asarray(preset.band_fwhm)
        # seeing on a 0.002" grid: far below any measurement, and PSF tables get reused
        fwhm = np.round(fwhm / FWHM_STEP) * FWHM_STEP
    half = size / 2 + 4  # sources just outside the stamp still spill light in
    f_x = rng.uniform(-half, half, (n, MAX_FIELD))
    f_y = rng.uniform(-half, half, (n, MAX_FIELD))
    n_star = rng.poisson(preset.stars_per_stamp, n)
    n_gal = rng.poisson(preset.galaxies_per_stamp, n)
    slot = np.arange(MAX_FIELD)
    is_star = slot < n_star[:, None]
    is_gal = ~is_star & (slot < (n_star + n_gal)[:, None])
    # number counts rise steeply to the faint end: magnitudes from an exponential tail
    s_mag = preset.star_mag[1] - rng.exponential(2.0, (n, MAX_FIELD))
    s_mag = np.maximum(s_mag, preset.star_mag[0])
    g_mag = preset.galaxy_mag[1] - rng.exponential(1.0, (n, MAX_FIELD))
    g_mag = np.maximum(g_mag, preset.galaxy_mag[0])
    star_col = rng.uniform(0.3, 1.4, (n, MAX_FIELD))
    gal_col = rng.uniform(0.3, 1.2, (n, MAX_FIELD))
    f_mag = np.full((n, MAX_FIELD, 3), ABSENT)
    for col, mag, sel in ((star_col, s_mag, is_star), (gal_col, g_mag, is_gal)):
        colours = np.stack([col, np.zeros_like(col), -0.4 * col], axis=-1)
        f_mag = np.where(sel[..., None], mag[..., None] + colours, f_mag)
    f_sigma = np.where(is_gal, rng.uniform(*preset.galaxy_size, (n, MAX_FIELD)), 0.0)
    return Observation(z, fwhm, f_x, f_y, f_sigma, f_mag)


def _flux(mag: np.ndarray) -> np.ndarray:
    return np.where(mag >= ABSENT - 1, 0.0, instrument.mag_to_nmgy(mag))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)


def _accumulate(
    image: torch.Tensor, ni: np.ndarray, slot: np.ndarray, prof: torch.Tensor, flux: np.ndarray
) -> None:
    """image[n] += flux (3 bands) x profile for each component of scene n (``slot`` unused)."""
    n, bands, h, w = image.shape
    k = len(ni)
    flat = image.view(n, bands * h * w)
    prof = prof.reshape(k, 1, h * w)
    flux_t = _t(flux)[:, :, None]
    idx = torch.from_numpy(ni)
    # in blocks: index_add_ adds rows in order, so the sums are the same as in one call
    for start in range(0, k, ACC_BLOCK):
        part = slice(start, start + ACC_BLOCK)
        weighted = prof[part] * flux_t[part]
        flat.index_add_(0, idx[part], weighted.view(len(weighted), -1))


def canvas_geometry(preset: Preset, size: int) -> tuple[int, int]:
    """(margin, fft size): the canvas is padded so the PSF brings in light from outside."""
    if preset.psf == "none":
        return 0, 0
    fwhm_px = preset.psf_fwhm[1] * max(preset.band_fwhm) / preset.pixel_scale
    margin = math.ceil(1.25 * fwhm_px)
    if margin <= 16:
        # FFT a little larger than the canvas: what wraps around lands in the cropped margin
        return margin, int(8 * math.ceil((size + 2 * margin + 4) / 8))
    # wider PSFs (e.g. sdss with seeing above ~2.8x): the margin once stopped at 16 px with these
    # 4 px of FFT padding, and the wings wrapped round onto the stamp's opposite edge. Now 1.25
    # FWHM of margin and 2 FWHM of padding (the geometry of narrower PSFs stays, and so do
    # their renders)
    return margin, int(8 * math.ceil((size + 2 * margin + math.ceil(2 * fwhm_px)) / 8))


def _draw_chunk(
    sc: Scenes,
    ob: Observation,
    preset: Preset,
    size: int,
    noise: torch.Generator | None,
    out: torch.Tensor,
) -> None:
    n = len(sc)
    margin, fft_size = canvas_geometry(preset, size)
    side = size + 2 * margin
    centre = (side - 1) / 2.0
    scale = instrument.arcsec_per_kpc(ob.z) / preset.pixel_scale  # pixels per kpc
    dm = instrument.distance_modulus(ob.z)
    offset = np.asarray(preset.mag_offset)
    dimming = 10.0 * np.log10(1.0 + ob.z)  # (1+z)^-4 in surface brightness
    px_area = preset.pixel_scale**2
    # without a PSF the canvas is the output itself (no margin, no copy)
    image = out.zero_() if margin == 0 else torch.zeros(n, 3, side, side)

    # -- Sérsic bulges and discs: only the components present are drawn, bulges first (one
    # run without arms), then the discs
    flux = _flux(sc.s_mag + dm[:, None, None] + offset)  # (N, S, 3)
    disc = np.zeros(sc.s_x.shape[1], dtype=bool)
    disc[list(DISC_SLOTS)] = True
    ni, si = np.nonzero(flux.sum(-1) > 0)
    order = np.argsort(disc[si], kind="stable")
    ni, si = ni[order], si[order]
    if len(ni):
        sel = (ni, si)
        prof = profiles.sersic_images(
            _t(centre + sc.s_x[sel] * scale[ni]),
            _t(centre + sc.s_y[sel] * scale[ni]),
            _t(np.maximum(sc.s_re[sel] * scale[ni], 0.05)),
            _t(sc.s_n[sel]),
            _t(sc.s_q[sel]),
            _t(sc.s_pa[sel]),
            side,
            side,
            spiral={
                "amp": _t(np.where(disc[si], sc.s_arm_amp[sel], 0.0)),
                "pitch": _t(sc.s_arm_pitch[sel]),
                "phase": _t(sc.s_arm_phase[sel]),
            },
        )
        _accumulate(image, ni, si, prof, flux[sel])

    # -- tails, bridges, shells, plumes: peak surface brightness -> flux per pixel
    peak = _flux(sc.a_mu + dimming[:, None, None] + offset) * px_area  # (N, A, 3)
    ni, ai = np.nonzero(peak.sum(-1) > 0)
    if len(ni):
        sel = (ni, ai)
        s = scale[ni]
        ribbons = profiles.arc_ribbons(
            _t(centre + sc.a_cx[sel] * s),
            _t(centre + sc.a_cy[sel] * s),
            _t(sc.a_radius[sel] * s),
            _t(sc.a_theta0[sel]),
            _t(sc.a_dtheta[sel]),
            _t(sc.a_w_in[sel] * s),
            _t(sc.a_w_out[sel] * s),
            _t(sc.a_widen[sel]),
            _t(sc.a_fade[sel]),
            _t(sc.a_taper0[sel]),
            _t(sc.a_taper1[sel]),
            side,
            side,
        )
        _accumulate(image, ni, ai, ribbons, peak[sel])

    # -- Gaussian sources: knots in the scene, stars and background galaxies in the field
    k_sigma = sc.k_sigma * scale[:, None]
    k_flux = _flux(sc.k_mu + dimming[:, None, None] + offset) * px_area
    k_flux = k_flux * (2 * np.pi * k_sigma**2)[..., None]
    g_x = np.concatenate([centre + sc.k_x * scale[:, None], centre + ob.f_x], axis=1)
    g_y = np.concatenate([centre + sc.k_y * scale[:, None], centre + ob.f_y], axis=1)
    # stars are points before the PSF; a tenth of a pixel keeps the erf well defined
    g_sigma = np.concatenate([k_sigma, np.maximum(ob.f_sigma / preset.pixel_scale, 0.1)], 1)
    g_flux = np.concatenate([k_flux, _flux(ob.f_mag)], axis=1)  # (N, G, 3)
    if (g_flux > 0).any():
        gy, gx = profiles.gaussian_blobs(_t(g_x), _t(g_y), _t(g_sigma), side, side)
        weighted = _t(g_flux).transpose(1, 2)[..., None] * gy[:, None]  # (N, 3, G, H)
        weighted = weighted.transpose(1, 2).reshape(n, -1, 3 * side).transpose(1, 2)
        # image += weighted @ gx, the sum accumulated in place (no product temporary)
        image.view(n, 3 * side, side).baddbmm_(weighted, gx)

    if preset.psf != "none":
        fwhm_px = ob.psf_fwhm / preset.pixel_scale
        image = instrument.convolve_psf(
            image, preset.psf, fwhm_px, fft_size, preset.moffat_beta, crop=(margin, size)
        )
    else:
        image = image[..., margin : margin + size, margin : margin + size]
    if noise is not None and preset.sky_sigma is not None:
        instrument.add_noise(image, preset.sky_sigma, preset.gain, noise, out=out)
    elif image.data_ptr() != out.data_ptr():
        out.copy_(image)


def draw_scenes(
    scenes: Scenes,
    preset: Preset,
    seed: int = 0,
    size: int = 75,
    noise: bool = True,
    field: bool = True,
    observation: Observation | None = None,
) -> tuple[torch.Tensor, Observation]:
    """Render ``scenes`` as ``preset`` observes them -> (images (N, 3, size, size), conditions).

    The same scenes drawn with two presets give paired images of one sky. ``noise=False`` or
    ``field=False`` switch off the noise or the field stars and background galaxies.
    """
    ob = observation if observation is not None else observe(scenes, preset, seed, size)
    if not field:
        ob = Observation(ob.z, ob.psf_fwhm, ob.f_x, ob.f_y, ob.f_sigma,
                         np.full_like(ob.f_mag, ABSENT))  # fmt: skip
    out = torch.empty(len(scenes), 3, size, size)

    def chunk(start: int) -> None:
        idx = slice(start, start + CHUNK)
        gen = None
        if noise:
            gen = torch.Generator().manual_seed(
                zlib.crc32(f"{seed}:{preset.name}:{start}".encode())
            )
        part = Observation(*(getattr(ob, f)[idx] for f in Observation.__dataclass_fields__))
        _draw_chunk(scenes.subset(idx), part, preset, size, gen, out[idx])

    _run_chunks(chunk, range(0, len(scenes), CHUNK))
    return out, ob


def _run_chunks(fn, starts: range) -> None:
    """Chunks on ``torch.get_num_threads()`` Python threads, each op single-threaded.

    Chunks are independent (own noise generator, own slice of the output), so the result is
    the same whatever the thread count; the small ops of one chunk parallelise poorly inside
    torch, whole chunks side by side keep every core busy. Torch releases the GIL in its ops.
    """
    threads = min(torch.get_num_threads(), len(starts))
    if threads <= 1:
        for start in starts:
            fn(start)
        return
    main_threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def single(start: int) -> None:
        if torch.get_num_threads() != 1:  # OpenMP keeps the thread count per thread
            torch.set_num_threads(1)
        fn(start)

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(single, starts))
    finally:
        torch.set_num_threads(main_threads)
