"""Built-in survey `illustris`: the DeepMerge Illustris-1 mock images (`galmerge fetch illustris`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.options import Option
from galmerge.plugin.records import Survey

#: DeepMerge sets' options (illustris and sdss), typed as the hdf5 survey's: the core checks
#: names, types and bounds before deepmerge_data sees them
LOAD_OPTIONS: dict[str, Option] = {
    "in_memory": Option(None, "load the arrays into memory (true/false; default: when they "
                        "take under a quarter of the RAM)", type=bool),
    "memory_limit_mb": Option(None, "load into memory when the float32 arrays take under this "
                              "many MB", type=float, min=0.0),
    "stretch": Option("none", "arcsinh: stretch the pixels before standardising (the papers: "
                      "none)", choices=("none", "arcsinh")),
    "check_finite": Option(True, "scan every pixel once for NaN/inf (false: skip)"),
}


def _load(arg: str | None, options: Mapping[str, Any]):
    from galmerge.surveys.deepmerge.data import load_illustris

    return load_illustris(arg, options)


@hookimpl
def register_surveys():
    return [
        Survey(
            name="illustris",
            description="Illustris-1 mock galaxies from DeepMerge I/II (galmerge fetch illustris)",
            load=_load,
            options=LOAD_OPTIONS,
            presets=("sim-real", "pristine", "noisy"),
        )
    ]
