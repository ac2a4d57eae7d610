"""Provenance that leads back to what ran: the code's own git commit, and the data a run
trained on (checked, not only recorded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import galmerge

_ENV_OF_COPY = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
                "from galmerge.config import rundir; env = rundir.environment('cpu'); "
                "assert rundir.__file__.startswith(sys.argv[1]), rundir.__file__; "
                "print(json.dumps([env['git_commit'], env['git_dirty']]))")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _env_of_copy(site: Path, cwd: Path) -> list:
    out = subprocess.run([sys.executable, "-c", _ENV_OF_COPY, str(site)], cwd=cwd, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_env_records_no_commit_of_a_user_repository_galmerge_is_installed_in(tmp_path):
    repo = tmp_path / "project"
    site = repo / ".venv" / "lib" / "site-packages"
    shutil.copytree(Path(galmerge.__file__).parent, site / "galmerge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _git(repo, "init", "-q")
    (repo / "README").write_text("the user's own project\n")
    _git(repo, "add", "README")
    _git(repo, "commit", "-q", "-m", "user's commit")
    (repo / "README").write_text("changed\n")  # the user's project is dirty: not galmerge
    assert _env_of_copy(site, repo) == [None, None]
    # the same copy tracked by that repository is galmerge's own checkout: its commit counts
    _git(repo, "add", "-f", ".venv/lib/site-packages/galmerge")
    _git(repo, "commit", "-q", "-m", "vendored galmerge")
    assert _env_of_copy(site, repo) == [_git(repo, "rev-parse", "HEAD"), True]
