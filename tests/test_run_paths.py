"""A run made from one folder with relative paths (``hdf5:data/source.h5``, ``--run-dir runs/a``,
``--init-from runs/a``) resumes, evaluates and is reused with ``--config`` from any other
folder: config.toml records those paths absolute. Runs from before (relative paths as typed)
read back through env.json's record of the files they read, or work from their launch folder
and say in one line, elsewhere, which folder their paths are relative to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from eval_helpers import write_pair

import galmerge
from galmerge.cli import cli
from galmerge.errors import GalmergeError
from galmerge.models.model import read_checkpoint, save_checkpoint

SPECS = {"source": "hdf5:data/source.h5", "target": "hdf5:data/target.h5"}
TRAIN = dict(backbone="deepmerge", batch_size=8, device="cpu", quiet=True, patience=0,
             max_steps_per_epoch=2)


class Stop(Exception):
    """Ends a run after its first epoch, leaving a last.pt to resume."""


def _stop_after_first(row: dict) -> None:
    raise Stop


@pytest.fixture
def launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder runs are started in (the current folder), with data/source.h5 and
    data/target.h5; ``launch.parent / "elsewhere"`` is another folder."""
    folder = tmp_path / "launch"
    write_pair(folder / "data", n=40)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(folder)
    return folder


def _config(run: Path) -> dict:
    return tomllib.loads((run / "config.toml").read_text())


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _stopped_run(run: str, **kw) -> None:
    """A run of 2 epochs stopped after its first (last.pt written, no summary.json)."""
    with pytest.raises(Stop):
        galmerge.train(**SPECS, epochs=2, run_dir=run, on_epoch=_stop_after_first,
                       **{**TRAIN, **kw})


def _make_old(run: Path, specs: dict = SPECS) -> None:
    """config.toml and last.pt's config with the paths as typed (``specs``), as galmerge
    recorded them before they were recorded absolute."""
    config = _config(run)
    config.update(specs)
    (run / "config.toml").write_text(tomli_w.dumps(config))
    state = read_checkpoint(run / "last.pt")
    state["config"] = {**state["config"], **specs}
    save_checkpoint(run / "last.pt", state)


def _forget_data_record(run: Path) -> None:
    """env.json as runs wrote it before it recorded which files a run read."""
    env = json.loads((run / "env.json").read_text())
    env.pop("data")
    (run / "env.json").write_text(json.dumps(env))


def test_config_records_absolute_paths_and_the_run_resumes_from_another_folder(
        launch, monkeypatch):
    _stopped_run("runs/a")
    config = _config(launch / "runs" / "a")
    assert config["source"] == f"hdf5:{launch / 'data' / 'source.h5'}"
    assert config["target"] == f"hdf5:{launch / 'data' / 'target.h5'}"
    assert not (launch / "runs" / "a" / "summary.json").exists()

    monkeypatch.chdir(launch.parent / "elsewhere")
    summary = galmerge.train(resume="../launch/runs/a", quiet=True)
    assert summary["epochs_run"] == 2


def test_a_run_evaluates_from_another_folder(launch, monkeypatch):
    _stopped_run("runs/a")
    monkeypatch.chdir(launch.parent / "elsewhere")
    metrics = galmerge.evaluate("../launch/runs/a", checkpoint="last", bootstrap=0,
                                embedding_points=10, quiet=True)
    assert metrics["source"] == f"hdf5:{launch / 'data' / 'source.h5'}"
    assert (launch / "runs" / "a" / "report" / "report.html").is_file()


def test_a_runs_config_trains_again_from_another_folder(launch, monkeypatch):
    _stopped_run("runs/a")
    monkeypatch.chdir(launch.parent / "elsewhere")
    result = _invoke("train", "--config", "../launch/runs/a/config.toml", "--seed", "1",
                     "--epochs", "1", "--run-dir", "again", "--quiet")
    assert result.exit_code == 0, result.output
    assert _config(launch.parent / "elsewhere" / "again")["source"] == \
        f"hdf5:{launch / 'data' / 'source.h5'}"


def test_init_from_is_recorded_absolute_typed_or_the_runs_own_stage(launch, monkeypatch):
    _stopped_run("runs/a")
    galmerge.train(**SPECS, epochs=1, run_dir="runs/b", init_from="runs/a/last.pt", **TRAIN)
    assert _config(launch / "runs" / "b")["init_from"] == str(launch / "runs" / "a" / "last.pt")
    # dann: its own target encoder, so a source-only stage trained first in runs/d/source_only
    galmerge.train(**SPECS, strategy="dann", epochs=1, run_dir="runs/d", **TRAIN)
    stage = launch / "runs" / "d" / "source_only" / "best.pt"
    assert _config(launch / "runs" / "d")["init_from"] == str(stage)

    monkeypatch.chdir(launch.parent / "elsewhere")
    for run in ("b", "d"):  # reused from elsewhere: each starts from its recorded checkpoint
        result = _invoke("train", "--config", f"../launch/runs/{run}/config.toml",
                         "--run-dir", f"again-{run}", "--quiet")
        assert result.exit_code == 0, result.output
        assert "note: init_from" not in result.output  # the stage was found, not trained again
        assert _config(Path(f"again-{run}"))["init_from"] == _config(
            launch / "runs" / run)["init_from"]
    assert not Path("again-d/source_only").exists()


def test_an_older_run_with_relative_paths_reads_them_from_its_env_json(launch, monkeypatch):
    _stopped_run("runs/a")
    run = launch / "runs" / "a"
    _make_old(run)
    monkeypatch.chdir(launch.parent / "elsewhere")
    assert galmerge.train(resume="../launch/runs/a", quiet=True)["epochs_run"] == 2
    assert _config(run)["source"] == SPECS["source"]  # a resumed run's config.toml is kept


def test_an_older_run_without_a_record_of_its_files_says_where_its_paths_are_from(
        launch, monkeypatch):
    _stopped_run("runs/a")
    run = launch / "runs" / "a"
    _make_old(run)
    _forget_data_record(run)
    monkeypatch.chdir(launch.parent / "elsewhere")
    with pytest.raises(GalmergeError) as resumed:
        galmerge.train(resume="../launch/runs/a", quiet=True)
    with pytest.raises(GalmergeError) as evaluated:
        galmerge.evaluate("../launch/runs/a", checkpoint="last", bootstrap=0, quiet=True)
    reused = _invoke("train", "--config", "../launch/runs/a/config.toml", "--run-dir", "x",
                     "--quiet")
    for text in (str(resumed.value), str(evaluated.value), reused.output.strip()):
        assert len(text.splitlines()) == 1, text
        assert "relative to the folder the run was started in" in text or \
            "relative to the folder its run was started in" in text, text
        assert "data/source.h5" in text or "data/target.h5" in text
    assert "pass --target" in str(evaluated.value) and "pass --source" in reused.output
    assert reused.exit_code != 0 and not Path("x").exists()

    monkeypatch.chdir(launch)  # from its own folder, as before
    assert galmerge.train(resume="runs/a", quiet=True)["epochs_run"] == 2


def test_resuming_the_source_only_stage_of_a_live_run_is_refused(launch):
    """`train --resume X/source_only` by hand while `train` of X runs (which trains or
    continues that stage itself) took the stage's own lock, not X's: both wrote the stage."""
    run = launch / "runs" / "x"
    _stopped_run("runs/x/source_only")
    stage = run / "source_only"
    before = {p.name: p.read_bytes() for p in stage.iterdir()}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from galmerge.config import rundir\n"
         "with rundir.writing(Path(sys.argv[1])):\n"
         "    print('held', flush=True); sys.stdin.readline()", str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GalmergeError) as refused:
            galmerge.train(resume=stage, quiet=True)
    finally:
        holder.communicate("\n", timeout=60)
    text = str(refused.value)
    assert len(text.splitlines()) == 1 and "source-only stage" in text and str(run) in text
    assert {p.name: p.read_bytes() for p in stage.iterdir()} == before  # untouched
    assert galmerge.train(resume=stage, quiet=True)["epochs_run"] == 2  # once X is done


def test_a_study_records_absolute_paths_and_resumes_from_another_folder(launch, monkeypatch):
    pytest.importorskip("optuna")
    common = ["tune", "--strategy", "mmd", "--backbone", "deepmerge", "--epochs", "1",
              "--batch-size", "8", "--max-steps-per-epoch", "2", "--device", "cpu", "--quiet",
              "--sampler", "random", "--pruner", "none"]
    result = _invoke(*common, "--source", SPECS["source"], "--target", SPECS["target"],
                     "--study-dir", "study", "--n-trials", "1")
    assert result.exit_code == 0, result.output
    best = tomllib.loads((launch / "study" / "best.toml").read_text())
    assert best["source"] == f"hdf5:{launch / 'data' / 'source.h5'}"

    monkeypatch.chdir(launch.parent / "elsewhere")  # the same files, spelt from here
    result = _invoke(*common, "--source", "hdf5:../launch/data/source.h5", "--target",
                     "hdf5:../launch/data/target.h5", "--study-dir", "../launch/study",
                     "--n-trials", "2")
    assert result.exit_code == 0, result.output
    result = _invoke("train", "--config", "../launch/study/best.toml", "--run-dir", "r",
                     "--quiet")
    assert result.exit_code == 0, result.output


def _move(launch: Path, to: str) -> Path:
    """``launch`` moved (with its data and runs) to ``to`` beside it; the current folder."""
    moved = launch.parent / to
    shutil.move(launch, moved)
    os.chdir(moved)
    return moved


def test_a_project_moved_with_its_data_resumes_evaluates_and_reuses_its_runs(launch):
    _stopped_run("runs/a")
    moved = _move(launch, "moved")
    assert galmerge.train(resume="runs/a", quiet=True)["epochs_run"] == 2
    metrics = galmerge.evaluate("runs/a", bootstrap=0, embedding_points=10, quiet=True)
    assert metrics["source"] == f"hdf5:{moved / 'data' / 'source.h5'}"
    result = _invoke("train", "--config", "runs/a/config.toml", "--seed", "1", "--epochs", "1",
                     "--run-dir", "again", "--quiet")
    assert result.exit_code == 0, result.output
    assert _config(moved / "again")["source"] == f"hdf5:{moved / 'data' / 'source.h5'}"


def test_a_copied_run_starts_from_its_own_source_only_stage(launch, monkeypatch):
    galmerge.train(**SPECS, strategy="dann", epochs=1, run_dir="runs/d", **TRAIN)
    copy = launch.parent / "copy"
    shutil.copytree(launch, copy, symlinks=True)  # the original stays
    monkeypatch.chdir(copy)
    result = _invoke("train", "--config", "runs/d/config.toml", "--run-dir", "again",
                     "--quiet")
    assert result.exit_code == 0, result.output
    assert _config(copy / "again")["init_from"] == str(copy / "runs/d/source_only/best.pt")


def test_a_run_whose_data_moved_apart_resumes_with_the_same_data_given(launch):
    _stopped_run("runs/a")
    recorded = f"hdf5:{launch / 'data' / 'source.h5'}"
    moved = _move(launch, "moved")
    store = moved.parent / "store"
    store.mkdir()
    shutil.move(moved / "data" / "source.h5", store / "source.h5")
    shutil.copy(moved / "data" / "target.h5", moved / "data" / "source.h5")  # not the data
    refused = []
    for source in (None, "hdf5:data/target.h5"):
        with pytest.raises(GalmergeError) as err:
            galmerge.train(resume="runs/a", source=source, quiet=True)
        refused.append(str(err.value))
    for text in refused:
        assert len(text.splitlines()) == 1, text
        assert recorded in text and "--source" in text, text
    assert "no such file" in refused[0] and "SHA-256" in refused[1]
    summary = galmerge.train(resume="runs/a", source="hdf5:../store/source.h5", quiet=True)
    assert summary["epochs_run"] == 2


def test_tilde_of_no_home_is_one_line(launch, monkeypatch):
    for args in (["train", *_specs(), "--init-from", "~nosuchuser/run"],
                 ["train", "--source", "hdf5:~nosuchuser/x.h5", "--target", SPECS["target"]],
                 ["tune", "--source", "hdf5:~nosuchuser/x.h5", "--target", SPECS["target"],
                  "--strategy", "mmd", "--n-trials", "1", "--study-dir", "st"]):
        result = _invoke(*args, "--quiet")
        assert result.exit_code != 0
        text = result.output.strip()
        assert len(text.splitlines()) == 1 and "~nosuchuser" in text and "in full" in text, text
    assert not Path("st").exists()


def _specs() -> list[str]:
    return ["--source", SPECS["source"], "--target", SPECS["target"]]


def test_a_run_folder_named_source_only_takes_no_lock_beside_its_parent(launch):
    galmerge.train(**SPECS, strategy="none", epochs=1, run_dir="source_only", **TRAIN)
    assert (launch / "source_only" / "summary.json").is_file()
    assert not (launch.parent / f".{launch.name}.train.lock").exists()


def test_data_behind_a_symlink_is_recorded_by_the_links_name(launch, monkeypatch):
    (launch / "data" / "current.h5").symlink_to("source.h5")
    link = {"source": "hdf5:data/current.h5", "target": SPECS["target"]}
    with pytest.raises(Stop):
        galmerge.train(**link, epochs=2, run_dir="runs/a", on_epoch=_stop_after_first,
                       **TRAIN)
    assert _config(launch / "runs" / "a")["source"] == f"hdf5:{launch / 'data' / 'current.h5'}"
    _make_old(launch / "runs" / "a", link)  # an older run: read back through env.json
    monkeypatch.chdir(launch.parent / "elsewhere")
    assert galmerge.train(resume="../launch/runs/a", quiet=True)["epochs_run"] == 2


def test_a_study_moved_with_its_data_resumes(launch):
    pytest.importorskip("optuna")
    common = ["tune", "--strategy", "mmd", "--backbone", "deepmerge", "--epochs", "1",
              "--batch-size", "8", "--max-steps-per-epoch", "2", "--device", "cpu", "--quiet",
              "--sampler", "random", "--pruner", "none", *_specs(), "--study-dir", "study"]
    result = _invoke(*common, "--n-trials", "1")
    assert result.exit_code == 0, result.output
    _move(launch, "moved")
    result = _invoke(*common, "--n-trials", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in Path("study/trials").glob("[0-9]*")) == ["0000", "0001"]
