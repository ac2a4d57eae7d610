"""The paths a run records and reads back: the path argument of a survey spec (``hdf5:PATH``:
surveys whose record says ``arg_is_path``) and ``init_from``.

A run records them absolute, so that it resumes, evaluates and is reused (``--config``) from
any folder. Runs written before recorded them as typed, relative to the folder they were
started in; reading one back, a relative path becomes what the run's own files say it named
(`with_recorded_files`), and one they do not name stays as written: it still works from that
folder, and elsewhere `missing_relative` names it for a one-line error.

A run also records where its folder was (env.json's ``run_dir``). A project moved or copied
with its data keeps the layout between its runs and its files, so a recorded absolute path
that is no longer there is read as the same path relative to the run's folder now
(`rebased`), and a run's own source-only stage always means the one in its folder now.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from galmerge.errors import GalmergeError

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


def expand(path: str) -> str:
    """``path`` with a leading ``~`` or ``~user`` expanded; a ``~`` that names no home
    directory (no such user, no HOME) is a one-line `GalmergeError`."""
    full = os.path.expanduser(path)
    if full.startswith("~"):  # os.path.expanduser leaves what it cannot expand as it was
        user = full.split(os.sep, 1)[0]
        raise GalmergeError(f"{path}: {user} names no home directory here (no such user, or "
                            "HOME unset); write the path in full, without '~'")
    return full


def absolute_path(path: str) -> str:
    """``path`` with ``~`` expanded, absolute from the current folder; "" stays "". A symbolic
    link keeps its name (``data/current.h5`` is recorded as itself, not as the file it points
    to today), and ``..`` is normalised away."""
    return os.path.abspath(expand(path)) if path else path


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


def _path_in(config: Mapping[str, Any], key: str) -> str | None:
    """The path in setting ``key`` as written: a spec's path argument, or ``init_from``; None
    when it holds none."""
    value = config.get(key)
    if not isinstance(value, str) or not value:
        return None
    if key != "init_from":
        parts = _path_arg(value)
        return None if parts is None else parts[1]
    return value


def relative_part(config: Mapping[str, Any], key: str) -> str | None:
    """The relative path in setting ``key`` (a spec's path argument, or ``init_from``) as
    written, None when it holds none."""
    value = _path_in(config, key)
    return None if value is None or Path(expand(value)).is_absolute() else value


def missing_relative(config: Mapping[str, Any], key: str) -> str | None:
    """The relative path in setting ``key`` when nothing is there from the current folder: a
    path an older run recorded as typed, relative to the folder it was started in."""
    part = relative_part(config, key)
    return part if part is not None and not Path(expand(part)).exists() else None


def missing_absolute(config: Mapping[str, Any], key: str) -> str | None:
    """The absolute path in setting ``key`` (a spec's path argument, or ``init_from``) when no
    file is there: a run's data or start moved without the run, or not as it was."""
    value = _path_in(config, key)
    return value if value and Path(value).is_absolute() and not os.path.exists(value) else None


def rebased(path: str, recorded_dir: str | None, folder: Path) -> str | None:
    """``path``, recorded absolute when ``folder`` (a run or study folder) was at
    ``recorded_dir``, at the same place relative to ``folder`` now: where it is after the
    project was moved or copied together with it; None when no file is there (or no
    ``recorded_dir``)."""
    if not recorded_dir:
        return None
    moved = os.path.normpath(os.path.join(os.path.abspath(folder),
                                          os.path.relpath(path, recorded_dir)))
    return moved if os.path.isfile(moved) else None


def same_moved_spec(recorded: Any, given: Any, recorded_dir: str | None, folder: Path) -> bool:
    """Whether spec ``given`` names the file spec ``recorded`` named when ``folder`` (a study
    folder) was at ``recorded_dir``, now moved with it: the same survey and options, the
    recorded file gone, and its `rebased` place the file ``given`` names."""
    then, now = _path_arg(recorded), _path_arg(given)
    if then is None or now is None or then[0].lower() != now[0].lower() or then[2] != now[2]:
        return False
    if os.path.exists(then[1]):
        return False
    moved = rebased(then[1], recorded_dir, folder)
    try:
        return moved is not None and os.path.samefile(moved, expand(now[1]))
    except OSError:
        return False


def moved_from(folder: Path) -> str | None:
    """Where run ``folder`` was when it recorded its paths (env.json's ``run_dir``) if it was
    moved from there: that folder is gone and is not this one. None for a run still where it
    was, one whose original is still there (a copy: its recorded paths may name the
    original's files, which stay), or one that recorded no place."""
    then = _env_run_dir(_read_env(folder))
    if then is None or os.path.exists(then):
        return None
    return then


def _env_run_dir(env: Mapping[str, Any]) -> str | None:
    """Where the run was when it wrote its config.toml (env.json's ``run_dir``); None for a
    run from before it was recorded."""
    value = env.get("run_dir")
    return value if isinstance(value, str) and os.path.isabs(value) else None


def recorded_sha256(run_dir: Path, role: str) -> str | None:
    """The SHA-256 of the file run ``run_dir`` read for ``role`` (env.json's
    ``data.ROLE.meta.file_sha256``, which the hdf5 survey records); None when unrecorded."""
    return _env_data(_read_env(run_dir)).get(role, (None, None))[1]


def file_sha256(path: str) -> str | None:
    """``path``'s SHA-256 (once per process for an unchanged file); None when unreadable."""
    from galmerge.io.provenance import sha256_file_once

    try:
        return sha256_file_once(path)
    except OSError:
        return None


def spec_file(spec: Any) -> str | None:
    """The file a spec's path argument names (``~`` expanded; ``hdf5:data/x.h5`` ->
    ``data/x.h5``); None for a spec whose survey takes no path."""
    parts = _path_arg(spec)
    return None if parts is None else expand(parts[1])


def changed_sha256(run_dir: Path, role: str, sha: str | None) -> bool:
    """Whether ``sha``, the SHA-256 of the file read today for ``role``, is not the one run
    ``run_dir``'s env.json records it trained on (False when either is unknown)."""
    recorded = recorded_sha256(run_dir, role)
    return bool(recorded and sha and sha != recorded)


def changed_file(run_dir: Path, role: str, spec: Any) -> str | None:
    """The file ``spec`` names when it is there and its SHA-256 is not the one run ``run_dir``
    records it read for ``role``: the same path holding other data since. Hashed once per
    process (`file_sha256`), so loading the file after this reads it no second time."""
    path = spec_file(spec)
    recorded = recorded_sha256(run_dir, role)
    if path is None or recorded is None or not os.path.isfile(path):
        return None
    sha = file_sha256(path)
    return path if sha and sha != recorded else None


def data_changed_warning(command: str, run_dir: Path, role: str, file: str,
                         now: str = "these numbers are of the file as it is now") -> str:
    """The one-line warning of ``galmerge COMMAND`` that reads run ``run_dir``'s ``role`` data
    from ``file``, whose content is not what the run trained on; ``now`` says what that means
    for what the command makes (evaluate's numbers, train's new run)."""
    return (f"galmerge {command}: warning: {file} changed since {run_dir} trained on it as its "
            f"{role} data (its SHA-256 is not the one {Path(run_dir) / 'env.json'} records); "
            f"{now}: restore the run's data to reproduce its results")


def with_recorded_files(config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """A config that run ``run_dir`` recorded (its config.toml, or last.pt's copy), with its
    paths as they are to be read now:

    - ``init_from`` of the run's own source-only stage (``RECORDED_RUN_DIR/source_only/
      best.pt``) is always the stage in ``run_dir``, where the run is now (a copy starts from
      its own stage, not its original's);
    - an absolute path that is no longer there is `rebased` from where the run was (env.json's
      ``run_dir``) to ``run_dir``, when a file is there: a data file only if its SHA-256 is
      the one env.json records the run read (``data.ROLE.meta.file_sha256``; the content, not
      the size, which another file may share);
    - a relative path (a run from before paths were recorded absolute) becomes the file env.json
      records the run read (``data.ROLE.meta.file``), when that file is still there and is
      the argument (the argument from one of the run's parent folders, the launch folder, leads
      to it: a symbolic link keeps its name) or has its name; a relative own-stage
      ``init_from`` (``RUN/source_only/best.pt``) becomes the stage in ``run_dir``.

    Anything else stays as written (and reading it says it is not there)."""
    out = dict(config)
    here = Path(os.path.abspath(run_dir))
    env = _read_env(run_dir)  # read once: where the run was, and the files it read
    then = _env_run_dir(env)
    data = _env_data(env)
    for role in SPEC_KEYS:
        parts = _path_arg(config.get(role))
        if parts is None:
            continue
        name, arg, query = parts
        read, sha = data.get(role, (None, None))
        if relative_part(config, role) is not None:
            found = _old_relative(arg, read, here)
        elif missing_absolute(config, role) is not None:
            found = rebased(arg, then, here)
            if found is not None and sha is not None and file_sha256(found) != sha:
                found = None  # another file in the data's place: the run's data is not there
        else:
            found = None
        if found is not None and "?" not in found:
            out[role] = f"{name}:{found}{query}"
    init = str(config.get("init_from") or "")
    stage = here / _STAGE[0] / _STAGE[1]
    if not init:
        return out
    if relative_part(config, "init_from") is not None:
        if Path(init).parts[-3:] == (run_dir.resolve().name, *_STAGE) and stage.is_file():
            out["init_from"] = str(stage)
    elif then is not None and os.path.normpath(init) == os.path.join(then, *_STAGE):
        out["init_from"] = str(stage)
    elif missing_absolute(config, "init_from") is not None:
        if then is None:  # recorded absolute before run_dir was: its own stage by name
            if Path(init).parts[-3:] == (here.name, *_STAGE) and stage.is_file():
                out["init_from"] = str(stage)
        else:
            out["init_from"] = rebased(init, then, here) or init
    return out


def _old_relative(arg: str, read: str | None, here: Path) -> str | None:
    """The file a relative path argument of a run from before paths were recorded absolute
    named: env.json's record of the file the run read (``read``, resolved), when it is still
    there and is what ``arg`` from one of the run's parent folders leads to (that path, link
    names kept), or has ``arg``'s name."""
    if read is None or not Path(read).is_absolute() or not Path(read).is_file():
        return None
    for folder in (here, *here.parents):  # the launch folder was, most likely, among them
        candidate = folder / arg
        if candidate.is_file() and os.path.realpath(candidate) == os.path.realpath(read):
            return os.path.abspath(candidate)
    return read if Path(read).name == Path(arg).name else None


def _read_env(run_dir: Path) -> dict[str, Any]:
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (OSError, ValueError):
        return {}
    return env if isinstance(env, dict) else {}


def _env_data(env: Mapping[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    """role -> (the file env.json says the run read for it, its SHA-256), where recorded."""
    data = env.get("data")
    out: dict[str, tuple[str | None, str | None]] = {}
    for role in SPEC_KEYS:
        record = data.get(role) if isinstance(data, dict) else None
        meta = record.get("meta") if isinstance(record, dict) else None
        if not isinstance(meta, dict):
            continue
        read, sha = meta.get("file"), meta.get("file_sha256")
        out[role] = (read if isinstance(read, str) and read else None,
                     sha if isinstance(sha, str) and sha else None)
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
