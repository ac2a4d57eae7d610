"""What a run records of its data, read again: ``train --resume RUN --source NEW`` (the run's
data moved apart from it, the same SHA-256) makes config.toml and env.json name NEW, so that
``evaluate RUN`` and a later ``--resume`` without ``--source`` find it, and the run trains on
bit for bit as if the data had stayed; ``train --config RUN/config.toml`` says in one warning
line when a data file RUN trained on holds other data now."""

from __future__ import annotations

import csv
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from eval_helpers import write_pair

import galmerge
from galmerge.cli import cli
from galmerge.models.model import read_checkpoint

SPECS = {"source": "hdf5:data/source.h5", "target": "hdf5:data/target.h5"}
TRAIN = dict(backbone="deepmerge", batch_size=8, device="cpu", quiet=True, patience=0,
             max_steps_per_epoch=2)


class Stop(Exception):
    """Ends a run after an epoch, leaving a last.pt to resume."""


def _stop(row: dict) -> None:
    raise Stop


@pytest.fixture
def launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder, holding data/source.h5 and data/target.h5; ``store`` beside it is
    where data moves to."""
    folder = tmp_path / "launch"
    write_pair(folder / "data", n=40)
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(folder)
    return folder


def _stopped_run(run: str, epochs: int = 2) -> None:
    """A run of ``epochs`` epochs stopped after its first (last.pt written, no summary)."""
    with pytest.raises(Stop):
        galmerge.train(**SPECS, epochs=epochs, run_dir=run, on_epoch=_stop, **TRAIN)


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _config(run: Path) -> dict:
    return tomllib.loads((run / "config.toml").read_text())


def _env(run: Path) -> dict:
    return json.loads((run / "env.json").read_text())


def _move(launch: Path, role: str) -> Path:
    """The run's ``role`` file moved apart from the project; its new path."""
    new = launch.parent / "store" / f"{role}.h5"
    shutil.move(launch / "data" / f"{role}.h5", new)
    return new


def _evaluate(run: str):
    return _invoke("evaluate", run, "--device", "cpu", "--bootstrap", "0",
                   "--embedding-points", "8", "--quiet")


@pytest.mark.parametrize("role", ["source", "target"])
def test_resume_with_the_data_at_its_new_place_records_it(launch, role):
    _stopped_run("runs/a")
    run = launch / "runs" / "a"
    before, env_before = _config(run), _env(run)
    new = _move(launch, role)
    other = launch.parent / "store" / "other.h5"  # other data: refused as before, nothing kept
    shutil.copy(launch / "data" / ("target.h5" if role == "source" else "source.h5"), other)
    config_bytes, env_bytes = (run / "config.toml").read_bytes(), (run / "env.json").read_bytes()
    result = _invoke("train", "--resume", "runs/a", f"--{role}", f"hdf5:{other}", "--quiet")
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and "SHA-256" in line and f"--{role}" in line, line
    assert (run / "config.toml").read_bytes() == config_bytes
    assert (run / "env.json").read_bytes() == env_bytes

    result = _invoke("train", "--resume", "runs/a", f"--{role}", f"hdf5:../store/{role}.h5",
                     "--quiet")
    assert result.exit_code == 0, result.output
    after = _config(run)
    assert after[role] == f"hdf5:{new}"  # absolute, as a run records its paths
    assert {k: v for k, v in after.items() if k != role} == \
        {k: v for k, v in before.items() if k != role}  # nothing else rewritten
    env = _env(run)
    meta = env["data"][role]["meta"]
    assert meta["file"] == str(new)
    assert meta["file_sha256"] == env_before["data"][role]["meta"]["file_sha256"]
    assert env["resumed"][-1]["data_moved"] == {
        role: {"from": before[role], "to": f"hdf5:{new}"}}
    assert env["run_dir"] == env_before["run_dir"]

    result = _evaluate("runs/a")  # no --source: config.toml names the data's new place
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr, result.stderr
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics[role] == f"hdf5:{new}"
    result = _invoke("train", "--resume", "runs/a", "--quiet")
    assert result.exit_code == 0, result.output


def _metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv without its timings (images/s), which no two runs share."""
    with (run / "metrics.csv").open(newline="") as fh:
        return [{k: v for k, v in row.items() if not k.endswith("per_s")}
                for row in csv.DictReader(fh)]


def test_a_run_resumed_with_its_data_moved_trains_on_bit_for_bit(launch):
    _stopped_run("runs/a", epochs=3)
    shutil.copytree(launch / "runs" / "a", launch / "runs" / "b")  # the same run, twice
    # a: resumed with its data where it was, stopped again after epoch 2, then finished
    with pytest.raises(Stop):
        galmerge.train(resume="runs/a", quiet=True, on_epoch=_stop)
    assert _invoke("train", "--resume", "runs/a", "--quiet").exit_code == 0
    # b: its data moved; resumed with --source at the new place, stopped after epoch 2, then
    # finished with no --source: config.toml names the new place
    new = _move(launch, "source")
    with pytest.raises(Stop):
        galmerge.train(resume="runs/b", source=f"hdf5:{new}", quiet=True, on_epoch=_stop)
    assert _config(launch / "runs" / "b")["source"] == f"hdf5:{new}"
    result = _invoke("train", "--resume", "runs/b", "--quiet")
    assert result.exit_code == 0, result.output
    a, b = launch / "runs" / "a", launch / "runs" / "b"
    assert len(_metrics(a)) == 3 and _metrics(a) == _metrics(b)
    weights_a, weights_b = (read_checkpoint(r / "last.pt")["model"] for r in (a, b))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def _warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "warning" in line]


def test_config_of_a_run_whose_data_changed_warns_in_one_line_and_trains(launch):
    galmerge.train(**SPECS, epochs=1, run_dir="runs/a", **TRAIN)
    again = ["train", "--config", "runs/a/config.toml", "--quiet"]
    result = _invoke(*again, "--run-dir", "runs/same")  # the run's own data: nothing to say
    assert result.exit_code == 0, result.output
    assert _warnings(result) == [], result.stderr

    file = launch / "data" / "source.h5"
    write_pair(launch / "other", n=40, seed=5)
    shutil.copyfile(launch / "other" / "source.h5", file)  # other data under the same name
    result = _invoke(*again, "--run-dir", "runs/changed")
    assert result.exit_code == 0, result.output
    lines = _warnings(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("galmerge train: warning: ") and str(file) in lines[0], lines[0]
    assert "changed since" in lines[0] and "SHA-256" in lines[0], lines[0]
    recorded = _env(launch / "runs" / "a")["data"]["source"]["meta"]["file_sha256"]
    now = _env(launch / "runs" / "changed")["data"]["source"]["meta"]["file_sha256"]
    assert now != recorded and (launch / "runs" / "changed" / "summary.json").is_file()

    # the file given here on purpose is the user's choice, not the run's data read again
    result = _invoke(*again, "--run-dir", "runs/given", "--source", "hdf5:data/source.h5")
    assert result.exit_code == 0, result.output
    assert _warnings(result) == [], result.stderr


def test_a_recorded_move_is_found_again_after_the_project_moves(tmp_path, monkeypatch):
    """Project p moved to q, then its data moved apart inside q and the resume recorded it:
    the run is re-anchored at q (config.toml's paths and env.json's run_dir), so after the
    whole project moves on to r the run resumes and evaluates without --source."""
    p = tmp_path / "p"
    write_pair(p / "data", n=40)
    monkeypatch.chdir(p)
    _stopped_run("runs/a", epochs=3)
    shutil.move(p, tmp_path / "q")
    q = tmp_path / "q"
    monkeypatch.chdir(q)
    (q / "store").mkdir()
    shutil.move(q / "data" / "source.h5", q / "store" / "source.h5")
    with pytest.raises(Stop):
        galmerge.train(resume="runs/a", source="hdf5:store/source.h5", quiet=True,
                       on_epoch=_stop)
    assert _env(q / "runs" / "a")["run_dir"] == str(q / "runs" / "a")
    assert _config(q / "runs" / "a")["target"] == f"hdf5:{q / 'data' / 'target.h5'}"
    shutil.move(q, tmp_path / "r")
    monkeypatch.chdir(tmp_path / "r")
    assert _evaluate("runs/a").exit_code == 0
    result = _invoke("train", "--resume", "runs/a", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "runs" / "a" / "summary.json").is_file()


def test_a_recorded_move_keeps_the_runs_source_only_stage_its_own(launch):
    """dann's layout: the run's source_only/ stage read the same data; it records the move
    too, so the stage evaluates, and `--config RUN/config.toml` still starts from it."""
    _stop_after = dict(strategy="dann", sets=["target_encoder=separate"])
    with pytest.raises(Stop):
        galmerge.train(**SPECS, epochs=2, run_dir="runs/a", on_epoch=_stop, **TRAIN,
                       **_stop_after)
    new = _move(launch, "source")
    result = _invoke("train", "--resume", "runs/a", "--source", f"hdf5:{new}", "--quiet")
    assert result.exit_code == 0, result.output
    stage = launch / "runs" / "a" / "source_only"
    assert _config(stage)["source"] == f"hdf5:{new}"
    assert _env(stage)["data"]["source"]["meta"]["file"] == str(new)
    assert _evaluate("runs/a/source_only").exit_code == 0
    result = _invoke("train", "--config", "runs/a/config.toml", "--run-dir", "runs/b",
                     "--quiet", "--max-steps-per-epoch", "2")
    assert result.exit_code == 0, result.output
    assert _config(launch / "runs" / "b")["init_from"] == str(stage / "best.pt")
    assert not (launch / "runs" / "b" / "source_only").exists()


def test_one_changed_file_read_as_both_roles_is_one_warning(launch):
    specs = {"source": "hdf5:data/source.h5", "target": "hdf5:data/source.h5"}
    galmerge.train(**specs, epochs=1, run_dir="runs/a", **TRAIN)
    write_pair(launch / "other", n=40, seed=5)
    shutil.copyfile(launch / "other" / "source.h5", launch / "data" / "source.h5")
    result = _invoke("train", "--config", "runs/a/config.toml", "--quiet", "--run-dir", "runs/b")
    assert result.exit_code == 0, result.output
    assert len(_warnings(result)) == 1, result.stderr


def test_a_copy_beside_its_original_keeps_its_record_of_where_it_was(tmp_path, monkeypatch):
    """A project copied (the original kept), the copy's data then moved apart and given on
    resume: the copy is not re-anchored (its other paths still name the original's files),
    so it still finds them once the original is gone."""
    p = tmp_path / "p"
    write_pair(p / "data", n=40)
    monkeypatch.chdir(p)
    _stopped_run("runs/a", epochs=3)
    q = tmp_path / "q"
    shutil.copytree(p, q)
    monkeypatch.chdir(q)
    (q / "store").mkdir()
    shutil.move(q / "data" / "source.h5", q / "store" / "source.h5")
    (p / "data" / "source.h5").unlink()  # the original's too: the recorded file is gone
    with pytest.raises(Stop):
        galmerge.train(resume="runs/a", source="hdf5:store/source.h5", quiet=True,
                       on_epoch=_stop)
    assert _env(q / "runs" / "a")["run_dir"] == str(p / "runs" / "a")
    shutil.rmtree(p)
    assert _evaluate("runs/a").exit_code == 0
    result = _invoke("train", "--resume", "runs/a", "--quiet")
    assert result.exit_code == 0, result.output
