"""Turn a survey spec string (``NAME[:ARG][?key=value&...]``) into an `ImageSet`."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet
from galmerge.plugin.manager import get_plugin_manager


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


def load_imageset(spec: str, **options: Any) -> ImageSet:
    """Load the image set a spec names through its survey plugin."""
    name, arg, spec_options = parse_survey_spec(spec)
    survey = get_plugin_manager().get("surveys", name)
    if survey.load is None:
        raise GalmergeError(
            f"survey '{name}' provides cutouts only, no labelled training set; "
            f"use it with `galmerge classify --survey {name}`"
        )
    return survey.load(arg, {**spec_options, **options})
