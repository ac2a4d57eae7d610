"""Atomic file writes: a fresh temporary file beside the target, fsync, then one rename.

Every file galmerge replaces in place goes through here, so that

- a kill at any moment leaves either the old file or the new one, never half of one;
- the temporary name is unpredictable and created with ``O_CREAT | O_EXCL | O_NOFOLLOW``
  (`tempfile.mkstemp`): a symbolic link planted at a guessable name in a shared folder is never
  followed, so a run cannot be tricked into overwriting another file the user can write;
- the new file gets the ordinary permissions ``0o666 & ~umask`` (not mkstemp's 0600), the same
  whether it is a checkpoint, a table or a cache (see "Security model" in docs/DESIGN.md).

Temporary names are ``.NAME[TAG]~HOST~PID~RANDOM.tmp``: cleaners that remove the leftovers of a
dead process (`dead_temporaries`) read the host and process id from the name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from galmerge.errors import GalmergeError


def _umask() -> int:
    # read once at import (single-threaded then); os.umask can only be read by setting it
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()

#: a full disk, a quota or the file-size limit: errors that freeing space fixes
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_space_errno(exc: BaseException) -> int | None:
    """The errno of a full disk, quota or file-size limit behind ``exc``: its ``errno``, else
    one its text states (h5py says ``errno = 28``; LSDB hands a Dask worker's OSError on as a
    RuntimeError saying ``[Errno 28]``); None for any other error."""
    code = getattr(exc, "errno", None)
    if code in NO_SPACE_ERRNOS:
        return int(code)
    if code:  # an errno of its own, of another kind
        return None
    text = str(exc)
    return next((c for c in sorted(NO_SPACE_ERRNOS)
                 if f"errno = {c}" in text or f"[Errno {c}]" in text), None)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def temp_beside(path: str | Path, tag: str = "") -> Path:
    """Create a new, empty temporary file in ``path``'s folder and return its name.

    The caller writes it (by name: h5py, astropy, torch) and then calls `publish`, or removes it.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}{tag}~{socket.gethostname()}~{os.getpid()}~",
        suffix=".tmp", dir=path.parent or ".")
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return Path(name)


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str | Path, path: str | Path) -> None:
    """fsync ``tmp``, then rename it over ``path`` (one step: readers see old or new)."""
    fsync_path(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_open(p, "w") as fh: ...``: ``p`` appears, complete, when the block ends.

    On an exception the temporary file is removed and ``p`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open writes whole files: mode 'w' or 'wb'")
    path = Path(path)
    tmp = temp_beside(path)
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: str | Path, write: Any, tag: str = "") -> None:
    """``write(tmp)`` fills a fresh temporary beside ``path`` (by name: astropy, h5py, onnx,
    torch); then it replaces ``path`` in one step. On an exception ``path`` stays as it was."""
    path = Path(path)
    tmp = temp_beside(path, tag)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: the first bytes of a figure file, by suffix: an existing file without them is not a plot
FIGURE_MAGIC = {"png": (b"\x89PNG",), "pdf": (b"%PDF",), "svg": (b"<?xml", b"<svg")}


def starts_with(*prefixes: bytes, strip: bool = False) -> Callable[[Path], bool]:
    """A `check_replaceable` test: the file's first 512 bytes (leading whitespace removed with
    ``strip``) begin with one of ``prefixes``. The file is opened without following a link."""

    def ours(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as fh:
                head = fh.read(512)
        except OSError:  # unreadable, or swapped for a link since: not ours
            return False
        return (head.lstrip() if strip else head).startswith(prefixes)

    return ours


def check_replaceable(path: str | Path, ours: Callable[[Path], bool], what: str, *,
                      option: str = "", fixed_name: bool = False) -> None:
    """The one rule for whether an existing ``path`` may be replaced by ``what``; a one-line
    `GalmergeError` when not. Checked before any work, by every output galmerge replaces:

    - nothing there, or an empty regular file (nothing to lose, e.g. made by ``mktemp``): yes;
    - a symbolic link (dangling or not): no, where the user named ``path`` (an ``--output``,
      ``-o`` or ``--plot``): it is neither written through nor replaced. At a ``fixed_name`` in
      galmerge's own folder (a run directory's or study folder's figures) a link planted there
      is replaced itself, its target never read;
    - anything else that is not a regular file (a folder, a FIFO): no;
    - a non-empty regular file: only if ``ours(path)`` is true (an earlier output of the same
      kind). ``ours`` may itself raise a more specific `GalmergeError`.

    ``option`` (e.g. ``"--output"``) prefixes the message.
    """
    p = Path(path)
    named = f"{option} {p}" if option else str(p)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        if fixed_name:
            return
        raise GalmergeError(f"{named} is a symbolic link, which galmerge neither writes through "
                            "nor replaces; give the path of the file itself or another name")
    if stat.S_ISREG(st.st_mode) and (st.st_size == 0 or ours(p)):
        return
    raise GalmergeError(f"{named} exists and is not {what}, so it is not replaced; choose "
                        "another file name or remove it")


def check_figure(path: str | Path, *, option: str = "", fixed_name: bool = False) -> None:
    """`check_replaceable` for a figure: only a figure of ``path``'s format (by suffix) may be
    replaced."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    magic = FIGURE_MAGIC.get(fmt)
    if magic is not None:
        check_replaceable(path, starts_with(*magic, strip=True), f"a {fmt.upper()} figure",
                          option=option, fixed_name=fixed_name)


def save_figure(fig: Any, path: str | Path, *, option: str = "", fixed_name: bool = False,
                **kwargs: Any) -> None:
    """``fig.savefig`` to ``path`` through `write_with` (in the format of its suffix): a plot in
    a shared folder is never half written, and an existing file is replaced only as
    `check_figure` allows (``option``, ``fixed_name``: see `check_replaceable`)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    check_figure(path, option=option, fixed_name=fixed_name)
    write_with(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str, encoding: str = "utf-8", **kwargs: Any) -> None:
    with atomic_open(path, "w", encoding=encoding, **kwargs) as fh:
        fh.write(text)


def dead_temporaries(folder: Path, pattern: str = ".*.tmp") -> Iterator[Path]:
    """Temporary files in ``folder`` left by a process of this host that is no longer alive."""
    host = socket.gethostname()
    for tmp in folder.glob(pattern):
        parts = tmp.name.split("~")
        if len(parts) >= 4 and parts[1] == host and parts[2].isdigit() \
                and not pid_alive(int(parts[2])):
            yield tmp


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True



def open_nofollow(path: str | Path, mode: str = "a+b") -> IO[Any]:
    """Open a file galmerge keeps at a fixed name (a lock, a resumable ``.part``) without
    following a symbolic link there: a planted link is an error, never a write elsewhere.

    ``mode``: ``"a+b"``/``"a+"`` (create, keep contents; locks), ``"ab"`` (append) or ``"wb"``
    (truncate).
    """
    flags = {"a+b": os.O_RDWR | os.O_CREAT | os.O_APPEND, "a+": os.O_RDWR | os.O_CREAT
             | os.O_APPEND, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
             "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}[mode]
    try:
        fd = os.open(path, flags | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise GalmergeError(f"{path} is a symbolic link; galmerge does not write through a "
                            "link there: remove it") from None
    try:
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def exclusive_lock(path: str | Path, busy: str, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created without following a link) for the
    block; if another process holds it, a one-line GalmergeError ``busy``. The OS releases the
    lock when a holder dies, so a killed run never blocks the next one. ``shared``: a shared
    lock instead, which other shared holders may hold too but an exclusive one may not."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, carry on
        yield
        return
    with open_nofollow(path, "a+b") as fh:
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GalmergeError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
