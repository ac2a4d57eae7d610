"""What a newcomer sees in an 80-column terminal: whole-run progress and ETA always visible,
epoch lines that fit, defaults in every option's help, paths never wrapped."""

from __future__ import annotations

import io
import re

import click
import pytest
from click.testing import CliRunner
from rich.console import Console
from train_toys import ToyPlugin, _NoNone

from galmerge.cli import COMMANDS, cli
from galmerge.config import rundir
from galmerge.runtime.progress import Progress, epoch_lines, results_table

LOSSES = {"total": 1.234, "ce": 0.6, "dann": 0.71, "fisher": 0.42, "entropy": 0.33,
          "mmd": 0.05, "mcc": 0.2}


def _console() -> Console:
    return Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)


def test_progress_keeps_epoch_steps_and_eta_on_the_bar_line_at_80_columns():
    console = _console()
    progress = Progress(False, total_epochs=200, steps_per_epoch=344, console=console)
    progress.start(0, 1)
    progress.step(12 * 344 + 20, 13, LOSSES)
    progress.stop()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())  # cursor codes
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    bar = next(line for line in lines if "epoch 13/200" in line)
    assert len(bar) <= 80
    assert "4148/68800" in bar and "ETA" in bar  # whole-run steps, not one epoch's
    assert re.search(r"ETA (\d+:\d\d:\d\d|-:--:--)$", bar), bar
    terms = lines[lines.index(bar) + 1 :]
    assert "mcc 0.2" in " ".join(terms)  # every loss term, on its own line(s)
    assert all(len(line) <= 80 for line in terms)


def test_epoch_lines_fit_80_columns_and_mark_the_target_accuracy_as_oracle():
    row = {"epoch": 200, "loss_total": 1.5, "loss_ce": 0.5, "loss_dann": 0.25,
           "loss_fisher": 0.125, "source_val_loss": 0.5123, "source_val_accuracy": 0.9,
           "target_val_accuracy": 0.8, "lr": 1.2e-4, "images_per_s": 1234.0}
    lines = epoch_lines(row, 200, improved=True)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].startswith("epoch 200/200 *")  # a new best checkpoint
    assert "target val acc 0.800 (oracle)" in lines[0]
    assert "dann 0.25" in lines[1] and "1234 img/s" in lines[1]
    many = {**row, **{f"loss_term{i}": 0.123456 for i in range(12)}}
    lines = epoch_lines(many, 200, improved=False)
    assert len(lines) > 2 and all(len(line) <= 80 for line in lines)
    assert "term11 0.1235" in lines[-1] or "term11 0.1235" in " ".join(lines)


def test_train_help_shows_the_config_defaults():
    out = CliRunner().invoke(cli, ["train", "--help"], env={"COLUMNS": "80"}).output
    flat = " ".join(out.split())
    assert "Maximum number of epochs (a preset may set its own). [default: 200]" in flat
    assert "[default: 128]" in flat and "[default: auto]" in flat


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_with_a_default_shows_it(name):
    command = cli.get_command(click.Context(cli), name)
    # the group's own context settings: they are what makes every default show
    with click.Context(cli, info_name="galmerge", **cli.context_settings) as parent:
        ctx = click.Context(command, parent=parent, info_name=name)
        for param in command.params:
            default = param.get_default(ctx, call=False)
            unset = default in (None, False, ()) or repr(default).endswith("UNSET")
            if param.required or unset or param.name == "help":
                continue
            record = param.get_help_record(ctx)
            assert record and "default" in record[1].lower(), (name, param.name)


def test_run_directory_name_shows_the_training_seed_not_the_data_seed(tmp_path):
    path = rundir.default_run_dir("synthetic:illustris?n=2000&seed=0",
                                  "synthetic:sdss?seed=1", "dann+fisher", tmp_path, seed=0)
    assert path.name.endswith("-synthetic-illustris-synthetic-sdss-dann+fisher-s0")
    assert "seed=" not in path.name
    path.mkdir()
    (path / "config.toml").write_text("")
    again = rundir.default_run_dir("synthetic:illustris", "synthetic:sdss?seed=1",
                                   "dann+fisher", tmp_path, seed=0)
    if again.name.startswith(path.name):  # same second: never the taken directory
        assert again.name == path.name + "-2"


@pytest.fixture
def toys(register_plugin, plugin_manager):
    register_plugin(_NoNone() if "none" in plugin_manager.components("strategies")
                    else ToyPlugin(), "toys")


def test_paths_are_printed_whole_at_80_columns(toys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    run = tmp_path / ("a-long-folder-name-" * 4) / "20261204-231000-synthetic-illustris-sdss-s0"
    result = CliRunner().invoke(
        cli, ["train", "--source", "toy:source", "--target", "toy:target", "--backbone", "tiny",
              "--device", "cpu", "--epochs", "1", "--batch-size", "8", "--strategy", "meangap",
              "--run-dir", str(run)],
    )
    assert result.exit_code == 0, result.output
    printed = [line for line in result.output.splitlines() if line.startswith("run directory:")]
    assert printed and all(line == f"run directory: {run}" for line in printed), result.output
    assert result.output.rstrip().splitlines()[-1] == f"run directory: {run}"  # last


def test_results_table_fits_80_columns_and_names_the_surveys(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    metrics = {"accuracy": 0.91234, "precision": 0.9, "recall": 0.8, "f1": 0.85, "brier": 0.1,
               "auc": 0.95}
    results_table({"strategy": "dann+fisher", "backbone": "deepmerge", "best_epoch": 7,
                   "epochs_run": 8, "metrics": {"source_test": metrics, "target_test": metrics},
                   "source": "synthetic:illustris", "target": "synthetic:sdss?seed=1",
                   "run_dir": "/x" * 60, "warnings": []}, quiet=False)
    out = capsys.readouterr().out
    assert "0.912" in out and "…" not in out
    assert "synthetic:illustris" in out and "synthetic:sdss?seed=1" in out
    assert all(len(line) <= 80 for line in out.splitlines()[:-1])
    assert out.splitlines()[-1] == "run directory: " + "/x" * 60


def test_compare_table_wraps_long_specs_and_names_at_80_columns(tmp_path):
    """A piped or logged `galmerge compare` (80 columns) folds a data spec without spaces and
    keeps every column: the title, the gain column and its digits were cut at column 80."""
    import json

    metrics = {n: 0.5 for n in ("accuracy", "precision", "recall", "f1", "brier", "auc")}
    for strategy, acc in (("none", 0.5), ("mmd+fisher+entropy", 0.708)):
        folder = tmp_path / strategy
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({
            "source": "synthetic:illustris?n=96&size=32",
            "target": "synthetic:sdss?n=96&size=32&seed=1", "strategy": strategy,
            "backbone": "deepmerge", "seed": 0, "epochs_run": 2, "best_epoch": 2,
            "train_images_per_s": 1.0,
            "metrics": {"source_test": metrics,
                        "target_test": {**metrics, "accuracy": acc}}}))
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "none"),
                                      str(tmp_path / "mmd+fisher+entropy")],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.output.splitlines()), result.output
    squeezed = "".join(result.output.split())
    assert ("synthetic:illustris?n=96&size=32→synthetic:sdss?n=96&size=32&seed=1,deepmerge:"
            "testmetrics,mean±stdoverseeds") in squeezed
    assert "mmd+fisher+entropy" in result.output  # room for the name: not folded
    assert "+0.208" in result.output and "gain" in result.output
