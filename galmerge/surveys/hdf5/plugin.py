"""Built-in survey `hdf5:PATH`: any file in the galmerge HDF5 schema (see DESIGN.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from galmerge.errors import GalmergeError
from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.records import Survey

OPTIONS = ("in_memory", "memory_limit_mb", "check_finite")


def _load(arg: str | None, options: Mapping[str, Any]):
    from galmerge.io import hdf5 as hdf5io

    if not arg:
        raise GalmergeError("hdf5 survey needs a file: use hdf5:PATH, e.g. hdf5:data/my_set.h5")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise GalmergeError(
            f"hdf5:{arg}: unknown option {unknown[0]!r}; valid options: {', '.join(OPTIONS)}"
        )
    path = Path(arg).expanduser()
    if not path.is_file():
        raise GalmergeError(
            f"hdf5:{arg}: no such file; give the path of an HDF5 file written in the galmerge "
            "schema (galmerge.io.hdf5.write_imageset)"
        )
    in_memory = options.get("in_memory")
    if in_memory is not None and not isinstance(in_memory, bool):
        raise GalmergeError(f"hdf5:{arg}: in_memory must be true or false, not {in_memory!r}")
    limit = options.get("memory_limit_mb")
    if limit is not None and (not isinstance(limit, (int, float)) or limit < 0):
        raise GalmergeError(f"hdf5:{arg}: memory_limit_mb must be a number >= 0, not {limit!r}")
    # the NaN/inf scan reads every pixel once; ?check_finite=false skips it for huge files
    hdf5io.validate_imageset_file(path, check_finite=bool(options.get("check_finite", True)))
    imageset = hdf5io.read_imageset(
        path,
        in_memory=in_memory,
        memory_limit=None if limit is None else int(limit * 1024**2),
        validate=False,
    )
    if "stretch" not in imageset.meta:
        sample = hdf5io.sample_images(imageset.images)
        if imageset.meta.get("storage_dtype") == "uint8":
            sample = sample.astype("uint8")
        imageset.meta.update(hdf5io.stretch_defaults(sample))
    return imageset


@hookimpl
def register_surveys():
    return [
        Survey(
            name="hdf5",
            description="Any HDF5 image file in the galmerge schema: hdf5:PATH[?in_memory=false]",
            load=_load,
        )
    ]
