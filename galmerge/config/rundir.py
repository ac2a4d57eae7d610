"""The run directory: config.toml, env.json, metrics.csv, summary.json, TensorBoard events and
checkpoints (best.pt, last.pt). Only rank 0 of a distributed run writes here."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from galmerge.config.resolve import read_toml, write_toml
from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.private import check_private
from galmerge.io.provenance import hide_userinfo, shown_spec
from galmerge.runtime import code

CONFIG, ENV, METRICS, SUMMARY, BEST, LAST = (
    "config.toml",
    "env.json",
    "metrics.csv",
    "summary.json",
    "best.pt",
    "last.pt",
)
# a run with its own target encoder and no init_from first trains its source-only stage here
SOURCE_STAGE = "source_only"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "x"


def default_run_dir(
    source: str, target: str, strategy: str, root: str | Path = "runs", seed: int | None = None
) -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<source>-<target>-<strategy>-s<seed>`` (':' '/' made safe).

    Survey options (``?n=2000&seed=1``) stay out of the name: a ``seed=1`` there is the data's
    seed, not the training seed, and would mislead; ``s<seed>`` is the training seed and
    config.toml holds the full specs. A name already taken gets ``-2``, ``-3``, ...
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{_slug(_bare(source))}-{_slug(_bare(target))}-{_slug(strategy)}"
    if seed is not None:
        name += f"-s{seed}"
    path, n = Path(root) / name, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = Path(root) / f"{name}-{n}"
    return path


def refuse_credentials(spec: Any, what: str) -> None:
    """A one-line `GalmergeError` when a labelled-data spec (``--source``/``--target``) holds a
    URL with a user name or password: a run records its specs (config.toml, checkpoints,
    metrics) and reads them back to resume, evaluate, compare and reproduce, so the
    credentials would have to be kept there; they belong in the survey's URL variable."""
    if isinstance(spec, str) and shown_spec(spec) != spec:
        raise GalmergeError(
            f"{what} {shown_spec(spec)}: a URL in it holds a user name or password, which a run "
            "would record (config.toml, checkpoints) and need again to resume or evaluate it; "
            "put the credentials in the survey's URL environment variable instead (e.g. "
            "GALMERGE_SDSS_SAS_URL=https://USER:PASSWORD@host/sas) and drop them from the spec")


def _bare(spec: str) -> str:
    """A survey spec without its ``?key=value`` options."""
    return spec.split("?", 1)[0]


#: what a run writes before its first checkpoint: a folder holding only these is a start that
#: died (killed in epoch 1), which a fresh run may take over instead of a dead end
_STARTED_ONLY = (CONFIG, ENV, METRICS)


def _dead_start(run_dir: Path) -> list[Path] | None:
    """The files of a run that never wrote a checkpoint, or None when the folder holds more."""
    files = []
    for path in run_dir.iterdir():
        name = path.name
        if name == SOURCE_STAGE and path.is_dir() and not path.is_symlink():
            continue  # the run's own source-only stage: kept, the run starts from it
        if name == lock_path(path.parent / SOURCE_STAGE).name and path.is_file():
            continue  # that stage's lock (`writing`, a resume of the stage alone): kept
        if not path.is_file() or path.is_symlink():
            return None
        if name in _STARTED_ONLY or name.startswith("events.out.tfevents.") or (
                name.startswith(".") and name.endswith(".tmp")):
            files.append(path)
        else:
            return None
    return files


def check_name(run_dir: Path) -> None:
    """Refuse, before anything is written, a run directory that cannot be one: a name that is
    not UTF-8 (TensorBoard and TOML need UTF-8) or a path through a file."""
    try:
        str(run_dir).encode("utf-8")
    except UnicodeEncodeError:
        raise GalmergeError(f"--run-dir {str(run_dir).encode('utf-8', 'replace').decode()} "
                            "is not valid UTF-8; choose a name in UTF-8") from None
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise GalmergeError(f"--run-dir {run_dir}: {folder} is a file, not a folder; "
                                    "choose another --run-dir")
            break


def lock_path(run_dir: Path) -> Path:
    """The file `writing` locks for ``run_dir``: ``.NAME.train.lock`` beside it (not in it, so
    a folder refused as not empty is left as it was)."""
    path = Path(os.path.abspath(run_dir))
    return path.with_name(f".{path.name}.train.lock")


@contextlib.contextmanager
def writing(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s exclusive lock for the block (a training process, rank 0 under DDP,
    from the check of the folder to the end of training): a second ``train`` or ``train
    --resume`` of the folder is refused in one line, and a start that died is known dead
    before `prepare_new` takes it over. The OS releases the lock when its holder dies.

    A run's source-only stage (``RUN/source_only``, continued by hand with ``train --resume``)
    is part of its run, which trains or continues it itself: its run's lock is held too. A
    folder that is only named so (``--run-dir source_only`` in a project folder) is no stage:
    its parent, not a run, keeps no lock (none is made beside it, outside the project)."""
    with contextlib.ExitStack() as held:
        path = Path(os.path.abspath(run_dir))
        run = lock_path(path.parent)
        # a run's folder: its record, or its lock (taken when it started, before its stage)
        if path.name == SOURCE_STAGE and ((path.parent / CONFIG).is_file() or run.is_file()):
            held.enter_context(atomic.exclusive_lock(
                run, f"{run_dir} is the source-only stage of {path.parent}, which another "
                f"galmerge train is writing (it holds {run}) and continues the stage itself; "
                "wait for it to finish"))
        lock = lock_path(run_dir)
        lock.parent.mkdir(parents=True, exist_ok=True)
        held.enter_context(atomic.exclusive_lock(
            lock,
            f"another galmerge train is writing {run_dir} (it holds {lock}); wait for it to "
            "finish, or choose another --run-dir",
        ))
        yield


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a file, None when absent: whether it was replaced."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def prepare_new(run_dir: Path) -> Path:
    """Create a fresh run directory; refuse one that already holds a run (never overwrite).

    A folder left by a run killed before its first checkpoint (config.toml, env.json, event
    files, nothing else) cannot be resumed, so it is taken over: its files are removed. The
    caller holds the folder's lock (`writing`), so that run is known to be dead.
    """
    for path in check_new(run_dir):
        path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def check_resumable(run_dir: Path) -> None:
    """Before a run's last.pt is continued: the folder, its config.toml and last.pt must be the
    user's own and writable by nobody else (`galmerge.io.private.check_private`), or someone
    else could have planted the checkpoint or the settings the run goes on with."""
    for path in (run_dir, run_dir / CONFIG, run_dir / LAST):
        check_private(path, "train it again with another --run-dir")


def check_new(run_dir: Path) -> list[Path]:
    """Refuse a run directory that already holds a run; returns the files of a dead start
    (`prepare_new` removes them)."""
    check_name(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        dead = _dead_start(run_dir)
        if dead is None:
            raise GalmergeError(
                f"run directory {run_dir} is not empty; pick another --run-dir or continue it "
                f"with --resume {run_dir}"
            )
        return dead
    return []


def discard_new(run_dir: Path) -> None:
    """Undo a start that failed before any checkpoint: remove what such a start writes
    (`_dead_start`: config.toml, env.json, metrics.csv, event files, temporaries) and the folder
    when that leaves it empty. The run's source-only stage, trained and kept for the next try,
    and anything else in the folder stay."""
    dead = _dead_start(run_dir) if run_dir.is_dir() and not run_dir.is_symlink() else None
    for path in dead or []:
        path.unlink(missing_ok=True)
    # not empty (the stage, or files of the user's), or gone already: it stays
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def is_run_record(path: Path) -> bool:
    """Whether a config file is a run's own record: a ``config.toml`` with the run's
    ``summary.json`` or ``env.json`` beside it (not a hand-written file)."""
    return path.name == CONFIG and ((path.parent / SUMMARY).is_file()
                                    or (path.parent / ENV).is_file())


def write_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    write_toml(run_dir / CONFIG, config)


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.toml; relative paths that a run from before paths were recorded absolute
    wrote become what its own files say they named (`paths.with_recorded_files`)."""
    from galmerge.config.paths import with_recorded_files

    return with_recorded_files(read_toml(run_dir / CONFIG), run_dir)


def _versions() -> dict[str, str]:
    """Versions of the libraries whose arithmetic or data reading a run depends on."""
    from importlib import metadata

    out = {}
    for name in ("numpy", "torchvision", "h5py", "astropy", "scipy", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_description() -> dict[str, str]:
    """The CPU's model name (/proc/cpuinfo where there is one) and the SIMD level torch uses.

    Results are bit-for-bit repeatable only on the same kind of CPU with the same thread count.
    """
    import torch

    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines() if cpuinfo.is_file() else []
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"model": model, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def environment(device: Any) -> dict[str, Any]:
    """Versions and machine facts recorded in env.json."""
    import torch

    from galmerge import __version__
    from galmerge.plugin.manager import get_plugin_manager

    name = str(device)
    if getattr(device, "type", None) == "cuda":
        name = torch.cuda.get_device_name(device)
    manager = get_plugin_manager()
    plugins = {  # the loaded ones (a plugin in a name clash is loaded, with an error)
        info.name: {"distribution": info.distribution, "version": info.version}
        for info in manager.plugin_infos()
        if info.name in manager.infos
    }
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "cpu": cpu_description(),
        "galmerge": __version__,
        "plugins": plugins,
        "git_commit": code.git_commit(),
        "git_dirty": code.git_dirty(),  # True: the commit does not describe the code that ran
        "packages": _versions(),
        # no URL's user info in env.json (a database's or a survey option's password)
        "argv": [hide_userinfo(arg) for arg in sys.argv],
    }


#: what must match for a resumed run to go on bit for bit as if never stopped
_REPEATABLE = ("cpu_threads", "cpu", "torch", "device", "device_name", "world_size")


def record_moved_data(run_dir: Path, moved: Mapping[str, str]) -> dict[str, Any]:
    """config.toml of run ``run_dir`` with its ``source``/``target`` specs replaced by
    ``moved``'s (the run's own data, the SHA-256 its env.json records, given at a new place to
    ``train --resume``); returns the move as env.json records it (role -> ``{"from":
    SPEC_BEFORE, "to": SPEC}``, and ``"anchored"``: whether the run is re-anchored here).

    Re-anchored, when the run was moved from the folder it recorded (gone now) and every other
    path of the config is found now (`paths.with_recorded_files`: the same place relative to
    the run): config.toml records them where they are, and `record_resume` sets env.json's
    ``run_dir`` to where the run is now, so a later move of the whole project finds the data
    relative to this place. Otherwise (not moved, a copy beside its original, a path found
    nowhere) the other paths stay as written and ``run_dir`` as recorded. The run's own
    ``source_only/`` stage, which read the same data, records the move too. Each file is one
    atomic rewrite."""
    config = read_toml(run_dir / CONFIG)
    record: dict[str, Any] = {role: {"from": config.get(role), "to": spec}
                              for role, spec in moved.items()}
    anchored = _record_moved(run_dir, config, moved)
    stage = run_dir / SOURCE_STAGE
    staged: dict[str, Any] = {}
    if (stage / CONFIG).is_file():
        theirs = read_toml(stage / CONFIG)
        same = {role: spec for role, spec in moved.items()
                if theirs.get(role) == record[role]["from"]}
        if same:  # its env.json follows the run's (`record_resume`)
            staged = {"roles": sorted(same), "anchored": _record_moved(stage, theirs, same)}
    return {**record, "anchored": anchored, "stage": staged} if record else record


def _record_moved(folder: Path, config: Mapping[str, Any], moved: Mapping[str, str]) -> bool:
    """``folder``'s config.toml (``config``, as read) with ``moved``'s specs; when the run was
    moved from where it recorded its paths (`paths.moved_from`: that folder gone) and all its
    other paths are found now, those too, where they are found (True: re-anchored here), else
    as written."""
    from galmerge.config import paths

    if paths.moved_from(folder) is None:  # not moved, or a copy beside its original
        write_toml(folder / CONFIG, {**config, **moved})
        return False
    now = paths.with_recorded_files(config, folder)
    keys = [k for k in (*paths.SPEC_KEYS, "init_from") if k not in moved and config.get(k)]
    found = {k: now[k] for k in keys}

    def there(key: str) -> bool:
        value = str(found[key])
        path = value if key == "init_from" else paths.spec_file(value)
        return path is None or os.path.isfile(path)

    anchored = all(there(k) for k in keys)
    write_toml(folder / CONFIG, {**config, **(found if anchored else {}), **moved})
    return anchored


def _anchor_env(stage: Path, moved: list[str], run_dir: Path, anchored: bool) -> None:
    """The stage's env.json: the ``moved`` roles' files as the run's env.json records them
    now, and (``anchored``) ``run_dir`` where the stage is now."""
    try:
        env = json.loads((stage / ENV).read_text())
        run_data = json.loads((run_dir / ENV).read_text()).get("data") or {}
    except (OSError, ValueError):
        return
    data = dict(env.get("data") or {})
    data.update({role: run_data[role] for role in moved if role in run_data})
    where = {"run_dir": os.path.abspath(stage)} if anchored else {}
    write_json(stage / ENV, {**env, "data": data, **where})


def record_resume(run_dir: Path, env: Mapping[str, Any], quiet: bool = False,
                  data_moved: Mapping[str, Any] | None = None) -> None:
    """Append ``env`` (this process's environment) to env.json's ``resumed`` list, and say in
    one line when it differs from the start's in what makes runs repeatable (thread count, CPU,
    torch, device, process count): the run goes on, but no longer bit for bit.

    ``data_moved`` (`record_moved_data`'s record): the run's data read from a new place;
    env.json's ``data`` records the files read now for those roles (the same SHA-256), and the
    resume's entry records the move as ``data_moved``."""
    path = run_dir / ENV
    try:
        start = json.loads(path.read_text())
    except (OSError, ValueError):
        start = {}
    changed = [k for k in _REPEATABLE if k in start and start.get(k) != env.get(k)]
    record = dict(start)
    entry = {**dict(env), "changed": changed,
             "resumed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if data_moved:
        moved = {k: v for k, v in data_moved.items() if k not in ("anchored", "stage")}
        now = env.get("data") if isinstance(env.get("data"), Mapping) else {}
        data = dict(start["data"]) if isinstance(start.get("data"), Mapping) else {}
        data.update({role: now[role] for role in moved if role in now})
        record["data"] = data
        entry["data_moved"] = moved
        if data_moved.get("anchored") and env.get("run_dir"):  # config.toml's paths are here
            record["run_dir"] = env["run_dir"]
    record["resumed"] = [*start.get("resumed", []), entry]
    write_json(path, record)
    staged = (data_moved or {}).get("stage")
    if staged:
        _anchor_env(run_dir / SOURCE_STAGE, staged["roles"], run_dir, staged["anchored"])
    if changed and not quiet:
        what = ", ".join(f"{k} {start.get(k)!r} -> {env.get(k)!r}" for k in changed)
        print(f"galmerge train: note: resumed with another {what}; the run goes on, but will "
              "not match an uninterrupted one bit for bit (env.json records it)",
              file=sys.stderr)


def note_rerun_environment(run_dir: Path, seed: Any, quiet: bool = False) -> list[str]:
    """Say in one line when ``train --config RUN/config.toml`` with RUN's own seed runs where
    RUN's env.json says it cannot repeat RUN bit for bit (another thread count, CPU, torch or
    number of processes), and how to match the thread count and process count; returns the
    settings that differ. Nothing is changed: RUN's thread count may not suit this machine (a
    16-thread run reread on 2 cores)."""
    import torch

    try:
        start = json.loads((run_dir / ENV).read_text())
        same_seed = read_config(run_dir).get("seed") == seed
    except (OSError, ValueError, GalmergeError):
        return []
    if not isinstance(start, dict) or not same_seed:
        return []
    from galmerge.runtime.distributed import from_environment

    dist = from_environment()  # the process count: each torchrun process draws its own masks
    here = {"cpu_threads": torch.get_num_threads(), "cpu": cpu_description(),
            "torch": torch.__version__, "world_size": dist.world}
    changed = [k for k in here if k in start and start[k] != here[k]]
    if changed and not quiet and dist.is_main:
        what = ", ".join(f"{k} {start[k]!r} there, {here[k]!r} here" for k in changed)
        fixes = []
        if "cpu_threads" in changed:
            fixes.append(f"OMP_NUM_THREADS={start['cpu_threads']} sets the thread count")
        if "world_size" in changed:
            fixes.append(f"torchrun --nproc_per_node {start['world_size']} -m galmerge train "
                         "... starts that many processes")
        fix = f" ({'; '.join(fixes)})" if fixes else ""
        print(f"galmerge train: note: {run_dir} ran with {what}; the same config and seed will "
              f"not repeat it bit for bit{fix}", file=sys.stderr)
    return changed


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic.write_text(path, json.dumps(_json_safe(payload), indent=2, sort_keys=False) + "\n")


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv from all rows so far (a resumed run drops rows past its checkpoint)."""
    if not rows:
        return
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with atomic.atomic_open(run_dir / METRICS, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _fmt(row.get(c)) for c in columns})


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    return "" if value is None else value


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv as numbers; a file galmerge did not write that way is a one-line error."""
    path = run_dir / METRICS
    try:
        with path.open(newline="") as fh:
            return [{str(k): float(v) if v not in ("", None) else math.nan
                     for k, v in r.items() if k is not None}
                    for r in csv.DictReader(fh)]
    except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as exc:
        raise GalmergeError(f"{path} is not a metrics.csv as galmerge writes it "
                            f"({str(exc).splitlines()[0][:120]}); restore it or train again"
                            ) from None


class TensorBoard:
    """Scalars per epoch in TensorBoard event files (silently absent if tensorboard is missing)."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key.replace("_", "/", 1), float(value), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
