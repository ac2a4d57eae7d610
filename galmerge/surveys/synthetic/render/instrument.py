"""Observing a rendered sky: cosmology (angular scale, dimming), PSF transfer functions, noise."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

# flat Lambda-CDM, H0 = 70 km/s/Mpc, Omega_m = 0.3
H0 = 70.0
OMEGA_M = 0.3
C_KM_S = 299792.458
ARCSEC_PER_RAD = 206264.806


# the table's reach: z_scale (at most 5) times the highest preset redshift (2.2) is 11
Z_MAX = 20.0


def _trapezoid(z: np.ndarray, start: float) -> np.ndarray:
    """Integral of 1/E(z) from z[0], accumulated by the trapezoid rule, plus ``start``."""
    inv_e = 1.0 / np.sqrt(OMEGA_M * (1.0 + z) ** 3 + (1.0 - OMEGA_M))
    return np.concatenate([[start], start + np.cumsum(0.5 * (inv_e[1:] + inv_e[:-1]) * np.diff(z))])


@lru_cache(maxsize=1)
def _comoving_table() -> tuple[np.ndarray, np.ndarray]:
    # z = 0..6 first, exactly as the table was before it reached beyond z = 6 (renders stay),
    # then the same 0.001 steps on to Z_MAX
    z = np.linspace(0.0, 6.0, 6001)
    dc = _trapezoid(z, 0.0)
    z_far = np.linspace(6.0, Z_MAX, int(round((Z_MAX - 6.0) * 1000)) + 1)
    dc_far = _trapezoid(z_far, 0.0)[1:] + dc[-1]
    return np.concatenate([z, z_far[1:]]), np.concatenate([dc, dc_far]) * C_KM_S / H0  # Mpc


def comoving_distance_mpc(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.size and not float(z.max()) <= Z_MAX:
        raise ValueError(f"redshift {float(z.max()):g} is beyond the distance table (z <= {Z_MAX:g})")
    zs, dc = _comoving_table()
    return np.interp(z, zs, dc)


def arcsec_per_kpc(z: np.ndarray) -> np.ndarray:
    """Angular size of 1 proper kpc at redshift ``z``."""
    da_kpc = comoving_distance_mpc(z) / (1.0 + np.asarray(z)) * 1000.0
    return ARCSEC_PER_RAD / da_kpc


def distance_modulus(z: np.ndarray) -> np.ndarray:
    """5 log10(D_L / 10 pc): with angular sizes it gives the (1+z)^-4 surface-brightness dimming."""
    dl_pc = comoving_distance_mpc(z) * (1.0 + np.asarray(z)) * 1e6
    return 5.0 * np.log10(dl_pc / 10.0)


def mag_to_nmgy(mag: np.ndarray) -> np.ndarray:
    return np.power(10.0, -0.4 * (np.asarray(mag) - 22.5))


# -- PSF transfer functions ---------------------------------------------------------------------


@lru_cache(maxsize=8)
def _moffat_transfer_table(beta: float) -> tuple[torch.Tensor, float]:
    """Hankel transform G(q) of a unit-flux Moffat with alpha = 1, on q = 0..QMAX cycles/alpha."""
    qmax, nq = 5.0, 1001
    # alpha units out to 25 alpha: beyond it a beta >= 2.5 Moffat holds < 1e-6 of the light
    r = (torch.arange(2500, dtype=torch.float64) + 0.5) * 0.01
    profile = (1.0 + r * r) ** (-beta) * r
    q = torch.linspace(0.0, qmax, nq, dtype=torch.float64)
    table = torch.empty(nq, dtype=torch.float64)
    for start in range(0, nq, 200):
        qs = q[start : start + 200, None]
        table[start : start + 200] = (torch.special.bessel_j0(2 * math.pi * qs * r) * profile).sum(
            1
        )
    table = table / table[0]
    return table.float(), qmax / (nq - 1)


def moffat_alpha(fwhm: torch.Tensor, beta: float) -> torch.Tensor:
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def frequency_radius(fft_size: int) -> torch.Tensor:
    """|k| in cycles per pixel on the rfft2 grid of an ``fft_size`` square."""
    ky = torch.fft.fftfreq(fft_size)[:, None]
    kx = torch.fft.rfftfreq(fft_size)[None, :]
    return torch.sqrt(kx * kx + ky * ky)


def psf_transfer(kind: str, fwhm_px: torch.Tensor, fft_size: int, beta: float) -> torch.Tensor:
    """Optical transfer functions for FWHMs (pixels, any shape) -> ``(..., F, F // 2 + 1)``."""
    return _transfer_at(kind, fwhm_px, frequency_radius(fft_size), beta)


def _transfer_at(kind: str, fwhm_px: torch.Tensor, k: torch.Tensor, beta: float) -> torch.Tensor:
    """`psf_transfer` on any grid ``k`` of |k| (cycles per pixel)."""
    if kind == "gaussian":
        sigma = fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        return torch.exp(-2.0 * math.pi**2 * (sigma[..., None, None] * k) ** 2)
    if kind == "moffat":
        table, dq = _moffat_transfer_table(float(beta))
        x = (moffat_alpha(fwhm_px, beta)[..., None, None] * (k / dq)).clamp(max=len(table) - 1.001)
        i0 = x.long()  # x >= 0, so truncation is floor
        lo = torch.take(table, i0)
        return lo + (torch.take(table, i0 + 1) - lo) * (x - i0)
    raise ValueError(f"unknown PSF kind {kind!r}")


@lru_cache(maxsize=8192)
def _cached_transfer(kind: str, fwhm_px: float, fft_size: int, beta: float) -> torch.Tensor:
    return psf_transfer(kind, torch.tensor(fwhm_px, dtype=torch.float32), fft_size, beta)


def psf_transfers(kind: str, fwhm_px: np.ndarray, fft_size: int, beta: float) -> torch.Tensor:
    """`psf_transfer` for an (N, C) array of FWHMs, reusing tables of FWHMs seen before.

    Seeing is drawn on a fine grid (presets.FWHM_STEP), so the few hundred distinct tables
    are computed once per process instead of once per image.
    """
    flat = [_cached_transfer(kind, float(v), fft_size, float(beta)) for v in fwhm_px.ravel()]
    return torch.stack(flat).view(*fwhm_px.shape, *flat[0].shape)


def convolve(
    images: torch.Tensor, transfer: torch.Tensor, fft_size: int, crop: tuple[int, int] | None = None
) -> torch.Tensor:
    """Convolve (N, C, H, W) images with per-image, per-band transfer functions (zero padded).

    ``crop = (start, size)`` returns only that square of the result; the inverse transform
    then skips the rows outside it.
    """
    h, w = images.shape[-2:]
    start, size = crop if crop is not None else (0, max(h, w))
    spec = torch.fft.rfft(images, n=fft_size, dim=-1)
    spec = torch.fft.fft(spec, n=fft_size, dim=-2)
    spec.mul_(transfer)
    rows = torch.fft.ifft(spec, dim=-2)[..., start : start + min(size, h), :]
    return torch.fft.irfft(rows, n=fft_size, dim=-1)[..., start : start + min(size, w)]


# -- PSF convolution as matrix products ----------------------------------------------------------
#
# `convolve` (zero-padded circular convolution through rfft2 with the transfer functions above)
# is the definition. The PSFs are real and even in kx and ky, so the same circular convolution
# is a sum over cos/sin products: with B(p, f) = [cos 2 pi u p / F (u = 0..F/2) | sin (u = 1..
# F/2-1)], out = B_out (W * (B_in^T x B_in)) B_out^T, W the transfer weighted for the folded
# negative frequencies. A Gaussian's transfer is also separable: out = M^T x M with M the
# circulant rows of its kernel. Both give `convolve`'s result to float rounding, as shared-matrix
# GEMMs that run several times faster than small batched FFTs on a CPU.


@lru_cache(maxsize=64)
def _cos_sin_basis(fft_size: int, first: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B (length, fft_size) at pixels first..first+length-1 of a period of ``fft_size``; B^T."""
    half = fft_size // 2
    u = torch.arange(half + 1, dtype=torch.float64)
    pos = torch.arange(first, first + length, dtype=torch.float64)
    ang = (2.0 * math.pi / fft_size) * torch.outer(pos, u)
    basis = torch.cat([torch.cos(ang), torch.sin(ang[:, 1:half])], 1).float()
    return basis, basis.T.contiguous()


_EVEN_WEIGHTS: dict[tuple[str, float, int, float], torch.Tensor] = {}


def _even_weights(kind: str, fwhm_px: np.ndarray, fft_size: int, beta: float) -> torch.Tensor:
    """(N, F/2+1, F/2+1): the transfer on frequencies 0..F/2 (ky, kx), weighted for the folded
    negative frequencies and the 1/F^2 of the inverse transform, one per FWHM in ``fwhm_px``.

    Cached per FWHM (seeing is drawn on a grid); missing ones are computed in one batch.
    """
    half = fft_size // 2
    keys = [(kind, float(v), fft_size, float(beta)) for v in fwhm_px]
    missing = sorted({k[1] for k in keys if k not in _EVEN_WEIGHTS})
    if missing:
        if len(_EVEN_WEIGHTS) > 16384:  # bounded memory in long-lived processes
            _EVEN_WEIGHTS.clear()
        k = frequency_radius(fft_size)[: half + 1]  # ky = 0..F/2 (psf_transfer's first rows)
        t = _transfer_at(kind, torch.tensor(missing, dtype=torch.float32), k, beta)
        fold = torch.full((half + 1,), 2.0, dtype=torch.float64)  # u and -u
        fold[0] = fold[half] = 1.0
        t = (t.double() * torch.outer(fold, fold) / fft_size**2).float()
        for v, table in zip(missing, t, strict=True):
            _EVEN_WEIGHTS[(kind, v, fft_size, float(beta))] = table
    return torch.stack([_EVEN_WEIGHTS[k] for k in keys])


@lru_cache(maxsize=4096)
def _gaussian_rows(fwhm_px: float, fft_size: int, side: int, start: int, size: int) -> torch.Tensor:
    """M (side, size): M[p, m] = h((m + start - p) mod F), h the inverse DFT of the transfer."""
    sigma = fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    k = torch.fft.rfftfreq(fft_size, dtype=torch.float64)
    h = torch.fft.irfft(torch.exp(-2.0 * math.pi**2 * (sigma * k) ** 2), n=fft_size)
    idx = (torch.arange(size)[None, :] + start - torch.arange(side)[:, None]) % fft_size
    return h[idx].float()


def _stack(fn, fwhm_px: np.ndarray, *args) -> torch.Tensor:
    values, inverse = np.unique(fwhm_px.ravel(), return_inverse=True)
    table = torch.stack([fn(float(v), *args) for v in values])
    return table[torch.from_numpy(inverse.astype(np.int64))]


def convolve_psf(
    images: torch.Tensor,
    kind: str,
    fwhm_px: np.ndarray,
    fft_size: int,
    beta: float,
    crop: tuple[int, int],
) -> torch.Tensor:
    """`convolve` with `psf_transfers` (kind, fwhm_px (N, C)), computed as matrix products."""
    n, c, h, w = images.shape
    if h != w:
        raise ValueError("convolve_psf needs square canvases")
    start, size = crop
    x = images.reshape(n * c, h, w)
    if kind == "gaussian":
        m = _stack(_gaussian_rows, fwhm_px, fft_size, h, start, size)  # (NC, h, size)
        return torch.bmm(m.transpose(1, 2), torch.bmm(x, m)).view(n, c, size, size)
    if kind != "moffat":
        raise ValueError(f"unknown PSF kind {kind!r}")
    b_in, b_in_t = _cos_sin_basis(fft_size, 0, h)
    b_out, b_out_t = _cos_sin_basis(fft_size, start, size)
    weights = _even_weights(kind, fwhm_px.ravel(), fft_size, beta)  # (NC, F/2+1, F/2+1)
    nc = n * c
    rows = torch.mm(x.reshape(nc * h, w), b_in).view(nc, h, fft_size)
    # shared left factors as stride-0 batches: bmm reads them without copies
    spec = torch.bmm(b_in_t.expand(nc, -1, -1), rows)
    # B's columns are [cos u = 0..F/2 | sin u = 1..F/2-1]: the weights of each quadrant
    half = fft_size // 2
    cos, sin = slice(0, half + 1), slice(half + 1, None)
    for rows_q, rows_w in ((cos, slice(None)), (sin, slice(1, half))):
        spec[:, rows_q, cos].mul_(weights[:, rows_w])
        spec[:, rows_q, sin].mul_(weights[:, rows_w, 1:half])
    rows = torch.bmm(b_out.expand(nc, -1, -1), spec)
    return torch.mm(rows.view(nc * size, fft_size), b_out_t).view(n, c, size, size)


def add_noise(
    images: torch.Tensor,
    sky_sigma: tuple[float, float, float],
    gain: float,
    generator: torch.Generator,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sky-subtracted frames: Gaussian sky noise plus source shot noise (Gaussian limit).

    ``out`` (same shape) receives the result; the random stream is that of ``torch.randn``.
    """
    sky_var = torch.tensor(sky_sigma, dtype=images.dtype).view(1, -1, 1, 1) ** 2
    # counts per pixel are >> 10 everywhere on these frames, so Poisson is Gaussian there
    std = images.clamp_min(0.0).div_(gain).add_(sky_var).sqrt_()
    # the noise is drawn straight into the output, which then becomes noise * std + images
    aliased = out is None or out.data_ptr() == images.data_ptr()
    noise = (torch.empty_like(images) if aliased else out).normal_(generator=generator)
    noisy = noise.mul_(std).add_(images)
    return noisy if out is None or not aliased else out.copy_(noisy)
