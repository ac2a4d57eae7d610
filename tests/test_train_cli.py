"""`galmerge train` on the command line: config layers, round trip, one-line errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from train_toys import ToyPlugin, _NoNone

from galmerge.cli import cli
from galmerge.config.resolve import resolve_config

BASE = ["train", "--source", "toy:source", "--target", "toy:target", "--backbone", "tiny",
        "--device", "cpu", "--quiet", "--epochs", "1", "--batch-size", "8"]


@pytest.fixture
def toys(register_plugin, plugin_manager):
    plugin = _NoNone() if "none" in plugin_manager.components("strategies") else ToyPlugin()
    register_plugin(plugin, "toys")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def config_of(run: Path) -> dict:
    return tomllib.loads((run / "config.toml").read_text())


def test_cli_trains_and_prints_device(toys, tmp_path):
    result = invoke(*BASE, "--strategy", "meangap", "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "device cpu" in result.output
    assert (tmp_path / "r" / "summary.json").is_file()


def test_precedence_preset_then_file_then_flags(toys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('lr = 0.01\nweight_decay = 0.5\n[strategies.meangap]\nweight = 0.3\n')
    run = tmp_path / "r"
    result = invoke(
        *BASE, "--strategy", "meangap", "--preset", "deepmerge2-sim-sim",
        "--config", str(cfg), "--lr", "0.02", "--set", "meangap.power=3",
        "--select-by", "source_val_loss", "--run-dir", str(run),
    )
    assert result.exit_code == 0, result.output
    config = config_of(run)
    assert config["lr"] == 0.02  # flag beats file
    assert config["weight_decay"] == 0.5  # file beats preset
    assert config["optimizer"]["amsgrad"] is True  # preset beats defaults
    assert config["patience"] == 20 and config["preset"] == "deepmerge2-sim-sim"
    assert config["batch_size"] == 8  # flag beats preset's 128
    assert config["strategies"]["meangap"] == {"weight": 0.3, "power": 3, "nan_at": -1}


def test_saved_config_reproduces_itself(toys, tmp_path):
    first = tmp_path / "first"
    assert invoke(*BASE, "--strategy", "mg", "--set", "mg.weight=0.5", "--seed", "4",
                  "--run-dir", str(first)).exit_code == 0
    second = tmp_path / "second"
    result = invoke("train", "--config", str(first / "config.toml"), "--quiet",
                    "--run-dir", str(second))
    assert result.exit_code == 0, result.output
    assert config_of(first) == config_of(second)
    assert resolve_config(file=first / "config.toml") == config_of(first)
    a = (first / "metrics.csv").read_text().splitlines()
    b = (second / "metrics.csv").read_text().splitlines()
    assert [r.rsplit(",", 1)[0] for r in a] == [r.rsplit(",", 1)[0] for r in b]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--strategy", "nosuch"], "unknown strategy 'nosuch'; available:"),
        (["--strategy", "meangap", "--backbone", "nosuch"], "unknown backbone 'nosuch'"),
        (["--strategy", "meangap", "--set", "meangap.bogus=1"], "unknown option(s) bogus"),
        (["--strategy", "meangap", "--set", "other.weight=1"], "not in --strategy"),
        (["--strategy", "meangap", "--set", "noequals"], "KEY=VALUE"),
        # a misspelt top-level setting is named as such, with the closest one, not taken for a
        # strategy option without its SECTION.
        (["--strategy", "meangap", "--set", "domain_batchnrom=joint"],
         "unknown setting 'domain_batchnrom' (did you mean 'domain_batchnorm'?)"),
        (["--strategy", "meangap", "--set", "observe=1"], "needs SECTION.OPTION=VALUE"),
        (["--strategy", "meangap", "--backbone-option", "depth=3"], "unknown option(s) depth"),
        (["--strategy", "meangap", "--preset", "nosuch"], "unknown preset 'nosuch'"),
        (["--strategy", "meangap", "--select-by", "nosuch"], "unknown --select-by 'nosuch'"),
        (["--strategy", "meangap", "--epochs", "0"], "epochs must be"),
        (["--strategy", "meangap", "--device", "cuda:7"], "--device"),
        (["--strategy", "mean+"], "bad strategy expression"),
    ],
)
def test_bad_inputs_are_one_line_errors(toys, tmp_path, extra, expected):
    result = CliRunner().invoke(cli, [*BASE, *extra, "--run-dir", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert expected in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) <= 2


def test_mismatched_channels_and_missing_config(toys, tmp_path):
    result = CliRunner().invoke(cli, [
        "train", "--source", "toy:source?channels=2", "--target", "toy:target?channels=3",
        "--backbone", "tiny", "--strategy", "meangap", "--device", "cpu", "--quiet",
        "--run-dir", str(tmp_path / "r"),
    ])
    assert result.exit_code != 0 and "same bands" in result.output
    result = CliRunner().invoke(cli, [*BASE, "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_refuses_to_overwrite_a_run_and_bad_resume(toys, tmp_path):
    run = tmp_path / "r"
    assert invoke(*BASE, "--strategy", "meangap", "--run-dir", str(run)).exit_code == 0
    result = CliRunner().invoke(cli, [*BASE, "--strategy", "meangap", "--run-dir", str(run)])
    assert result.exit_code != 0 and "not empty" in result.output
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "--resume" in result.output
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--lr", "0.5"])
    assert result.exit_code != 0 and "saved config" in result.output
    summary = (run / "summary.json").read_text()
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--run-dir",
                                      str(tmp_path / "elsewhere"), "--quiet"])
    assert result.exit_code != 0 and f"drop --run-dir {tmp_path / 'elsewhere'}" in result.output
    assert not (tmp_path / "elsewhere").exists() and (run / "summary.json").read_text() == summary


def test_resume_of_a_finished_run_changes_nothing(toys, tmp_path):
    run = tmp_path / "r"
    assert invoke(*BASE, "--strategy", "meangap", "--run-dir", str(run)).exit_code == 0
    before = (run / "metrics.csv").read_text()
    summary_before = json.loads((run / "summary.json").read_text())
    config_before = (run / "config.toml").read_text()
    result = invoke("train", "--resume", str(run), "--quiet")
    assert result.exit_code == 0, result.output
    assert (run / "metrics.csv").read_text() == before
    env = json.loads((run / "env.json").read_text())
    assert len(env["resumed"]) == 1 and env["resumed"][0]["changed"] == []
    assert env["packages"]["numpy"] and "git_dirty" in env
    # what the specs resolved to here, as the toy survey names its sets
    assert {env["data"][d]["survey"] for d in ("source", "target")} == {"toy-source",
                                                                          "toy-target"}
    assert env["data"]["source"]["images"] > 0
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # resumed on another thread count: said and recorded
    try:
        result = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "resumed with another cpu_threads" in result.output
    env = json.loads((run / "env.json").read_text())
    assert env["cpu_threads"] == threads and env["resumed"][1]["changed"] == ["cpu_threads"]
    assert (run / "config.toml").read_text() == config_before
    summary = json.loads((run / "summary.json").read_text())
    for key in ("metrics", "best_epoch", "epochs_run", "train_images_per_s"):
        assert summary[key] == summary_before[key], key


def test_rerunning_a_runs_config_on_another_thread_count_says_so(toys, tmp_path):
    run = tmp_path / "r"
    assert invoke(*BASE, "--strategy", "meangap", "--run-dir", str(run)).exit_code == 0
    env = json.loads((run / "env.json").read_text())
    env["cpu_threads"] += 5  # as if run on a bigger machine
    (run / "env.json").write_text(json.dumps(env))
    loud = [a for a in BASE if a != "--quiet"][1:]
    again = invoke("train", "--config", str(run / "config.toml"), *loud[4:],
                   "--run-dir", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    assert (f"ran with cpu_threads {env['cpu_threads']!r} there" in again.output
            and f"OMP_NUM_THREADS={env['cpu_threads']}" in again.output), again.output
    other_seed = invoke("train", "--config", str(run / "config.toml"), *loud[4:], "--seed", "7",
                        "--run-dir", str(tmp_path / "s7"))
    assert other_seed.exit_code == 0 and "bit for bit" not in other_seed.output  # not a rerun
    env["cpu_threads"] -= 5
    (run / "env.json").write_text(json.dumps(env))
    same = invoke("train", "--config", str(run / "config.toml"), *loud[4:],
                  "--run-dir", str(tmp_path / "same"))
    assert same.exit_code == 0 and "bit for bit" not in same.output, same.output


def test_rerunning_a_multi_process_runs_config_in_one_process_says_so(toys, tmp_path):
    run = tmp_path / "r"
    assert invoke(*BASE, "--strategy", "meangap", "--run-dir", str(run)).exit_code == 0
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 1
    env["world_size"] = 2  # as if trained under torchrun --nproc_per_node 2
    (run / "env.json").write_text(json.dumps(env))
    loud = [a for a in BASE if a != "--quiet"][1:]
    again = invoke("train", "--config", str(run / "config.toml"), *loud[4:],
                   "--run-dir", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    assert ("ran with world_size 2 there, 1 here" in again.output
            and "torchrun --nproc_per_node 2" in again.output), again.output


@pytest.mark.parametrize(("edit", "named"), [
    (("seed = 0", "seed = 5"), "seed = 5"),
    (("epochs = 1", "epochs = 3"), "epochs = 3"),
    (("batch_size = 8", "batch_size = 16"), "batch_size = 16"),
])
def test_resume_refuses_a_config_edited_since_its_checkpoint(toys, tmp_path, edit, named):
    # the edited values trained the rest of the run (seed, batch), or crashed the schedule
    # (epochs), while config.toml and every later checkpoint claimed them for the whole run
    run = tmp_path / "r"
    assert invoke(*BASE, "--strategy", "meangap", "--run-dir", str(run)).exit_code == 0
    text = (run / "config.toml").read_text()
    assert edit[0] in text
    (run / "config.toml").write_text(text.replace(edit[0], edit[1], 1))
    last = (run / "last.pt").read_bytes()
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"config.toml says {named}" in result.output, result.output
    assert "last.pt was trained with" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (run / "last.pt").read_bytes() == last


def test_resume_refuses_another_target(toys, tmp_path):
    run = tmp_path / "r"
    assert invoke(*BASE, "--strategy", "meangap", "--run-dir", str(run)).exit_code == 0
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--target", "toy:other",
                                      "--quiet"])
    assert result.exit_code != 0 and "the run's target is toy:target" in result.output


def test_init_from_a_checkpoint_of_another_backbone_is_one_short_line(toys, tmp_path):
    run = tmp_path / "r"
    assert invoke(*BASE, "--strategy", "meangap", "--run-dir", str(run)).exit_code == 0
    args = [a if a != "tiny" else "deepmerge" for a in BASE]
    result = CliRunner().invoke(cli, [*args, "--strategy", "meangap", "--init-from", str(run),
                                      "--run-dir", str(tmp_path / "other")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    line = result.output.strip()
    assert "it is a tiny model and this run trains deepmerge" in line, line
    assert "\n" not in line and len(line) < 300


def test_resume_from_a_damaged_last_pt_says_to_start_again(toys, tmp_path):
    run = tmp_path / "r"
    assert invoke(*BASE, "--strategy", "meangap", "--run-dir", str(run)).exit_code == 0
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:500])
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--quiet"])
    line = result.output.strip()
    assert result.exit_code != 0 and "\n" not in line, line
    assert "last.pt cannot be read" in line and "start the run again" in line, line
    assert "best.pt" not in line  # the --model advice does not fit a resume


def test_init_from_weights_of_another_shape_keep_the_whole_size_mismatch_line():
    # the key-list shortening once cut "torch.Size([8, 3, 3, 3])" at its first comma
    from torch import nn

    from galmerge.errors import GalmergeError
    from galmerge.training.checkpoints import load_init_weights

    def conv(channels: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(channels, 8, 3))

    with pytest.raises(GalmergeError) as info:
        load_init_weights(conv(5), {"model": conv(3).state_dict()}, "runs/r")
    assert "torch.Size([8, 3, 3, 3]) from checkpoint" in str(info.value)
    assert "torch.Size([8, 5, 3, 3])" in str(info.value)


def test_set_help_names_top_level_settings():
    result = invoke("train", "--help")
    assert "[SECTION.]OPTION=VALUE" in result.output
    assert "domain_batchnorm=joint" in result.output
def test_resume_takes_the_same_init_from_and_data_however_spelt_and_refuses_others(
        toys, tmp_path, monkeypatch):
    """--resume with --init-from (or --source) naming what the run recorded, written another
    way (relative or absolute, a run directory or its best.pt), continues the run; another
    checkpoint is one line naming --init-from and the fix, where it read 'drop init_from'."""
    from train_toys import toy_sets

    from galmerge.io import hdf5 as hdf5io

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name, imageset in zip(("source", "target"), toy_sets(40, 40), strict=True):
        hdf5io.write_imageset(tmp_path / "data" / f"{name}.h5", imageset)
    common = ["train", "--source", "hdf5:data/source.h5", "--target", "hdf5:data/target.h5",
              "--backbone", "tiny", "--device", "cpu", "--quiet", "--epochs", "1",
              "--batch-size", "8", "--max-steps-per-epoch", "2", "--strategy", "meangap"]
    assert invoke(*common, "--run-dir", "a").exit_code == 0
    assert invoke(*common, "--run-dir", "b", "--init-from", "a").exit_code == 0
    assert config_of(tmp_path / "b")["init_from"] == str(tmp_path / "a")  # recorded absolute
    for extra in (["--init-from", f"{tmp_path / 'a'}/"], ["--init-from", "a/best.pt"],
                  ["--source", f"hdf5:{tmp_path / 'data' / 'source.h5'}"],
                  ["--target", "hdf5:./data/target.h5", "--device", "cpu"]):
        result = CliRunner().invoke(cli, ["train", "--resume", "b", "--quiet", *extra])
        assert result.exit_code == 0, (extra, result.output)
    for run, extra, words in (
            ("b", ["--init-from", "b"], f"the run started from {tmp_path / 'a'}, not "
                                        "--init-from b; drop --init-from"),
            ("a", ["--init-from", "b"], "the run started without --init-from, not --init-from "
                                        "b; drop --init-from"),
            ("b", ["--source", "hdf5:data/target.h5"], "drop --source"),
            ("b", ["--epochs", "3", "--max-steps-per-epoch", "1"],
             "drop --epochs, --max-steps-per-epoch (only --device")):
        result = CliRunner().invoke(cli, ["train", "--resume", run, "--quiet", *extra])
        assert result.exit_code == 1, (extra, result.output)
        assert words in result.output and len(result.output.strip().splitlines()) == 1, \
            result.output
