"""The plugin module galmerge loads from the entry point: one hook, one survey record.

Kept cheap to import (no astropy, no numpy): galmerge loads it to list components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galmerge import Survey, hookimpl


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
        )
    ]
