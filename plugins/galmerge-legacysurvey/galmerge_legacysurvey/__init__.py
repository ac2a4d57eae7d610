"""galmerge-legacysurvey: DESI Legacy Surveys cutouts for `galmerge classify --survey legacysurvey`."""

from __future__ import annotations

__version__ = "0.1.0"
