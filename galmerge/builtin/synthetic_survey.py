"""Built-in survey `synthetic:PRESET`: labelled galaxies from the renderer (galmerge.render).

Spec options: ``n`` (images, default 2000), ``seed`` (default 0), ``merger_fraction``
(default 0.5), ``size`` (pixels, default 75), ``cache`` (default true: reuse/write the HDF5
file under ``$GALMERGE_DATA/synthetic/``). Example: ``synthetic:sdss?n=2000&seed=3``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge.errors import GalmergeError
from galmerge.hookspecs import hookimpl
from galmerge.records import Survey

# preset names and one-line descriptions, kept here so `galmerge list surveys` needs no torch
PRESETS = ("pristine", "noisy", "illustris", "sdss")
DEFAULTS: dict[str, Any] = {"n": 2000, "seed": 0, "merger_fraction": 0.5, "size": 75,
                            "cache": True}  # fmt: skip
MAX_IMAGES = 5_000_000


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
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise GalmergeError(
            f"synthetic:{preset}: unknown option '{unknown[0]}'; valid options: "
            f"{', '.join(DEFAULTS)} (e.g. synthetic:{preset}?n=2000&seed=3)"
        )
    opts = {**DEFAULTS, **options}
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


def _load(preset: str | None, options: Mapping[str, Any]):
    opts = parse_options(preset, options)
    from galmerge.render import get_preset
    from galmerge.render.survey import load_synthetic

    return load_synthetic(
        get_preset(preset),  # type: ignore[arg-type]
        n=opts["n"],
        seed=opts["seed"],
        merger_fraction=opts["merger_fraction"],
        size=opts["size"],
        cache=opts["cache"],
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
        )
    ]
