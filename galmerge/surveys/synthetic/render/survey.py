"""Synthetic image sets: sample scenes, render them with a preset, cache them as HDF5."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io import hdf5 as hdf5io
from galmerge.io.paths import data_dir
from galmerge.plugin.imageset import ImageSet
from galmerge.surveys.synthetic.render import RENDERER_VERSION
from galmerge.surveys.synthetic.render.draw import canvas_geometry, draw_scenes
from galmerge.surveys.synthetic.render.presets import Preset
from galmerge.surveys.synthetic.render.scene import sample_scenes


def cache_path(
    preset: Preset, n: int, seed: int, merger_fraction: float, size: int, variant: str = ""
) -> Path:
    """Where a set is cached; the name holds every parameter that changes its pixels
    (``variant`` tags a preset changed by survey options, e.g. ``seeing1.5``)."""
    from galmerge.surveys.synthetic.plugin import format_value

    tag = f"-{variant}" if variant else ""
    mf = format_value(merger_fraction)
    version = f"{RENDERER_VERSION}{'.1' if redrawn_in_stop40(preset, size) else ''}"
    name = f"{preset.name}{tag}-n{n}-seed{seed}-mf{mf}-{size}px-r{version}.h5"
    return data_dir() / "synthetic" / name


def redrawn_in_stop40(preset: Preset, size: int) -> bool:
    """Whether renderer 4 draws this preset differently since stop 40: a PSF wider than the
    16-pixel margin (its wings wrapped round the stamp) or redshifts beyond z = 6 (the distance
    table ended there). Such sets are cached as ``-r4.1``, so a file cached before is not read
    as the new pixels; every other set keeps its ``-r4`` name, its pixels being unchanged."""
    margin, _ = canvas_geometry(preset, size)
    return margin > 16 or preset.z_range[1] > 6.0


def check_memory(preset: Preset, n: int, size: int) -> None:
    """Refuse, before any work, a render whose float32 images (held in memory whole, cached or
    not) need more bytes than the host has available (`runtime.devices.available_memory`; no
    check where the system does not say)."""
    from galmerge.runtime.devices import available_memory

    per_image = len(preset.bands) * size * size * 4
    free = available_memory()
    if free is None or n * per_image <= free:
        return
    fits = free // per_image
    raise GalmergeError(
        f"synthetic:{preset.name}: n={n} images of {len(preset.bands)}x{size}x{size} float32 "
        f"need {n * per_image / 1e9:.1f} GB of memory, more than the {free / 1e9:.1f} GB "
        f"available; give a smaller n (at most {fits} at size={size}) or a smaller size"
    )


def render_imageset(
    preset: Preset, n: int, seed: int, merger_fraction: float, size: int
) -> tuple[ImageSet, dict[str, np.ndarray]]:
    """Render a labelled set; returns it with per-image scene and observing parameters."""
    scenes = sample_scenes(n, seed, merger_fraction)
    images, obs = draw_scenes(scenes, preset, seed=seed, size=size)
    ids = np.array([f"synthetic-{preset.name}-s{seed}-{i:06d}" for i in range(n)])
    meta = {
        "units": "nanomaggies per pixel",
        "preset": preset.name,
        "renderer_version": RENDERER_VERSION,
        "seed": seed,
        "merger_fraction": merger_fraction,
        "psf": preset.psf,
        "psf_fwhm_range_arcsec": list(preset.psf_fwhm),
        "redshift_range": list(preset.z_range),
    }
    imageset = ImageSet(
        images=images,
        labels=torch.as_tensor(scenes.label),
        ids=ids,
        bands=preset.bands,
        survey=f"synthetic:{preset.name}",
        pixel_scale_arcsec=preset.pixel_scale,
        meta=meta,
        image_source="frames",
        stretch="arcsinh",
        stretch_scale=preset.stretch_scale,
    )
    extras = {f"scene/{k}": v for k, v in scenes.as_arrays().items()}
    extras["observation/redshift"] = obs.z
    extras["observation/psf_fwhm_arcsec"] = obs.psf_fwhm
    return imageset, extras


def write_cache(path: Path, imageset: ImageSet, extras: dict[str, np.ndarray]) -> None:
    """Atomic: the schema file plus the scene parameters, renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_beside(path)
    try:
        hdf5io.write_imageset(tmp, imageset)
        with h5py.File(tmp, "a") as f:
            for name, value in extras.items():
                f.create_dataset(name, data=value)
        atomic.publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_synthetic(
    preset: Preset,
    n: int,
    seed: int,
    merger_fraction: float,
    size: int,
    cache: bool = True,
    variant: str = "",
) -> ImageSet:
    """The cached set if present, else render it (and cache it when ``cache``)."""
    path = cache_path(preset, n, seed, merger_fraction, size, variant)
    if cache and path.is_file():
        imageset = hdf5io.read_imageset(path)
        imageset.meta["cache_path"] = str(path)
        return imageset
    check_memory(preset, n, size)
    imageset, extras = render_imageset(preset, n, seed, merger_fraction, size)
    if variant:
        imageset.meta["variant"] = variant
        imageset.meta["pixel_scale"] = preset.pixel_scale
    if cache:
        write_cache(path, imageset, extras)
        imageset.meta["cache_path"] = str(path)
    return imageset
