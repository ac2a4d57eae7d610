"""Built-in survey `sdss`: the DeepMerge II SDSS set for training, cutouts for classification."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.records import Survey


def _load(arg: str | None, options: Mapping[str, Any]):
    from galmerge.surveys.deepmerge.data import load_sdss

    return load_sdss(arg, options)


def _cutouts(preprocess: Mapping[str, Any], options: Mapping[str, Any]):
    from galmerge.surveys.sdss.cutouts import make_cutout_service

    return make_cutout_service(preprocess, options)


@hookimpl
def register_surveys():
    return [
        Survey(
            name="sdss",
            description="SDSS: DeepMerge II training set (fetch sdss); frame/JPEG cutouts via astroquery",
            load=_load,
            cutouts=_cutouts,
        )
    ]
