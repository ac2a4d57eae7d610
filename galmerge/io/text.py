"""Text read from files others wrote, made storable: catalogs are read with ``surrogateescape``
(an undecodable byte 0xNN becomes the lone surrogate U+DCNN), which HDF5 and FITS cannot hold."""

from __future__ import annotations

import re


def escape_undecodable(name: str) -> str:
    """Text read with surrogateescape, its undecodable bytes as ``%XX`` (``b"mag_\\xe9"`` ->
    ``"mag_%E9"``): valid UTF-8 for HDF5 and FITS names and HDF5 text cells (a CSV output keeps
    the bytes as they were)."""
    return re.sub("[\udc80-\udcff]", lambda m: f"%{ord(m.group()) - 0xDC00:02X}", name)
