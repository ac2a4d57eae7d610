"""galmerge-lsst: Rubin deep-coadd cutouts for `galmerge classify --survey lsst`."""

from __future__ import annotations

__version__ = "0.1.0"
