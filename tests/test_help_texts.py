"""Help texts and one-line errors say what a newcomer can act on (docs review, stop 44)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from galmerge.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("command", ["train", "classify", "evaluate", "tune", "reproduce"])
def test_device_help_names_cuda_n(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert "cuda:N" in " ".join(result.output.split())


def test_select_by_help_names_every_choice() -> None:
    text = " ".join(run("train", "--help").output.split())
    for name in ("source_val_loss", "source_val_accuracy", "source_val_batch_loss", "im_src",
                 "snd", "dev", "entropy"):
        assert name in text, name


def test_missing_target_suggests_a_target_unlike_the_source(tmp_path: Path) -> None:
    result = run("train", "--source", "synthetic:illustris", "--run-dir", str(tmp_path / "r"))
    assert result.exit_code != 0
    assert "no --target given; e.g. --target 'synthetic:sdss?seed=1'" in result.output


def test_prior_rule_without_prior_asks_for_a_value(tmp_path: Path) -> None:
    catalog = tmp_path / "cat.csv"
    catalog.write_text("ra,dec\n150.0,2.0\n")
    result = run("classify", str(catalog), "--model", str(tmp_path), "--prior-rule", "bayes")
    assert result.exit_code != 0
    assert "--prior-rule bayes needs --prior VALUE" in result.output
    assert "auto is EM" not in result.output


def test_plugins_footer_says_none_is_published_yet() -> None:
    result = run("plugins")
    assert result.exit_code == 0, result.output
    assert "none is published yet" in " ".join(result.output.split())


def test_fetch_help_does_not_promise_md5_for_deepmerge1() -> None:
    text = " ".join(run("fetch", "--help").output.split())
    assert "deepmerge1: size and FITS structure" in text


def test_reproduce_help_names_both_tables() -> None:
    assert "table.csv" in " ".join(run("reproduce", "--help").output.split())


def test_fraction_warnings_point_to_the_docs_not_only_to_repository_files(tmp_path: Path) -> None:
    """`galmerge fraction`'s adaptation warning cites where a pip user can read the evidence."""
    from galmerge.fractions.adaptation import adaptation_check

    for name in ("dann", "coral"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "config.toml").write_text(f"[strategies.{name}]\n")
        message = adaptation_check(run_dir, 0.5, 0.2)["message"]
        assert "galmerge docs, Merger fractions" in message, message
        assert "benchmarks/results/fraction_sim_real" not in message
