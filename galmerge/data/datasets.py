"""Turn a survey spec string (``NAME[:ARG][?key=value&...]``) into an `ImageSet`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet
from galmerge.plugin.manager import get_plugin_manager

#: file name endings a path given as a data spec is taken as an ``hdf5:`` file for
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def spec_text(value: Any, what: str) -> str:
    """A data spec given in Python as its text: a string as it is, a path to an HDF5 file as
    ``hdf5:PATH``; anything else (a numpy array, another path) a one-line error naming
    ``what`` (the argument) and how to give it."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str) and Path(path).suffix.lower() in HDF5_SUFFIXES:
            return f"hdf5:{path}"
        raise GalmergeError(f"{what} {path!s}: a path is no survey spec; give one as text, e.g. "
                            f"'hdf5:{path!s}' for a file of the HDF5 schema")
    module = type(value).__module__
    kind = type(value).__name__ if module == "builtins" else f"{module}.{type(value).__name__}"
    raise GalmergeError(
        f"{what} must be a survey spec (e.g. 'synthetic:sdss', 'hdf5:PATH') or a "
        f"galmerge.ImageSet, got {kind}; for arrays "
        "build galmerge.ImageSet(images=..., labels=..., ids=..., bands=..., survey=...)")


def parse_survey_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """``"synthetic:sdss?n=500"`` -> ``("synthetic", "sdss", {"n": 500})``."""
    if not spec or not spec.strip():
        raise GalmergeError("empty survey spec; use e.g. synthetic:sdss, illustris or hdf5:PATH")
    body, _, query = spec.strip().partition("?")
    name, sep, arg = body.partition(":")
    options: dict[str, Any] = {}
    # split by hand: parse_qsl reads '+' as a space (seeing=1.5e+0) and keeps a repeated key's
    # last value; %XX is still decoded
    for part in query.split("&"):
        if not part:
            continue
        raw_key, _, raw_value = part.partition("=")
        key = unquote(raw_key)
        if key in options:
            raise GalmergeError(f"{spec.strip()}: option '{key}' is given twice; keep one "
                                f"{key}=VALUE")
        options[key] = _coerce(unquote(raw_value))
    return name.lower(), (arg if sep else None), options


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def load_imageset(spec: str | os.PathLike[str], **options: Any) -> ImageSet:
    """Load the image set a spec names through its survey plugin.

    ``spec`` is ``NAME[:ARG][?key=value&...]`` (``synthetic:sdss?n=500``, ``hdf5:PATH``) or a
    path to an HDF5 file (``hdf5:PATH``); ``options`` are added to the spec's own."""
    name, arg, spec_options = parse_survey_spec(spec_text(spec, "spec"))
    survey = get_plugin_manager().get("surveys", name)
    if survey.load is None:
        raise GalmergeError(
            f"survey '{name}' provides cutouts only, no labelled training set; "
            f"use it with `galmerge classify --survey {name}`"
        )
    return survey.load(arg, {**spec_options, **options})


def names_no_survey(spec: str) -> bool:
    """Whether ``spec`` names no installed survey: e.g. the own name of an in-memory
    `ImageSet`, which a run trained on it records as its data."""
    try:
        return parse_survey_spec(spec)[0] not in get_plugin_manager().components("surveys")
    except GalmergeError:
        return False


def in_memory_advice(spec: str, role: str) -> str:
    """How to give a run's ``role`` data again when its recorded ``spec`` names no survey."""
    return (f"the run's {role} '{spec}' names no installed survey: the run was trained on "
            f"in-memory sets, so pass source=/target= ImageSets again (galmerge.train(..., "
            f"resume=...), galmerge.evaluate(...), galmerge.fraction(...)), or --{role} SPEC (or install the survey's "
            f"plugin)")
