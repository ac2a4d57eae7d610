"""Analytic surface-brightness profiles evaluated on pixel grids, batched with torch.

Every function works in pixel units on a canvas whose pixel (i, j) covers
``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``. Profiles return flux per pixel: Sérsic
components are pixel-integrated (pixel centres plus a finely sub-sampled patch around the
cusp), Gaussian blobs exactly (erf differences), ribbons (tails, shells) at pixel centres.
"""

from __future__ import annotations

import math

import torch

# Central patch that is sub-sampled to integrate the Sérsic cusp over pixels: PATCH x PATCH
# pixels, each split into SUB x SUB samples. Outside it the profile is smooth on pixel scales.
PATCH = 5
SUB = 8
# Rays used to integrate the pixel holding the centre (enclosed light along each ray).
CORE_RAYS = 48


def sersic_bn(n: torch.Tensor) -> torch.Tensor:
    """Exact Sérsic b_n (half the light inside r_e): solves P(2n, b) = 1/2 by bisection."""
    n64 = n.to(torch.float64)
    lo = torch.zeros_like(n64)
    hi = 2.0 * n64 + 1.0  # b_n < 2n for every n > 0.36; +1 keeps small n bracketed too
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        below = torch.special.gammainc(2.0 * n64, mid) < 0.5
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return (0.5 * (lo + hi)).to(n.dtype)


def sersic_log_norm(n: torch.Tensor, b: torch.Tensor, re: torch.Tensor, q: torch.Tensor):
    """log of the unit-flux central intensity: I(r) = exp(norm - b (r/re)^(1/n))."""
    n64, b64 = n.double(), b.double()
    out = (
        2.0 * n64 * torch.log(b64)
        - torch.lgamma(2.0 * n64)
        - torch.log(2.0 * math.pi * n64 * q.double() * re.double() ** 2)
    )
    return out.to(n.dtype)


def _sersic_at(dx, dy, cos_t, sin_t, inv_q, inv_re2, half_inv_n, b, log_norm):
    """Unit-flux Sérsic intensity at offsets (dx, dy) from the centre; all args broadcast."""
    xr = dx * cos_t + dy * sin_t
    yr = (dy * cos_t - dx * sin_t) * inv_q
    r2 = (xr * xr + yr * yr) * inv_re2
    # (r/re)^(1/n) = exp(log(r^2/re^2) / (2n)); r = 0 gives exp(-inf) = 0, no NaN
    return torch.exp(log_norm - b * torch.exp(torch.log(r2) * half_inv_n))


def sersic_images(
    cx: torch.Tensor,
    cy: torch.Tensor,
    re: torch.Tensor,
    n: torch.Tensor,
    q: torch.Tensor,
    theta: torch.Tensor,
    height: int,
    width: int,
    spiral: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Unit-flux Sérsic components (``...`` shaped parameters, pixels) -> ``(..., H, W)``.

    ``re`` is the semi-major half-light radius, ``q`` the axis ratio, ``theta`` the position
    angle of the major axis (radians, counter-clockwise from +x). ``spiral`` (keys ``amp``,
    ``pitch``, ``phase``; amp 0 = none) adds an m=2 logarithmic spiral modulation of mean 0.
    """
    dtype = cx.dtype
    b = sersic_bn(n)
    log_norm = sersic_log_norm(n, b, re, q)
    params = [
        torch.cos(theta),
        torch.sin(theta),
        1.0 / q,
        1.0 / (re * re),
        0.5 / n,
        b,
        log_norm,
    ]
    grid = [p[..., None, None] for p in params]
    ys = torch.arange(height, dtype=dtype)
    xs = torch.arange(width, dtype=dtype)
    dx = xs - cx[..., None, None]
    dy = ys[:, None] - cy[..., None, None]
    spiralled = spiral is not None
    img = _sersic_spiral_at(dx, dy, *grid, spiral) if spiralled else _sersic_at(dx, dy, *grid)
    _integrate_core(img, cx, cy, params, height, width)
    return img


def _sersic_spiral_at(dx, dy, cos_t, sin_t, inv_q, inv_re2, half_inv_n, b, log_norm, spiral):
    """`_sersic_at` times 1 + A cos(2 phi - ln(r^2/re^2) / tan(pitch) + phase), A fading in."""
    xr = dx * cos_t + dy * sin_t
    yr = (dy * cos_t - dx * sin_t) * inv_q
    r2 = xr * xr + yr * yr + 1e-12
    log_r2 = torch.log(r2 * inv_re2)
    img = torch.exp(log_norm - b * torch.exp(log_r2 * half_inv_n))
    # cos(2 phi + psi) from x, y directly (no atan2): cos 2phi cos psi - sin 2phi sin psi
    psi = spiral["phase"][..., None, None] - log_r2 / torch.tan(spiral["pitch"])[..., None, None]
    inv_r2 = 1.0 / r2
    arms = ((xr * xr - yr * yr) * torch.cos(psi) - 2.0 * xr * yr * torch.sin(psi)) * inv_r2
    # arms fade in outside ~0.5 re, where a bulge/bar would dominate
    amp = spiral["amp"][..., None, None] * (1.0 - torch.exp(-4.0 * r2 * inv_re2))
    return img * (1.0 + amp * arms)


def _integrate_core(img, cx, cy, params, height, width) -> None:
    """Replace pixel-centre values near each centre by sub-sampled pixel averages (in place)."""
    dtype = img.dtype
    half = PATCH // 2
    ix = torch.round(cx)
    iy = torch.round(cy)
    offs = torch.arange(-half, half + 1, dtype=dtype)
    sub = (torch.arange(SUB, dtype=dtype) + 0.5) / SUB - 0.5
    # sample positions along each axis: (..., PATCH * SUB)
    px = ((ix - cx)[..., None, None] + offs[:, None] + sub).flatten(-2)
    py = ((iy - cy)[..., None, None] + offs[:, None] + sub).flatten(-2)
    grid = [p[..., None, None] for p in params]
    fine = _sersic_at(px[..., None, :], py[..., :, None], *grid)
    shape = fine.shape[:-2]
    fine = fine.reshape(*shape, PATCH, SUB, PATCH, SUB).mean(dim=(-1, -3))
    # the 2x2 block around the centre: exact ray integration of the enclosed-light function,
    # since steep cusps (n >= 4) defeat any finite sub-sampling there
    block = _core_block_flux(cx, cy, params)
    bx = (torch.floor(cx) - ix).long() + half  # block's first column inside the patch
    by = (torch.floor(cy) - iy).long() + half
    flat_fine = fine.reshape(*fine.shape[:-2], PATCH * PATCH)
    for r in range(2):
        for c in range(2):
            pos = ((by + r) * PATCH + bx + c)[..., None]
            flat_fine.scatter_(-1, pos, block[..., r, c][..., None])
    fine = flat_fine.reshape(fine.shape)
    centres = _sersic_at(
        (ix - cx)[..., None, None] + offs, (iy - cy)[..., None, None] + offs[:, None], *grid
    )
    delta = fine - centres
    gx = ix[..., None, None].long() + offs.long()
    gy = iy[..., None, None].long() + offs.long()[:, None]
    inside = (gx >= 0) & (gx < width) & (gy >= 0) & (gy < height)
    flat_idx = (gy.clamp(0, height - 1) * width + gx.clamp(0, width - 1)).flatten(-2)
    flat_delta = (delta * inside).flatten(-2)
    flat_img = img.view(*img.shape[:-2], height * width)
    flat_img.scatter_add_(-1, flat_idx, flat_delta)


def gaussian_blobs(
    cx: torch.Tensor, cy: torch.Tensor, sigma: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-integrated unit-flux circular Gaussians as separable factors.

    Returns ``(gy, gx)`` of shapes ``(..., H)`` and ``(..., W)``; the image is their outer
    product. Stars (sigma -> 0 before the PSF) and compact background galaxies use it.
    """
    dtype = cx.dtype
    s = (sigma * math.sqrt(2.0))[..., None]
    edges_x = torch.arange(width + 1, dtype=dtype) - 0.5
    edges_y = torch.arange(height + 1, dtype=dtype) - 0.5
    ex = torch.erf((edges_x - cx[..., None]) / s)
    ey = torch.erf((edges_y - cy[..., None]) / s)
    return 0.5 * (ey[..., 1:] - ey[..., :-1]), 0.5 * (ex[..., 1:] - ex[..., :-1])


def arc_ribbons(
    cx: torch.Tensor,
    cy: torch.Tensor,
    radius: torch.Tensor,
    theta0: torch.Tensor,
    dtheta: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    widen: torch.Tensor,
    fade: torch.Tensor,
    taper0: torch.Tensor,
    taper1: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """Curved ribbons of peak intensity 1 per pixel along circular arcs -> ``(..., H, W)``.

    One primitive draws tidal tails (long, fading, widening arcs), bridges (slightly curved
    arcs between two galaxies), shells (arcs with a sharp outer edge: ``w_out`` << ``w_in``)
    and plumes (short, broad arcs). The arc starts at angle ``theta0`` seen from its centre
    and runs ``dtheta`` radians (sign = direction); ``fade`` is the e-folding count along it,
    ``taper0``/``taper1`` the fractions of its length over which it fades in and out.
    """
    dtype = cx.dtype
    e = [p[..., None, None] for p in (cx, cy, radius, theta0, dtheta, w_in, w_out)]
    e += [p[..., None, None] for p in (widen, fade, taper0, taper1)]
    cx_, cy_, rad, t0, dt, win, wout, wid, fad, tp0, tp1 = e
    xs = torch.arange(width, dtype=dtype)
    ys = torch.arange(height, dtype=dtype)[:, None]
    dx = xs - cx_
    dy = ys - cy_
    rho = torch.sqrt(dx * dx + dy * dy)
    phi = torch.atan2(dy, dx)
    t = torch.remainder((phi - t0) * torch.sign(dt), 2.0 * math.pi)
    s = t / dt.abs()
    along = torch.clamp(s / tp0, max=1.0) * torch.clamp((1.0 - s) / tp1, min=0.0, max=1.0)
    along = along * torch.exp(-fad * s)
    d = rho - rad
    w = torch.where(d > 0, wout, win) * (1.0 + wid * s.clamp(max=1.0))
    return along * torch.exp(-0.5 * (d / w) ** 2)


def _core_block_flux(cx: torch.Tensor, cy: torch.Tensor, params) -> torch.Tensor:
    """Flux in the 2x2 pixel block around each centre -> ``(..., 2, 2)`` ([row, col]).

    The block is the one whose shared corner is nearest the centre, so the cusp lies at
    least half a pixel inside it. In the frame where the profile is circular the light along
    a ray between radii t0 < t1 is P(2n, b (t1/re)^(1/n)) - P(2n, b (t0/re)^(1/n)) per unit
    angle / 2 pi; each ray is cut where it crosses the block's inner lines and exits it.
    """
    cos_t, sin_t, inv_q, inv_re2, half_inv_n, b, _ = params
    dtype = cx.dtype
    psi = (torch.arange(CORE_RAYS, dtype=dtype) + 0.5) * (2.0 * math.pi / CORE_RAYS)
    vx, vy = torch.cos(psi), torch.sin(psi)
    # pixel-frame step per unit circular-frame radius along each ray
    q = 1.0 / inv_q[..., None]
    yq = vy * q
    ct, st = cos_t[..., None], sin_t[..., None]
    wx = vx * ct - yq * st
    wy = vx * st + yq * ct
    xm = (torch.floor(cx) + 0.5 - cx)[..., None]  # shared x line, offset from the centre
    ym = (torch.floor(cy) + 0.5 - cy)[..., None]
    sx = torch.where(wx >= 0, 1.0, -1.0)
    sy = torch.where(wy >= 0, 1.0, -1.0)
    wx_safe = torch.where(wx == 0, 1e-30 * sx, wx)
    wy_safe = torch.where(wy == 0, 1e-30 * sy, wy)
    t_exit = torch.minimum((xm + sx) / wx_safe, (ym + sy) / wy_safe)
    tx = xm / wx_safe
    ty = ym / wy_safe
    tx = torch.where((tx > 0) & (tx < t_exit), tx, t_exit)
    ty = torch.where((ty > 0) & (ty < t_exit), ty, t_exit)
    t1 = torch.minimum(tx, ty)
    t2 = torch.maximum(tx, ty)
    ts = torch.stack([t1, t2, t_exit], dim=-1)  # (..., K, 3)
    n2 = (1.0 / half_inv_n)[..., None, None]
    x = b[..., None, None] * torch.exp(
        torch.log(ts * ts * inv_re2[..., None, None]) * half_inv_n[..., None, None]
    )
    cum = torch.special.gammainc(n2, x)
    seg = torch.diff(cum, dim=-1, prepend=torch.zeros_like(cum[..., :1]))
    bounds = torch.cat([torch.zeros_like(ts[..., :1]), ts], dim=-1)
    mid = 0.5 * (bounds[..., 1:] + bounds[..., :-1])
    col = (mid * wx[..., None] > xm[..., None]).long()
    row = (mid * wy[..., None] > ym[..., None]).long()
    block = torch.zeros(*seg.shape[:-2], 4, dtype=dtype)
    block.scatter_add_(-1, (row * 2 + col).flatten(-2), seg.flatten(-2))
    return (block / CORE_RAYS).reshape(*block.shape[:-1], 2, 2)
