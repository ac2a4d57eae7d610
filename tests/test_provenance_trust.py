"""Provenance that leads back to what ran: the code's own git commit, and the data a run
trained on (checked, not only recorded)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair

import galmerge
from galmerge.cli import cli

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


# --------------------------------------------------------------------------------------------
# the data a run trained on: its SHA-256 in env.json is checked when the run is read again


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny run, evaluated and classified on its own data; then its source.h5 replaced by
    other data at the same path."""
    root = tmp_path_factory.mktemp("changed")
    source, target = write_pair(root / "data", n=80)
    run = root / "run"
    tiny_run(run, source, target, "none", epochs=1, max_steps_per_epoch=2)
    before = _evaluate(run)
    out = root / "out.csv"
    res = CliRunner().invoke(cli, ["classify", str(root / "data" / "target.h5"), "--model",
                                   str(run), "--output", str(out), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    write_pair(root / "other", n=80, seed=5)
    shutil.copyfile(root / "other" / "source.h5", root / "data" / "source.h5")
    return {"run": run, "root": root, "before": before, "out": out,
            "file": str(root / "data" / "source.h5")}


def _evaluate(run: Path):
    return CliRunner().invoke(cli, ["evaluate", str(run), "--device", "cpu", "--bootstrap", "0",
                                    "--embedding-points", "8", "--quiet"])


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_resume_refuses_data_changed_at_its_path(changed) -> None:
    res = CliRunner().invoke(cli, ["train", "--resume", str(changed["run"]), "--quiet"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    line = res.output.strip()
    assert "\n" not in line, line
    assert changed["file"] in line and "changed since the run started" in line, line
    assert "restore that file, or train afresh" in line, line


def test_evaluate_warns_of_changed_data_and_records_the_files_sha256(changed) -> None:
    before = changed["before"]
    assert before.exit_code == 0 and "warning" not in before.stderr, before.output
    root = changed["root"]
    report = changed["run"] / "report" / "metrics.json"
    res = _evaluate(changed["run"])
    assert res.exit_code == 0, res.output
    lines = [t for t in res.stderr.splitlines() if "warning" in t]
    assert len(lines) == 1 and changed["file"] in lines[0], res.stderr
    assert "changed since" in lines[0] and "as it is now" in lines[0], lines[0]
    metrics = json.loads(report.read_text())
    assert metrics["source_sha256"] == _sha(changed["file"])  # today's file: these numbers
    assert metrics["target_sha256"] == _sha(root / "data" / "target.h5")


def test_fraction_warns_of_changed_data(changed) -> None:
    args = ["fraction", str(changed["out"]), "--model", str(changed["run"]), "--bootstrap", "0"]
    for _ in range(2):  # computing the validation split, then reading its cache of that file
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        lines = [t for t in res.stderr.splitlines() if "warning" in t]
        assert len(lines) == 1 and changed["file"] in lines[0], res.stderr
        assert "galmerge fraction" in lines[0] and "changed since" in lines[0], lines[0]


def test_classify_of_an_image_file_records_its_path_and_sha256(changed) -> None:
    prov = json.loads(changed["out"].with_name("out.csv.provenance.json").read_text())
    target = changed["root"] / "data" / "target.h5"
    assert prov["input"] == str(target) and prov["input_sha256"] == _sha(target)
    assert prov["checkpoint"] == str(changed["run"] / "best.pt")
