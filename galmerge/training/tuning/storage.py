"""A `galmerge tune` study folder and its database: file names (the folder contract), Optuna
storage (SQLite by default, or a shared ``--storage`` URL), the folder lock and the check that
one folder holds one study."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from galmerge.config import rundir
from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.private import check_private
from galmerge.io.provenance import hide_userinfo

STUDY_NAME = "galmerge-tune"


STORAGE_FILE = "study.db"


#: which database holds the folder's study (its URL with user info as ``***``), written on its
#: first start
STORAGE_RECORD = "storage.json"


TRIALS_CSV = "trials.csv"


BEST_TOML = "best.toml"


REPORT = "report.md"


LOCK = ".tune.lock"


# user attribute: a complete trial's config.toml text, for best.toml where its folder is absent
# (processes on other machines sharing the study through --storage)
CONFIG_ATTR = "config_toml"


# Heartbeats for shared storage: a trial silent for GRACE_S seconds (its process died) is failed
# and retried once by whichever process looks next.
HEARTBEAT_S = 60


GRACE_S = 180


def open_storage(optuna: Any, study_dir: Path, url: str | None) -> tuple[Any, bool]:
    """(storage, embedded)."""
    embedded = url is None
    if embedded:
        url = f"sqlite:///{study_dir / STORAGE_FILE}"
    assert url is not None
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes on one SQLite file wait for each other's short writes
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    import warnings

    with warnings.catch_warnings():
        # heartbeats and their retry callback are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if not embedded:
            import inspect

            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
            params = inspect.signature(optuna.storages.RDBStorage).parameters
            kwargs.update(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
            if retry is not None and "heartbeat_stale_trial_callback" in params:
                kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=1)
            else:
                kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(
                    max_retry=1
                )
        error: Exception | None = None
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, **kwargs), embedded
            except Exception as exc:  # a bad URL or an unreachable server: one line below
                error = exc
                # processes opening a new database at once race to create its tables; the
                # loser finds them on the next try
                text = str(exc)
                if attempt < 4 and ("already exists" in text or "UNIQUE constraint" in text):
                    time.sleep(0.5 + attempt)
                    continue
                break
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if embedded:  # no --storage was given: name the study's own file
        raise GalmergeError(
            f"{study_dir / STORAGE_FILE}: the study's database cannot be opened ({first}); "
            "restore it from a copy, or start the study in a new --study-dir")
    raise GalmergeError(
        f"--storage {hide_userinfo(url)}: cannot open it ({hide_userinfo(first)}); e.g. "
        "sqlite:///DIR/study.db or postgresql://USER:PASSWORD@HOST/DB"
    )


def lock_study(study_dir: Path, embedded: bool) -> Any:
    """A lock on the study folder for the whole study (a context manager): exclusive for the
    embedded storage (it fails and re-queues RUNNING trials at start), shared for ``--storage``
    processes (several work at once, none while an embedded run holds the folder)."""
    if not embedded:
        return atomic.exclusive_lock(
            study_dir / LOCK,
            f"a galmerge tune without --storage is running on {study_dir}; wait for it, or stop "
            f"it and run every process with --storage", shared=True)
    return atomic.exclusive_lock(
        study_dir / LOCK,
        f"another galmerge tune is running on {study_dir}; wait for it, or run several "
        f"processes on one study with --storage (e.g. --storage sqlite:///{study_dir}/"
        f"{STORAGE_FILE})",
    )


def _storage_identity(study_dir: Path, storage: str | None) -> str:
    """The database a study lives in, as recorded: its URL with user info as ``***``
    (`hide_userinfo`), SQLite paths resolved (the embedded database is
    ``sqlite:///STUDY_DIR/study.db``)."""
    url = storage if storage is not None else f"sqlite:///{study_dir / STORAGE_FILE}"
    if url.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return hide_userinfo(url)


# Folders written before the ``***@`` form recorded a URL with only its password hidden
# (``postgresql://me:***@host/db``; a URL without a password as it was): still theirs.
_OLD_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@/\s]+@")


def _old_storage_identity(study_dir: Path, storage: str | None) -> str:
    identity = _storage_identity(study_dir, storage)
    if storage is None or identity.startswith("sqlite:///"):
        return identity
    return _OLD_PASSWORD.sub(r"\1***@", storage)


def check_one_study(study_dir: Path, storage: str | None) -> None:
    """One study per folder: its trials, best.toml and report would be overwritten by another
    study's. The folder records the database of its first start (`STORAGE_RECORD`, written by
    `record_storage` once that database opened); a start with another is refused, but a folder
    holding its own ``study.db`` is its study's after a move or copy too. Folders from before
    the record: an embedded ``study.db`` beside a ``--storage`` study, or the trials of a
    ``--storage`` study under a plain tune, refused."""
    identity = _storage_identity(study_dir, storage)
    record = study_dir / STORAGE_RECORD
    if record.is_file():
        try:
            recorded = json.loads(record.read_text()).get("storage")
        except (OSError, ValueError, AttributeError):
            recorded = None
        # the folder's own embedded database, recorded where the folder was first (its path
        # absolute): the same study after the folder moved or was copied
        moved_own = (storage is None and (study_dir / STORAGE_FILE).is_file()
                     and isinstance(recorded, str) and recorded.startswith("sqlite:///")
                     and recorded.endswith("/" + STORAGE_FILE))
        if recorded not in (identity, _old_storage_identity(study_dir, storage)) \
                and not moved_own:
            raise GalmergeError(
                f"--study-dir {study_dir} holds the study of another database ({recorded}); "
                "pass that --storage to continue it (or none, if it is the folder's own "
                "study.db), or choose another --study-dir")
        return
    own = study_dir / STORAGE_FILE
    if storage is not None and own.exists() and identity != _storage_identity(study_dir, None):
        raise GalmergeError(
            f"--study-dir {study_dir} holds a study of its own ({STORAGE_FILE}); give a "
            f"--storage study another --study-dir (its outputs would overwrite this one's)")
    if storage is None and not own.exists() and any((study_dir / "trials").glob("[0-9]*")):
        raise GalmergeError(
            f"--study-dir {study_dir} holds the trials of a study kept in a --storage database; "
            "pass that --storage to continue it, or choose another --study-dir")


def record_storage(study_dir: Path, storage: str | None) -> None:
    """Bind the folder to its database (`STORAGE_RECORD`), once `open_storage` has shown the
    URL works: a mistyped --storage must not leave the folder tied to it."""
    record = study_dir / STORAGE_RECORD
    if not record.is_file():
        atomic.write_text(record, json.dumps({"storage": _storage_identity(study_dir, storage)})
                          + "\n")


def prepare_dir(study_dir: Path) -> None:
    if (study_dir / rundir.CONFIG).is_file() and not (study_dir / STORAGE_FILE).exists() \
            and not (study_dir / "trials").is_dir():
        raise GalmergeError(f"--study-dir {study_dir} is a training run directory, not a study "
                            "folder; choose a new folder for the study")
    if (study_dir / STORAGE_FILE).exists():  # a study to continue: its trials must be the user's
        for path in (study_dir, study_dir / STORAGE_FILE):
            check_private(path, "pass another --study-dir")
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        atomic.temp_beside(study_dir / ".write-test").unlink()  # a new file, no link followed
    except OSError as exc:
        raise GalmergeError(
            f"--study-dir {study_dir}: cannot write there ({exc.strerror}); pick a writable folder"
        ) from None
