"""Every output names the code that wrote it: galmerge's version, and where galmerge runs from
its own git checkout (as these tests do) its commit and whether it had uncommitted changes.
`galmerge.__version__` alone is the same at every commit, so it cannot lead back to the code."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair

import galmerge
from galmerge.cli import cli

ROOT = Path(galmerge.__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def code() -> dict[str, Any]:
    """What the outputs must say: this checkout's commit and dirty state, read with git here."""
    if not (ROOT / ".git").exists():
        pytest.skip("galmerge does not run from a git checkout here")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"galmerge_version": galmerge.__version__, "galmerge_commit": _git("rev-parse", "HEAD"),
            "galmerge_dirty": dirty}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("code")
    source, target = write_pair(root / "data", n=40)
    tiny_run(root / "run", source, target, epochs=1)
    return {"root": root, "run": root / "run", "target": target.removeprefix("hdf5:")}


def _named(record: dict[str, Any], code: dict[str, Any]) -> None:
    assert {k: record.get(k) for k in code} == code


def test_checkpoint_and_metrics_name_the_commit(run: dict[str, Any], code: dict[str, Any]
                                                ) -> None:
    _named(torch.load(run["run"] / "best.pt", weights_only=True), code)
    metrics = galmerge.evaluate(run["run"], device="cpu", bootstrap=0, embedding_points=10,
                                quiet=True)
    _named(metrics, code)


def test_classify_and_fraction_outputs_name_the_commit(run: dict[str, Any],
                                                       code: dict[str, Any]) -> None:
    out = run["root"] / "out.parquet"
    galmerge.classify(run["target"], run["run"], output=out, device="cpu", quiet=True)
    _named(json.loads(pq.read_schema(out).metadata[b"galmerge_provenance"]), code)
    csv_out = run["root"] / "out.csv"
    galmerge.classify(run["target"], run["run"], output=csv_out, device="cpu", quiet=True)
    _named(json.loads((run["root"] / "out.csv.provenance.json").read_text()), code)
    fits_out = run["root"] / "out.fits"
    galmerge.classify(run["target"], run["run"], output=fits_out, device="cpu", quiet=True)
    from astropy.io import fits

    header = fits.getheader(fits_out, 1)
    assert (header["GMCOMMIT"], header["GMDIRTY"]) == (code["galmerge_commit"],
                                                       code["galmerge_dirty"])
    result = CliRunner().invoke(cli, ["fraction", str(csv_out), "--model", str(run["run"]),
                                      "--json", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    _named(json.loads(result.output)["provenance"], code)


def test_compare_tables_name_the_commit_and_their_runs(run: dict[str, Any],
                                                       code: dict[str, Any]) -> None:
    md, table = run["root"] / "t.md", run["root"] / "t.csv"
    for out in (md, table):
        result = CliRunner().invoke(cli, ["compare", str(run["run"]), "--output", str(out)])
        assert result.exit_code == 0, result.output
    line = md.read_text().strip().splitlines()[-1]
    assert line.startswith("Made ") and f"commit {code['galmerge_commit'][:12]}" in line
    assert "from 1 run " in line
    row = next(csv.DictReader(io.StringIO(table.read_text())))
    summary = json.loads((run["run"] / "summary.json").read_text())
    assert json.loads(row["run_dirs"]) == [str(run["run"])]
    assert json.loads(row["best_sha256"]) == [summary["best_sha256"]]


def test_an_export_names_the_commit(run: dict[str, Any], code: dict[str, Any]) -> None:
    pytest.importorskip("onnx")
    import onnx

    path = galmerge.export_model(run["run"], "onnx", run["root"] / "m.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    _named(json.loads(meta["galmerge"]), code)


def test_outside_a_checkout_the_version_alone_is_recorded(tmp_path: Path) -> None:
    """A galmerge copied out of its checkout (as pip installs it) records no commit, and the
    one-line description names the version alone."""
    import shutil
    import sys

    site = tmp_path / "site"
    shutil.copytree(ROOT / "galmerge", site / "galmerge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    probe = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
             "from galmerge.io.provenance import code_identity, describe_code; "
             "r = code_identity(); print(json.dumps([r, describe_code(r)]))")
    out = subprocess.run([sys.executable, "-c", probe, str(site)], cwd=tmp_path,
                         capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    record, line = json.loads(out.stdout.strip().splitlines()[-1])
    assert record == {"galmerge_version": galmerge.__version__, "galmerge_commit": None,
                      "galmerge_dirty": None}
    assert line == f"galmerge {galmerge.__version__}"


@pytest.mark.parametrize("suffix", [".h5", ".fits", ".parquet", ".csv"])
def test_every_output_format_is_written_without_a_commit(run: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         suffix: str) -> None:
    """An installed release has no commit to record: HDF5 (no null attribute) and FITS (no
    null card) leave the key out, the JSON records hold null, and nothing fails."""
    from galmerge.runtime import code

    monkeypatch.setattr(code, "git_commit", lambda: None)
    monkeypatch.setattr(code, "git_dirty", lambda: None)
    out = tmp_path / f"out{suffix}"
    galmerge.classify(run["target"], run["run"], output=out, device="cpu", quiet=True)
    if suffix == ".h5":
        import h5py

        with h5py.File(out) as f:
            assert "galmerge_commit" not in f.attrs
            assert json.loads(f.attrs["galmerge_provenance"])["galmerge_commit"] is None
    elif suffix == ".fits":
        from astropy.io import fits

        header = fits.getheader(out, 1)
        assert "GMCOMMIT" not in header and header["GMVERSN"] == galmerge.__version__
    elif suffix == ".parquet":
        prov = json.loads(pq.read_schema(out).metadata[b"galmerge_provenance"])
        assert prov["galmerge_commit"] is None and prov["galmerge_dirty"] is None
    else:
        prov = json.loads((tmp_path / "out.csv.provenance.json").read_text())
        assert prov["galmerge_commit"] is None


def test_a_process_names_the_code_it_imported_though_the_checkout_moves_on(tmp_path: Path
                                                                           ) -> None:
    """A commit or an edit in galmerge's checkout while a run trains does not change the code
    that runs: its later checkpoints name the commit its env.json named."""
    import shutil
    import sys

    repo = tmp_path / "checkout"
    shutil.copytree(ROOT / "galmerge", repo / "galmerge",
                    ignore=shutil.ignore_patterns("__pycache__"))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                               *args], cwd=repo, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    git("add", "galmerge")
    git("commit", "-q", "-m", "first")
    first = git("rev-parse", "HEAD")
    probe = (
        "import json, subprocess, sys; sys.path.insert(0, sys.argv[1]); "
        "from galmerge.io.provenance import code_identity; before = code_identity(); "
        "open(sys.argv[1] + '/galmerge/errors.py', 'a').write('\\n# edited\\n'); "
        "g = ['git', '-c', 'user.name=t', '-c', 'user.email=t@example.org']; "
        "subprocess.run(g + ['commit', '-qam', 'second'], cwd=sys.argv[1], check=True); "
        "print(json.dumps([before, code_identity()]))")
    out = subprocess.run([sys.executable, "-c", probe, str(repo)], cwd=tmp_path,
                         capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before["galmerge_commit"] == after["galmerge_commit"] == first
    assert before["galmerge_dirty"] is after["galmerge_dirty"] is False
    assert git("rev-parse", "HEAD") != first  # the checkout did move on
