"""Built-in survey `hdf5:PATH`: any file in the galmerge HDF5 schema (see DESIGN.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from galmerge.errors import GalmergeError
from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.options import Option
from galmerge.plugin.records import Survey

OPTIONS: dict[str, Option] = {
    "in_memory": Option(None, "load the images into memory (true/false; default: when they "
                        "take under a quarter of the RAM)", type=bool),
    "memory_limit_mb": Option(None, "load into memory when the float32 images take under this "
                              "many MB", type=float, min=0.0),
    "check_finite": Option(True, "scan every pixel once for NaN/inf (false: skip, for huge "
                           "files)"),
}


def _load(arg: str | None, options: Mapping[str, Any]):
    from galmerge.io import hdf5 as hdf5io
    from galmerge.io.provenance import sha256_file_once
    from galmerge.runtime.distributed import from_main

    if not arg:
        raise GalmergeError("hdf5 survey needs a file: use hdf5:PATH, e.g. hdf5:data/my_set.h5")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise GalmergeError(
            f"hdf5:{arg}: no such file; give the path of an HDF5 file written in the galmerge "
            "schema (galmerge.io.hdf5.write_imageset)"
        )
    in_memory = options.get("in_memory")  # checked against OPTIONS by the core
    limit = options.get("memory_limit_mb")
    # the NaN/inf scan reads every pixel once; ?check_finite=false skips it for huge files.
    # Under torchrun rank 0 alone checks the file (every rank reads the same one), and an error
    # it finds stops every rank in one line.
    check_finite = bool(options.get("check_finite", True))
    from_main(lambda: hdf5io.validate_imageset_file(path, check_finite=check_finite))
    imageset = hdf5io.read_imageset(
        path,
        in_memory=in_memory,
        memory_limit=None if limit is None else int(limit * 1024**2),
        validate=False,
    )
    # the run's env.json records what each spec resolved to: for a file, its content (a path
    # alone names whatever the file holds today); one pass at disk speed (~1 s per GB), once
    # per process for an unchanged file (tune trials, resumes and the source stage reload it),
    # and under torchrun by rank 0 alone, which hands the digest to the other ranks
    imageset.meta["file"] = str(path.resolve())
    imageset.meta["file_sha256"] = sha256_file_once(path, share=from_main)
    if imageset.stretch is None:  # the file declares none
        sample = hdf5io.sample_images(imageset.images)
        if imageset.storage_dtype == "uint8":
            sample = sample.astype("uint8")
        for key, value in hdf5io.stretch_defaults(sample).items():
            setattr(imageset, key, value)
    return imageset


@hookimpl
def register_surveys():
    return [
        Survey(
            name="hdf5",
            description="Any HDF5 image file in the galmerge schema: hdf5:PATH[?in_memory=false]",
            load=_load,
            options=OPTIONS,
            arg_is_path=True,  # a run records the file's absolute path
        )
    ]
