"""A plugin author's mistake in a strategy's output: one line naming plugin, strategy and term
at the first step, and no half-written run directory."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from train_toys import ToyPlugin, _NoNone

from galmerge import hookimpl
from galmerge.cli import cli

BASE = ["train", "--source", "toy:source", "--target", "toy:target", "--backbone", "tiny",
        "--device", "cpu", "--quiet", "--epochs", "1", "--batch-size", "8"]

MISTAKES = {
    "per-sample": lambda step: {"gap": (step.source_features - step.target_features).pow(2)},
    "float": lambda step: {"gap": 0.5},
    "not-finite": lambda step: {"gap": step.source_features.sum() * float("nan")},
    "int-diag": lambda step: {"gap": step.source_features.mean(), "_count": torch.tensor(3)},
    "list": lambda step: [step.source_features.mean()],
}


class _Bad(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, step):
        return MISTAKES[self.kind](step)


class BadPlugin:
    @hookimpl
    def register_strategies(self):
        from galmerge.plugin.records import Strategy

        return [Strategy(name="sloppy", description="returns the wrong thing",
                         build=lambda context, options: _Bad(options["kind"]),
                         defaults={"weight": 1.0, "kind": "float"})]


@pytest.fixture
def plugins(register_plugin, plugin_manager):
    register_plugin(_NoNone() if "none" in plugin_manager.components("strategies")
                    else ToyPlugin(), "toys")
    register_plugin(BadPlugin(), "galmerge-sloppy")


@pytest.mark.parametrize(("kind", "says"), [
    ("per-sample", "term 'gap' is a tensor of shape (8, 16), not a scalar"),
    ("float", "term 'gap' is a float (0.5), not a torch tensor"),
    ("not-finite", "term 'gap' is nan at the first step (not finite)"),
    ("int-diag", "term '_count' is a torch.int64 tensor"),
    ("list", "forward returned list, not a dict"),
])
def test_a_bad_strategy_output_is_one_line_naming_plugin_strategy_and_term(
    plugins, tmp_path, kind, says
):
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli, [*BASE, "--strategy", "meangap+sloppy", "--set", f"sloppy.kind={kind}",
              "--run-dir", str(run)],
    )
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in result.output, result.output
    assert "strategy 'sloppy' (plugin 'galmerge-sloppy')" in error[0]
    assert says in error[0]
    assert not run.exists()  # nothing half-written left behind


def test_a_failed_first_step_keeps_the_runs_source_only_stage(plugins, tmp_path):
    """A stage trained (and kept) for this run directory was removed with everything else
    when the adaptation's first step failed: only what the failed start wrote is removed."""
    run = tmp_path / "run"
    stage = run / "source_only"
    stage.mkdir(parents=True)
    (stage / "summary.json").write_text("{}\n")  # as a finished stage left by a killed run
    result = CliRunner().invoke(
        cli, [*BASE, "--strategy", "meangap+sloppy", "--run-dir", str(run)])
    assert result.exit_code == 1 and "strategy 'sloppy'" in result.output, result.output
    assert (stage / "summary.json").read_text() == "{}\n"
    assert sorted(p.name for p in run.iterdir()) == ["source_only"]
