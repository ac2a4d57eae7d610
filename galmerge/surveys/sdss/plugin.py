"""Built-in survey `sdss`: the DeepMerge II SDSS set for training, cutouts for classification."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.options import RETRY_OPTIONS, Option
from galmerge.plugin.records import Survey
from galmerge.surveys.deepmerge.plugin import LOAD_OPTIONS

#: options of the cutout service (classify --survey "sdss?workers=8&frame_cache_gb=20"); the
#: core checks the names, galmerge.surveys.sdss.cutouts the values
CUTOUT_OPTIONS: dict[str, Option] = {k: Option(d, h, type=object) for k, (d, h) in {
    "workers": (4, "concurrent requests"),
    "attempts": (5, "tries per request"),
    "retries": (None, "retries per request (attempts - 1)"),
    "timeout": (60.0, "seconds to wait for an answer"),
    "backoff": (0.5, "first wait between tries, seconds (doubles)"),
    "backoff_max": (30.0, "longest wait between tries, seconds"),
    "jitter": (0.25, "random share added to each wait"),
    "max_retry_after": (300.0, "longest Retry-After honoured, seconds"),
    "seed": (0, "seed of the jitter"),
    "max_connection_failures": (10, "failures in a row without an answer before the host counts "
                                "as unreachable"),
    "max_failed_requests": (20, "requests in a row failing after all their tries before "
                            "fetching stops (0: never)"),
    "deadline": (None, "seconds per transfer (default 4 x timeout)"),
    "data_release": (17, "SDSS data release"),
    "frame_cache_dir": (None, "folder of downloaded frames (default "
                        "$GALMERGE_DATA/cache/sdss-frames; none: no disk cache)"),
    "frame_cache_gb": (None, "size bound of the frame folder (default "
                       "GALMERGE_SDSS_FRAME_CACHE_GB, else 4; inf: none)"),
    "memory_frames": (6, "frames kept in memory"),
    "resolve_batch": (25, "positions per SkyServer query"),
    "radius_arcmin": (0.5, "search radius for the frame holding a position"),
    "check_footprint": (True, "mark positions outside the SDSS footprint no-coverage"),
    "max_edge_fraction": (0.5, "largest share of a stamp past a frame edge (zero-filled)"),
    "skyserver_url": (None, "SkyServer (default GALMERGE_SDSS_SKYSERVER_URL, else "
                      "https://skyserver.sdss.org)"),
    "sas_url": (None, "Science Archive Server (default GALMERGE_SDSS_SAS_URL, else "
                "https://data.sdss.org/sas)"),
}.items()}
#: options of the cutout service (classify --survey "sdss?workers=8&frame_cache_gb=20"): the
#: core checks names, types and ranges before any network work (the retry settings are
#: `RETRY_OPTIONS`, as every survey's); ``type=object``: galmerge.surveys.sdss.cutouts checks
#: the value itself (``frame_cache_gb``: a size or ``inf``; ``frame_cache_dir``: a folder or
#: none)
CUTOUT_OPTIONS: dict[str, Option] = {
    "workers": Option(4, "concurrent requests", min=1),
    **RETRY_OPTIONS,
    "data_release": Option(17, "SDSS data release", min=1),
    "frame_cache_dir": Option(None, "folder of downloaded frames (default "
                              "$GALMERGE_DATA/cache/sdss-frames; none: no disk cache)",
                              type=object),
    "frame_cache_gb": Option(None, "size bound of the frame folder (default "
                             "GALMERGE_SDSS_FRAME_CACHE_GB, else 4; inf: none)", type=object),
    "memory_frames": Option(6, "frames kept in memory", min=0),
    "resolve_batch": Option(25, "positions per SkyServer query", min=1),
    "radius_arcmin": Option(0.5, "search radius for the frame holding a position", min=0),
    "check_footprint": Option(True, "mark positions outside the SDSS footprint no-coverage"),
    "max_edge_fraction": Option(0.5, "largest share of a stamp past a frame edge (zero-filled)",
                                min=0, max=1),
    "skyserver_url": Option(None, "SkyServer (default GALMERGE_SDSS_SKYSERVER_URL, else "
                            "https://skyserver.sdss.org)", type=str),
    "sas_url": Option(None, "Science Archive Server (default GALMERGE_SDSS_SAS_URL, else "
                      "https://data.sdss.org/sas)", type=str),
}


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
            options=LOAD_OPTIONS,
            cutouts=_cutouts,
            cutout_options=CUTOUT_OPTIONS,
        )
    ]
