"""Where galmerge keeps data and caches: ``$GALMERGE_DATA`` (default ``./data``)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``$GALMERGE_DATA``, or ``data`` in the working directory when it is unset or empty."""
    return Path(os.environ.get("GALMERGE_DATA") or "data")
