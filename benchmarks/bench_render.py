"""Renderer throughput (3x75x75 stamps/s) per preset, with GalSim's rate on the same scenes. JSON.

Usage: python benchmarks/bench_render.py [--n 2000] [--threads 2] [--galsim-n 60] [--repeats 3]

Figures: full scenes (galaxies, tidal features, knots, field, PSF, noise) per preset, and for
single galaxies (the primary's bulge + disc only) both our renderer and GalSim drawing the same
bulge + disc in three bands, convolved with the same PSF, with Gaussian sky noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from galmerge.config.rundir import cpu_description
from galmerge.surveys.synthetic.render import (
    PRESETS,
    RENDERER_VERSION,
    Scenes,
    draw_scenes,
    sample_scenes,
)
from galmerge.surveys.synthetic.render.draw import observe
from galmerge.surveys.synthetic.render.instrument import (
    arcsec_per_kpc,
    distance_modulus,
    mag_to_nmgy,
)
from galmerge.surveys.synthetic.render.scene import ABSENT


def single_galaxies(scenes: Scenes) -> Scenes:
    """The same scenes with everything but the primary's bulge and disc removed."""
    out = scenes.subset(slice(None))
    out.s_mag = out.s_mag.copy()
    out.s_mag[:, 2:] = ABSENT
    out.a_mu = np.full_like(out.a_mu, ABSENT)
    out.k_mu = np.full_like(out.k_mu, ABSENT)
    return out


def rate(fn, n: int, repeats: int = 1) -> dict[str, object]:
    """Median of ``repeats`` timed calls (each call's stamps/s listed too)."""
    runs = []
    for _ in range(max(1, repeats)):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        runs.append((time.process_time() - cpu, time.perf_counter() - wall))
    cpu, wall = sorted(runs, key=lambda r: r[1])[len(runs) // 2]
    out: dict[str, object] = {
        "stamps_per_s": round(n / wall, 1),
        # a process starved by other work on a shared machine still shows its CPU cost
        "stamps_per_cpu_s": round(n / max(cpu, 1e-9), 1),
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
    }
    if len(runs) > 1:
        out["repeats_stamps_per_s"] = [round(n / w, 1) for _, w in runs]
    return out


def galsim_method(preset_name: str) -> str:
    """GalSim's drawing method for a preset (both integrate the light over pixels).

    Without a PSF, method='auto' convolves the Sérsic with the pixel by FFT, and a steep
    Sérsic's k-space extent asks for FFTs of ~10^4 on a side (seconds per stamp, "FFT size"
    warnings); method='real_space' draws the same pixel-integrated image (agreeing to ~2e-4
    of the peak) about ten times faster. With a PSF, 'auto' (FFT) is GalSim's efficient route.
    """
    return "real_space" if PRESETS[preset_name].psf == "none" else "auto"


def galsim_draw(scenes: Scenes, preset_name: str, seed: int) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GalSim's FFT-size advice; timings are the point
        _galsim_draw(scenes, preset_name, seed)


def _galsim_draw(scenes: Scenes, preset_name: str, seed: int) -> None:
    import galsim

    preset = PRESETS[preset_name]
    method = galsim_method(preset_name)
    ob = observe(scenes, preset, seed, 75)
    scale = arcsec_per_kpc(ob.z)  # arcsec per kpc
    dm = distance_modulus(ob.z)
    rng = galsim.BaseDeviate(seed)
    for i in range(len(scenes)):
        comps = []
        for slot in (0, 1):
            if scenes.s_mag[i, slot, 0] >= ABSENT - 1:
                continue
            q = float(scenes.s_q[i, slot])
            hlr = float(scenes.s_re[i, slot] * scale[i] * np.sqrt(q))
            prof = galsim.Sersic(float(scenes.s_n[i, slot]), half_light_radius=hlr)
            prof = prof.shear(q=q, beta=float(scenes.s_pa[i, slot]) * galsim.radians)
            shift = scenes.s_x[i, slot] * scale[i], scenes.s_y[i, slot] * scale[i]
            comps.append((slot, prof.shift(*shift)))
        for band in range(3):
            parts = []
            for slot, prof in comps:
                mag = scenes.s_mag[i, slot, band] + dm[i] + preset.mag_offset[band]
                parts.append(prof.withFlux(float(mag_to_nmgy(mag))))
            gal = galsim.Add(parts) if len(parts) > 1 else parts[0]
            if preset.psf == "moffat":
                fwhm = float(ob.psf_fwhm[i, band])
                gal = galsim.Convolve(gal, galsim.Moffat(preset.moffat_beta, fwhm=fwhm))
            elif preset.psf == "gaussian":
                gal = galsim.Convolve(gal, galsim.Gaussian(fwhm=float(ob.psf_fwhm[i, band])))
            img = gal.drawImage(nx=75, ny=75, scale=preset.pixel_scale, method=method)
            if preset.sky_sigma is not None:
                img.addNoise(galsim.GaussianNoise(rng, sigma=preset.sky_sigma[band]))


def machine_note(before: tuple[float, ...], after: tuple[float, ...], threads: int) -> str:
    """What the load averages say about other work on the machine during the run."""
    cores = os.cpu_count() or 1
    # the 1-minute average at the start is other processes; at the end it includes this one
    others = max(before[0], after[0] - threads, 0.0)
    if others < 0.3:
        return (
            f"machine idle apart from this run (1-min load {before[0]:.2f} before on {cores} cores)"
        )
    return (
        f"machine shared: other processes kept ~{others:.1f} of {cores} cores busy (1-min load "
        f"{before[0]:.2f} before, {after[0]:.2f} after, this run's {threads} threads included); "
        "wall-clock rates are then low, stamps_per_cpu_s (this process's CPU time) less so"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--galsim-n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of our renderer; the median is reported"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    scenes = sample_scenes(args.n, args.seed)
    singles = single_galaxies(scenes)
    small = singles.subset(slice(0, args.galsim_n))
    results: dict[str, object] = {}
    for name, preset in PRESETS.items():
        load = os.getloadavg()
        draw_scenes(scenes.subset(slice(0, 64)), preset, seed=args.seed)  # warm-up: PSF tables
        full = rate(lambda p=preset: draw_scenes(scenes, p, seed=args.seed), args.n, args.repeats)
        single = rate(lambda p=preset: draw_scenes(singles, p, seed=args.seed), args.n, args.repeats)
        try:
            gs = rate(lambda p=name: galsim_draw(small, p, args.seed), len(small))
        except ImportError:
            gs = None
        results[name] = {
            "load_average_at_start": [round(v, 2) for v in load],
            "full_scenes": full,
            "single_galaxy": single,
            "galsim_single_galaxy": gs,
            "galsim_method": galsim_method(name),
        }
    load_after = os.getloadavg()
    print(
        json.dumps(
            {
                "benchmark": "renderer stamps/s (3 bands x 75 x 75)",
                "renderer_version": RENDERER_VERSION,
                "n_stamps": args.n,
                "repeats": args.repeats,
                "statistic": "median wall time of the repeats (GalSim: one run)",
                "galsim_n_stamps": args.galsim_n,
                "torch_threads": args.threads,
                "threading": "draw_scenes runs its 64-stamp chunks side by side on torch_threads "
                "Python threads (each torch op single-threaded)",
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "cpu": cpu_description(),
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in load_after],
                "note": machine_note(load_before, load_after, args.threads),
                "galsim_note": "GalSim draws the primary's bulge + disc per band (pixel-integrated"
                ", same PSF, Gaussian sky noise); galsim_method per preset, warnings silenced",
                "presets": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
