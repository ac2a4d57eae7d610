"""The plugin module galmerge loads from the entry point: one hook, one survey record.

Kept cheap to import (no pyvo, astropy or numpy): galmerge loads it to list components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge import RETRY_OPTIONS, Option, Survey, hookimpl

#: options of the cutout service (classify --survey "lsst?collection=LSST.DP1&workers=8");
#: galmerge checks names, types and bounds before `_cutouts` is called
CUTOUT_OPTIONS: dict[str, Option] = {
    "collection": Option("LSST.DP1", "ObsCore obs_collection of the coadds"),
    "subtype": Option("lsst.deep_coadd", "ObsCore dataproduct_subtype of the coadds"),
    "obscore_table": Option("ivoa.ObsCore", "the TAP table to query"),
    "units": Option("nanomaggies", "pixel unit of the stamps", choices=("nanomaggies", "nJy")),
    "url": Option(None, "the RSP API (default GALMERGE_LSST_URL, else "
                  "https://data.lsst.cloud/api)", type=str),
    "redirect_hosts": Option("storage.googleapis.com", "other hosts the RSP may redirect to "
                             "(comma-separated host or host:port; the token never goes "
                             "there): the object store SODA and TAP results come from",
                             type=str),
    "datalink_cache": Option(4096, "DataLink documents kept in memory", min=1),
    "tap_batch": Option(20, "positions per ObsCore query", min=1),
    "workers": Option(4, "concurrent requests", min=1),
    "max_edge_fraction": Option(0.5, "largest share of a stamp past the footprint's edge "
                                "(zeros); above it the row is no-coverage", min=0, max=1),
    # declared so that it gets its own refusal (make_cutout_service), not "unknown option"
    "token": Option(None, "never: export GALMERGE_RSP_TOKEN (an option would end up in logs)",
                    type=object),
    **RETRY_OPTIONS,  # attempts, timeout, deadline, backoff...: what RetryPolicy reads
}


def _cutouts(preprocess: Mapping[str, Any], options: Mapping[str, Any]):
    from galmerge_lsst.cutouts import make_cutout_service

    return make_cutout_service(preprocess, options)


@hookimpl
def register_surveys():
    return [
        Survey(
            name="lsst",
            description="Rubin/LSST deep coadds (ugrizy, 0.2\"/px) through the Rubin Science "
            "Platform's TAP, DataLink and SODA services (token in GALMERGE_RSP_TOKEN or "
            "ACCESS_TOKEN); classification only",
            cutouts=_cutouts,
            cutout_options=CUTOUT_OPTIONS,
        )
    ]
