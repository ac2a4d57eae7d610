"""The renderer's noise- and PSF-free Sérsic profiles agree with GalSim, the field's reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

galsim = pytest.importorskip("galsim")

from galmerge.surveys.synthetic.render import PRESETS, Scenes, draw_scenes  # noqa: E402
from galmerge.surveys.synthetic.render.instrument import (  # noqa: E402
    arcsec_per_kpc,
    distance_modulus,
    mag_to_nmgy,
)
from galmerge.surveys.synthetic.render.profiles import sersic_images  # noqa: E402

SIZE = 75


def half_light_radius(img: np.ndarray, cx: float, cy: float) -> float:
    """Radius of the circle around (cx, cy) holding half the image's flux.

    Each pixel is split into 8x8 equal parts so the enclosed-flux curve is smooth.
    """
    sub = 8
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    h, w = img.shape
    ys = (np.arange(h)[:, None] + offs).ravel()
    xs = (np.arange(w)[:, None] + offs).ravel()
    r = np.hypot(xs[None, :] - cx, ys[:, None] - cy).ravel()
    flux = np.repeat(np.repeat(img, sub, axis=0), sub, axis=1).ravel() / sub**2
    order = np.argsort(r)
    cum = np.cumsum(flux[order])
    return float(np.interp(0.5 * cum[-1], cum, r[order]))


def galsim_image(n, hlr, q, beta, dx, dy, flux=1.0, scale=1.0):
    prof = galsim.Sersic(n, half_light_radius=hlr * scale * np.sqrt(q), flux=flux)
    if q < 1:
        prof = prof.shear(q=q, beta=beta * galsim.radians)
    prof = prof.shift(dx * scale, dy * scale)
    # real-space convolution with the pixel: exact pixel integration, no FFT aliasing
    return prof.drawImage(nx=SIZE, ny=SIZE, scale=scale, method="real_space").array


CASES = [(n, hlr, 1.0, 0.0) for n in (0.5, 1, 2, 4, 6) for hlr in (1.0, 2.5, 6.0)]
CASES += [(n, 3.0, 0.5, 0.7) for n in (0.5, 1, 2, 4, 6)]


@pytest.mark.parametrize(("n", "hlr", "q", "beta"), CASES)
@pytest.mark.parametrize(("dx", "dy"), [(0.3, -0.2), (0.45, 0.49)])
def test_sersic_matches_galsim(n, hlr, q, beta, dx, dy):
    c = (SIZE - 1) / 2
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    ours = sersic_images(t(c + dx), t(c + dy), t(hlr), t(n), t(q), t(beta), SIZE, SIZE)
    ours = ours[0].numpy().astype(np.float64)
    ref = galsim_image(n, hlr, q, beta, dx, dy).astype(np.float64)
    # both stamps lose the same light beyond their edges (steep n=6 profiles: ~15%)
    assert ours.sum() == pytest.approx(ref.sum(), rel=0.02)
    r_ours = half_light_radius(ours, c + dx, c + dy)
    r_ref = half_light_radius(ref, c + dx, c + dy)
    assert r_ours == pytest.approx(r_ref, rel=0.05)


@pytest.mark.parametrize("n", [1.0, 4.0])
def test_scene_drawn_by_preset_matches_galsim_in_sky_units(n):
    """A one-component scene drawn by `pristine` equals GalSim's arcsec/flux rendering."""
    preset = PRESETS["pristine"]
    scenes = Scenes.blank(1)
    scenes.s_n[0, 0], scenes.s_re[0, 0] = n, 1.5  # kpc
    scenes.s_x[0, 0], scenes.s_y[0, 0] = 0.4, -0.3
    scenes.s_mag[0, 0] = (-21.0, -21.3, -21.5)
    images, obs = draw_scenes(scenes, preset, noise=False, field=False, size=SIZE)
    z = obs.z[0]
    kpc = arcsec_per_kpc(z) / preset.pixel_scale  # pixels per kpc
    for band in range(3):
        flux = mag_to_nmgy(scenes.s_mag[0, 0, band] + distance_modulus(z)
                           + preset.mag_offset[band])  # fmt: skip
        ref = galsim_image(n, 1.5 * kpc, 1.0, 0.0, 0.4 * kpc, -0.3 * kpc, flux=float(flux),
                           scale=preset.pixel_scale)  # fmt: skip
        ours = images[0, band].numpy().astype(np.float64)
        assert ours.sum() == pytest.approx(ref.sum(), rel=0.02)
        c = (SIZE - 1) / 2
        assert half_light_radius(ours, c + 0.4 * kpc, c - 0.3 * kpc) == pytest.approx(
            half_light_radius(ref, c + 0.4 * kpc, c - 0.3 * kpc), rel=0.05
        )
