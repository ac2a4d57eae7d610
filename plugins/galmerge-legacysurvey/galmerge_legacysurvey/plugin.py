"""The plugin module galmerge loads from the entry point: one hook, one survey record.

Kept cheap to import (no astropy, no numpy): galmerge loads it to list components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge import RETRY_OPTIONS, Option, Survey, hookimpl

#: options of the cutout service (classify --survey "legacysurvey?layer=ls-dr9&workers=8");
#: galmerge checks names, types and bounds before `_cutouts` is called
CUTOUT_OPTIONS: dict[str, Option] = {
    "layer": Option("ls-dr10", "the service's image layer (ls-dr10, ls-dr10-south, ls-dr9)"),
    "url": Option(None, "the viewer (default GALMERGE_LEGACYSURVEY_URL, else "
                  "https://www.legacysurvey.org/viewer)", type=str),
    "workers": Option(4, "concurrent requests", min=1),
    "max_edge_fraction": Option(0.5, "largest share of a stamp past the footprint's edge "
                                "(zeros); above it the row is no-coverage", min=0, max=1),
    **RETRY_OPTIONS,  # attempts, timeout, deadline, backoff...: what RetryPolicy reads
}


def _cutouts(preprocess: Mapping[str, Any], options: Mapping[str, Any]):
    from galmerge_legacysurvey.cutouts import make_cutout_service

    return make_cutout_service(preprocess, options)


@hookimpl
def register_surveys():
    return [
        Survey(
            name="legacysurvey",
            description="DESI Legacy Surveys DR10 g/r/z cutouts (0.262\"/px) from the public "
            "cutout service; classification only",
            cutouts=_cutouts,
            cutout_options=CUTOUT_OPTIONS,
        )
    ]
