"""`galmerge reproduce deepmerge2` end to end on small files in the released Zenodo formats:
the method grid trains with the paper presets, each run is evaluated, the table has mean ± std
over seeds and the gain over source-only, and a killed call picks up where it stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from galmerge.cli import cli
from galmerge.config.presets import PAPER_METHODS
from galmerge.scores import selection
from galmerge.surveys.deepmerge import data as deepmerge_data

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 8}
# Until the trainer knows the paper's checkpoint rule (select_by = "source_val_accuracy") the
# runs select by the source validation loss; the grid, resume and table logic are the same.
LEGACY = {} if "source_val_accuracy" in selection.DIRECTIONS else {
    "select_by": "source_val_loss"}


def _write_sets(folder: Path, n: int = 40) -> None:
    """Tiny copies of the four released arrays: N x 3 x 75 x 75 float32, float labels; mergers
    are brighter, so there is something to learn."""
    rng = np.random.default_rng(0)
    for key in (("illustris", "sim-real"), ("sdss", "postmergers"), ("illustris", "pristine"),
                ("illustris", "noisy")):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 3, 75, 75)).astype(np.float32) + y[:, None, None, None]
        x_name, y_name = deepmerge_data.SETS[key].files
        np.save(folder / x_name, x)
        np.save(folder / y_name, y.astype(np.float64))


@pytest.fixture
def data(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "deepmerge").mkdir(parents=True)
    _write_sets(root / "deepmerge")
    monkeypatch.setenv("GALMERGE_DATA", str(root))
    return root


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/*/*/seed*/summary.json"))


@pytest.mark.slow
def test_reproduce_sim_real_grid_survives_a_kill(data, tmp_path):
    out = tmp_path / "out"
    script = (
        "from galmerge.surveys.deepmerge.reproduce import reproduce\n"
        f"reproduce('deepmerge2', 'sim-real', seeds=2, out={str(out)!r}, "
        f"settings={ {**QUICK, **LEGACY}!r}, device='cpu', bootstrap=10, quiet=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GALMERGE_DATA": str(data)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while len(_run_dirs(out)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the grid finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: (p / "summary.json").stat().st_mtime_ns for p in _run_dirs(out)}
    assert 2 <= len(finished) < 10

    from galmerge.surveys.deepmerge.reproduce import reproduce

    rows = reproduce("deepmerge2", "sim-real", seeds=2, out=out, settings={**QUICK, **LEGACY},
                     device="cpu", bootstrap=10, quiet=True)
    # runs finished before the kill were not trained again
    for path, mtime in finished.items():
        assert (path / "summary.json").stat().st_mtime_ns == mtime, path
    runs = _run_dirs(out)
    assert len(runs) == 10
    for run in runs:
        assert (run / "report" / "metrics.json").is_file()
        config = tomllib.loads((run / "config.toml").read_text())
        assert config["preset"] == "deepmerge2-sim-real"
        assert config["source"] == "illustris:sim-real" and config["target"] == "sdss"
    assert sorted(r["strategy"] for r in rows) == sorted(PAPER_METHODS)
    for row in rows:
        assert row["runs"] == 2 and row["seeds"] == [1, 2]
        assert np.isfinite(row["target_test_accuracy_std"])
        assert np.isfinite(row["target_accuracy_gain_over_none"])
    none = next(r for r in rows if r["strategy"] == "none")
    assert none["target_accuracy_gain_over_none"] == 0.0
    table = (out / "sim-real" / "table.md").read_text()
    assert "deepmerge2-sim-real" in table and "±" in table
    assert (out / "sim-real" / "table.csv").is_file()

    # the CLI on the finished grid: every run skipped, the table rewritten
    result = CliRunner().invoke(cli, [
        "reproduce", "deepmerge2", "--experiment", "sim-real", "--seeds", "2", "--out",
        str(out), "--epochs", "2", "--max-steps-per-epoch", "2", "--batch-size", "8",
        "--device", "cpu", "--no-evaluate"])
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier, skipped") == 10
    # other settings on the same folder: a one-line error, nothing deleted
    result = CliRunner().invoke(cli, [
        "reproduce", "deepmerge2", "--experiment", "sim-real", "--seeds", "1", "--out",
        str(out), "--epochs", "3", "--device", "cpu"])
    assert result.exit_code != 0 and "was trained with other settings: epochs 2" in result.output
    assert len(_run_dirs(out)) == 10


def test_transfer_learning_starts_from_the_sim_sim_run(data, tmp_path):
    from galmerge.surveys.deepmerge.reproduce import reproduce

    out = tmp_path / "out"
    rows = reproduce("deepmerge2", "sim-real-tl", seeds=1, methods=["none", "mmd"], out=out,
                     settings={**QUICK, **LEGACY}, device="cpu", evaluate=False, quiet=True)
    tl = tomllib.loads((out / "sim-real-tl/deepmerge/mmd/seed1/config.toml").read_text())
    assert tl["preset"] == "deepmerge2-sim-real-tl"
    assert tl["init_from"] == str(out / "sim-sim/deepmerge/mmd/seed1")
    assert tl["init_keep_preprocess"] is True and tl["lr"] == 0.01
    assert (out / "sim-sim/deepmerge/mmd/seed1/summary.json").is_file()
    assert {r["strategy"] for r in rows} == {"none", "mmd"}
    assert "without TL" in (out / "sim-real-tl" / "table.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "sim-sim", "--tl"], "--tl is the sim-real experiment's"),
        (["--experiment", "sim-real", "--seeds", "0"], "--seeds 0: use 1 or more"),
        (["--experiment", "sim-real"], "galmerge fetch"),
    ],
)
def test_reproduce_mistakes_are_one_line(data, tmp_path, args, message):
    for f in (data / "deepmerge").glob("SimReal_TARGET*"):
        f.unlink()
    result = CliRunner().invoke(cli, ["reproduce", "deepmerge2", *args, "--out",
                                      str(tmp_path / "o"), "--device", "cpu"])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_rerun_resumes_partial_runs_and_restarts_empty_ones(data, tmp_path, capsys):
    from galmerge.surveys.deepmerge.reproduce import reproduce

    out = tmp_path / "out"
    kwargs = dict(seeds=1, methods=["none", "mmd"], out=out, settings={**QUICK, **LEGACY},
                  device="cpu", evaluate=False)
    reproduce("deepmerge2", "sim-real", quiet=True, **kwargs)
    none, mmd = (out / "sim-real/deepmerge" / m / "seed1" for m in ("none", "mmd"))
    (none / "summary.json").unlink()  # killed after its last checkpoint
    for path in list(mmd.iterdir()):  # killed before its first checkpoint
        if path.name != "config.toml":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    capsys.readouterr()
    reproduce("deepmerge2", "sim-real", quiet=False, **kwargs)
    said = capsys.readouterr().out
    assert "none seed 1: resuming" in said and "mmd seed 1: training into" in said
    assert (none / "summary.json").is_file() and (mmd / "summary.json").is_file()


def test_other_data_through_the_cli(tmp_path, monkeypatch):
    """--source/--target put the paper presets on other data, e.g. the synthetic pair."""
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    out = tmp_path / "out"
    args = ["reproduce", "deepmerge2", "--experiment", "sim-real", "--seeds", "1",
            "--method", "none", "--out", str(out), "--epochs", "1",
            "--max-steps-per-epoch", "1", "--batch-size", "8", "--device", "cpu",
            "--no-evaluate", "--source", "synthetic:illustris?n=30&seed=0",
            "--target", "synthetic:sdss?n=30&seed=1"]
    if LEGACY:
        pytest.skip("needs the trainer's select_by = source_val_accuracy (the CLI has no "
                    "--select-by)")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = tomllib.loads((out / "sim-real/deepmerge/none/seed1/config.toml").read_text())
    assert config["source"] == "synthetic:illustris?n=30&seed=0"
    assert "synthetic:sdss?n=30&seed=1" in (out / "sim-real" / "table.md").read_text()


def test_transfer_learning_on_other_data_through_the_cli(tmp_path, monkeypatch):
    """--tl-source/--tl-target put TL's sim-sim runs on other data too, so the whole TL grid
    runs without the released files (here on synthetic renders)."""
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    if LEGACY:
        pytest.skip("needs the trainer's select_by = source_val_accuracy")
    out = tmp_path / "out"
    quick = ["--seeds", "1", "--method", "mmd", "--out", str(out), "--epochs", "1",
             "--max-steps-per-epoch", "1", "--batch-size", "8", "--device", "cpu",
             "--no-evaluate", "--source", "synthetic:illustris?n=30&seed=0",
             "--target", "synthetic:sdss?n=30&seed=1"]
    tl_data = ["--tl-source", "synthetic:pristine?n=30&seed=0",
               "--tl-target", "synthetic:noisy?n=30&seed=1"]
    result = CliRunner().invoke(cli, ["reproduce", "deepmerge2", "--experiment", "sim-real",
                                      *quick, *tl_data])
    assert result.exit_code != 0 and "add --tl" in result.output
    assert "Traceback" not in result.output and not out.exists()
    result = CliRunner().invoke(cli, ["reproduce", "deepmerge2", "--experiment", "sim-real",
                                      "--tl", *quick, *tl_data])
    assert result.exit_code == 0, result.output
    pre = tomllib.loads((out / "sim-sim/deepmerge/mmd/seed1/config.toml").read_text())
    assert (pre["source"], pre["target"]) == ("synthetic:pristine?n=30&seed=0",
                                              "synthetic:noisy?n=30&seed=1")
    tl = tomllib.loads((out / "sim-real-tl/deepmerge/mmd/seed1/config.toml").read_text())
    assert tl["source"] == "synthetic:illustris?n=30&seed=0"
    assert tl["init_from"] == str(out / "sim-sim/deepmerge/mmd/seed1")


def test_a_run_folder_holding_other_files_is_refused_not_deleted(data, tmp_path):
    from galmerge.errors import GalmergeError
    from galmerge.surveys.deepmerge.reproduce import reproduce

    out = tmp_path / "out"
    mine = out / "sim-real/deepmerge/none/seed1/notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("not a run")
    with pytest.raises(GalmergeError, match="is not empty"):
        reproduce("deepmerge2", "sim-real", quiet=True, seeds=1, methods=["none"], out=out,
                  settings={**QUICK, **LEGACY}, device="cpu", evaluate=False)
    assert mine.read_text() == "not a run"


def test_tl_runs_are_found_again_however_out_is_spelt(tmp_path, monkeypatch):
    """A TL run recorded its sim-sim run as init_from relative to --out as typed, so the same
    grid with --out spelt absolute refused its finished runs ("delete that directory")."""
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    args = ["reproduce", "deepmerge2", "--experiment", "sim-real", "--tl", "--seeds", "1",
            "--method", "mmd", "--epochs", "1", "--max-steps-per-epoch", "1",
            "--batch-size", "8", "--device", "cpu", "--no-evaluate",
            "--source", "synthetic:illustris?n=30&seed=0", "--target", "synthetic:sdss?n=30&seed=1",
            "--tl-source", "synthetic:pristine?n=30&seed=0",
            "--tl-target", "synthetic:noisy?n=30&seed=1"]
    first = CliRunner().invoke(cli, [*args, "--out", "rep"])
    assert first.exit_code == 0, first.output
    tl = tomllib.loads((tmp_path / "rep/sim-real-tl/deepmerge/mmd/seed1/config.toml").read_text())
    assert tl["init_from"] == str(tmp_path.resolve() / "rep/sim-sim/deepmerge/mmd/seed1")
    again = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "rep")])
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier, skipped") == 2
    # a record from before (init_from relative to where that call ran), read from elsewhere
    config = tmp_path / "rep/sim-real-tl/deepmerge/mmd/seed1/config.toml"
    config.write_text(config.read_text().replace(tl["init_from"],
                                                 "rep/sim-sim/deepmerge/mmd/seed1"))
    monkeypatch.chdir(tmp_path / "data")
    old = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "rep")])
    assert old.exit_code == 0, old.output
    assert old.output.count("finished earlier, skipped") == 2


def test_a_plugin_backbone_through_the_cli(tmp_path, monkeypatch, register_plugin):
    """--backbone takes any installed backbone, as train's does (it took the paper's two only);
    an unknown one is one line naming those installed."""
    from train_toys import ToyPlugin

    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    if LEGACY:
        pytest.skip("needs the trainer's select_by = source_val_accuracy")
    register_plugin(ToyPlugin(), "toys-test")  # its backbone: tiny
    out = tmp_path / "out"
    args = ["reproduce", "deepmerge2", "--experiment", "sim-real", "--seeds", "1",
            "--method", "none", "--out", str(out), "--epochs", "1",
            "--max-steps-per-epoch", "1", "--batch-size", "8", "--device", "cpu",
            "--no-evaluate", "--source", "synthetic:illustris?n=30&seed=0",
            "--target", "synthetic:sdss?n=30&seed=1"]
    bad = CliRunner().invoke(cli, [*args, "--backbone", "nosuch"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1, bad.output
    assert "unknown backbone 'nosuch'; available: deepmerge, resnet18, tiny" in bad.output
    assert not out.exists()
    result = CliRunner().invoke(cli, [*args, "--backbone", "tiny"])
    assert result.exit_code == 0, result.output
    assert "note: backbone tiny is not in the paper" in result.output
    config = tomllib.loads((out / "sim-real/tiny/none/seed1/config.toml").read_text())
    assert config["backbone"] == "tiny"
    assert config["backbone_options"] == {"width": 4, "dropout": 0.1}
    assert (out / "sim-real/tiny/none/seed1/summary.json").is_file()
