"""Which galmerge code is running: its git commit and whether the checkout has uncommitted
changes, read from the git checkout that tracks this very package (None outside one)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


def _run_git(cwd: Path, *args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` does not refresh (and lock) the checkout's index
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5,
                             env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache  # where this package lives, and whether git tracks it, is fixed per process
def own_checkout() -> Path | None:
    """The top folder of the git checkout that tracks this very galmerge package; None when
    galmerge is not in one. A galmerge installed into a ``.venv`` inside a user's own
    repository is inside that repository's folder but not tracked by it: its commit and dirty
    state would describe the user's project, not the code that ran."""
    package = Path(__file__).resolve().parent.parent
    top = _run_git(package, "rev-parse", "--show-toplevel")
    if not top:
        return None
    try:
        init = (package / "__init__.py").relative_to(Path(top).resolve())
    except ValueError:
        return None
    tracked = _run_git(Path(top), "ls-files", "--error-unmatch", "--", init.as_posix())
    return None if tracked is None else Path(top)


def _git(*args: str) -> str | None:
    """``git ARGS`` in galmerge's own checkout (`own_checkout`); None without one."""
    top = own_checkout()
    return None if top is None else _run_git(top, *args)


@functools.cache  # the code this process runs: read once, so every record of it agrees
def git_commit() -> str | None:
    """The commit of galmerge's own checkout (None: not run from one)."""
    return _git("rev-parse", "HEAD") or None


@functools.cache  # as git_commit: the state when first asked, not a later edit's
def git_dirty() -> bool | None:
    """Whether galmerge's checkout has uncommitted changes to tracked files (None: no git)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)
