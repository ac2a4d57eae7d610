"""The plugin module galmerge loads from the entry point: one hook, one survey record.

Kept cheap to import (no pyvo, astropy or numpy): galmerge loads it to list components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge import Survey, hookimpl


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
        )
    ]
