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
SUB = 4
# Spiral discs are drawn in blocks of this many components (temporaries fit in a CPU cache).
SPIRAL_BLOCK = 24
# Rays used to integrate the pixel holding the centre (enclosed light along each ray).
CORE_RAYS = 48


def sersic_bn(n: torch.Tensor) -> torch.Tensor:
    """Exact Sérsic b_n (half the light inside r_e): solves P(2n, b) = 1/2.

    Starts from the Ciotti & Bertin (1999) expansion and polishes it with Newton steps on the
    regularised incomplete gamma function, so any n > 0.2 gets b_n to float64 precision.
    """
    n64 = n.to(torch.float64)
    a = 2.0 * n64
    b = a - 1.0 / 3.0 + 4.0 / (405.0 * n64) + 46.0 / (25515.0 * n64**2)
    b = b + 131.0 / (1148175.0 * n64**3) - 2194697.0 / (30690717750.0 * n64**4)
    b = b.clamp_min(1e-3)
    for _ in range(4):
        f = torch.special.gammainc(a, b) - 0.5
        log_df = (a - 1.0) * torch.log(b) - b - torch.lgamma(a)
        b = (b - f / torch.exp(log_df)).clamp_min(1e-6)
    return b.to(n.dtype)


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
    dx = xs - cx[..., None, None]  # (..., 1, W)
    dy = ys[:, None] - cy[..., None, None]  # (..., H, 1)
    if spiral is None or cx.dim() != 1:
        img = _sersic_grid(dx, dy, *grid, spiral=spiral)
    else:
        img = torch.empty(len(cx), height, width, dtype=dtype)
        # runs of components with and without arms; arms in blocks whose temporaries stay
        # in cache (they take many passes over the grid)
        has_arms = (spiral["amp"] != 0).tolist()
        start = 0
        while start < len(has_arms):
            arms = has_arms[start]
            stop = start + 1
            while (
                stop < len(has_arms)
                and has_arms[stop] == arms
                and (not arms or stop - start < SPIRAL_BLOCK)
            ):
                stop += 1
            part = slice(start, stop)
            _sersic_grid(dx[part], dy[part], *(g[part] for g in grid), out=img[part],
                         spiral={k: v[part] for k, v in spiral.items()} if arms else None)  # fmt: skip
            start = stop
    _integrate_core(img, cx, cy, params, height, width)
    return img


def _quadratic(a, b, c, dx, dy, dxx, dyy, out=None) -> torch.Tensor:
    """a dx^2 + b dx dy + c dy^2 on the full grid from (..., 1, W) and (..., H, 1) factors.

    Written as one fused outer product and one broadcast add, so a full-size tensor is
    touched twice instead of once per term of the rotated, stretched coordinates.
    """
    out = torch.addcmul(a * dxx, b * dy, dx, out=out)
    return out.add_(c * dyy)


def _sersic_grid(
    dx, dy, cos_t, sin_t, inv_q, inv_re2, half_inv_n, b, log_norm, spiral=None, out=None
):
    """Unit-flux Sérsic on a grid (``dx`` along W, ``dy`` along H); optional m=2 spiral arms.

    The arms multiply by 1 + A cos(2 phi + psi), psi = phase - ln(r^2/re^2) / tan(pitch),
    with cos 2phi and sin 2phi taken from quadratic forms (no atan2) and A fading in
    outside ~0.5 re, where a bulge or bar would dominate. Full-size temporaries are few and
    reused: on a CPU these grids cost memory traffic more than arithmetic.
    """
    c2, s2, cs, iq2 = cos_t * cos_t, sin_t * sin_t, cos_t * sin_t, inv_q * inv_q
    dxx, dyy = dx * dx, dy * dy
    r2 = _quadratic((c2 + s2 * iq2) * inv_re2, 2 * cs * (1 - iq2) * inv_re2,
                    (s2 + c2 * iq2) * inv_re2, dx, dy, dxx, dyy)  # fmt: skip
    if spiral is None:
        r2.log_().mul_(half_inv_n).exp_().mul_(-b).add_(log_norm)
        return r2.exp_() if out is None else torch.exp(r2, out=out)
    r2.clamp_min_(1e-12)
    psi = torch.log(r2)
    img = torch.mul(psi, half_inv_n).exp_().mul_(-b).add_(log_norm).exp_()
    amp = spiral["amp"][..., None, None]
    psi.mul_(-1.0 / torch.tan(spiral["pitch"])[..., None, None])
    psi += spiral["phase"][..., None, None]
    arms = _quadratic(c2 - s2 * iq2, 2 * cs * (1 + iq2), s2 - c2 * iq2, dx, dy, dxx, dyy)
    buf = torch.cos(psi)
    arms.mul_(buf)
    cross = _quadratic(-2 * cs * inv_q, 2 * (c2 - s2) * inv_q, 2 * cs * inv_q, dx, dy, dxx,
                       dyy, out=buf)  # fmt: skip
    arms.sub_(cross.mul_(psi.sin_()))
    # amplitude A 4r^2 / (1 + 4r^2) (smooth, no exp) times cos(2 phi + psi) = arms / r2 with
    # arms in pixels^2 and r2 in re^2: r2 cancels
    arms.mul_(4.0 * amp * inv_re2).div_(r2.mul_(4.0).add_(1.0))
    return torch.mul(img, arms.add_(1.0), out=out)


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
    # one flat index_add_: scatter_add_ along the last dim walks the whole image
    base = torch.arange(flat_idx.shape[:-1].numel()).view(*flat_idx.shape[:-1], 1)
    img.view(-1).index_add_(0, (flat_idx + base * (height * width)).flatten(), flat_delta.flatten())


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
    dx = torch.arange(width, dtype=dtype) - cx_  # (..., 1, W)
    dy = torch.arange(height, dtype=dtype)[:, None] - cy_  # (..., H, 1)
    # angle from the arc's start in its direction, in [0, 2 pi): atan2 of the negated offsets
    # rotated into the start's frame, plus pi (no remainder over the full grid)
    c0, s0, sg = torch.cos(t0), torch.sin(t0), torch.sign(dt)
    s = torch.sub(dx * (sg * s0), dy * (sg * c0))  # -v, v the offset across the start
    tmp = torch.add(dx * -c0, dy * -s0)  # -u, u the offset along the start
    s.atan2_(tmp).add_(math.pi).div_(dt.abs())  # fraction of the way along the arc
    d = torch.add(dx * dx, dy * dy, out=tmp).sqrt_().sub_(rad)  # signed distance to the circle
    along = torch.div(s, tp0).clamp_(max=1.0)
    along.mul_(torch.addcmul(1.0 / tp1, s, -1.0 / tp1).clamp_(0.0, 1.0))  # (1 - s) / tp1
    root2 = math.sqrt(2.0)  # folds the 1/2 of the Gaussian into the width
    d.div_(torch.where(d > 0, wout * root2, win * root2))
    d.div_(torch.clamp(s, max=1.0).mul_(wid).add_(1.0))  # ribbons widen along the arc
    # fading along the arc and the Gaussian cross-section in one exp
    profile = d.square_().neg_().addcmul_(s, -fad)
    return along.mul_(profile.exp_())


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
