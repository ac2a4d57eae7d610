"""The paths a run records and reads back: the path argument of a survey spec (``hdf5:PATH``:
surveys whose record says ``arg_is_path``) and ``init_from``.

A run records them absolute, so that it resumes, evaluates and is reused (``--config``) from
any folder. Runs written before recorded them as typed, relative to the folder they were
started in; reading one back, a relative path becomes what the run's own files say it named
(`with_recorded_files`), and one they do not name stays as written: it still works from that
folder, and elsewhere `missing_relative` names it for a one-line error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the settings that hold a survey spec
SPEC_KEYS = ("source", "target")
#: a run's own source-only stage, as its config.toml records it (`galmerge.config.rundir`)
_STAGE = ("source_only", "best.pt")


def _path_arg(spec: Any) -> tuple[str, str, str] | None:
    """(``NAME``, ``ARG``, ``?OPTIONS`` or "") of a spec whose survey takes a path as ``ARG``,
    spelt as given; None for any other spec (or an unknown survey: loading it says so)."""
    if not isinstance(spec, str):
        return None
    body, mark, query = spec.strip().partition("?")  # as data.datasets.parse_survey_spec splits
    name, colon, arg = body.partition(":")
    if not colon or not arg:
        return None
    from galmerge.plugin.manager import get_plugin_manager

    record = get_plugin_manager().components("surveys").get(name.strip().lower())
    if record is None or not getattr(record, "arg_is_path", False):
        return None
    return name, arg, mark + query


def absolute_path(path: str) -> str:
    """``path`` with ``~`` expanded, resolved against the current folder; "" stays ""."""
    return str(Path(path).expanduser().resolve()) if path else path


def absolute_spec(spec: str) -> str:
    """``spec`` with its path argument absolute when its survey takes a path (``hdf5:data/x.h5``
    -> ``hdf5:/home/me/data/x.h5``, options kept as typed); any other spec unchanged."""
    parts = _path_arg(spec)
    if parts is None:
        return spec
    name, arg, query = parts
    full = absolute_path(arg)
    if "?" in full:  # a folder whose name holds '?' cannot be written in a spec: left as typed
        return spec
    return f"{name}:{full}{query}"


def absolute(config: Mapping[str, Any], keys: tuple[str, ...] = (*SPEC_KEYS, "init_from")
             ) -> dict[str, Any]:  # fmt: skip
    """``config`` (a resolved config or a layer) with the path settings among ``keys`` absolute:
    the specs' path arguments (`absolute_spec`) and ``init_from``."""
    out = dict(config)
    for key in keys:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = absolute_path(value) if key == "init_from" else absolute_spec(value)
    return out


def relative_part(config: Mapping[str, Any], key: str) -> str | None:
    """The relative path in setting ``key`` (a spec's path argument, or ``init_from``) as
    written, None when it holds none."""
    value = config.get(key)
    if not isinstance(value, str) or not value:
        return None
    if key != "init_from":
        parts = _path_arg(value)
        if parts is None:
            return None
        value = parts[1]
    return None if Path(value).expanduser().is_absolute() else value


def missing_relative(config: Mapping[str, Any], key: str) -> str | None:
    """The relative path in setting ``key`` when nothing is there from the current folder: a
    path an older run recorded as typed, relative to the folder it was started in."""
    part = relative_part(config, key)
    return part if part is not None and not Path(part).expanduser().exists() else None


def with_recorded_files(config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """A config that run ``run_dir`` recorded (its config.toml, or last.pt's copy), with the
    relative paths of a run from before they were recorded absolute made absolute where the
    run's own files say what they named: a spec's path argument becomes the file env.json
    records the run read (``data.ROLE.meta.file``, which the hdf5 survey records), when that
    file is still there and has the argument's name; ``init_from`` of the run's own source-only
    stage (``RUN/source_only/best.pt``) becomes the stage in ``run_dir``. Anything else stays
    as written."""
    if not any(relative_part(config, key) for key in (*SPEC_KEYS, "init_from")):
        return dict(config)
    out = dict(config)
    data = _recorded_data(run_dir)
    for role in SPEC_KEYS:
        arg, read = relative_part(config, role), data.get(role)
        if arg is not None and read is not None and Path(read).name == Path(arg).name \
                and Path(read).is_absolute() and Path(read).is_file():  # fmt: skip
            name, _, query = _path_arg(config[role])  # type: ignore[misc]
            if "?" not in read:
                out[role] = f"{name}:{read}{query}"
    init = relative_part(config, "init_from")
    stage = run_dir / _STAGE[0] / _STAGE[1]
    if (init is not None and Path(init).parts[-3:] == (run_dir.resolve().name, *_STAGE)
            and stage.is_file()):
        out["init_from"] = absolute_path(str(stage))
    return out


def _recorded_data(run_dir: Path) -> dict[str, str]:
    """role -> the file env.json says the run read for it (empty when it records none)."""
    try:
        env = json.loads((run_dir / "env.json").read_text())
        data = env.get("data") if isinstance(env, dict) else None
    except (OSError, ValueError):
        return {}
    out = {}
    for role in SPEC_KEYS:
        record = data.get(role) if isinstance(data, dict) else None
        meta = record.get("meta") if isinstance(record, dict) else None
        read = meta.get("file") if isinstance(meta, dict) else None
        if isinstance(read, str) and read:
            out[role] = read
    return out


def display_spec(spec: str) -> str:
    """``spec`` for a table: an absolute path argument under the current folder shown relative
    to it (``hdf5:/home/me/proj/data/x.h5`` -> ``hdf5:data/x.h5`` from ``/home/me/proj``);
    anything else unchanged. For display only, never recorded."""
    parts = _path_arg(spec)
    if parts is None:
        return spec
    name, arg, query = parts
    path = Path(arg)
    if not path.is_absolute():
        return spec
    try:
        shown = path.relative_to(Path.cwd().resolve())
    except ValueError:  # not under the current folder
        return spec
    return f"{name}:{shown.as_posix()}{query}"
