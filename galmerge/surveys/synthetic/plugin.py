"""Built-in survey `synthetic:PRESET`: labelled galaxies from the renderer (galmerge.surveys.synthetic.render).

Spec options: ``n`` (images, default 2000), ``seed`` (default 0), ``merger_fraction``
(default 0.5), ``size`` (pixels, default 75), ``cache`` (default true: reuse/write the HDF5
file under ``$GALMERGE_DATA/synthetic/``). Example: ``synthetic:sdss?n=2000&seed=3``. A render
holds its float32 images in memory whole (cached or not): one needing more than the available
memory is refused before any work (`render.survey.check_memory`); a cached file is read lazily.

Observing options that shift a preset (for families of shifted domain pairs; left out, the
preset renders exactly as before): ``seeing`` (factor on the PSF FWHM range; presets with a
PSF), ``noise`` (factor on the sky noise; noisy presets), ``stars`` (mean field stars per
stamp), ``field_galaxies`` (mean background galaxies per stamp), ``pixel_scale`` (arcsec per
pixel), ``z_scale`` (factor on the redshift range: fainter galaxies above 1; a galaxy's
angular size shrinks with redshift only up to z ~ 1.6 and grows beyond, so pristine and noisy,
at z ~ 2, draw larger galaxies).
Example: ``synthetic:sdss?seeing=1.4&noise=2&pixel_scale=0.5``.

Field sources: the renderer keeps at most ``MAX_FIELD_SOURCES`` (8) stars and background
galaxies per stamp, stars first, so the two Poisson means (option or the preset's own) may
total at most 8, and a total near 8 gives fewer per stamp (8 requested gives about 6.9 on
average; the cap stays so that sets rendered under renderer version 4 stay as they were).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge.errors import GalmergeError
from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.options import Option
from galmerge.plugin.records import Survey

# preset names and one-line descriptions, kept here so `galmerge list surveys` needs no torch
PRESETS = ("pristine", "noisy", "illustris", "sdss")
DEFAULTS: dict[str, Any] = {"n": 2000, "seed": 0, "merger_fraction": 0.5, "size": 75,
                            "cache": True}  # fmt: skip
#: field stars + background galaxies drawn per stamp at most (render.draw.MAX_FIELD; repeated
#: here so that listing surveys imports no torch)
MAX_FIELD_SOURCES = 8
# observing options (None = the preset's own value): (field of Preset, lowest value, highest)
SHIFTS: dict[str, tuple[str, float, float]] = {
    "seeing": ("psf_fwhm", 0.1, 10.0),
    "noise": ("sky_sigma", 0.0, 100.0),
    "stars": ("stars_per_stamp", 0.0, float(MAX_FIELD_SOURCES)),
    "field_galaxies": ("galaxies_per_stamp", 0.0, float(MAX_FIELD_SOURCES)),
    "pixel_scale": ("pixel_scale", 0.01, 5.0),
    "z_scale": ("z_range", 0.2, 5.0),
}
MAX_IMAGES = 5_000_000
HELP = {
    "n": "images to render", "seed": "seed of the scenes and noise",
    "merger_fraction": "share of mergers (0..1)", "size": "stamp size in pixels (16..512)",
    "cache": "keep the rendered set under $GALMERGE_DATA/synthetic",
    "seeing": "PSF FWHM factor (0.1..10; presets with a PSF)",
    "noise": "sky-noise factor (0..100; presets with noise)",
    "stars": "mean foreground stars per stamp (0..8; stars + field_galaxies <= 8)",
    "field_galaxies": "mean unrelated galaxies per stamp (0..8; stars + field_galaxies <= 8)",
    "pixel_scale": "arcsec per pixel (0.01..5)", "z_scale": "redshift-range factor (0.2..5; fainter above 1)",
}
#: the schema the core checks names against (values are checked by parse_options)
OPTIONS: dict[str, Option] = {
    **{k: Option(v, HELP[k], type=object) for k, v in DEFAULTS.items()},
    **{k: Option(None, HELP[k] + "; default: the preset's", type=object) for k in SHIFTS},
}


def parse_options(preset: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate spec options; every problem is a one-line GalmergeError."""
    if not preset:
        raise GalmergeError(
            f"synthetic survey needs a preset: synthetic:PRESET with PRESET one of "
            f"{', '.join(PRESETS)} (e.g. synthetic:sdss)"
        )
    if preset not in PRESETS:
        raise GalmergeError(
            f"unknown synthetic preset '{preset}'; choose one of: {', '.join(PRESETS)} "
            "(e.g. synthetic:sdss)"
        )
    opts = {**DEFAULTS, **{k: None for k in SHIFTS}, **options}
    for key, (_, low, high) in SHIFTS.items():
        value = opts[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value <= high
        ):
            raise GalmergeError(
                f"synthetic:{preset}: {key} must be a number from {low:g} to {high:g}, "
                f"not {value!r}"
            )
        opts[key] = float(value)
    for key in ("n", "seed", "size"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise GalmergeError(f"synthetic:{preset}: {key} must be an integer, not {value!r}")
    if not 3 <= opts["n"] <= MAX_IMAGES:
        raise GalmergeError(f"synthetic:{preset}: n must be between 3 and {MAX_IMAGES}, "
                            f"not {opts['n']}")  # fmt: skip
    if opts["seed"] < 0:
        raise GalmergeError(f"synthetic:{preset}: seed must be >= 0, not {opts['seed']}")
    if not 16 <= opts["size"] <= 512:
        raise GalmergeError(f"synthetic:{preset}: size must be between 16 and 512 pixels, "
                            f"not {opts['size']}")  # fmt: skip
    frac = opts["merger_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
        raise GalmergeError(
            f"synthetic:{preset}: merger_fraction must be a number from 0 to 1, not {frac!r}"
        )
    opts["merger_fraction"] = float(frac)
    if not isinstance(opts["cache"], bool):
        raise GalmergeError(f"synthetic:{preset}: cache must be true or false, "
                            f"not {opts['cache']!r}")  # fmt: skip
    return opts


def format_value(value: float) -> str:
    """``value`` for a file name or tag: as ``:g`` wherever that is exact (the names cached
    sets have always had), else the shortest text that reads back as ``value`` (``:g`` keeps 6
    digits: 1.0000001 and 1 shared a cache file)."""
    short = format(value, "g")
    return short if float(short) == value else repr(float(value))


def shifted_preset(base: Any, opts: Mapping[str, Any]) -> tuple[Any, str]:
    """``base`` (a render Preset) changed by the observing options, and a tag naming them
    ("" when none is given: the preset itself). The name stays, so the random streams (seeded
    by the preset name) and hence the scenes and noise draws match the unshifted preset."""
    import dataclasses

    changes: dict[str, Any] = {}
    tags: list[str] = []
    for key, (field_name, _, _) in SHIFTS.items():
        value = opts.get(key)
        if value is None:
            continue
        tags.append(f"{key}{format_value(value)}")
        if key == "seeing":
            if base.psf == "none":
                raise GalmergeError(
                    f"synthetic:{base.name}: seeing needs a preset with a PSF (noisy or sdss)"
                )
            changes[field_name] = tuple(v * value for v in base.psf_fwhm)
        elif key == "noise":
            if base.sky_sigma is None:
                raise GalmergeError(
                    f"synthetic:{base.name}: noise needs a preset with noise (noisy or sdss)"
                )
            changes[field_name] = tuple(v * value for v in base.sky_sigma)
        elif key == "z_scale":
            changes[field_name] = tuple(v * value for v in base.z_range)
        else:
            changes[field_name] = value
    shifted = dataclasses.replace(base, **changes)
    total = shifted.stars_per_stamp + shifted.galaxies_per_stamp
    if total > MAX_FIELD_SOURCES + 1e-9:  # 0.6 + 7.4 is 8 to float rounding
        raise GalmergeError(
            f"synthetic:{base.name}: stars + field_galaxies must total at most "
            f"{MAX_FIELD_SOURCES} per stamp (the renderer draws at most {MAX_FIELD_SOURCES} field "
            f"sources per stamp), not {shifted.stars_per_stamp:g} + "
            f"{shifted.galaxies_per_stamp:g} (a left-out one is the preset's own)"
        )
    return shifted, "-".join(tags)


def _load(preset: str | None, options: Mapping[str, Any]):
    opts = parse_options(preset, options)
    from galmerge.surveys.synthetic.render import get_preset
    from galmerge.surveys.synthetic.render.survey import load_synthetic

    shifted, variant = shifted_preset(get_preset(preset), opts)  # type: ignore[arg-type]
    return load_synthetic(
        shifted,
        n=opts["n"],
        seed=opts["seed"],
        merger_fraction=opts["merger_fraction"],
        size=opts["size"],
        cache=opts["cache"],
        variant=variant,
    )


@hookimpl
def register_surveys():
    return [
        Survey(
            name="synthetic",
            description="Built-in renderer of mergers and non-mergers (offline): "
            "synthetic:PRESET[?n=2000&seed=0&merger_fraction=0.5]; presets pristine and noisy "
            "(HST-like z~2 sim-to-sim pair), illustris and sdss (sim-to-real pair)",
            load=_load,
            presets=PRESETS,
            options=OPTIONS,
        )
    ]
