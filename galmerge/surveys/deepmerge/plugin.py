"""Built-in survey `illustris`: the DeepMerge Illustris-1 mock images (`galmerge fetch illustris`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.records import Survey


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
            presets=("sim-real", "pristine", "noisy"),
        )
    ]
