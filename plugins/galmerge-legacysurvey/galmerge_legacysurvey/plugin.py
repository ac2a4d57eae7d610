"""The plugin module galmerge loads from the entry point: one hook, one survey record.

Kept cheap to import (no astropy, no numpy): galmerge loads it to list components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge import Option, Survey, hookimpl

#: options of the cutout service (classify --survey "legacysurvey?layer=ls-dr9&workers=8");
#: galmerge checks names, types and bounds before `_cutouts` is called
CUTOUT_OPTIONS: dict[str, Option] = {
    "layer": Option("ls-dr10", "the service's image layer (ls-dr10, ls-dr10-south, ls-dr9)"),
    "url": Option(None, "the viewer (default GALMERGE_LEGACYSURVEY_URL, else "
                  "https://www.legacysurvey.org/viewer)", type=str),
    "workers": Option(4, "concurrent requests", min=1),
    "attempts": Option(5, "tries per request", min=1),
    "retries": Option(None, "retries per request (attempts - 1)", type=int, min=0),
    "timeout": Option(60.0, "seconds to wait for an answer", min=0),
    "deadline": Option(None, "seconds per transfer (default 4 x timeout)", type=float, min=0),
    "backoff": Option(0.5, "first wait between tries, seconds (doubles)", min=0),
    "backoff_max": Option(30.0, "longest wait between tries, seconds", min=0),
    "jitter": Option(0.25, "random share added to each wait", min=0, max=1),
    "max_retry_after": Option(300.0, "longest Retry-After honoured, seconds", min=0),
    "seed": Option(0, "seed of the jitter"),
    "max_connection_failures": Option(None, "failures in a row without an answer before the "
                                      "host counts as unreachable (default 10)", type=int, min=0),
    "max_edge_fraction": Option(0.5, "largest share of a stamp past the footprint's edge "
                                "(zeros); above it the row is no-coverage", min=0, max=1),
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
