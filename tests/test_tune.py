"""`galmerge tune`: tiny real studies (toy images in HDF5 files, tiny backbone, a few steps)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from train_toys import ToyPlugin, _NoNone, toy_sets

from galmerge.cli import cli
from galmerge.config.rundir import read_config
from galmerge.io import hdf5 as hdf5io
from galmerge.models.model import read_checkpoint, save_checkpoint
from galmerge.plugin.imageset import ImageSet

pytest.importorskip("optuna")

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "tune_script.py"
ORACLE_COLUMNS = ("oracle_target_val_accuracy", "oracle_target_test_accuracy")
# columns that may differ between two identical studies (wall time, paths, labelled oracle)
VOLATILE = (*ORACLE_COLUMNS, "source_test_accuracy", "duration_s", "run_dir")


@pytest.fixture
def toys(register_plugin, plugin_manager):
    plugin = _NoNone() if "none" in plugin_manager.components("strategies") else ToyPlugin()
    register_plugin(plugin, "toys")


def _write_pair(folder: Path, permute_target: bool = False) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    source, target = toy_sets(60, 60)
    if permute_target:
        perm = np.random.default_rng(7).permutation(len(target))
        target = ImageSet(images=target.images, labels=target.labels[torch.as_tensor(perm)],
                          ids=target.ids, bands=target.bands, survey=target.survey)  # fmt: skip
    hdf5io.write_imageset(folder / "source.h5", source)
    hdf5io.write_imageset(folder / "target.h5", target)
    return f"hdf5:{folder / 'source.h5'}", f"hdf5:{folder / 'target.h5'}"


def _args(source: str, target: str, study: Path, *extra: str) -> list[str]:
    return [
        "tune", "--source", source, "--target", target, "--strategy", "mmd", "--backbone",
        "tiny", "--study-dir", str(study), "--epochs", "2", "--batch-size", "8",
        "--max-steps-per-epoch", "2", "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def _trials(study: Path) -> list[dict[str, str]]:
    with (study / "trials.csv").open() as fh:
        return list(csv.DictReader(fh))


def _trained_reference(study: Path) -> Path:
    """The study's own source-only reference, which it trained to the end."""
    reference = study / "reference"
    assert (reference / "summary.json").is_file()
    assert 'strategy = "none"' in (reference / "config.toml").read_text()
    return reference


def _history(study: Path) -> list[tuple]:
    """Everything Optuna stored per trial: parameters, values, per-epoch values, state."""
    db = sqlite3.connect(study / "study.db")
    try:
        return [
            *db.execute("SELECT number, state FROM trials ORDER BY number"),
            *db.execute("SELECT trial_id, param_name, param_value FROM trial_params "
                        "ORDER BY trial_id, param_name"),  # fmt: skip
            *db.execute("SELECT trial_id, value FROM trial_values ORDER BY trial_id"),
            *db.execute("SELECT trial_id, step, intermediate_value FROM "
                        "trial_intermediate_values ORDER BY trial_id, step"),  # fmt: skip
        ]
    finally:
        db.close()


def test_tune_cli_writes_the_study_folder_and_best_toml_trains(toys, tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    space = tmp_path / "space.toml"
    space.write_text('lr = 0.002\n[mmd]\nweight = {type = "float", low = 0.5, high = 0.6}\n')
    study.mkdir()
    victims = {name: tmp_path / f"victim-{name}" for name in ("report.md", "history.png")}
    for name, victim in victims.items():  # links planted in a shared study folder
        victim.write_text("keep me")
        (study / name).symlink_to(victim)
    result = CliRunner().invoke(
        cli, _args(source, target, study, "--n-trials", "3", "--score", "im", "--space",
                   str(space))  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert all(victim.read_text() == "keep me" for victim in victims.values())
    for name in ("best.toml", "trials.csv", "report.md", "study.db", "history.png"):
        assert (study / name).is_file() and not (study / name).is_symlink(), name
    rows = _trials(study)
    assert [r["state"] for r in rows] == ["complete"] * 3
    assert {"score", "param_mmd.weight", "param_weight_decay", "param_epochs",
            *ORACLE_COLUMNS} <= set(rows[0])  # fmt: skip
    assert "param_lr" not in rows[0]  # fixed by the space file
    assert rows[0]["param_domain_batchnorm"] == "separate"  # the default layout, then searched
    assert {r["param_domain_batchnorm"] for r in rows} <= {"separate", "joint"}
    # label-free agreement of each complete trial with the others' vote, a share in [0, 1]
    assert all(0.0 <= float(r["agreement"]) <= 1.0 for r in rows)
    assert all(0.5 <= float(r["param_mmd.weight"]) <= 0.6 for r in rows)
    # trial 0 runs the defaults that lie inside the space (mmd.weight 1.0 does not)
    assert [r["defaults"] for r in rows] == ["True", "False", "False"]
    assert (float(rows[0]["param_weight_decay"]), rows[0]["param_epochs"]) == (1e-3, "2")
    assert all((study / r["run_dir"] / "summary.json").is_file() for r in rows)
    best = min(rows, key=lambda r: float(r["score"]))  # im is minimised
    toml = (study / "best.toml").read_text()
    assert toml == (study / best["run_dir"] / "config.toml").read_text()
    assert "lr = 0.002\n" in toml
    assert "oracle" in (study / "report.md").read_text().lower()
    import galmerge

    assert (f"by galmerge {galmerge.__version__}" in (study / "report.md").read_text()
            and "TPESampler, MedianPruner, study seed " in (study / "report.md").read_text())
    again = CliRunner().invoke(
        cli, ["train", "--config", str(study / "best.toml"), "--run-dir", str(tmp_path / "r"),
              "--quiet"]  # fmt: skip
    )
    assert again.exit_code == 0, again.output
    # rerunning a finished study adds no trial
    result = CliRunner().invoke(
        cli, _args(source, target, study, "--n-trials", "3", "--score", "im", "--space",
                   str(space))  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert len(_trials(study)) == 3
    # ... and the same folder with other settings is refused, not mixed
    result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "3"))
    assert result.exit_code != 0
    assert "holds a study with other settings (score: 'im' there, 'im_src' now)" in result.output
    result = CliRunner().invoke(
        cli, _args(source, target, study, "--n-trials", "3", "--score", "im", "--space",
                   str(space), "--batch-size", "4")  # fmt: skip
    )
    assert "(base.batch_size: 8 there, 4 now)" in result.output, result.output


def test_timeout_and_a_busy_study_folder(toys, tmp_path):
    import fcntl

    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    result = CliRunner().invoke(
        cli, _args(source, target, study, "--n-trials", "3", "--timeout", "0.000001")
    )
    assert result.exit_code == 0, result.output
    assert len(_trials(study)) <= 1  # no trial starts once the time is up
    with (study / ".tune.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `galmerge tune` holds it
        result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "3"))
    assert result.exit_code != 0
    assert "another galmerge tune is running on" in result.output


def test_permuted_target_labels_give_the_same_study_bit_for_bit(toys, tmp_path):
    """The objective never sees target labels: permuting them changes only the oracle."""
    from galmerge.training.tuning import tune

    studies = []
    oracles = []
    for name, permute in (("a", False), ("b", True)):
        source, target = _write_pair(tmp_path / name / "data", permute_target=permute)
        study = tmp_path / name / "study"
        tune(source, target, "mmd", 3, study, seed=1, score="dev", backbone="tiny", epochs=2,
             batch_size=8, max_steps_per_epoch=2, device="cpu", quiet=True)  # fmt: skip
        rows = _trials(study)
        oracles.append([r["oracle_target_test_accuracy"] for r in rows])
        studies.append((
            _history(study),
            [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows],
            # the trials' shared source stage lies in each study's own folder
            [line.replace(str(study), "STUDY")
             for line in (study / "best.toml").read_text().splitlines()
             if not line.startswith(("source =", "target ="))],
        ))  # fmt: skip
    assert oracles[0] != oracles[1]  # the labels did change what the oracle sees
    assert studies[0][0] == studies[1][0]
    assert studies[0][1] == studies[1][1]
    assert studies[0][2] == studies[1][2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_a_killed_study_resumes_and_retries_the_interrupted_trial(tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    args = _args(source, target, study, "--n-trials", "3", "--pruner", "none")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--slow", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    # kill during the second trial, once it has written an epoch
    while not (study / "trials" / "0001" / "metrics.csv").exists():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _trials(study)
    states = [r["state"] for r in rows]
    assert states.count("complete") == 3
    assert states[1] == "fail" and "interrupted" in rows[1]["error"]
    # the interrupted configuration ran again, right after the restart
    retry = rows[2]
    assert {k: v for k, v in retry.items() if k.startswith("param_")} == {
        k: v for k, v in rows[1].items() if k.startswith("param_")
    }
    assert (study / "best.toml").is_file()


@pytest.mark.slow
def test_two_processes_share_one_study_through_storage(tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    study.mkdir()
    url = f"sqlite:///{study / 'shared.db'}"
    args = _args(source, target, study, "--n-trials", "4", "--storage", url, "--pruner", "none")
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), *args], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = _trials(study)
    numbers = [int(r["trial"]) for r in rows]
    assert len(numbers) == len(set(numbers)) >= 4
    assert all(r["state"] == "complete" for r in rows)
    assert len({r["run_dir"] for r in rows}) == len(rows)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-trials", "0"], "--n-trials must be"),
        (["--n-trials", "2", "--score", "oracle_target_accuracy"], "unknown --score"),
        (["--n-trials", "2", "--score", "nope"], "unknown --score"),
        (["--n-trials", "2", "--pruner", "nope"], "unknown --pruner"),
        (["--n-trials", "2", "--timeout", "0"], "--timeout must be > 0"),
        (["--n-trials", "2", "--device", "xpu"], "unknown --device 'xpu'"),
        (["--n-trials", "2", "--storage", "nosuch://host/db"], "--storage nosuch://host/db: cannot"),
        (["--n-trials", "2", "--storage", "nosuch://me:s3cret@host/db"],
         "--storage nosuch://***@host/db: cannot"),  # a password (or user) is never printed
        # nothing a trial trains may read target labels: not its best epoch, not its stopping
        (["--n-trials", "2", "--set", "select_by=oracle_target_accuracy"],
         "select_by = 'oracle_target_accuracy'"),
        (["--n-trials", "2", "--set", "select_by=entropy"], "select_by = 'entropy'"),
        (["--n-trials", "2", "--set", "stop_by=oracle_target_accuracy"],
         "stop_by = 'oracle_target_accuracy' reads target labels"),
    ],
)
def test_bad_arguments_are_one_line_errors(toys, tmp_path, extra, message):
    source, target = _write_pair(tmp_path / "data")
    result = CliRunner().invoke(cli, _args(source, target, tmp_path / "s", *extra))
    assert result.exit_code != 0
    assert message in result.output and "s3cret" not in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_mistyped_storage_leaves_the_study_folder_free_for_the_corrected_command(
        toys, tmp_path):
    """storage.json bound the folder to the bad URL before it was shown to open: the corrected
    command was refused, and told to pass the bad URL again."""
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "s"
    bad = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "1", "--storage",
                                        "bad://x", "--strategy", "none"))
    assert bad.exit_code != 0 and "--storage bad://x: cannot open it" in bad.output
    assert not (study / "storage.json").exists()
    good = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "1",
                                         "--max-steps-per-epoch", "1", "--strategy", "none"))
    assert good.exit_code == 0, good.output
    assert [r["state"] for r in _trials(study)] == ["complete"]
    assert "bad://" not in (study / "storage.json").read_text()


def test_a_one_step_warm_up_trains_in_a_study(toys, tmp_path):
    # 2 steps at pct_start 0.5: OneCycleLR's warm-up of one step divided by zero, a traceback
    source, target = _write_pair(tmp_path / "data")
    args = _args(source, target, tmp_path / "s", "--n-trials", "1", "--max-steps-per-epoch",
                 "1", "--set", "schedule.pct_start=0.5", "--strategy", "none")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [r["state"] for r in _trials(tmp_path / "s")] == ["complete"]


def test_a_training_run_directory_is_not_taken_as_a_study_folder(toys, tmp_path):
    source, target = _write_pair(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('strategy = "none"\n')
    result = CliRunner().invoke(cli, _args(source, target, run, "--n-trials", "1"))
    assert result.exit_code != 0 and "is a training run directory" in result.output
    assert sorted(p.name for p in run.iterdir()) == ["config.toml"]


def test_a_damaged_study_database_is_named_as_the_studys_own_file(toys, tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "s"
    study.mkdir()
    db = study / "study.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x07" * 4000)  # a database cut and overwritten
    result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "1"))
    line = result.output.strip()
    assert result.exit_code != 0 and "\n" not in line, line
    assert f"{db}: the study's database cannot be opened" in line and "--storage" not in line
    assert db.read_bytes()[:16] == b"SQLite format 3\x00"  # left as it was


def test_a_study_others_may_write_to_is_not_continued(toys, tmp_path):
    """Its trials would be continued as this user's: a study folder or study.db others may
    write is refused in one line (`galmerge.io.private`), as `train --resume` refuses a run."""
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "s"
    assert CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "1")).exit_code == 0
    before = (study / "study.db").read_bytes()
    for path in (study, study / "study.db"):
        mode = path.stat().st_mode
        path.chmod(mode | 0o002)
        result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "2"))
        line = result.output.strip()
        assert result.exit_code != 0 and "\n" not in line, line
        assert f"{path} is writable by every user" in line and f"chmod go-w {path}" in line
        path.chmod(mode)
    assert (study / "study.db").read_bytes() == before  # nothing was run
    assert CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "2")).exit_code == 0


def test_a_studys_reference_others_may_write_to_is_not_reused(toys, tmp_path):
    """The finished source-only reference starts every trial (its best.pt): reused by a
    continued study only when nobody else may write it, as a resumed run."""
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "s"
    args = _args(source, target, study, "--max-source-drop", "100", "--n-trials")
    assert CliRunner().invoke(cli, [*args, "1"]).exit_code == 0
    best = _trained_reference(study) / "best.pt"
    best.chmod(best.stat().st_mode | 0o002)
    result = CliRunner().invoke(cli, [*args, "2"])
    line = result.output.strip()
    assert result.exit_code != 0 and "\n" not in line, line
    assert f"{best} is writable by every user" in line
    assert [r["state"] for r in _trials(study)].count("complete") == 1  # nothing was run


def test_a_second_study_in_one_folder_is_refused(toys, tmp_path):
    """A --storage study beside an embedded one (or the reverse) overwrote the first study's
    trials.csv, best.toml and report."""
    source, target = _write_pair(tmp_path / "data")
    plain, shared = tmp_path / "plain", tmp_path / "shared"
    url = f"sqlite:///{tmp_path / 'other.db'}"
    first = ["--n-trials", "1", "--pruner", "none", "--epochs", "1"]
    assert CliRunner().invoke(cli, _args(source, target, plain, *first)).exit_code == 0
    assert CliRunner().invoke(cli, _args(source, target, shared, *first, "--storage", url)
                              ).exit_code == 0
    before = (plain / "trials.csv").read_bytes()
    result = CliRunner().invoke(cli, _args(source, target, plain, *first, "--storage", url))
    assert result.exit_code != 0 and "holds the study of another database" in result.output
    assert (plain / "trials.csv").read_bytes() == before
    result = CliRunner().invoke(cli, _args(source, target, shared, *first))
    assert result.exit_code != 0 and "holds the study of another database" in result.output
    assert not (shared / "study.db").exists()
    # nor a study in another --storage database (nothing else told them apart)
    url2 = f"sqlite:///{tmp_path / 'third.db'}"
    result = CliRunner().invoke(cli, _args(source, target, shared, *first, "--storage", url2))
    assert result.exit_code != 0 and "holds the study of another database" in result.output
    assert str(tmp_path / "other.db") in result.output and not (tmp_path / "third.db").exists()
    # folders from before the record: told apart by what they hold
    for folder in (plain, shared):
        (folder / "storage.json").unlink()
    result = CliRunner().invoke(cli, _args(source, target, plain, *first, "--storage", url))
    assert result.exit_code != 0 and "holds a study of its own (study.db)" in result.output
    result = CliRunner().invoke(cli, _args(source, target, shared, *first))
    assert result.exit_code != 0 and "kept in a --storage database" in result.output
    assert not (shared / "study.db").exists()
    # the same study goes on as before, and an embedded study may name its own file
    again = ["--n-trials", "2", "--pruner", "none", "--epochs", "1"]
    assert CliRunner().invoke(cli, _args(source, target, shared, *again, "--storage", url)
                              ).exit_code == 0
    assert CliRunner().invoke(cli, _args(source, target, plain, *again, "--storage",
                                         f"sqlite:///{plain / 'study.db'}")).exit_code == 0


def test_env_json_records_the_command_line_without_passwords(monkeypatch):
    from galmerge.config.rundir import environment

    monkeypatch.setattr(sys, "argv", ["galmerge", "tune", "--storage",
                                      "postgresql://me:s3cret@db.example:5432/studies",
                                      "--study-dir", "s"])
    assert environment("cpu")["argv"] == ["galmerge", "tune", "--storage",
                                          "postgresql://***@db.example:5432/studies",
                                          "--study-dir", "s"]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("lr = {type = 'float', low = 1, high = 0.1}", "low <= high"),
        ("lr = {type = 'float', low = 0, high = 0.1, log = true}", "low must be > 0"),
        ("lr = {type = 'gauss'}", "has type 'gauss'"),
        ("[dann]\nweight = {type = 'float', low = 0.1, high = 1}", "'dann' is not a strategy"),
        ("[mmd]\nsigma = {type = 'float', low = 0.1, high = 1}", "has no option 'sigma'"),
        ("momentum = 0.9", "unknown setting 'momentum'"),
        ("lr = [", "not valid TOML"),
        ("lr = {type = 'float', low = 0.1, high = 1, step = 0}", "lr has step = 0; a step"),
        ("lr = {type = 'float', low = 0.1, high = 1, step = -0.1}", "has step = -0.1"),
        ("lr = {type = 'float', low = 0.1, high = 1, step = 'x'}", "has step = 'x'"),
        ("epochs = {type = 'int', low = 1, high = 2, step = 0.5}",
         "has step = 0.5; a step is a whole number > 0"),
        ("lr = {type = 'float', low = 0.1, high = 1, log = true, step = 0.1}",
         "has log = true and a step"),
        ("lr = {type = 'float', low = 0.1, high = 1, log = 'no'}", "has log = 'no'; write"),
        ("lr = {type = 'float', low = -0.01, high = 0.01}",
         "lr = -0.01 is not a valid setting (lr must be a finite number >= 0"),
        ("epochs = {type = 'int', low = 0, high = 2}", "epochs = 0 is not a valid setting"),
        ("[schedule]\nkind = {type = 'categorical', choices = ['onecycle', 'bogus']}",
         "schedule.kind = 'bogus' is not a valid setting"),
        ("[mmd]\nkernel = {type = 'categorical', choices = [[1, 2], {a = 1}]}",
         "mmd.kernel has choice [1, 2]; choices are strings"),
    ],
)
def test_bad_space_files_are_one_line_errors(toys, tmp_path, space, message):
    source, target = _write_pair(tmp_path / "data")
    path = tmp_path / "space.toml"
    path.write_text(space + "\n")
    result = CliRunner().invoke(
        cli, _args(source, target, tmp_path / "s", "--n-trials", "1", "--space", str(path))
    )
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "s" / "study.db").exists()  # nothing stored: a fixed space is taken


def test_unwritable_study_dir_and_missing_optuna_are_one_line_errors(
    toys, tmp_path, monkeypatch
):
    source, target = _write_pair(tmp_path / "data")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(cli, _args(source, target, blocker / "s", "--n-trials", "1"))
    assert result.exit_code != 0 and "cannot write there" in result.output
    monkeypatch.setitem(sys.modules, "optuna", None)
    result = CliRunner().invoke(cli, _args(source, target, tmp_path / "s", "--n-trials", "1"))
    assert result.exit_code != 0
    assert "pip install 'galmerge[tune]'" in result.output
    assert "Traceback" not in result.output


def test_a_plugin_strategy_brings_its_search_space(register_plugin, plugin_manager, tmp_path):
    from galmerge.config.resolve import resolve_config
    from galmerge.plugin.hookspecs import hookimpl
    from galmerge.plugin.records import Strategy
    from galmerge.training.tuning import resolve_space

    class Plugin(ToyPlugin):
        @hookimpl
        def register_strategies(self):
            base = [r for r in ToyPlugin.register_strategies(self) if r.name == "meangap"][0]
            return [Strategy(name="gap2", description="test", build=base.build,
                             defaults=base.defaults,
                             search_space={"power": {"type": "categorical",
                                                     "choices": [1.0, 2.0]}})]  # fmt: skip

    register_plugin(Plugin() if "none" not in plugin_manager.components("strategies")
                    else type("P", (Plugin, _NoNone), {})(), "toys")  # fmt: skip
    config = resolve_config(file={"source": "a", "target": "b", "strategy": "gap2+mmd",
                                  "backbone": "tiny", "epochs": 4})  # fmt: skip
    space, fixed = resolve_space(config)
    assert space["gap2.power"] == {"type": "categorical", "choices": [1.0, 2.0]}
    assert space["mmd.weight"]["log"] is True
    assert space["epochs"] == {"type": "int", "low": 2, "high": 4, "log": False}
    # the BatchNorm layout is searched when a strategy forwards the target ...
    assert space["domain_batchnorm"] == {"type": "categorical", "choices": ["separate", "joint"]}
    space, fixed = resolve_space(config, {"gap2": {"power": 3.0}, "epochs": 4,
                                          "domain_batchnorm": "joint"})
    assert "gap2.power" not in space and "domain_batchnorm" not in space
    assert fixed == {"gap2.power": 3.0, "epochs": 4, "domain_batchnorm": "joint"}
    from galmerge.training.tuning import params_layer
    assert params_layer(fixed, config)["domain_batchnorm"] == "joint"
    # ... and not for source-only training, where it changes nothing
    alone = resolve_config(file={"source": "a", "target": "b", "strategy": "none",
                                 "backbone": "tiny", "epochs": 4})  # fmt: skip
    assert "domain_batchnorm" not in resolve_space(alone)[0]


def test_train_on_epoch_sees_each_row_and_its_exception_propagates(toys, tmp_path):
    import galmerge

    source, target = toy_sets(40, 40)
    rows: list[dict] = []

    class Stop(Exception):
        pass

    def on_epoch(row: dict) -> None:
        rows.append(row)
        assert (tmp_path / "r" / "metrics.csv").read_text().count("\n") == len(rows) + 1
        if len(rows) == 2:
            raise Stop

    with pytest.raises(Stop):
        galmerge.train(source=source, target=target, strategy="mmd", backbone="tiny", epochs=4,
                       batch_size=8, max_steps_per_epoch=2, device="cpu", quiet=True,
                       run_dir=tmp_path / "r", on_epoch=on_epoch)  # fmt: skip
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "score_im_src" in rows[0] and "target_val_accuracy" in rows[0]


def test_a_link_planted_at_the_study_lock_is_never_followed(toys, tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    study.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (study / ".tune.lock").symlink_to(victim)  # the old lock opened it with "w": truncated
    result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "1"))
    assert result.exit_code != 0 and "symbolic link" in result.output
    assert victim.read_text() == "keep me"


def test_source_guard_trains_a_reference_queues_milder_trials_and_keeps_the_guard(
    toys, tmp_path
):
    import optuna

    from galmerge.training import tuning

    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    # (the default median pruner: the ladder's trials are never pruned)
    result = CliRunner().invoke(
        cli, _args(source, target, study, "--n-trials", "4", "--score", "im",
                   "--max-source-drop", "100", "--sampler", "random")  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    reference = _trained_reference(study)
    rows = _trials(study)
    # trial 0: the defaults (mmd weight 1.0); then the ladder x 1/2, 1/3, 1/6 of the weight
    weights = [float(r["param_mmd.weight"]) for r in rows]
    assert weights == pytest.approx([1.0, 0.5, 1 / 3, 1 / 6])
    assert [r["state"] for r in rows] == ["complete"] * 4
    ref_acc = next(r for r in _metrics(reference) if r["epoch"] == _best_epoch(reference))
    for r in rows:
        drop = 100 * (ref_acc["source_val_accuracy"] - float(r["at_best_source_val_accuracy"]))
        assert float(r["source_drop_points"]) == pytest.approx(drop)
        assert r["feasible"] == "True"  # a 100-point guard keeps every trial
    best = min(rows, key=lambda r: float(r["score"]))
    assert (study / "best.toml").read_text() == (study / best["run_dir"] / "config.toml").read_text()
    assert "Source guard (`--max-source-drop 100`)" in (study / "report.md").read_text()
    # the same command with the reference given explicitly is the same study: nothing added
    again = CliRunner().invoke(
        cli, _args(source, target, study, "--n-trials", "4", "--score", "im",
                   "--max-source-drop", "100", "--sampler", "random",
                   "--reference", str(reference))  # fmt: skip
    )
    assert again.exit_code == 0, again.output
    assert len(_trials(study)) == 4
    # a guard no trial can keep: best.toml is the source-only reference
    loaded = optuna.load_study(study_name=tuning.STUDY_NAME,
                               storage=f"sqlite:///{study / 'study.db'}")  # fmt: skip
    guard = {"max_source_drop": -1e6, "reference": str(reference),
             "reference_source_val_accuracy": ref_acc["source_val_accuracy"]}  # fmt: skip
    summary = tuning.write_outputs(study, loaded, "im", guard=guard)
    assert summary["best_trial"] is None and summary["guard"]["best_is_reference"]
    assert (study / "best.toml").read_text() == (reference / "config.toml").read_text()
    assert "No trial kept the guard" in (study / "report.md").read_text()
    assert all(r["feasible"] == "False" for r in _trials(study))


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    from galmerge.config.rundir import read_metrics

    return read_metrics(run_dir)


def _best_epoch(run_dir: Path) -> int:
    import json

    return int(json.loads((run_dir / "summary.json").read_text())["best_epoch"])


def test_source_guard_bad_inputs_are_one_line_errors(toys, tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    other = _write_pair(tmp_path / "other")[0]

    def run(*extra: str) -> str:
        result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "1", *extra))
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        return result.output

    assert "--max-source-drop must be a number of accuracy points >= 0" in run(
        "--max-source-drop", "-1")
    assert "give --max-source-drop POINTS too" in run("--reference", str(tmp_path))
    assert "with --storage needs --reference RUN_DIR" in run(
        "--max-source-drop", "3", "--storage", f"sqlite:///{tmp_path / 'shared.db'}")
    assert "no such run directory" in run("--max-source-drop", "3", "--reference",
                                          str(tmp_path / "nope"))  # fmt: skip
    assert "is not a finished galmerge run" in run("--max-source-drop", "3", "--reference",
                                                   str(tmp_path / "data"))  # fmt: skip
    adapted = tmp_path / "adapted"
    CliRunner().invoke(cli, ["train", "--source", source, "--target", target, "--strategy", "mmd",
                             "--backbone", "tiny", "--epochs", "1", "--batch-size", "8",
                             "--max-steps-per-epoch", "2", "--device", "cpu", "--run-dir",
                             str(adapted), "--quiet"])  # fmt: skip
    assert "the reference must be source only" in run("--max-source-drop", "3", "--reference",
                                                      str(adapted))  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    CliRunner().invoke(cli, ["train", "--source", other, "--target", target, "--strategy", "none",
                             "--backbone", "tiny", "--epochs", "1", "--batch-size", "8",
                             "--max-steps-per-epoch", "2", "--device", "cpu", "--run-dir",
                             str(elsewhere), "--quiet"])  # fmt: skip
    assert "the reference must see the same source validation images" in run(
        "--max-source-drop", "3", "--reference", str(elsewhere))


def test_trials_with_their_own_target_encoder_share_one_source_stage(toys, tmp_path):
    """ADDA's layout in a study: the trials start from the study's source-only reference,
    trained once, instead of each training its own stage; best.toml records that start."""
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    result = CliRunner().invoke(
        cli, _args(source, target, study, "--n-trials", "2", "--sampler", "random",
                   "--pruner", "none", "--set", "target_encoder=separate",
                   "--set", "stop_by=im")  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    reference = _trained_reference(study)
    rows = _trials(study)
    assert [r["state"] for r in rows] == ["complete"] * 2
    # joint batches cannot feed a separate encoder: the layout is not searched, but fixed
    assert "param_domain_batchnorm" not in rows[0]
    start = str(reference / "best.pt")
    for r in rows:
        run = study / r["run_dir"]
        assert not (run / "source_only").exists()  # no stage of its own
        config = (run / "config.toml").read_text()
        assert f'init_from = "{start}"' in config and 'target_encoder = "separate"' in config
        assert 'domain_batchnorm = "separate"' in config
    assert f'init_from = "{start}"' in (study / "best.toml").read_text()
    # the reference is the source-only stage `train` makes for the same settings, weights and
    # all (without the adaptation's stop rule, which reads the target)
    run = tmp_path / "adda"
    result = CliRunner().invoke(cli, [
        "train", "--source", source, "--target", target, "--strategy", "mmd", "--backbone",
        "tiny", "--epochs", "2", "--batch-size", "8", "--max-steps-per-epoch", "2", "--device",
        "cpu", "--quiet", "--set", "target_encoder=separate", "--set", "stop_by=im",
        "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    stage = read_config(run / "source_only")
    assert read_config(reference) == stage and stage["strategy"] == "none"
    ours, theirs = (read_checkpoint(p / "best.pt")["model"] for p in (reference, run / "source_only"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # a shared encoder needs no stage: no reference is trained
    shared = tmp_path / "shared"
    result = CliRunner().invoke(
        cli, _args(source, target, shared, "--n-trials", "1", "--pruner", "none",
                   "--set", "target_encoder=shared"))
    assert result.exit_code == 0, result.output
    assert not (shared / "reference").exists()
    assert 'init_from = ""' in (shared / "best.toml").read_text()


def test_a_resumed_study_refuses_another_reference_for_its_source_stage(toys, tmp_path):
    """Trials with their own target encoder start from one source stage: a resumed study given
    its own reference by path resumes; given another source-only run it is refused in one line
    before any trial, even where both references score the same source accuracy (the guard's
    record), as tiny runs do: its later trials would have started from other weights."""
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    fast = ("--sampler", "random", "--pruner", "none", "--set", "target_encoder=separate",
            "--set", "stop_by=im", "--max-source-drop", "100")

    def tune(n: str, *extra: str):
        return CliRunner().invoke(cli, _args(source, target, study, "--n-trials", n, *fast,
                                             *extra))

    result = tune("1")
    assert result.exit_code == 0, result.output
    reference = _trained_reference(study)
    result = tune("2", "--reference", str(reference))
    assert result.exit_code == 0, result.output
    done = [r for r in _trials(study) if r["state"] != "waiting"]
    # the same run with one weight changed: the same record (seed, metrics, accuracy), other
    # weights, as a reference retrained in place or copied from another machine's study
    other = tmp_path / "other"
    shutil.copytree(reference, other)
    checkpoint = read_checkpoint(other / "best.pt")
    first = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
    checkpoint["model"][first] = checkpoint["model"][first] + 1.0
    checkpoint.pop("sha256", None)
    save_checkpoint(other / "best.pt", checkpoint)
    result = tune("3", "--reference", str(other))
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "is another" in line and "--reference" in line, line
    assert [r for r in _trials(study) if r["state"] != "waiting"] == done


def _sampled(study: Path) -> list[dict[str, str]]:
    """The sampled parameters of each trial (trial 0 runs the defaults)."""
    return [{k: v for k, v in r.items() if k.startswith("param_")} for r in _trials(study)]


def test_a_resumed_study_and_a_second_worker_sample_new_points(toys, tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    fast = ("--sampler", "random", "--pruner", "none", "--epochs", "1")
    for n in ("2", "3"):  # a rerun with a larger --n-trials continues the study
        result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", n, *fast))
        assert result.exit_code == 0, result.output
    params = _sampled(study)
    assert len(params) == 3 and params[2] != params[1]
    # two workers on shared storage, starting at the same point, draw apart
    firsts = []
    for name in ("w1", "w2"):
        folder = tmp_path / name
        url = f"sqlite:///{folder / 'shared.db'}"
        folder.mkdir()
        result = CliRunner().invoke(
            cli, _args(source, target, folder, "--n-trials", "2", "--storage", url, *fast))
        assert result.exit_code == 0, result.output
        firsts.append(_sampled(folder)[1])
    assert firsts[0] != firsts[1]


def test_best_toml_names_its_start_by_an_absolute_path(toys, tmp_path, monkeypatch):
    """A study run from a relative --study-dir: its best.toml trains from any folder."""
    source, target = _write_pair(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, _args(source, target, Path("study"), "--n-trials", "1", "--pruner", "none",
                   "--epochs", "1", "--set", "target_encoder=separate"))
    assert result.exit_code == 0, result.output
    best = tmp_path / "study" / "best.toml"
    start = str(tmp_path / "study" / "reference" / "best.pt")
    assert f'init_from = "{start}"' in best.read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(cli, ["train", "--config", str(best), "--run-dir", "r", "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_config(elsewhere / "r")["init_from"] == start


def test_a_storage_trials_own_source_stage_is_named_by_an_absolute_path(toys, tmp_path,
                                                                        monkeypatch):
    """With --storage and no --reference each trial trains its own stage: best.toml names it
    absolutely too, whatever folder the worker ran in."""
    source, target = _write_pair(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, _args(source, target, Path("study"), "--n-trials", "1", "--pruner", "none",
                   "--epochs", "1", "--set", "target_encoder=separate",
                   "--storage", f"sqlite:///{tmp_path / 'shared.db'}"))
    assert result.exit_code == 0, result.output
    start = str(tmp_path / "study" / "trials" / "0000" / "source_only" / "best.pt")
    assert f'init_from = "{start}"' in (tmp_path / "study" / "best.toml").read_text()


def test_best_toml_with_another_seed_trains_its_own_source_stage(toys, tmp_path):
    """train --config STUDY/best.toml --seed 2 must not start from the study's seed-0
    reference; without such a setting best.toml keeps the reference (the trial it records)."""
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    result = CliRunner().invoke(
        cli, _args(source, target, study, "--n-trials", "1", "--pruner", "none",
                   "--epochs", "1", "--set", "target_encoder=separate"))
    assert result.exit_code == 0, result.output
    start = str(study / "reference" / "best.pt")
    best = str(study / "best.toml")
    same = tmp_path / "same"
    result = CliRunner().invoke(cli, ["train", "--config", best, "--run-dir", str(same)])
    assert result.exit_code == 0, result.output
    assert "note: init_from" not in result.output
    assert read_config(same)["init_from"] == start and not (same / "source_only").exists()
    other = tmp_path / "seed2"
    result = CliRunner().invoke(cli, ["train", "--config", best, "--seed", "2", "--run-dir",
                                      str(other)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"note: init_from {start} is the study's source-only start for seed = 0, not 2" \
        in result.output
    assert read_config(other)["init_from"] == str(other / "source_only" / "best.pt")
    assert read_config(other / "source_only")["seed"] == 2


def test_a_plain_tune_is_refused_while_a_storage_worker_is_live(toys, tmp_path):
    """A plain tune fails and re-queues RUNNING trials at start: while a --storage worker works
    on the folder (it holds a shared lock) it must not start, and a worker must not start while
    a plain tune holds the folder; workers share it."""
    import fcntl

    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    study.mkdir()
    url = f"sqlite:///{study / 'study.db'}"
    fast = ("--n-trials", "1", "--pruner", "none", "--epochs", "1")
    with (study / ".tune.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)  # as a live --storage worker holds it
        result = CliRunner().invoke(cli, _args(source, target, study, *fast))
        assert result.exit_code != 0
        assert "another galmerge tune is running on" in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not (study / "trials").exists()
        result = CliRunner().invoke(cli, _args(source, target, study, *fast, "--storage", url))
        assert result.exit_code == 0, result.output  # a second worker joins
        fcntl.flock(fh, fcntl.LOCK_UN)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a plain tune holds it
        result = CliRunner().invoke(cli, _args(source, target, study, *fast, "--storage", url))
        assert result.exit_code != 0
        assert "a galmerge tune without --storage is running on" in result.output


def test_study_folders_on_other_machines_sharing_a_storage_write_best_toml(toys, tmp_path):
    """Machines sharing --storage each have their own --study-dir: the best trial's folder may
    be on another, and its config comes from the study."""
    source, target = _write_pair(tmp_path / "data")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    fast = ("--pruner", "none", "--epochs", "1", "--storage", url)
    a, b = tmp_path / "mA", tmp_path / "mB"
    result = CliRunner().invoke(cli, _args(source, target, a, "--n-trials", "1", *fast))
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, _args(source, target, b, "--n-trials", "1", *fast))
    assert result.exit_code == 0, result.output  # trial 0 ran in mA only
    assert not (b / "trials" / "0000").exists()
    assert (b / "best.toml").read_text() == (a / "trials" / "0000" / "config.toml").read_text()


def _interrupt_first_trial(study: Path, args: list[str], sig: int) -> None:
    """Run ``args`` slowly and send ``sig`` during trial 0 (the defaults), once it wrote an
    epoch."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--slow", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (study / "trials" / "0000" / "metrics.csv").exists():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    proc.communicate(timeout=120)


@pytest.mark.slow
def test_a_retried_defaults_trial_is_still_the_defaults_trial(tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    args = _args(source, target, study, "--n-trials", "1", "--pruner", "none")
    _interrupt_first_trial(study, args, signal.SIGKILL)
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _trials(study)
    assert [r["state"] for r in rows] == ["fail", "complete"]
    assert [r["defaults"] for r in rows] == ["True", "True"]


@pytest.mark.slow
def test_ctrl_c_during_a_trial_queues_it_again(tmp_path):
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    args = _args(source, target, study, "--n-trials", "1", "--pruner", "none")
    _interrupt_first_trial(study, args, signal.SIGINT)
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _trials(study)
    assert [r["state"] for r in rows] == ["fail", "complete"]
    assert rows[0]["error"] == "interrupted (Ctrl-C)"
    assert [r["defaults"] for r in rows] == ["True", "True"]
    assert _sampled(study)[1] == _sampled(study)[0]


def test_an_int_log_range_may_name_its_default_step():
    # Optuna takes log with an int range's step 1 (its default); only other steps are refused
    from galmerge.config.resolve import resolve_config
    from galmerge.errors import GalmergeError
    from galmerge.training.tuning import resolve_space

    base = resolve_config(cli={"strategy": "none", "source": "synthetic:illustris",
                              "target": "synthetic:sdss"})
    dims, _ = resolve_space(base, {"epochs": {"type": "int", "low": 1, "high": 8, "log": True,
                                              "step": 1}})
    assert dims["epochs"]["log"] is True and dims["epochs"]["step"] == 1
    with pytest.raises(GalmergeError, match="log = true and a step"):
        resolve_space(base, {"epochs": {"type": "int", "low": 1, "high": 8, "log": True,
                                        "step": 2}})


def test_a_resumed_study_starts_its_trials_from_the_same_init_from_checkpoint(
        toys, tmp_path, monkeypatch):
    """A study whose trials start from init_from resumes with that checkpoint however spelt
    (relative, absolute, its best.pt: "base.init_from differs" before), and is refused in one
    line naming init_from when the checkpoint is another (retrained in place, or another run):
    the study's later trials would have started from other weights unnoticed."""
    import shutil

    monkeypatch.chdir(tmp_path)
    source, target = _write_pair(tmp_path / "data")
    train = ["train", "--source", source, "--target", target, "--backbone", "tiny", "--epochs",
             "1", "--batch-size", "8", "--max-steps-per-epoch", "2", "--device", "cpu",
             "--quiet", "--strategy", "mmd"]
    for run, seed in (("start", "0"), ("other", "1")):
        result = CliRunner().invoke(cli, [*train, "--seed", seed, "--run-dir", run])
        assert result.exit_code == 0, result.output
    study = tmp_path / "study"
    fast = ("--sampler", "random", "--pruner", "none", "--epochs", "1")

    def tune(n: str, init: str):
        return CliRunner().invoke(cli, _args(source, target, study, "--n-trials", n, *fast,
                                             "--set", f"init_from={init}"))

    result = tune("1", "start")
    assert result.exit_code == 0, result.output
    for n, init in (("2", f"{tmp_path / 'start'}"), ("3", "start/best.pt")):
        result = tune(n, init)
        assert result.exit_code == 0, (init, result.output)
    assert len(_trials(study)) == 3
    for init in ("other", "start"):
        if init == "start":  # retrained in place: the same path, other weights
            shutil.copy(tmp_path / "other" / "best.pt", tmp_path / "start" / "best.pt")
        result = tune("4", init)
        assert result.exit_code == 1, (init, result.output)
        line = result.output.strip()
        assert len(line.splitlines()) == 1, line
        assert f"start from {tmp_path / 'start' / 'best.pt'}" in line, line
        assert f"init_from {init} is another checkpoint" in line and "--study-dir" in line
    assert len(_trials(study)) == 3


def test_a_storage_study_resumes_with_its_database_however_spelt(toys, tmp_path, monkeypatch):
    """--storage naming the study's SQLite file by a relative or an absolute path is the same
    database (the folder's storage.json records it resolved); another database is one line
    naming --storage and the fix."""
    monkeypatch.chdir(tmp_path)
    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "study"
    fast = ("--sampler", "random", "--pruner", "none", "--epochs", "1")
    for n, url in (("1", "sqlite:///shared.db"), ("2", f"sqlite:///{tmp_path / 'shared.db'}"),
                   ("3", "sqlite:///./shared.db")):
        result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", n, *fast,
                                               "--storage", url))
        assert result.exit_code == 0, (url, result.output)
    result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "4", *fast,
                                           "--storage", "sqlite:///other.db"))
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "holds the study of another database" in result.output
    assert "pass that --storage to continue it" in result.output
    assert len(_trials(study)) == 3


def test_storage_json_records_the_database_with_its_user_info_as_stars(tmp_path):
    """A --storage URL's user info is recorded as ``***`` (galmerge's one form; the user name was
    kept before), and the same database under another user name is still the folder's."""
    import json

    from galmerge.errors import GalmergeError
    from galmerge.training.tuning.storage import check_one_study, record_storage

    study = tmp_path / "s"
    study.mkdir()
    record_storage(study, "postgresql://me:p&ss@db.example:5432/studies")
    text = (study / "storage.json").read_text()
    assert json.loads(text) == {"storage": "postgresql://***@db.example:5432/studies"}
    assert "me:" not in text and "p&ss" not in text
    check_one_study(study, "postgresql://me:p&ss@db.example:5432/studies")
    check_one_study(study, "postgresql://you:other@db.example:5432/studies")
    with pytest.raises(GalmergeError, match="holds the study of another database"):
        check_one_study(study, "postgresql://me:p&ss@db.example:5432/other")


@pytest.mark.parametrize("recorded", ["postgresql://me:***@127.0.0.1:1/studies",
                                      "postgresql://me@127.0.0.1:1/studies"])
def test_a_study_folder_recorded_with_the_old_password_form_still_resumes(toys, tmp_path,
                                                                          recorded):
    """Folders written before the ``***@`` form hold ``user:***@`` (a URL without a password as
    it was): the same --storage continues them (here it gets as far as opening the database,
    which is not there), another database is still refused."""
    import json

    source, target = _write_pair(tmp_path / "data")
    study = tmp_path / "s"
    study.mkdir()
    # as galmerge wrote it before (storage.record_storage)
    (study / "storage.json").write_text(json.dumps({"storage": recorded}) + "\n")
    same = recorded.replace("me:***@", "me:s3cret@")
    result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "1",
                                           "--storage", same))
    assert result.exit_code == 1 and "another database" not in result.output, result.output
    assert "--storage postgresql://***@127.0.0.1:1/studies: cannot open it" in result.output
    assert "s3cret" not in result.output
    for other in ("postgresql://you:s3cret@127.0.0.1:1/studies",
                  "postgresql://me:s3cret@127.0.0.1:1/other"):
        result = CliRunner().invoke(cli, _args(source, target, study, "--n-trials", "1",
                                               "--storage", other))
        assert result.exit_code == 1 and "holds the study of another database" in result.output
    assert json.loads((study / "storage.json").read_text()) == {"storage": recorded}
